"""Where each component runs and in which precision, decided once from the flags.

A1111's rules: CUDA when present with fp16 weights by default (`--no-half` and
`--precision full` keep fp32, `--no-half-vae` keeps the VAE in fp32); CPU otherwise,
in fp32; `--use-cpu all` forces the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype
    attention: str = "sdpa"  # "sdpa" (PyTorch) or "xformers"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        return (
            f"device {self.device}, UNet {names[self.unet_dtype]}, text encoder {names[self.text_dtype]}, "
            f"VAE {names[self.vae_dtype]}, attention {self.attention}"
        )


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def choose_policy(
    use_cpu: list[str] | None = None,
    no_half: bool = False,
    no_half_vae: bool = False,
    precision: str = "autocast",
    xformers: bool = False,
    device_id: int | None = None,
) -> tuple[DevicePolicy, list[str]]:
    """Returns the policy and human-readable notes to print at start-up."""
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
        if precision == "half" and not no_half:
            # CPUs have no fast fp16 kernels; bf16 halves memory and, with AVX512-BF16/AMX,
            # roughly doubles UNet speed. Opt-in: A1111 users expect exact fp32 on the CPU.
            dtype = torch.bfloat16
            # bf16 has fp32's exponent range: no fp16-style VAE overflow to NaN
            vae_dtype = torch.float32 if no_half_vae else torch.bfloat16
        if not torch.cuda.is_available():
            notes.append("no CUDA device found: running on the CPU" + (" in bf16 (--precision half)" if dtype == torch.bfloat16 else " in fp32"))
    attention = "sdpa"
    if xformers:
        if device.type == "cuda" and xformers_available():
            attention = "xformers"
        elif device.type != "cuda":
            notes.append("--xformers ignored: xformers only runs on CUDA; using PyTorch SDPA attention")
        else:
            notes.append("--xformers given but xformers is not installed (pip install xformers); using PyTorch SDPA attention")
    return DevicePolicy(device, dtype, dtype, vae_dtype, attention), notes
