"""The conditioning of one batch for every sampler step: A1111's prompt editing, alternation and AND.

Built once per batch, before the loop (A1111's ``setup_conds``):

1. positive prompts are split at ``AND`` into weighted sub-prompts (one cond row each), negative
   prompts are taken whole (A1111 composes only the positive side);
2. every distinct (sub-)prompt gets its schedule ``[(end_step, text)]`` for the schedule length
   (A1111's ``total_steps``: the steps, twice for second-order samplers) and its texts are encoded
   together, once;
3. ``cond_for_step(i)`` picks each row's entry for step ``i`` (0-based, counted from where sampling
   starts, like A1111's CFG denoiser: the first entry with ``i <= end_step``) and stacks the rows;
   rows of different token lengths are padded with their last vector repeated (A1111). Each
   distinct combination is built once and the same dict objects are returned afterwards.

img2img counts as A1111 does: the schedule spans the requested steps (not the shortened run), and
the step counter starts at 0 with the first step actually run. The hires pass continues the first
pass's timeline (``hires_steps``, see ``prompt_parser.prompt_schedules``).
"""

from __future__ import annotations

import torch

from . import prompt_parser, samplers


def schedule_length(steps: int, sampler_name: str) -> int:
    """A1111's ``SamplerData.total_steps``: second-order samplers (two model calls a step; their
    scheduler class has ``order == 2``) count each step twice."""
    return steps * (2 if samplers.get_spec(sampler_name).second_order() else 1)


def _pad_tokens(context: torch.Tensor, length: int) -> torch.Tensor:
    if context.shape[1] == length:
        return context
    last = context[:, -1:].expand(-1, length - context.shape[1], -1)
    return torch.cat([context, last], dim=1)


class _Rows:
    """Row prompts (no AND left) -> the batched cond dict for any step, built once per combination."""

    def __init__(self, conditioner, prompts: list[str], steps: int, width: int, height: int,
                 hires_steps: int | None, use_old_scheduling: bool, extra: dict[str, torch.Tensor],
                 negative: bool = False):
        self.prompts = prompts
        self.distinct = list(dict.fromkeys(prompts))
        self.schedules = prompt_parser.prompt_schedules(self.distinct, steps, hires_steps, use_old_scheduling)
        self._encoded = []  # per distinct prompt: its schedule's texts encoded as one batch (A1111)
        for schedule in self.schedules:
            cond = conditioner.encode([text for _end, text in schedule], width, height, negative=negative)
            self._encoded.append(cond)
        # entries with equal texts (alternation repeats them) share one built dict
        self._same = [[[text for _e, text in schedule].index(text) for _e, text in schedule]
                      for schedule in self.schedules]
        self._row_of = [self.distinct.index(p) for p in prompts]
        self._extra = extra
        self._cache: dict[tuple[int, ...], dict] = {}

    def picks(self, step: int) -> tuple[int, ...]:
        """Schedule entry of each distinct prompt at ``step`` (the first entry with the same text)."""
        return tuple(same[prompt_parser.entry_at_step(schedule, step)]
                     for schedule, same in zip(self.schedules, self._same))

    def texts(self, step: int) -> list[str]:
        picks = self.picks(step)
        return [self.schedules[d][picks[d]][1] for d in self._row_of]

    def at(self, step: int) -> dict:
        picks = self.picks(step)
        cond = self._cache.get(picks)
        if cond is None:
            cond = self._cache[picks] = self._build(picks)
        return cond

    def _build(self, picks: tuple[int, ...]) -> dict:
        if len(self.distinct) == 1:  # the common case: one prompt for the whole batch
            one = {k: v[picks[0]:picks[0] + 1] for k, v in self._encoded[0].items()}
            cond = {k: v.expand(len(self.prompts), *v.shape[1:]).clone() for k, v in one.items()}
        else:
            rows = [{k: v[picks[d]:picks[d] + 1] for k, v in self._encoded[d].items()} for d in self._row_of]
            length = max(r["context"].shape[1] for r in rows)
            cond = {k: torch.cat([_pad_tokens(r[k], length) if k == "context" else r[k] for r in rows])
                    for k in rows[0]}
        cond.update(self._extra)
        return cond


class ScheduledConditioning:
    """``cond_for_step(i) -> (cond, uncond)`` for one batch; ``composition`` goes to
    ``denoise.sample`` (None unless a prompt has AND sub-prompts or a sub-prompt weight)."""

    def __init__(self, conditioner, prompts: list[str], negative_prompts: list[str], steps: int, width: int,
                 height: int, *, hires_steps: int | None = None, image_conditioning: torch.Tensor | None = None,
                 use_old_scheduling: bool = False):
        if len(prompts) != len(negative_prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
        indexes, flat, _ = prompt_parser.multicond_prompt_list(prompts)
        row_prompts, composition = [], []
        for image in indexes:
            composition.append([(len(row_prompts) + j, weight) for j, (_i, weight) in enumerate(image)])
            row_prompts += [flat[i] for i, _weight in image]
        plain = all(len(rows) == 1 and rows[0][1] == 1.0 for rows in composition)
        self.composition: list[list[tuple[int, float]]] | None = None if plain else composition
        owner = [image for image, rows in enumerate(composition) for _ in rows]

        cond_extra, uncond_extra = {}, {}
        if image_conditioning is not None:  # inpainting UNets: mask + masked image, per image
            cond_extra["c_concat"] = image_conditioning if plain else image_conditioning[owner]
            uncond_extra["c_concat"] = image_conditioning
        common = dict(steps=steps, width=width, height=height, hires_steps=hires_steps,
                      use_old_scheduling=use_old_scheduling)
        self.cond = _Rows(conditioner, row_prompts, extra=cond_extra, **common)
        self.uncond = _Rows(conditioner, list(negative_prompts), extra=uncond_extra, negative=True, **common)
        self._conditioner, self._size = conditioner, (width, height)

    def empty_context(self) -> torch.Tensor | None:
        """The empty prompt's text context (1, 77, D), what A1111's pad_cond_uncond pads with; None where
        the conditioner's context is not a row of text chunks (SD3's, Flux's)."""
        make = getattr(self._conditioner, "empty_context", None)
        return make(*self._size) if make is not None else None

    def cond_for_step(self, step: int) -> tuple[dict, dict]:
        return self.cond.at(step), self.uncond.at(step)
