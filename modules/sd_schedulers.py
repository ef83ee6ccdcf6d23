"""A1111's `modules.sd_schedulers`: the schedule types (`schedulers`, `schedulers_map`).

Rows come from Easel's registry (modules.core.samplers.SCHEDULE_TYPES), each with a `function`
that computes the sigmas with Easel's schedules (modules.core.sigma_schedules) for a Stable
Diffusion noise schedule, called as A1111 calls them: `function(n, sigma_min, sigma_max, device)`
(`inner_model=` accepted and ignored).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from modules.core import samplers as _samplers
from modules.core import sigma_schedules as _sigmas

_DEFAULT_RHO = {"karras": 7.0, "polyexponential": 1.0}
_NEEDS_INNER_MODEL = {"sgm_uniform", "simple", "normal", "ddim", "beta", "align_your_steps"}


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: Callable | None = None
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list | None = None


_training: _sigmas.TrainingSigmas | None = None


def _sd_training() -> _sigmas.TrainingSigmas:
    global _training
    if _training is None:
        _training = _sigmas.TrainingSigmas.from_config(**_samplers.SD_TRAINING_SCHEDULE)
    return _training


def _function(schedule_id: str):
    def compute(n, sigma_min=None, sigma_max=None, device="cpu", inner_model=None, **_ignored):
        rho = _ignored.get("rho")
        sigmas = _sigmas.sigmas_for(schedule_id, int(n), _sd_training(), "sd1", sigma_min=sigma_min,
                                    sigma_max=sigma_max, rho=rho)
        return torch.as_tensor(sigmas).to(device)

    compute.__name__ = f"{schedule_id}_schedule"
    return compute


schedulers: list[Scheduler] = [
    Scheduler(sid, label, None if sid == "automatic" else _function(sid), _DEFAULT_RHO.get(sid, -1),
              sid in _NEEDS_INNER_MODEL, ["sgmuniform"] if sid == "sgm_uniform" else None)
    for label, sid in _samplers.SCHEDULE_TYPES
]
schedulers_map: dict[str, Scheduler] = {**{s.name: s for s in schedulers}, **{s.label: s for s in schedulers}}


def to_d(x, sigma, denoised):
    """The derivative k-diffusion's samplers step along: (x - denoised) / sigma."""
    return (x - denoised) / sigma
