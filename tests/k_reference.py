"""The k-diffusion reference the sampler tests share: k-diffusion's ``sampling`` and ``external``
modules loaded under a private name (its ``__init__`` imports training code: torchvision, kornia,
wandb ...), a toy eps model, seeded noise and generators, Easel's whole sampling path on them, and
the fixtures (one thread; the k-diffusion modules; SD's training sigmas)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from modules.core import denoise, samplers
from modules.core.sigma_schedules import TrainingSigmas

TOL = 2e-4  # max abs difference on latents of size ~1..15 (float32 rounding, ~1e-6 relative)
SHAPE = (2, 4, 8, 8)
SEEDS = [1234, 98765]
STEPS = 7


def _load_k_diffusion():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install -r requirements-test.txt)")
    root = Path(list(spec.submodule_search_locations)[0])
    name = "_easel_kdiffusion_reference"
    if name in sys.modules:
        return sys.modules[name + ".sampling"], sys.modules[name + ".external"]
    package = types.ModuleType(name)
    package.__path__ = [str(root)]
    utils = types.ModuleType(name + ".utils")  # all sampling/external use of utils: append_dims

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    sys.modules[name], sys.modules[name + ".utils"] = package, utils
    package.utils = utils
    loaded = []
    for sub in ("sampling", "external"):
        sub_spec = importlib.util.spec_from_file_location(f"{name}.{sub}", root / f"{sub}.py")
        module = importlib.util.module_from_spec(sub_spec)
        sys.modules[f"{name}.{sub}"] = module
        sub_spec.loader.exec_module(module)
        setattr(package, sub, module)
        loaded.append(module)
    return loaded


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is shared; tiny tensors gain nothing from more
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kd():
    sampling, external = _load_k_diffusion()
    return types.SimpleNamespace(sampling=sampling, external=external)


@pytest.fixture(scope="module")
def training():
    return TrainingSigmas.from_config(**samplers.SD_TRAINING_SCHEDULE)


def eps_model(x_in, t, cond=None):
    """A smooth, deterministic stand-in for a UNet: eps from the scaled input and the timestep."""
    t = t.view(-1, *([1] * (x_in.ndim - 1))).to(x_in.dtype)
    return torch.tanh(0.8 * x_in + 0.3) * (0.6 + t / 2000) - 0.05 * x_in.roll(1, dims=-1)


def _noise():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))


def _generators():
    return [torch.Generator().manual_seed(s) for s in SEEDS]


def run_easel(scheduler, steps=STEPS):
    return denoise.sample(lambda x, t, cond: eps_model(x, t), scheduler, _noise(),
                          lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None), steps=steps,
                          cfg_scale=1.0, generators=_generators(), brownian_seeds=SEEDS)


