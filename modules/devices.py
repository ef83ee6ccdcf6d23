"""A1111's `modules.devices`: the device and dtypes the running server uses, and small helpers.

`device`, `dtype`, `dtype_vae`, `dtype_unet` and `dtype_inference` are read from the running
server's device policy (through modules.shared) each time they are looked up; before the server
exists they are what the default flags would choose. Extensions only read them: Easel's
model cache alone decides where the weights live.
"""

from __future__ import annotations

import contextlib
import gc
import sys

import torch

cpu = torch.device("cpu")
fp8 = False
unet_needs_upcast = False
backends = torch.backends


from modules.core.devices import NansException  # noqa: E402,F401  (the core raises it; extensions catch it here)


def _policy():
    shared = sys.modules.get("modules.shared")
    engine = getattr(shared, "engine", None) if shared is not None else None
    if engine is not None:
        return engine.models.policy
    from modules.core.devices import choose_policy

    return choose_policy()[0]


def __getattr__(name: str):
    # module attributes that follow the running server (only names not defined below get here)
    if name in ("device", "device_interrogate", "device_gfpgan", "device_esrgan", "device_codeformer"):
        return _policy().device
    if name in ("dtype", "dtype_unet", "dtype_inference"):
        return _policy().unet_dtype
    if name == "dtype_vae":
        return _policy().vae_dtype
    raise AttributeError(f"module 'modules.devices' has no attribute '{name}'")


def has_mps() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def has_xpu() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def get_cuda_device_string() -> str:
    device = _policy().device
    return str(device) if device.type == "cuda" else "cuda"


def get_optimal_device_name() -> str:
    return str(_policy().device)


def get_optimal_device() -> torch.device:
    return _policy().device


def get_device_for(task: str) -> torch.device:
    return _policy().device


def torch_gc() -> None:
    """Free what Python and the CUDA caching allocator hold but no longer use."""
    gc.collect()
    if torch.cuda.is_available():
        with torch.cuda.device(get_cuda_device_string()):
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()


def torch_npu_set_device() -> None:
    """A1111 selects an Ascend NPU here; Easel has none."""


def enable_tf32() -> None:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cond_cast_unet(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(_policy().unet_dtype) if unet_needs_upcast else tensor


def cond_cast_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if unet_needs_upcast else tensor


def manual_cast_forward(target_dtype):
    raise NotImplementedError("Easel does not patch modules' forward for manual casting")


@contextlib.contextmanager
def manual_cast(target_dtype):
    yield None


def autocast(disable: bool = False):
    """fp16 autocast on CUDA when the server runs in half precision (A1111); else nothing."""
    policy = _policy()
    if disable or policy.device.type != "cuda" or policy.unet_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=policy.unet_dtype)


def without_autocast(disable: bool = False):
    return torch.autocast("cuda", enabled=False) if torch.is_autocast_enabled() and not disable \
        else contextlib.nullcontext()


def test_for_nans(x: torch.Tensor, where: str) -> None:
    """Raise NansException when `x` is all NaN (A1111's check after the UNet or the VAE), with A1111's
    message; --disable-nan-check turns it off."""
    from modules.core.devices import nans_message

    shared = sys.modules.get("modules.shared")
    if getattr(getattr(shared, "cmd_opts", None), "disable_nan_check", False) is True:
        return
    if not torch.isnan(x).all():
        return
    policy = _policy()
    raise NansException(nans_message(where, policy.unet_dtype != torch.float32, policy.vae_dtype != torch.float32))


def first_time_calculation() -> None:
    """A1111 warms up CUDA here; nothing to do for Easel."""


def randn(seed: int, shape, generator=None) -> torch.Tensor:
    """Seeded CPU noise moved to the device (A1111's older devices.randn)."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, device="cpu").to(_policy().device)


def randn_without_seed(shape, generator=None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device="cpu").to(_policy().device)
