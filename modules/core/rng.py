"""Seeded noise with A1111's semantics.

Every image owns its seed. Its initial noise comes from a ``torch.Generator`` seeded with that seed
alone, so an image's noise does not depend on the batch size or on its position in the batch, and
with ``source="CPU"`` (the default) not on the machine either. What A1111 calls the randn source:

* ``"CPU"``: generator on the CPU, noise moved to ``device`` afterwards (reproducible everywhere);
* ``"GPU"``: generator on ``device`` itself (faster; results differ between CPU/GPU vendors). As in
  A1111, an Apple (mps) device uses the CPU's, and a CPU-only machine the CPU's too;
* ``"NV"``: NVIDIA's CUDA numbers computed on the CPU (:mod:`.rng_philox`): on any machine a seed's
  initial noise is the one ``torch.randn`` gives on an NVIDIA card; later draws (the per-step
  noise) move the Philox offset on by one each, as A1111's NV does.

Variation seeds ("subseeds") blend the image's noise with a second noise by A1111's ``slerp``.
Seed resize generates the noise at another resolution and pastes it, centred, into the target.

The noise an ancestral/SDE sampler adds at every step also comes from per-image generators
(:func:`step_generators`). A1111 keeps drawing from the generator that made the initial noise; with
``eta_noise_seed_delta`` (ENSD) it starts fresh generators at ``seed + delta`` instead.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import ContextManager, Sequence

import torch
from torch.overrides import TorchFunctionMode

from .rng_philox import PhiloxRandn

RANDN_SOURCES = ("CPU", "GPU", "NV")
LATENT_FACTOR = 8  # pixels per latent cell for SD-family VAEs
MAX_RANDOM_SEED = 4294967294  # A1111 draws -1 seeds from [0, 2**32 - 2)


def fix_seed(seed: int | str | None) -> int:
    """A1111 ``get_fixed_seed``: ``None``, ``""``, ``-1`` (or text that is not a number) -> random."""
    if seed is None or seed == "":
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    seed = int(seed)
    if seed == -1:
        return random.randrange(MAX_RANDOM_SEED)
    return seed


def all_seeds(seed: int, count: int, subseed_strength: float = 0.0) -> list[int]:
    """Seeds for every image of a job (A1111 ``p.all_seeds``).

    ``seed + i`` per image; with a variation strength the main seed stays the same for every image
    and the variation seed is the one that counts up (see :func:`all_subseeds`), exactly as A1111.
    """
    seed = int(seed)
    if subseed_strength != 0:
        return [seed] * count
    return [seed + i for i in range(count)]


def all_subseeds(subseed: int, count: int) -> list[int]:
    """Variation seeds for every image of a job (A1111 ``p.all_subseeds``)."""
    return [int(subseed) + i for i in range(count)]


def _check_source(source: str) -> str:
    if source not in RANDN_SOURCES:
        raise ValueError(f"unknown randn source {source!r}; known: {', '.join(RANDN_SOURCES)}")
    return source


class NVGenerator(torch.Generator):
    """A ``torch.Generator`` whose normal draws are NVIDIA's (the ``"NV"`` source).

    It is a real (CPU) generator, so code that passes generators around — diffusers' schedulers
    included — takes it as one; its ``torch.randn`` draws become Philox draws inside
    :func:`step_noise`. Anything else drawn from it (``torch.randint``, ``rand``) comes from the
    CPU generator underneath, seeded with the same seed, so that stays deterministic too.
    """

    def __new__(cls, seed: int):
        return super().__new__(cls, "cpu")

    def __init__(self, seed: int):
        self.manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
        self.philox = PhiloxRandn(seed)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next draw, float32 on the CPU (each draw, whatever its size, moves the offset by one)."""
        return torch.from_numpy(self.philox.randn(shape))


def _generator(seed: int, device, source: str) -> torch.Generator:
    if source == "NV":
        return NVGenerator(seed)
    gen_device = torch.device("cpu" if source == "CPU" else device)
    if gen_device.type == "mps":  # A1111 draws an Apple GPU's noise on the CPU
        gen_device = torch.device("cpu")
    return torch.Generator(device=gen_device).manual_seed(int(seed))


def _randn(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    if isinstance(generator, NVGenerator):
        return generator.randn(tuple(shape))
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)


