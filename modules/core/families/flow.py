"""What the flow-matching transformer families (Flux.1, SD3) share: 16-channel latents in 2x2 patches,
a VAE with a shift, companion files for the parts a checkpoint leaves out, A1111's samplers and
schedule types on the flow-matching sigmas, and LoRA layer names that fuse several of the model's
layers."""

from __future__ import annotations

import torch

from .. import flow_matching, ksampling, ldm_parts, samplers
from ..sampler_options import SamplerOptions, kdiff_plan
from ..checkpoint_file import CheckpointFile
from ..checkpoint_shapes import Shapes, UnsupportedCheckpoint, marker_prefix, vae_config
from ..sigma_schedules import TrainingSigmas
from ..types import RequestError
from .base import ModelFamily

VAE_PREFIXES = ("first_stage_model.", "vae.")
VAE_MARKER = "decoder.conv_in.weight"
CLIP_MARKER = "text_model.embeddings.token_embedding.weight"  # a CLIP text encoder in the HF layout
# A1111 samplers on the flow-matching sigmas, as ComfyUI runs its k-diffusion samplers on a flow
# model (a CONST denoiser, x0 = x - sigma * v): the ODE ones as they are, the ancestral ones the RF
# way, the SDE ones in the flow's log-SNR (modules.core.ksampling_algorithms, FlowSpace). DDIM's
# deterministic step is exactly Euler's on a flow (its eta_ddim: RF ancestral noise); LCM jumps to
# the prediction and renoises it; PLMS blends velocities. Each maps to its algorithm here
# (ksampling.ALGORITHMS, FLOW_ALGORITHMS).
FLOW_ALGORITHMS = {name: samplers.get_spec(name).kdiff for name in samplers.SAMPLER_NAMES
                   if samplers.get_spec(name).kdiff is not None}
FLOW_ALGORITHMS.update({"DDIM": "euler", "LCM": "lcm", "PLMS": "plms"})
# UniPC: diffusers' UniPC in its flow form; DDIM CFG++: ComfyUI's CFG++ Euler on a flow
# (flow_matching.FlowUniPCScheduler, FlowCFGPPScheduler). That is every A1111 sampler.
SAMPLERS = tuple(name for name in samplers.SAMPLER_NAMES
                 if name in FLOW_ALGORITHMS or name in ("UniPC", "DDIM CFG++"))
# every A1111 schedule type but Align Your Steps, whose published noise levels are SD 1.5's and SDXL's
SCHEDULES = tuple(label for label, sid in samplers.SCHEDULE_TYPES if sid != "align_your_steps")
_SCHEDULE_IDS = dict(samplers.SCHEDULE_TYPES)


class Sources:
    """Where each part of a checkpoint comes from: the file itself, or a companion file found by
    ``companions(kind)``; closes what it opened."""

    def __init__(self, ckpt, companions, family_label: str, descriptions: dict[str, str]):
        self.ckpt, self.companions = ckpt, companions
        self.family_label, self.descriptions = family_label, descriptions
        self.opened: list[CheckpointFile] = []

    def get(self, kind: str, marker: str, in_file: str | None, required: bool = True):
        """(file, prefix) of a part: ``in_file`` is its prefix in the checkpoint (None: not there)."""
        if in_file is not None:
            return self.ckpt, in_file
        path = self.companions(kind)
        what = self.descriptions.get(kind, kind)
        if path is None:
            if not required:
                return None, None
            where = getattr(self.companions, "where", {}).get(kind, "the text encoder / VAE folders")
            raise UnsupportedCheckpoint(f"this {self.family_label} checkpoint does not hold {what}; put one in {where}")
        other = CheckpointFile(path)
        self.opened.append(other)
        prefix = marker_prefix(other.shapes, marker)
        if prefix is None:
            raise UnsupportedCheckpoint(f"{path.name} is not {what}")
        return other, prefix

    def close(self) -> None:
        for other in self.opened:
            other.close()


