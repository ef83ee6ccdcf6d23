"""A1111's ``modules.torch_utils`` for extensions: small torch helpers of its public module surface."""

from __future__ import annotations

import torch


def get_param(model) -> torch.nn.Parameter:
    """The first parameter of a module, or of the module a descriptor holds in ``.model`` (spandrel's
    ModelDescriptor, for instance); its dtype and device are what callers read. ValueError when the
    module has none."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "parameters"):
        model = inner
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ValueError(f"No parameters found in model {model!r}")
    return first


def float64(t: torch.Tensor) -> torch.dtype:
    """float64 where the tensor's device computes in it, float32 on MPS and XPU (which have no float64)."""
    return torch.float32 if t.device.type in ("mps", "xpu") else torch.float64
