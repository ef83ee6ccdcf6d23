"""Stable Diffusion 3 / 3.5: an MMDiT on 16-channel latents (2x2 patches), conditioned on CLIP-L and
CLIP-G (penultimate layers, side by side, padded to T5's width) followed by T5-XXL's token states, and
on both CLIPs' pooled outputs; rectified flow with a fixed shift of 3.

Files as users have them: Stability's single files (``sd3.5_large.safetensors``: the transformer
under ``model.diffusion_model.`` and the VAE; ``sd3_medium_incl_clips_t5xxlfp8.safetensors``: the text
encoders too, under ``text_encoders.clip_l|clip_g|t5xxl.transformer.``). Missing text encoders come
from companion files (kinds "clip_l", "clip_g", "t5xxl", "sd3_vae"); without any T5-XXL file SD3 runs
as its authors allow, with zeros in T5's place.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from .. import emphasis as emphasis_modes
from .. import flow_matching, ldm_parts, sd3_layout, t5_encoder
from ..checkpoint_shapes import ModelSpec, Shapes, TextEncoderSpec, UnsupportedCheckpoint, hf_clip_config
from ..conditioning import TextConditioner
from ..conditioning_options import ConditioningOptions
from .base import ModelParts, has_prefix
from .flow import CLIP_MARKER, FlowFamily, Sources

PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
            "t5xxl": "text_encoders.t5xxl.transformer."}
VAE_SCALING, VAE_SHIFT = 1.5305, 0.0609
T5_TOKENS = 256  # diffusers' and ComfyUI's default for SD3
NO_T5_TOKENS = 77
COMPANIONS = {"clip_l": "a CLIP-L text encoder (clip_l.safetensors)",
              "clip_g": "a CLIP-G text encoder (clip_g.safetensors)",
              "sd3_vae": "the SD3 VAE"}
# ComfyUI's published latent -> RGB factors for SD3's 16 channels
PREVIEW_FACTORS = ((-0.0645, 0.0177, 0.1052), (0.0028, 0.0312, 0.0650), (0.1848, 0.0762, 0.0360),
                   (0.0944, 0.0360, 0.0889), (0.0897, 0.0506, -0.0364), (-0.0020, 0.1203, 0.0284),
                   (0.0855, 0.0118, 0.0283), (-0.0539, 0.0658, 0.1047), (-0.0057, 0.0116, 0.0700),
                   (-0.0412, 0.0281, -0.0039), (0.1106, 0.1171, 0.1220), (-0.0248, 0.0682, -0.0481),
                   (0.0815, 0.0846, 0.1207), (-0.0120, -0.0055, -0.0867), (-0.0749, -0.0634, -0.0456),
                   (-0.1418, -0.1457, -0.1259))


class SD3(FlowFamily):
    name = "sd3"
    label = "SD3"
    vae_scaling, vae_shift, vae_kind = VAE_SCALING, VAE_SHIFT, "sd3_vae"
    preview_factors = PREVIEW_FACTORS
    embedding_keys = ("clip_l", "clip_g")
    a1111_flags = {"is_sdxl": False, "is_sd2": False, "is_sd1": False, "is_ssd": False, "is_sd3": True}

    def claims(self, shapes: Shapes) -> bool:
        return sd3_layout.find_prefix(shapes) is not None

    def configs(self, shapes: Shapes):
        transformer = sd3_layout.config_from_shapes(shapes, sd3_layout.find_prefix(shapes))
        vae = self.vae_configuration(shapes, self.vae_prefix(shapes))
        if transformer["in_channels"] != vae["latent_channels"]:
            raise UnsupportedCheckpoint(f"the SD3 transformer takes {transformer['in_channels']} channels, "
                                        f"its VAE gives {vae['latent_channels']}")
        return transformer, vae, self.text_encoders(shapes)

    @staticmethod
    def _clip_config(shapes: Shapes, prefix: str, kind: str) -> dict:
        return {**hf_clip_config(shapes, prefix), **({"hidden_act": "gelu"} if kind == "clip_g" else {})}  # bigG: gelu

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        specs = []
        for kind, pad in (("clip_l", "<|endoftext|>"), ("clip_g", "!")):
            prefix = PREFIXES[kind]
            specs.append(TextEncoderSpec(prefix, "hf", self._clip_config(shapes, prefix, kind), True, pad)
                         if has_prefix(shapes, prefix) else TextEncoderSpec("", "hf", {}, True, pad, companion=kind))
        specs.append(TextEncoderSpec(PREFIXES["t5xxl"], "t5", {}, False, "<pad>") if has_prefix(shapes, PREFIXES["t5xxl"])
                     else TextEncoderSpec("", "t5", {}, False, "<pad>", companion="t5xxl"))
        return tuple(specs)

    # -- loading ---------------------------------------------------------------------------------

    def load_parts(self, ckpt, spec: ModelSpec, policy, companions) -> ModelParts:
        from diffusers import SD3Transformer2DModel

        prefix = sd3_layout.find_prefix(ckpt.shapes)
        state = sd3_layout.to_diffusers(ckpt.read_prefix(prefix, policy.unet_dtype), spec.unet_config, prefix)
        transformer = ldm_parts.build(SD3Transformer2DModel, spec.unet_config, state, "SD3 transformer")
        sources = Sources(ckpt, companions, self.label, COMPANIONS)
        notes = spec.notes
        try:
            vae, vae_cfg = self.load_vae(sources, policy)
            encoders, specs = [], []
            for te, kind in zip(spec.text_encoders[:2], ("clip_l", "clip_g")):
                file, te_prefix = sources.get(kind, CLIP_MARKER, None if te.companion else te.prefix)
                te = dataclasses.replace(te, prefix=te_prefix, config=self._clip_config(file.shapes, te_prefix, kind))
                encoders.append(ldm_parts.build_text_encoder(file, te, policy.text_dtype))
                specs.append(te)
            t5_spec = spec.text_encoders[2]
            t5_file, t5_prefix = sources.get("t5xxl", t5_encoder.MARKER, None if t5_spec.companion else t5_spec.prefix,
                                             required=False)
            if t5_file is None:
                t5 = _NoT5(spec.unet_config["joint_attention_dim"])
                notes = notes + ("no T5-XXL text encoder: its part of the context is zeros",)
            else:
                t5 = t5_encoder.build(t5_file, t5_prefix, policy.text_dtype)
                t5_spec = dataclasses.replace(t5_spec, prefix=t5_prefix, config=t5.config.to_dict())
        finally:
            sources.close()
        spec = dataclasses.replace(spec, vae_config=vae_cfg, text_encoders=(*specs, t5_spec), notes=notes)
        tokenizers = [ldm_parts.load_tokenizer("<|endoftext|>"), ldm_parts.load_tokenizer("!"),
                      t5_encoder.load_tokenizer()]
        return ModelParts(spec, transformer, vae, [*encoders, t5], tokenizers)

    # -- conditioning ----------------------------------------------------------------------------

    def context(self, output, encoder, clip_skip: int):
        return output.hidden_states[-2]

    def pooled(self, outputs):
        return torch.cat([p for p in outputs if p is not None], dim=-1)

    def extra_conditioning(self, pooled, rows, width, height, *, negative, options):
        return {"pooled": pooled}

    def conditioner(self, model, **kwargs):
        return SD3Conditioner(model, **kwargs)

    def lora_layers(self, model):
        """kohya's SD3 LoRAs name Stability's layers (``lora_unet_joint_blocks_0_x_block_attn_qkv``):
        fused q/k/v split by rows over the diffusers modules, the rest renamed."""
        return self.lora_pieces(model, *sd3_layout.lora_layers(dict(model.unet.config)))

    # -- sampling --------------------------------------------------------------------------------

    def flow_shift(self, spec) -> flow_matching.FlowShift:
        return flow_matching.FlowShift(shift=3.0, to_training_end=True)

    def denoiser(self, model):
        net, dtype = model.unet, model.policy.unet_dtype

        def call(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            out = net(hidden_states=x.to(dtype), timestep=t.to(dtype), encoder_hidden_states=cond["context"].to(dtype),
                      pooled_projections=cond["pooled"].to(dtype), return_dict=False)[0]
            return out.float()

        return call


class _NoT5(torch.nn.Module):
    """Stands in for a missing T5-XXL: its width, no weights (the context gets zeros there)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width


