"""Where each component runs and in which precision, decided once from the flags.

A1111's rules: CUDA when present with fp16 weights by default (`--no-half` and
`--precision full` keep fp32, `--no-half-vae` keeps the VAE in fp32); CPU otherwise;
`--use-cpu all` forces the CPU. On the CPU A1111 computes in fp32; Easel computes in bf16 when
the CPU has native bf16 instructions (AVX512-BF16 or AMX on x86, BF16 on Arm) and no flag asks
otherwise (`--precision full` or `--no-half` keep fp32, `--precision half` asks for bf16 anywhere):
a 512x512 generation about 2x faster than fp32 at 47.9 dB PSNR from it (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FP8_CHOICES = ("Disable", "Enable", "Enable for SDXL")  # A1111's fp8_storage
VAE_TILING_CHOICES = ("Automatic", "Always", "Never")


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype
    attention: str = "sdpa"  # "sdpa" (PyTorch) or "xformers"
    compile_backend: str | None = None  # --torch-compile: torch.compile's backend for the UNet; None: not compiled
    compile_mode: str = "default"  # inductor's mode

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        return (
            f"device {self.device}, UNet {names[self.unet_dtype]}, text encoder {names[self.text_dtype]}, "
            f"VAE {names[self.vae_dtype]}, attention {self.attention}"
            + (f", UNet compiled ({self.compile_backend}, {self.compile_mode})" if self.compile_backend else "")
        )


@dataclass
class RunOptions:
    """What the services set from flags and options and the core reads while it runs a model
    (one object per model cache, shared by its models; changed between jobs, read during them)."""

    nan_check: bool = True  # A1111's check after the UNet and the VAE; --disable-nan-check: off
    auto_vae_precision: bool = True  # A1111's auto_vae_precision: a VAE giving NaN retries in fp32
    vae_tiling: str = "Automatic"  # VAE_TILING_CHOICES: tiles when the picture would not fit
    vae_tile_size: int = 512  # pixels per tile side (decode); 64 latents
    vae_tile_overlap: int = 64  # pixels shared by neighbouring tiles, blended
    fp8_storage: str = "Disable"  # FP8_CHOICES: UNet weights stored in float8_e4m3fn (on load)
    cache_fp16_weight: bool = False  # keep a 16-bit copy of fp8 weights, LoRA patches it exactly
    upcast_sampling: bool = False  # --upcast-sampling: half weights, fp32 attention and latents
    # the UNet's attention (modules.core.attention): the backend chosen from the option and the flags,
    # A1111's upcast_attn, the flags' backends (priority order), --disable-opt-split-attention, --sub-quad-*
    attention: str = "sdp"
    upcast_attn: bool = False
    attention_flags: tuple = ()
    attention_disabled: bool = False
    sub_quadratic: object = None  # attention.SubQuadratic (None: its defaults)
    # sd_vae_encode_method / sd_vae_decode_method: "Full" (the VAE) or "TAESD" (modules.core.model_ops);
    # taesd(family, "encoder" | "decoder") gives TAESD's part (services.model_cache.TaesdParts)
    vae_encode_method: str = "Full"
    vae_decode_method: str = "Full"
    taesd: object = None
    disable_mmap_load_safetensors: bool = False  # disable_mmap_load_safetensors: a checkpoint read whole


class NansException(Exception):
    """A1111's ``devices.NansException``: a model part gave nothing but NaN."""


def nans_message(where: str, half_unet: bool, half_vae: bool) -> str:
    """A1111's words for a NaN-only tensor from the UNet (``where="unet"``) or the VAE."""
    if where == "unet":
        message = "A tensor with all NaNs was produced in Unet."
        if half_unet:
            message += (" This could be either because there's not enough precision to represent the picture, or "
                        "because your video card does not support half type. Try setting the \"Upcast cross "
                        "attention layer to float32\" option in Settings > Stable Diffusion or using the --no-half "
                        "commandline argument to fix this.")
    elif where == "vae":
        message = "A tensor with all NaNs was produced in VAE."
        if half_vae:
            message += (" This could be because there's not enough precision to represent the picture. Try adding "
                        "--no-half-vae commandline argument to fix this.")
    else:
        message = "A tensor with all NaNs was produced."
    return message + " Use --disable-nan-check commandline argument to disable this check."


