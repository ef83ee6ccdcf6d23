"""Flux.1 (dev and schnell): a rectified-flow transformer on 16-channel latents, conditioned on T5-XXL
token states and the pooled CLIP-L text, with dev's distilled guidance as an input of the model.

Files as users have them: Black Forest Labs' transformer-only file (``flux1-dev.safetensors``, keys
``double_blocks.*``), or the same under ``model.diffusion_model.`` with the VAE
(``first_stage_model.`` / ``vae.``) and the text encoders (``text_encoders.clip_l.transformer.``,
``text_encoders.t5xxl.transformer.``) in one file (Forge / ComfyUI all-in-one, also fp8). What the
checkpoint lacks comes from companion files (``models/text_encoder``, ``models/clip``,
``models/VAE``), found by the caller (kinds "clip_l", "t5xxl", "flux_vae").

Sampling: the denoiser sees 2x2 patches of the latents as tokens and the timestep as sigma; the
schedule is the flow-matching one (``modules.core.flow_matching``) with Flux's shift: dev's grows
with the picture's size, schnell's is 1. Guidance: dev takes "Distilled CFG Scale" (3.5) as an
input and runs with CFG scale 1 (no negative pass); a CFG scale above 1 adds a real negative pass.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import emphasis as emphasis_modes
from .. import flow_matching, flux_layout, ldm_parts, lora, prompt_parser, t5_encoder
from ..checkpoint_shapes import ModelSpec, Shapes, TextEncoderSpec, UnsupportedCheckpoint, hf_clip_config
from ..conditioning_options import ConditioningOptions
from .base import ModelParts, has_prefix
from .flow import CLIP_MARKER, FlowFamily, Sources

CLIP_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
VAE_SCALING, VAE_SHIFT = 0.3611, 0.1159
COMPANIONS = {"clip_l": "a CLIP-L text encoder (clip_l.safetensors)",
              "t5xxl": "a T5-XXL text encoder (t5xxl_fp16.safetensors or an fp8 one)",
              "flux_vae": "the Flux VAE (ae.safetensors)"}
# ComfyUI's published latent -> RGB factors for Flux's 16 channels (cheap previews)
PREVIEW_FACTORS = ((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
                   (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
                   (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
                   (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
                   (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
                   (-0.1262, -0.0982, -0.0778))


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _n, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device) -> torch.Tensor:
    """Each patch's (0, row, column), the rotary positions of the picture tokens."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


