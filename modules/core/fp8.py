"""fp8 weight storage (A1111's ``fp8_storage``): the UNet's Linear and Conv weights are kept in
``torch.float8_e4m3fn`` (half of fp16's memory) and cast to the input's dtype (fp16/bf16/fp32) for
each call, so the arithmetic runs in the compute dtype. Biases and norms keep the compute dtype.

``cache_fp16_weight`` keeps a 16-bit copy of each stored weight in RAM (``FP16_COPY`` on the module):
LoRA patches are computed from it and rounded to fp8 once, instead of adding to an already
rounded weight."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

STORAGE_DTYPE = getattr(torch, "float8_e4m3fn", None)
FP16_COPY = "fp16_weight"


def wanted(choice: str, family: str) -> bool:
    if STORAGE_DTYPE is None or choice == "Disable":
        return False
    return choice == "Enable" or (choice == "Enable for SDXL" and family in ("sdxl", "sdxl_refiner"))


def _linear(self, x):
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self.weight.to(x.dtype), bias)


def _conv(self, x):
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return self._conv_forward(x, self.weight.to(x.dtype), bias)


def store(module: torch.nn.Module, compute_dtype: torch.dtype, keep_copy: bool = False) -> int:
    """Store the Linear/Conv2d weights under ``module`` in fp8; returns how many were converted."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            forward = _linear
        elif isinstance(layer, torch.nn.Conv2d):
            forward = _conv
        else:
            continue
        weight = layer.weight
        if keep_copy:
            half = torch.bfloat16 if compute_dtype == torch.bfloat16 else torch.float16
            setattr(layer, FP16_COPY, weight.detach().to("cpu", half, copy=True))
        layer.weight = torch.nn.Parameter(weight.detach().to(STORAGE_DTYPE), requires_grad=False)
        layer.forward = types.MethodType(forward, layer)
        count += 1
    return count


def is_stored(layer: torch.nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dtype == STORAGE_DTYPE


def exact_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The layer's weight in float32 as precisely as it is known: the 16-bit copy when there is one."""
    copy = getattr(layer, FP16_COPY, None)
    return (copy if copy is not None else layer.weight).float()
