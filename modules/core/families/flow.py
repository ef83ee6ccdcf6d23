"""What the flow-matching transformer families (Flux.1, SD3) share: 16-channel latents in 2x2 patches,
a VAE with a shift, companion files for the parts a checkpoint leaves out, Euler on the
flow-matching schedule, and LoRA layer names that fuse several of the model's layers."""

from __future__ import annotations

import torch

from .. import flow_matching, ksampling, ldm_parts, samplers
from ..checkpoint_file import CheckpointFile
from ..checkpoint_shapes import Shapes, UnsupportedCheckpoint, marker_prefix, vae_config
from ..types import RequestError
from .base import ModelFamily

VAE_PREFIXES = ("first_stage_model.", "vae.")
VAE_MARKER = "decoder.conv_in.weight"
CLIP_MARKER = "text_model.embeddings.token_embedding.weight"  # a CLIP text encoder in the HF layout
# A1111 samplers that run on the flow-matching sigmas: Euler (exact), and the deterministic k-diffusion
# algorithms ComfyUI and Forge also run on flow models (ancestral and SDE ones need other noise rules)
SAMPLERS = ("Euler", "Heun", "DPM2", "LMS", "DPM++ 2M")
SCHEDULES = ("Automatic", "Simple")


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
        if sampler not in SAMPLERS:
            raise RequestError("sampler_name", f"{self.label} models sample with {', '.join(SAMPLERS)} here, "
                                               f"not {sampler}")
        if schedule not in SCHEDULES:
            raise RequestError("scheduler", f"{self.label} models use the flow-matching schedule "
                                            f"({' or '.join(SCHEDULES)}), not {schedule}")
        _c, h, w = latent_shape
        shift, seq_len = self.flow_shift(spec), (h // 2) * (w // 2)
        if sampler == "Euler":
            return flow_matching.FlowEulerScheduler(shift, seq_len=seq_len)
        return ksampling.KSamplerScheduler(samplers.get_spec(sampler).kdiff, "flow", prediction_type="flow",
                                           flow=(shift, seq_len))
