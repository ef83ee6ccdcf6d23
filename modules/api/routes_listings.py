"""The read-only listings of /sdapi/v1 in A1111's shapes: samplers, schedulers, upscalers, latent
upscale modes, hypernetworks, face restorers, RealESRGAN models, cmd-flags and memory.

Hypernetworks are the files of --hypernetwork-dir. Face restorers are A1111's two (CodeFormer,
GFPGAN) with their folders (cmd_dir), listed whether or not a model file is there, as A1111 does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from modules.core import samplers, upscaling

from . import models

# A1111's sampler `options` (sd_samplers_kdiffusion.samplers_k_diffusion), by sampler; its default
# schedule (`scheduler`) comes from Easel's registry. The A1111 API answers the values as strings
# (its model is dict[str, str]).
_SAMPLER_OPTIONS: dict[str, dict[str, str]] = {
    "Euler a": {"uses_ensd": "True"},
    "Heun": {"second_order": "True"},
    "DPM2": {"discard_next_to_last_sigma": "True", "second_order": "True"},
    "DPM2 a": {"discard_next_to_last_sigma": "True", "uses_ensd": "True", "second_order": "True"},
    "DPM++ 2S a": {"uses_ensd": "True", "second_order": "True"},
    "DPM++ SDE": {"second_order": "True", "brownian_noise": "True"},
    "DPM++ 2M SDE": {"brownian_noise": "True"},
    "DPM++ 2M SDE Heun": {"brownian_noise": "True", "solver_type": "heun"},
    "DPM++ 3M SDE": {"discard_next_to_last_sigma": "True", "brownian_noise": "True"},
    "DPM fast": {"uses_ensd": "True"},
    "DPM adaptive": {"uses_ensd": "True"},
    "Restart": {"second_order": "True"},
}
# A1111 1.10's sd_schedulers rows: (aliases, default_rho, need_inner_model)
_SCHEDULER_ROWS: dict[str, tuple[list[str] | None, float, bool]] = {
    "automatic": (None, -1, False),
    "uniform": (None, -1, True),
    "karras": (None, 7.0, False),
    "exponential": (None, -1, False),
    "polyexponential": (None, 1.0, False),
    "sgm_uniform": (["SGMUniform"], -1, True),
    "kl_optimal": (None, -1, False),
    "align_your_steps": (None, -1, False),
    "simple": (None, -1, True),
    "normal": (None, -1, True),
    "ddim": (None, -1, True),
    "beta": (None, -1, True),
}


def sampler_options(name: str) -> dict[str, str]:
    spec = samplers.get_spec(name)
    options: dict[str, str] = {}
    if spec.default_schedule != "uniform":
        options["scheduler"] = spec.default_schedule
    options.update(_SAMPLER_OPTIONS.get(name, {}))
    return options


def _ram() -> dict[str, Any]:
    """A1111's `ram`: total physical memory, this process's resident size as `used`, free = the rest."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * page
        return {"free": total - rss, "used": rss, "total": total}
    except (OSError, ValueError, AttributeError) as exc:  # not Linux
        return {"error": str(exc)}


def _cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    try:
        free, total = torch.cuda.mem_get_info()
        s = torch.cuda.memory_stats()

        def pair(key: str) -> dict[str, int]:
            return {"current": s.get(f"{key}.all.current", 0), "peak": s.get(f"{key}.all.peak", 0)}

        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
        }
    except Exception as exc:  # a driver problem is reported, not raised
        return {"error": str(exc)}


def add_routes(r: APIRouter, cmd_opts: argparse.Namespace | None = None) -> None:
    @r.get("/samplers", response_model=list[models.SamplerItem])
    def list_samplers():
        return [{"name": n, "aliases": list(samplers.get_spec(n).aliases), "options": sampler_options(n)}
                for n in samplers.SAMPLER_NAMES]

    @r.get("/schedulers", response_model=list[models.SchedulerItem])
    def list_schedulers():
        rows = []
        for label, sid in samplers.SCHEDULE_TYPES:
            aliases, rho, inner = _SCHEDULER_ROWS.get(sid, (None, -1, False))
            rows.append({"name": sid, "label": label, "aliases": aliases, "default_rho": rho, "need_inner_model": inner})
        return rows

    @r.get("/upscalers", response_model=list[models.UpscalerItem])
    def list_upscalers():
        upscaling.refresh()  # model files added or removed since the last look
        return [{"name": u.name, "model_name": u.model_name, "model_path": u.model_path, "model_url": u.model_url,
                 "scale": u.scale} for u in upscaling.image_upscalers()]

    @r.get("/latent-upscale-modes", response_model=list[models.LatentUpscalerModeItem])
    def list_latent_upscale_modes():
        return [{"name": name} for name in upscaling.latent_modes()]

    @r.get("/hypernetworks", response_model=list[models.HypernetworkItem])
    def hypernetworks():
        from modules.services.hypernetworks import HypernetworkRegistry

        folder = getattr(cmd_opts, "hypernetwork_dir", None)
        items = HypernetworkRegistry([Path(folder)] if folder else []).items()
        return [{"name": name, "path": str(path)} for name, path in items.items()]

    @r.get("/face-restorers", response_model=list[models.FaceRestorerItem])
    def face_restorers():
        from modules.services import face_restorers

        restorers = face_restorers.current()
        return [] if restorers is None else restorers.listing()

    @r.get("/realesrgan-models", response_model=list[models.RealesrganItem])
    def realesrgan_models():
        upscaling.refresh()
        return [{"name": u.name, "path": u.model_path, "scale": int(u.scale)}
                for u in upscaling.model_upscalers() if u.kind == "RealESRGAN"]

    @r.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        """Every command-line flag by its argparse name, secrets (logins) hidden."""
        from modules import auth

        return auth.public_flags(cmd_opts) if cmd_opts is not None else {}

    @r.get("/memory", response_model=models.MemoryResponse)
    def memory():
        return {"ram": _ram(), "cuda": _cuda()}