class _NVRandn(TorchFunctionMode):
    """Sends ``torch.randn(..., generator=<NVGenerator>)`` to that generator's Philox draws."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if func is not torch.randn or not isinstance(generator, NVGenerator):
            return func(*args, **kwargs)
        if kwargs.get("out") is not None:
            raise NotImplementedError("NV noise cannot be drawn into out=")
        size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
        noise = generator.randn(tuple(int(s) for s in size))
        return noise.to(device=kwargs.get("device") or "cpu", dtype=kwargs.get("dtype") or torch.get_default_dtype())


def step_noise(generators: Sequence[torch.Generator] | None) -> ContextManager:
    """Where a sampler draws its per-step noise from ``generators`` (its ``scheduler.step``): with
    ``"NV"`` generators, their ``torch.randn`` draws are NVIDIA's; otherwise nothing changes."""
    if generators and any(isinstance(g, NVGenerator) for g in generators):
        return _NVRandn()
    return nullcontext()


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation for one image's noise (C, H, W).

    Kept on A1111's axes so variation seeds reproduce its images: the vectors interpolated are the
    columns along dim 1 (one per channel and x position), not the whole tensor. ``val`` 0 -> ``low``,
    1 -> ``high``. When the two are almost parallel A1111 falls back to a linear blend; A1111 swaps
    the weights there (``low * val + high * (1 - val)``), we use the correct ones — the two are
    indistinguishable in that regime because ``low`` and ``high`` nearly coincide.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * (1.0 - val) + high * val
    omega = torch.acos(dot)
    so = torch.sin(omega)
    low_w = (torch.sin((1.0 - val) * omega) / so).unsqueeze(1)
    high_w = (torch.sin(val * omega) / so).unsqueeze(1)
    return low_w * low + high_w * high


def _paste_centred(target: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Put ``patch`` (C, h, w) in the middle of ``target`` (C, H, W), cropping whichever is larger."""
    _, th, tw = target.shape
    _, ph, pw = patch.shape
    dy, dx = (th - ph) // 2, (tw - pw) // 2
    h = ph if dy >= 0 else ph + 2 * dy
    w = pw if dx >= 0 else pw + 2 * dx
    ty, tx = max(dy, 0), max(dx, 0)   # where it lands in the target
    sy, sx = max(-dy, 0), max(-dx, 0)  # where it is taken from in the patch
    target[:, ty:ty + h, tx:tx + w] = patch[:, sy:sy + h, sx:sx + w]
    return target


def create_noise(
    shape: tuple[int, int, int],
    seeds: list[int],
    subseeds: list[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from: tuple[int, int] | None = None,
    device="cpu",
    source: str = "CPU",
) -> torch.Tensor:
    """Initial noise (B, C, H, W) for a batch, image ``i`` from ``seeds[i]`` alone (A1111 ``ImageRNG.first``).

    ``shape`` is the latent (C, H, W). ``subseeds``/``subseed_strength``: variation seed and how far
    to move towards its noise (a missing subseed counts as 0, as in A1111). ``seed_resize_from`` is
    ``(width, height)`` in PIXELS; ``None`` or a non-positive side means no resize. Returned as
    float32 on ``device``.
    """
    _check_source(source)
    if len(shape) != 3:
        raise ValueError(f"shape must be the latent (C, H, W), got {tuple(shape)}")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    shape = tuple(int(s) for s in shape)
    noise_shape = shape
    if seed_resize_from is not None and min(seed_resize_from) > 0:
        from_w, from_h = (int(v) for v in seed_resize_from)
        noise_shape = (shape[0], from_h // LATENT_FACTOR, from_w // LATENT_FACTOR)
    use_subseeds = subseeds is not None and subseed_strength != 0

    images = []
    for i, seed in enumerate(seeds):
        noise = _randn(noise_shape, _generator(seed, device, source))
        if use_subseeds:
            subseed = subseeds[i] if i < len(subseeds) else 0
            subnoise = _randn(noise_shape, _generator(subseed, device, source))
            noise = slerp(subseed_strength, noise, subnoise)
        if noise_shape != shape:
            # the uncovered border keeps the image's own noise at the target size
            noise = _paste_centred(_randn(shape, _generator(seed, device, source)), noise)
        images.append(noise)
    return torch.stack(images).to(device)


def step_generators(
    seeds: list[int],
    eta_noise_seed_delta: int = 0,
    device="cpu",
    *,
    shape: tuple[int, int, int] | None = None,
    source: str = "CPU",
) -> list[torch.Generator]:
    """One generator per image for the noise a sampler adds inside the loop.

    A1111: with ENSD == 0 the image's generator simply carries on after drawing the initial noise,
    so ``shape`` (the latent C, H, W) is required then and the generator is advanced past one draw
    of it — otherwise the first step's noise would repeat the initial noise. With ENSD != 0 each
    generator starts fresh at ``seed + eta_noise_seed_delta`` and ``shape`` is not needed.
    """
    _check_source(source)
    generators = []
    for seed in seeds:
        if eta_noise_seed_delta:
            generators.append(_generator(int(seed) + int(eta_noise_seed_delta), device, source))
            continue
        if shape is None:
            raise ValueError(
                "step_generators needs the latent shape when eta_noise_seed_delta is 0: A1111 continues "
                "the generator that drew the initial noise, so that draw must be skipped"
            )
        generator = _generator(seed, device, source)
        if isinstance(generator, NVGenerator):
            generator.philox.skip()  # a Philox draw's size does not move the generator
        else:
            _randn(shape, generator)
        generators.append(generator)
    return generators