VAE_FP32_RETRY_MESSAGE = ("A tensor with all NaNs was produced in VAE.\n"
                          "Web UI will now convert VAE into 32-bit float and retry.\n"
                          "To disable this behavior, disable the 'Automatically revert VAE to 32-bit floats' setting.\n"
                          "To always start with 32-bit VAE, use --no-half-vae commandline flag.")


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles on x86, the BF16 extension
    on Arm): there bf16 matrix products run at about twice fp32's speed; elsewhere they are emulated."""
    try:
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True
    except AttributeError:  # torch's private probes moved: read the kernel's flags instead
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))


def compile_backend_problem(backend: str) -> str | None:
    """Why ``backend`` cannot be torch.compile's (--torch-compile-backend), or None."""
    import torch._dynamo

    known = sorted(torch._dynamo.list_backends(exclude_tags=()))
    if backend in known:
        return None
    return f"--torch-compile-backend {backend!r} is not a torch.compile backend; one of: {', '.join(known)}"


def choose_policy(
    use_cpu: list[str] | None = None,
    no_half: bool = False,
    no_half_vae: bool = False,
    precision: str = "autocast",
    xformers: bool = False,
    device_id: int | None = None,
    native_bf16: bool | None = None,
    compile_backend: str | None = None,
    compile_mode: str = "default",
) -> tuple[DevicePolicy, list[str]]:
    """Returns the policy and human-readable notes to print at start-up. ``native_bf16``: whether
    the CPU has native bf16 (None: ask the CPU); it decides the CPU's default precision."""
    notes: list[str] = []
    force_cpu = bool(use_cpu) and any(x in ("all", "sd", "unet") for x in use_cpu)
    if torch.cuda.is_available() and not force_cpu:
        device = torch.device("cuda", device_id) if device_id is not None else torch.device("cuda")
        half = not no_half and precision != "full"
        dtype = torch.float16 if half else torch.float32
        vae_dtype = torch.float32 if (no_half_vae or not half) else torch.float16
    else:
        device = torch.device("cpu")
        dtype = vae_dtype = torch.float32
        why = "--precision half"
        if precision == "autocast" and not no_half:
            native_bf16 = cpu_native_bf16() if native_bf16 is None else native_bf16
            why = "the CPU has native bf16; --precision full keeps fp32"
        if not no_half and (precision == "half" or (precision == "autocast" and native_bf16)):
            # CPUs have no fast fp16 kernels; bf16 halves memory and, with native bf16, runs the
            # UNet about 2x faster at 47.9 dB from fp32 (measured: benchmarks/README.md)
            dtype = torch.bfloat16
            # bf16 has fp32's exponent range: no fp16-style VAE overflow to NaN
            vae_dtype = torch.float32 if no_half_vae else torch.bfloat16
        if not torch.cuda.is_available():
            notes.append("no CUDA device found: running on the CPU"
                         + (f" in bf16 ({why})" if dtype == torch.bfloat16 else " in fp32"))
    attention = "sdpa"
    if xformers:
        if device.type == "cuda" and xformers_available():
            attention = "xformers"
        elif device.type != "cuda":
            notes.append("--xformers ignored: xformers only runs on CUDA; using PyTorch SDPA attention")
        else:
            notes.append("--xformers given but xformers is not installed (pip install xformers); using PyTorch SDPA attention")
    if compile_backend and device.type != "cuda":
        notes.append(f"--torch-compile on the {device.type}: each new picture size compiles first "
                     f"({compile_backend}{' needs a C++ compiler' if compile_backend == 'inductor' else ''})")
    return DevicePolicy(device, dtype, dtype, vae_dtype, attention, compile_backend, compile_mode), notes
