"""A1111's `modules.sd_samplers`: the sampler list under A1111's names (from modules.core.samplers).

Extensions read the names (`all_samplers`, `samplers`, `visible_sampler_names()`, `samplers_map`)
to build their controls, and map infotext values with `get_sampler_and_scheduler`. Easel's samplers
run inside its own denoising loop, so `create_sampler` (A1111's k-diffusion wrapper) is refused.
"""

from __future__ import annotations

import sys
from collections import namedtuple

from modules.core import samplers as _core

SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


def _constructor(name: str):
    def construct(model):
        raise NotImplementedError(f"Easel runs the {name} sampler inside its own denoising loop; "
                                  "it cannot be constructed for a model here")
    return construct


all_samplers: list[SamplerData] = [
    SamplerData(name, _constructor(name), list(_core.get_spec(name).aliases), dict(_core.get_spec(name).options))
    for name in _core.SAMPLER_NAMES]
all_samplers_map: dict[str, SamplerData] = {s.name: s for s in all_samplers}
samplers: list[SamplerData] = []
samplers_for_img2img: list[SamplerData] = []
samplers_map: dict[str, str] = {}
samplers_hidden: set[str] = set()


def set_samplers() -> None:
    samplers[:] = all_samplers
    samplers_for_img2img[:] = all_samplers
    samplers_map.clear()
    for sampler in all_samplers:
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases:
            samplers_map[alias.lower()] = sampler.name


set_samplers()


def find_sampler_config(name: str | None) -> SamplerData | None:
    if name is None:
        return all_samplers[0]
    try:
        return all_samplers_map[_core.get_spec(name).name]
    except ValueError:
        return None


def create_sampler(name, model):
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"bad sampler name: {name}")
    return config.constructor(model)


def _hidden() -> set[str]:
    shared = sys.modules.get("modules.shared")
    try:
        return set(getattr(shared.opts, "hide_samplers", None) or []) if shared is not None else set()
    except AttributeError:
        return set()


def visible_samplers() -> list[SamplerData]:
    hidden = _hidden()
    return [s for s in samplers if s.name not in hidden]


def visible_sampler_names() -> list[str]:
    return [s.name for s in visible_samplers()]


def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic: bool = True):
    """(sampler name, schedule type label) for an infotext's or request's values (A1111): old
    combined names ("DPM++ 2M Karras") are split and aliases resolved; an unknown sampler becomes
    the first one; with `convert_automatic` a schedule that is the sampler's own default is
    reported as "Automatic"."""
    default = all_samplers[0].name
    try:
        name, schedule = _core.resolve(sampler_name or default, scheduler_name)
    except ValueError:
        try:
            name, schedule = _core.resolve(sampler_name or default, None)
        except ValueError:
            name, schedule = default, "Automatic"
    if convert_automatic and schedule != "Automatic" and _core.effective_schedule(name, None) == schedule:
        schedule = "Automatic"
    return name, schedule


def get_sampler_from_infotext(d: dict) -> str:
    return get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))[0]


def get_scheduler_from_infotext(d: dict) -> str:
    return get_sampler_and_scheduler(d.get("Sampler"), d.get("Schedule type"))[1]


def get_hr_sampler_and_scheduler(d: dict):
    sampler = d.get("Hires sampler", "Use same sampler")
    scheduler = d.get("Hires schedule type", "Use same scheduler")
    if sampler == "Use same sampler":
        return sampler, scheduler
    return get_sampler_and_scheduler(sampler, None if scheduler == "Use same scheduler" else scheduler,
                                     convert_automatic=False)


def get_hr_sampler_from_infotext(d: dict) -> str:
    return get_hr_sampler_and_scheduler(d)[0]


def get_hr_scheduler_from_infotext(d: dict) -> str:
    return get_hr_sampler_and_scheduler(d)[1]
