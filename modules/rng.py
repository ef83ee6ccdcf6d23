"""A1111's `modules.rng`: seeded noise, from Easel's (modules.core.rng), with the `randn_source`
setting (CPU / GPU / NV) and the device the server runs on."""

from __future__ import annotations

import torch

from modules import shared
from modules.core import rng as _core


def _source() -> str:
    return str(shared.opts.data.get("randn_source") or "GPU")


def _device():
    source = _source()
    return torch.device("cpu") if source in ("CPU", "NV") else shared.device


def randn(seed, shape, generator=None):
    """Noise of `shape` from `seed` (A1111's per-image noise)."""
    noise = _core.create_noise(tuple(shape), [int(seed)], device=_device(), source=_source())[0]
    return noise.to(shared.device)


def randn_local(seed, shape):
    """As randn, without touching any global generator."""
    return randn(seed, shape)


def randn_like(x):
    return torch.randn(x.shape, device=x.device, dtype=x.dtype)


def randn_without_seed(shape, generator=None):
    if generator is not None:
        return torch.randn(shape, generator=generator, device=generator.device).to(shared.device)
    return torch.randn(shape, device=shared.device)


def manual_seed(seed):
    torch.manual_seed(int(seed))


def create_generator(seed):
    return torch.Generator(_device()).manual_seed(int(seed))


slerp = _core.slerp


class ImageRNG:
    """Noise for a batch: `first()` the initial noise (variation seeds and seed resize applied),
    `next()` more noise for ancestral steps (A1111)."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = [int(s) for s in seeds]
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.generators = [create_generator(seed) for seed in self.seeds]
        self.is_first = True

    def first(self):
        resize = (self.seed_resize_from_w, self.seed_resize_from_h) if self.seed_resize_from_h and self.seed_resize_from_w else None
        noise = _core.create_noise(self.shape, self.seeds, list(self.subseeds or []) or None, self.subseed_strength,
                                   resize, device=_device(), source=_source())
        return noise.to(shared.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        xs = [torch.randn(self.shape, generator=g, device=g.device) for g in self.generators]
        return torch.stack(xs).to(shared.device)