class Flux(FlowFamily):
    name = "flux"
    label = "Flux.1"
    vae_scaling, vae_shift, vae_kind = VAE_SCALING, VAE_SHIFT, "flux_vae"
    preview_factors = PREVIEW_FACTORS
    a1111_flags = {"is_sdxl": False, "is_sd2": False, "is_sd1": False, "is_ssd": False, "is_flux": True}

    # -- detection -------------------------------------------------------------------------------

    def claims(self, shapes: Shapes) -> bool:
        return flux_layout.find_prefix(shapes) is not None

    def configs(self, shapes: Shapes):
        transformer = flux_layout.config_from_shapes(shapes, flux_layout.find_prefix(shapes))
        vae = self.vae_configuration(shapes, self.vae_prefix(shapes))
        if transformer["in_channels"] != 4 * vae["latent_channels"]:
            raise UnsupportedCheckpoint(f"the Flux transformer takes {transformer['in_channels']} channels, "
                                        f"its VAE gives {vae['latent_channels']} per patch of 4")
        return transformer, vae, self.text_encoders(shapes)

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        clip = (TextEncoderSpec(CLIP_PREFIX, "hf", hf_clip_config(shapes, CLIP_PREFIX), False, "<|endoftext|>")
                if has_prefix(shapes, CLIP_PREFIX) else
                TextEncoderSpec("", "hf", {}, False, "<|endoftext|>", companion="clip_l"))
        t5 = (TextEncoderSpec(T5_PREFIX, "t5", {}, False, "<pad>") if has_prefix(shapes, T5_PREFIX) else
              TextEncoderSpec("", "t5", {}, False, "<pad>", companion="t5xxl"))
        return clip, t5

    # -- loading ---------------------------------------------------------------------------------

    def load_parts(self, ckpt, spec: ModelSpec, policy, companions) -> ModelParts:
        from diffusers import FluxTransformer2DModel

        prefix = flux_layout.find_prefix(ckpt.shapes)
        state = flux_layout.to_diffusers(ckpt.read_prefix(prefix, policy.unet_dtype), spec.unet_config, prefix)
        transformer = ldm_parts.build(FluxTransformer2DModel, spec.unet_config, state, "Flux transformer")
        sources = Sources(ckpt, companions, self.label, COMPANIONS)
        try:
            vae, vae_cfg = self.load_vae(sources, policy)
            clip_spec, t5_spec = spec.text_encoders
            clip_file, clip_prefix = sources.get("clip_l", CLIP_MARKER, None if clip_spec.companion else CLIP_PREFIX)
            clip_spec = dataclasses.replace(clip_spec, prefix=clip_prefix,
                                            config=hf_clip_config(clip_file.shapes, clip_prefix))
            clip = ldm_parts.build_text_encoder(clip_file, clip_spec, policy.text_dtype)
            t5_file, t5_prefix = sources.get("t5xxl", t5_encoder.MARKER, None if t5_spec.companion else T5_PREFIX)
            t5 = t5_encoder.build(t5_file, t5_prefix, policy.text_dtype)
            t5_spec = dataclasses.replace(t5_spec, prefix=t5_prefix, config=t5.config.to_dict())
        finally:
            sources.close()
        spec = dataclasses.replace(spec, vae_config=vae_cfg, text_encoders=(clip_spec, t5_spec))
        tokenizers = [ldm_parts.load_tokenizer("<|endoftext|>"), t5_encoder.load_tokenizer()]
        return ModelParts(spec, transformer, vae, [clip, t5], tokenizers)

    # -- conditioning ----------------------------------------------------------------------------

    def conditioner(self, model, **kwargs):
        return FluxConditioner(model, **kwargs)

    def uses_distilled_guidance(self, model) -> bool:
        return bool(model.unet.config.guidance_embeds)

    def lora_layers(self, model):
        """Flux LoRAs name BFL's layers (kohya: ``lora_unet_double_blocks_0_img_attn_qkv``): fused q/k/v
        (and the single blocks' q/k/v/MLP) split by rows over the diffusers modules, the rest renamed."""
        config = dict(model.unet.config)
        fused = [(bfl, parts) for bfl, parts, _sizes in flux_layout.fused_layers(config)]
        return self.lora_pieces(model, fused, flux_layout.renamed_layers(config))

    # -- sampling --------------------------------------------------------------------------------

    def flow_shift(self, spec) -> flow_matching.FlowShift:
        # dev (guidance-distilled) grows the shift with the picture's size; schnell keeps 1
        if spec.unet_config.get("guidance_embeds", False):
            return flow_matching.FlowShift(dynamic=True)
        return flow_matching.FlowShift(shift=1.0)

    def denoiser(self, model):
        net, dtype = model.unet, model.policy.unet_dtype
        guided = bool(net.config.guidance_embeds)

        def call(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            _b, _c, h, w = x.shape
            context = cond["context"]
            out = net(hidden_states=pack(x).to(dtype), timestep=(t / 1000).to(dtype),
                      guidance=cond["guidance"].float() if guided else None,
                      pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=context.to(dtype),
                      txt_ids=torch.zeros(context.shape[1], 3, device=x.device), img_ids=image_ids(h, w, x.device),
                      return_dict=False)[0]
            return unpack(out.float(), h, w)

        return call


class FluxConditioner:
    """Prompts -> Flux's conditioning: T5 token states (padded to 512 tokens for dev, 256 for schnell,
    as the models were trained), the pooled CLIP-L output of the prompt's first 75 tokens, and the
    distilled guidance. Prompt weights scale the T5 states as A1111's emphasis modes say."""

    def __init__(self, model, clip_skip: int = 1, emphasis: str = emphasis_modes.ORIGINAL, cache_size: int = 8,
                 embeddings=None, options: ConditioningOptions | None = None, cache: dict | None = None):
        self.model = model
        self.emphasis = emphasis_modes.check(emphasis)
        self.emphasis_noted = False
        self.used_embeddings: dict[str, str] = {}  # textual inversion does not apply to Flux's encoders
        self.options = options or ConditioningOptions()
        self.length = 512 if model.unet.config.guidance_embeds else 256
        self._cache: dict[tuple, dict] = cache if cache is not None else {}  # (conditioning.persistent_cache)
        self._cache_size = cache_size

    def _clip_tokens(self, text: str) -> list[int]:
        tokenizer = self.model.tokenizers[0]
        plain = "".join(piece for piece, weight in prompt_parser.parse_prompt_attention(text)
                        if not (piece == "BREAK" and weight == -1))
        ids = tokenizer(plain, add_special_tokens=False)["input_ids"][:75]
        return [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id] * (76 - len(ids))

    @torch.no_grad()
    def encode(self, prompts: list[str], width: int, height: int, negative: bool = False) -> dict[str, torch.Tensor]:
        if self.emphasis != emphasis_modes.ORIGINAL and any("(" in p or "[" in p for p in prompts):
            self.emphasis_noted = True
        key = ("flux", tuple(prompts), self.emphasis, self.options.distilled_guidance, lora.active_key(self.model))
        if key in self._cache:
            return self._cache[key]
        device = self.model.device
        clip, t5 = self.model.text_encoders
        hidden = t5_encoder.encode(t5, self.model.tokenizers[1], prompts, self.length, self.emphasis)
        pooled = clip(input_ids=torch.tensor([self._clip_tokens(p) for p in prompts], device=device)).pooler_output
        cond = {"context": hidden, "pooled": pooled.float(),
                "guidance": torch.full((len(prompts),), float(self.options.distilled_guidance), device=device)}
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = cond
        return cond

    def token_count(self, prompt: str, steps: int = 1, is_positive: bool = True) -> tuple[int, int]:
        texts = [text for text, _ in prompt_parser.split_and(prompt)] if is_positive else [prompt]
        used = 0
        for schedule in prompt_parser.prompt_schedules(texts, max(1, int(steps))):
            for _, text in schedule:
                ids, _w = t5_encoder.tokens(self.model.tokenizers[1], text, self.length, self.emphasis)
                used = max(used, ids.index(self.model.tokenizers[1].eos_token_id))
        return used, self.length - 1