class SD3Conditioner:
    """CLIP-L and CLIP-G through A1111's prompt handling (chunks, weights, embeddings), then T5."""

    def __init__(self, model, clip_skip: int = 1, emphasis: str = emphasis_modes.ORIGINAL, cache_size: int = 8,
                 embeddings=None, options: ConditioningOptions | None = None, cache: dict | None = None):
        self.model = model
        self.emphasis = emphasis_modes.check(emphasis)
        clips = SimpleNamespace(text_encoders=model.text_encoders[:2], tokenizers=model.tokenizers[:2],
                                family=model.family, device=model.device, spec=model.spec, extra=model.extra)
        self.clip = TextConditioner(clips, clip_skip=clip_skip, emphasis=emphasis, cache_size=cache_size,
                                    embeddings=embeddings, options=options, cache=cache)  # (T5: each time)

    @property
    def emphasis_noted(self) -> bool:
        return self.clip.emphasis_noted

    @property
    def used_embeddings(self) -> dict[str, str]:
        return self.clip.used_embeddings

    def token_count(self, prompt: str, steps: int = 1, is_positive: bool = True) -> tuple[int, int]:
        return self.clip.token_count(prompt, steps, is_positive)

    @torch.no_grad()
    def encode(self, prompts: list[str], width: int, height: int, negative: bool = False) -> dict[str, torch.Tensor]:
        cond = self.clip.encode(prompts, width, height, negative=negative)
        t5 = self.model.text_encoders[2]
        if isinstance(t5, _NoT5):
            t5_states = torch.zeros(len(prompts), NO_T5_TOKENS, t5.width, device=cond["context"].device)
        else:
            t5_states = t5_encoder.encode(t5, self.model.tokenizers[2], prompts, T5_TOKENS, self.emphasis)
        clip_states = cond["context"]
        padded = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
        return {"context": torch.cat([padded, t5_states.to(padded.device)], dim=1), "pooled": cond["pooled"]}
