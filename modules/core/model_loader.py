"""Single checkpoint file -> ready diffusers/transformers modules, offline.

Recipe:
1. open the file lazily and detect the spec from shapes (model_detection);
2. the family builds its parts (``ModelFamily.load_parts``: modules on the meta device from the
   detected configs, tensors assigned, no random init; tokenizers shipped in the repo), with
   companion files for what the checkpoint lacks;
3. settle what the weights cannot say (SD2 v-prediction), move the parts to the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from . import attention, families, fp8
from .checkpoint_file import CheckpointFile
from .devices import DevicePolicy, RunOptions
from .memory import DeviceMemory
from .ldm_parts import TOKENIZER_DIR, load_tokenizer  # noqa: F401 (public here too)
from .model_detection import ModelSpec, detect




@dataclass
class LoadedModel:
    """Everything one checkpoint needs to generate, on its device."""

    path: Path
    spec: ModelSpec
    unet: torch.nn.Module  # the denoiser network (a UNet; Flux: its transformer), A1111's model.diffusion_model
    vae: torch.nn.Module  # AutoencoderKL
    text_encoders: list[torch.nn.Module]
    tokenizers: list  # one per text encoder (CLIP; T5 for Flux)
    policy: DevicePolicy
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    memory: DeviceMemory | None = None  # the owner of device placement (set by load_checkpoint)
    run_options: RunOptions = field(default_factory=RunOptions)  # NaN check, VAE precision, tiling
    memory_policy: str = "all"  # the owner's resolved policy for this model

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def family(self) -> families.ModelFamily:
        return families.get(self.spec.family)

    @property
    def size_multiple(self) -> int:
        """Picture sides must be multiples of this (the VAE's factor, or more for patched latents)."""
        return self.family.size_multiple or self.latent_scale

    @property
    def latent_scale(self) -> int:
        return 2 ** (len(self.spec.vae_config["block_out_channels"]) - 1)


@torch.no_grad()
def probe_v_prediction(unet) -> bool:
    """A1111's test for SD2 checkpoints without a config: a v-model pulls a constant
    grey latent strongly negative at t=999, an epsilon model does not."""
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    ctx = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=p.device, dtype=p.dtype)
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=ctx).sample
    return (out.float() - x.float()).mean().item() < -1


def compile_unet(model: LoadedModel) -> str:
    """--torch-compile: the denoiser's calls go through torch.compile (its weights stay the module's own
    tensors, so LoRA patches, fp8 casts and option changes reach the compiled code; a change torch.compile
    cannot see as the same graph compiles again). Not under --medvram / --lowvram, whose hooks move weights
    between devices during the call. Returns what was done, also kept as ``model.extra["torch_compile"]``."""
    policy = model.policy
    if model.memory_policy != "all":
        done = f"not compiled: the UNet is moved in and out under {model.memory_policy}"
    else:
        kwargs = {"mode": policy.compile_mode} if policy.compile_backend == "inductor" else {}
        model.unet.compile(backend=policy.compile_backend, **kwargs)
        done = f"compiled with torch.compile ({policy.compile_backend})"
    model.extra["torch_compile"] = done
    return done


def load_checkpoint(path: str | Path, policy: DevicePolicy,
                    companions: Callable[[str], Path | None] | None = None, memory: DeviceMemory | None = None,
                    run_options: RunOptions | None = None) -> LoadedModel:
    """Load one single-file checkpoint. Raises CheckpointError / UnsupportedCheckpoint
    (both ValueError) with a message fit for users. ``companions(kind)`` finds the files a
    family may need beside a file that lacks them (Flux: "clip_l", "t5xxl", "vae"), or None.
    ``memory`` places the parts on the device (None: an owner of its own, everything resident);
    ``run_options`` (shared, changed between jobs) says how to run them (None: the defaults)."""
    started = time.perf_counter()
    ckpt = CheckpointFile(path)
    try:
        spec = detect(ckpt.shapes, ckpt.metadata, ckpt.yaml_parameterization())
        parts = families.get(spec.family).load_parts(ckpt, spec, policy, companions or (lambda kind: None))
    finally:
        ckpt.close()
    spec, unet, vae, encoders = parts.spec, parts.denoiser, parts.vae, parts.text_encoders

    if "prediction type undetermined" in spec.notes and spec.unet_config["cross_attention_dim"] == 1024:
        # only meaningful for real-size SD2 weights; small models keep epsilon
        if probe_v_prediction(unet):
            spec = replace(spec, prediction_type="v_prediction", native_size=(768, 768))

    for module in (unet, vae, *encoders):
        module.eval().requires_grad_(False)
    run_options = run_options if run_options is not None else RunOptions()
    stored_fp8 = fp8.wanted(run_options.fp8_storage, spec.family)
    if stored_fp8:
        fp8.store(unet, policy.unet_dtype, keep_copy=run_options.cache_fp16_weight)
    if policy.attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
        vae.enable_xformers_memory_efficient_attention()
    # the option's / flags' attention backend, upcast with upcast_attn or --upcast-sampling on half weights
    attention.apply(unet, spec.family, run_options, half=policy.unet_dtype != torch.float32)
    if policy.device.type == "cpu" and policy.unet_dtype == torch.bfloat16:
        # oneDNN's bf16 convolutions run on channels-last tensors: at 512x512 the UNet's step is 6 % and the
        # VAE's decode 20 % faster than in the contiguous layout (benchmarks/README.md); fp32 keeps the
        # layout diffusers has (bit-identical pictures)
        for module in (unet, vae):
            module.to(memory_format=torch.channels_last)
    model = LoadedModel(Path(path), spec, unet, vae, encoders, parts.tokenizers, policy, 0.0,
                        memory=memory if memory is not None else DeviceMemory(policy.device),
                        run_options=run_options)
    if stored_fp8:  # what A1111's infotext says of it ("FP8 weight", "Cache FP16 weight for LoRA")
        model.extra["fp8_storage"] = (run_options.fp8_storage, bool(run_options.cache_fp16_weight))
    model.memory_policy = model.memory.attach(model)  # the owner moves the parts (nothing else does)
    if policy.compile_backend:
        compile_unet(model)
    model.load_seconds = time.perf_counter() - started
    return model
