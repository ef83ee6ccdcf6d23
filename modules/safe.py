"""A1111's `modules.safe`: its restricted unpickler for `.pt`/`.ckpt` files.

Easel reads pickles with `torch.load(weights_only=True)` (PyTorch's own restricted unpickler), so
`load` is that, and `unsafe_torch_load` is the plain `torch.load` as it was when Easel started (an
extension that swaps `torch.load` for it gets PyTorch's default, `weights_only=True` since 2.6,
unless it passes `weights_only=False` itself).
"""

from __future__ import annotations

import torch

unsafe_torch_load = torch.load


def load(filename, *args, **kwargs):
    kwargs.setdefault("weights_only", True)
    return unsafe_torch_load(filename, *args, **kwargs)


def load_with_extra(filename, extra_handler=None, *args, **kwargs):
    return load(filename, *args, **kwargs)


class Extra:
    """`with safe.Extra(handler):` A1111 lets `handler` allow more classes; Easel's loads are
    weights-only, so the handler is kept and not consulted."""

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        return False