class FlowFamily(ModelFamily):
    native_side = 1024
    default_prediction = "flow"
    size_multiple = 16  # 8x VAE, then 2x2 patches
    vae_shift = 0.0
    vae_kind = ""  # the companion kind of its VAE ("flux_vae", "sd3_vae")
    sampler_names = SAMPLERS

    def native_size(self, prediction_type):
        return self.native_side, self.native_side

    def vae_prefix(self, shapes: Shapes) -> str | None:
        return next((p for p in VAE_PREFIXES if p + VAE_MARKER in shapes), None)

    def vae_configuration(self, shapes: Shapes, prefix: str | None) -> dict:
        """The VAE's config from the shapes (a placeholder with the channels when the file has none)."""
        if prefix is None:
            return {"latent_channels": 16}
        return {**vae_config(shapes, self.vae_scaling, prefix), "shift_factor": self.vae_shift, "sample_size": 1024}

    def load_vae(self, sources: Sources, policy):
        from diffusers import AutoencoderKL

        file, prefix = sources.get(self.vae_kind, VAE_MARKER, self.vae_prefix(sources.ckpt.shapes))
        config = self.vae_configuration(file.shapes, prefix)
        tensors = {"first_stage_model." + k[len(prefix):]: v for k, v in file.read_prefix(prefix, policy.vae_dtype).items()}
        state = ldm_parts.convert_ldm_vae_checkpoint(tensors, config)
        return ldm_parts.build(AutoencoderKL, config, state, f"{self.label} VAE"), config

    # -- LoRA ------------------------------------------------------------------------------------

    @staticmethod
    def lora_pieces(model, fused, renamed) -> dict[str, list[tuple[torch.nn.Module, int, int]]]:
        """File layer names (flattened) -> the model's modules with the rows of the file's layer each
        takes: ``fused`` [(file layer, (module, ...))] split by rows, ``renamed`` [(file layer, module)]."""
        modules = dict(model.unet.named_modules())
        out = {}
        for ours, parts in fused:
            pieces, start = [], 0
            for part in parts:
                rows = modules[part].weight.shape[0]
                pieces.append((modules[part], start, start + rows))
                start += rows
            out[ours.replace(".", "_")] = pieces
        for ours, theirs in renamed:
            module = modules.get(theirs)
            if isinstance(module, torch.nn.Linear):
                out[ours.replace(".", "_")] = [(module, 0, module.weight.shape[0])]
        return out

    # -- sampling --------------------------------------------------------------------------------

    def flow_shift(self, spec) -> flow_matching.FlowShift:
        raise NotImplementedError

    def build_scheduler(self, sampler, schedule, spec, latent_shape, options=None):
        """A1111's sampler on the flow sigmas of ``schedule`` ("Automatic": the family's own shifted
        schedule; the others: :func:`~modules.core.flow_matching.schedule_sigmas`). Of A1111's sampler
        parameters (``options``) the ancestral/SDE eta, s_noise, eta_ddim (DDIM), the schedule's
        sigma range, rho and Beta's alpha/beta and discarding the penultimate sigma apply; UniPC takes
        its variant, order and lower order final, DDIM CFG++ eta_ddim."""
        if sampler not in SAMPLERS:
            raise RequestError("sampler_name", f"{self.label} models sample with {', '.join(SAMPLERS)} here, "
                                               f"not {sampler}")
        if schedule not in SCHEDULES:
            raise RequestError("scheduler", f"{self.label} models take the schedule types {', '.join(SCHEDULES)}, "
                                            f"not {schedule} (Align Your Steps' noise levels are SD 1.5's and SDXL's)")
        _c, h, w = latent_shape
        shift, seq_len = self.flow_shift(spec), (h // 2) * (w // 2)
        o = options if isinstance(options, SamplerOptions) else SamplerOptions()
        schedule_id = "flow" if schedule == "Automatic" else _SCHEDULE_IDS[schedule]

        def sigmas_for(steps: int) -> torch.Tensor:
            if schedule_id == "flow":
                return flow_matching.flow_sigmas(shift, seq_len, steps)
            return flow_matching.schedule_sigmas(schedule_id, steps, shift, seq_len)

        if sampler == "DDIM CFG++":
            return flow_matching.FlowCFGPPScheduler(sigmas_for, eta=float(o.eta_ddim))
        if sampler == "UniPC":
            return flow_matching.FlowUniPCScheduler(sigmas_for, solver_type=o.uni_pc_variant,
                                                    solver_order=int(o.uni_pc_order),
                                                    lower_order_final=bool(o.uni_pc_lower_order_final))
        algorithm = FLOW_ALGORITHMS[sampler]
        if sampler == "DDIM" and o.eta_ddim:
            algorithm = "euler_ancestral"  # DDIM's eta: the RF ancestral step with that eta
        if algorithm == "euler" and schedule_id == "flow":
            return flow_matching.FlowEulerScheduler(shift, seq_len=seq_len)
        model_sigmas = flow_matching.model_sigmas(shift, seq_len)
        known = {**ksampling.ALGORITHMS, **ksampling.FLOW_ALGORITHMS}
        plan = kdiff_plan(algorithm, schedule_id, schedule_id != "flow", o,
                          TrainingSigmas.from_sigmas(model_sigmas),
                          discards_already=known[algorithm].discard_penultimate)
        if plan.schedule_kwargs.get("sigma_max", 0.0) > 1:
            raise RequestError("sigma_max", f"{self.label} models' sigmas end at 1 (pure noise); the schedule's max "
                                            f"sigma {plan.schedule_kwargs['sigma_max']} is an SD one")
        # churn adds k-diffusion's noise (x0 + sigma * noise), not a flow's: it stays off here
        kwargs = {k: v for k, v in plan.algorithm_kwargs.items() if k in ("eta", "s_noise")}
        if sampler == "DDIM":
            kwargs = {"eta": float(o.eta_ddim)} if o.eta_ddim else {}
        return ksampling.KSamplerScheduler(algorithm, schedule_id, prediction_type="flow", flow=(shift, seq_len),
                                           eta=kwargs.get("eta", 1.0), algorithm_kwargs=kwargs,
                                           schedule_kwargs=plan.schedule_kwargs,
                                           discard_penultimate=plan.discard_penultimate)
