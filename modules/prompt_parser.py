"""A1111's `modules.prompt_parser`, over Easel's prompt language (modules.core.prompt_parser).

The parsing functions give A1111's shapes (lists, not tuples: extensions index and mutate them).
Turning prompts into conditioning tensors is the core's job (modules.core.conditioning, on the
worker, per job); `get_learned_conditioning` and friends are kept as names and say so when called.
"""

from __future__ import annotations

import re
from collections import namedtuple

from modules.core import prompt_parser as _core

# A1111's regular expressions (extensions reuse them to split prompts)
re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)
re_attention = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts that also says whether they are negative and the picture's size (A1111)."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None, distilled_cfg_scale=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)
        self.distilled_cfg_scale = distilled_cfg_scale or getattr(copy_from, "distilled_cfg_scale", None)


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """Per prompt `[[end_at_step, text], ...]` (A1111's prompt editing and alternation)."""
    return [[[end, text] for end, text in schedule]
            for schedule in _core.prompt_schedules(list(prompts), base_steps, hires_steps, use_old_scheduling)]


def parse_prompt_attention(text):
    """`[[text, weight], ...]`; `BREAK` is `["BREAK", -1]` (A1111)."""
    return [[part, weight] for part, weight in _core.parse_prompt_attention(text)]


def get_multicond_prompt_list(prompts):
    """(per prompt `[(index, weight)]`, the distinct sub-prompts, text -> index) (A1111's AND)."""
    indexes, flat, index_of = _core.multicond_prompt_list(list(prompts))
    return [list(row) for row in indexes], flat, index_of


def _encoding_is_the_core():
    raise NotImplementedError(
        "Easel: prompts are encoded by the core on the worker (modules.core.conditioning) per job; "
        "A1111's prompt_parser.get_learned_conditioning is not available to extensions. Edit p.prompts "
        "in process_batch, or the conditioning in on_cfg_denoiser, instead.")


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    _encoding_is_the_core()


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    _encoding_is_the_core()


def reconstruct_cond_batch(c, current_step):
    """The conditioning each prompt of the batch uses at `current_step` (A1111)."""
    import torch

    param = c[0][0].cond
    is_dict = isinstance(param, dict)
    if is_dict:
        res = {k: torch.zeros((len(c),) + v.shape, device=v.device, dtype=v.dtype) for k, v in param.items()}
    else:
        res = torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)
    for i, cond_schedule in enumerate(c):
        target_index = 0
        for current, entry in enumerate(cond_schedule):
            if current_step <= entry.end_at_step:
                target_index = current
                break
        if is_dict:
            for k, v in cond_schedule[target_index].cond.items():
                res[k][i] = v
        else:
            res[i] = cond_schedule[target_index].cond
    return res
