"""A1111's `modules.lowvram`. Easel's memory module alone places models on devices (--lowvram /
--medvram set its policy), so these report and never move anything."""

from __future__ import annotations

from modules import shared

module_in_gpu = None
cpu = None


def is_needed(sd_model=None) -> bool:
    opts = shared.cmd_opts
    return bool(getattr(opts, "lowvram", False) or getattr(opts, "medvram", False)
                or getattr(opts, "medvram_sdxl", False))


def is_enabled(sd_model=None) -> bool:
    """Whether the model runs under medvram or lowvram (the memory owner's resolved policy)."""
    policy = getattr(sd_model, "memory_policy", None)
    if isinstance(policy, str):
        return policy in ("medvram", "lowvram")
    return is_needed(sd_model)


def apply(sd_model) -> None:
    """Easel applies the low-VRAM policy when it loads a model."""


def setup_for_low_vram(sd_model, use_medvram) -> None:
    """See apply."""


def send_everything_to_cpu() -> None:
    """Easel's memory module decides what stays on the GPU."""
