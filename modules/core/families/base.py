"""What a model family is: everything the loader, the conditioning and the sampler need to know about
one kind of checkpoint, in one object. The pipeline asks the family; it never tests which one it has.

A family subclasses :class:`ModelFamily` in a module of its own and is listed once in
``modules.core.families`` (the registry). Its parts:

- **detection**: ``claims(shapes)`` says whether a state dict is this family's (the registry asks the
  families in order); ``text_encoders(shapes)`` and ``attention_heads(...)`` supply what the shapes
  alone cannot say; ``checks(...)`` refuses a file whose parts do not fit together;
- **loading**: native size, VAE scaling, how the prediction type is settled when nothing says;
- **conditioning**: which hidden state of each text encoder is the context, and the extra tensors
  the denoiser needs beside it (SDXL: pooled text and the size/crop/score ids);
- **sampling**: the denoiser call (latents, timestep, cond dict -> the model's raw prediction), the
  schedule knots some schedule types use, the latent -> RGB factors of cheap previews;
- **A1111 surface**: the ``is_sdxl``-style flags extensions read, the textual-inversion keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import ldm_parts, samplers
from ..conditioning import TextConditioner
from ..conditioning_options import ConditioningOptions
from ..checkpoint_shapes import (UNET_PREFIX, ModelSpec, Shapes, TextEncoderSpec, UnsupportedCheckpoint, unet_config,
                                 vae_config)

# rows: latent channels, columns: R, G, B (published "Approx cheap" factors)
SD_PREVIEW_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))

Denoiser = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


@dataclass
class ModelParts:
    """What ``load_parts`` builds from a checkpoint (still on the CPU)."""

    spec: ModelSpec  # the detected spec, completed with what companion files said
    denoiser: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list


class ModelFamily:
    name = ""  # the registry key, ModelSpec.family
    label = ""  # for people: "SDXL"
    native_side = 512
    vae_scaling = 0.18215
    schedule_knots = "sd1"  # which published sigma knots schedule types such as Align Your Steps use
    preview_factors = SD_PREVIEW_FACTORS
    embedding_keys: tuple[str, ...] = ()  # per-encoder keys of textual-inversion files (SDXL: clip_l, clip_g)
    a1111_flags: dict[str, bool] = {}  # shared.sd_model.is_sdxl etc.
    can_probe_v_prediction = False  # SD2: a UNet test settles epsilon vs v when nothing says
    default_prediction = "epsilon"  # when nothing in or beside the file says ("flow" for flow models)
    sampler_names: tuple[str, ...] | None = None  # the A1111 samplers it runs (None: all)
    size_multiple: int | None = None  # pictures' sides are multiples of this (None: the VAE's factor)

    # -- detection -------------------------------------------------------------------------------

    def claims(self, shapes: Shapes) -> bool:
        raise NotImplementedError

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        raise NotImplementedError

    def attention_heads(self, block_out_channels: list[int]) -> int | list[int]:
        """diffusers' ``attention_head_dim`` (which means heads): 64-channel heads by default."""
        return [max(1, c // 64) for c in block_out_channels]

    def checks(self, unet_config: dict, vae_config: dict, encoders: tuple[TextEncoderSpec, ...]) -> None:
        context = sum(e.config["hidden_size"] for e in encoders)
        if unet_config["cross_attention_dim"] != context:
            raise UnsupportedCheckpoint(f"UNet expects {unet_config['cross_attention_dim']}-wide text context "
                                        f"but the text encoder(s) give {context}")
        if unet_config["in_channels"] not in (4, 8, 9) or vae_config["latent_channels"] != 4:
            raise UnsupportedCheckpoint(f"unsupported UNet input of {unet_config['in_channels']} channels")

    def native_size(self, prediction_type: str | None) -> tuple[int, int]:
        return self.native_side, self.native_side

    def configs(self, shapes: Shapes) -> tuple[dict, dict, tuple[TextEncoderSpec, ...]]:
        """(denoiser config, VAE config, text encoders) from the shapes: the LDM UNet layout."""
        unet = unet_config(shapes, self.attention_heads)
        vae = vae_config(shapes, self.vae_scaling)
        encoders = self.text_encoders(shapes)
        self.checks(unet, vae, encoders)
        return unet, vae, encoders

    # -- loading ---------------------------------------------------------------------------------

    def load_parts(self, ckpt, spec: ModelSpec, policy, companions) -> ModelParts:
        """Build the modules from one LDM single file (UNet, VAE, CLIP encoders)."""
        unet = ldm_parts.build_unet(ckpt, spec, policy.unet_dtype)
        vae = ldm_parts.build_vae(ckpt, spec, policy.vae_dtype)
        encoders = [ldm_parts.build_text_encoder(ckpt, te, policy.text_dtype) for te in spec.text_encoders]
        tokenizers = [ldm_parts.load_tokenizer(te.pad_token) for te in spec.text_encoders]
        return ModelParts(spec, unet, vae, encoders, tokenizers)

    # -- conditioning ----------------------------------------------------------------------------

    def conditioner(self, model, **kwargs):
        """The prompt encoder for this family (``encode(prompts, width, height, negative)``)."""
        return TextConditioner(model, **kwargs)

    def uses_distilled_guidance(self, model) -> bool:
        """Whether the model takes a distilled guidance scale as an input (Flux dev)."""
        return False

    def context(self, output, encoder, clip_skip: int) -> torch.Tensor:
        """The hidden state of one text encoder's output that becomes (part of) the context."""
        return output.last_hidden_state

    def context_for(self, output, encoder, clip_skip: int, options) -> torch.Tensor:
        """`context` with the job's ConditioningOptions (a family that reads one overrides this)."""
        return self.context(output, encoder, clip_skip)

    def pooled(self, outputs: list[torch.Tensor | None]) -> torch.Tensor | None:
        """The pooled text of a chunk from each encoder's (None where it has none): the last one's."""
        found = [p for p in outputs if p is not None]
        return found[-1] if found else None

    def extra_conditioning(self, pooled: torch.Tensor | None, rows: int, width: int, height: int, *,
                           negative: bool, options: ConditioningOptions) -> dict[str, torch.Tensor]:
        """Tensors beside the context (none for SD1/SD2)."""
        return {}

    def lora_layers(self, model) -> dict[str, list[tuple[torch.nn.Module, int, int]]]:
        """LoRA layer names (flattened with ``_``) that stand for several modules here, with the rows of
        the file's layer each one takes (Flux's fused q/k/v); none for the LDM UNet families."""
        return {}

    # -- sampling --------------------------------------------------------------------------------

    def build_scheduler(self, sampler: str, schedule: str, spec, latent_shape: tuple[int, ...], options=None):
        """A fresh scheduler for an A1111 sampler and schedule type (``options``: A1111's sampler
        parameters); ``latent_shape`` is one picture's (C, H, W)."""
        return samplers.build_scheduler(sampler, schedule, prediction_type=spec.prediction_type,
                                        rescale_betas_zero_snr=spec.zero_terminal_snr, options=options,
                                        model_family=self.schedule_knots)

    def added_cond(self, cond: dict, dtype: torch.dtype) -> dict | None:
        """The UNet's ``added_cond_kwargs`` from a cond dict (None: the UNet takes none)."""
        return None

    def denoiser(self, model, residuals=None) -> Denoiser:
        """``call(x, t, cond)``: the model's raw prediction in float32. Inpainting UNets get the
        cond's ``c_concat`` (mask + masked picture) beside the latents. ``residuals(x, t, cond)``
        (ControlNet) gives extra UNet keyword arguments, from the latents without ``c_concat``."""
        unet, dtype = model.unet, model.policy.unet_dtype

        def call(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            extra = residuals(x, t, cond) if residuals is not None else {}
            if "c_concat" in cond:
                x = torch.cat([x, cond["c_concat"]], dim=1)
            out = unet(x.to(dtype), t, encoder_hidden_states=cond["context"].to(dtype),
                       added_cond_kwargs=self.added_cond(cond, dtype), **extra)
            return out.sample.float()

        return call


def core_text_model(encoder):
    """transformers 5 flattened CLIPTextModel; the projection model still wraps it."""
    return encoder.text_model if hasattr(encoder, "text_model") else encoder


def has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def has_unet(shapes: Shapes) -> bool:
    """The LDM layout's UNet (model.diffusion_model.input_blocks...), which SD1/SD2/SDXL files hold."""
    return any(k.startswith(UNET_PREFIX + "input_blocks.") for k in shapes)
