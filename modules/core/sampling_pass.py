"""One sampling run on one model: the sequence the first pass and the hires pass share.

1. conditioning for every step, built for the model that runs (``conds_for(model)``);
2. noise from the image seeds, a fresh scheduler, the per-step generators;
3. where sampling starts: pure noise, or latents noised to a step (``start``: img2img, hires);
4. the loop (``denoise.sample``), switching to the SDXL refiner on the way when one is asked for.

The SDXL refiner (A1111's ``refiner_checkpoint`` / ``refiner_switch_at``): once the run has come far
enough, the refiner is loaded, the conditioning is encoded again with its text encoder, and the same
scheduler goes on with the refiner's denoiser. "Far enough" is A1111's rule: by default the
timestep's place in the 1000 training steps (``(999 - t) / 1000 >= switch_at``), or with
``refiner_switch_by_sample_steps`` the share of the loop's iterations done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import denoise, model_ops, rng, token_merging
from .model_loader import LoadedModel


@dataclass(frozen=True)
class Seeds:
    """The image seeds of one batch and what shapes their noise."""

    seeds: list[int]
    subseeds: list[int]
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] | None = None  # A1111's seed_resize_from_w/h


@dataclass
class Start:
    """Where the loop starts. The default: pure noise, the whole schedule."""

    init_latents: torch.Tensor | None = None
    noise: torch.Tensor | None = None  # the noise to use (None: the seeds' noise as made)
    strength: float = 1.0
    schedule_steps: int | None = None  # the schedule's length (None: the pass's steps)
    extra_noise: float = 0.0  # A1111's img2img_extra_noise


@dataclass(frozen=True)
class RefinerPlan:
    """Switch to another checkpoint part way (A1111's refiner)."""

    switch_at: float  # 0..1
    load: Callable[[], LoadedModel]  # the refiner, loaded (the engine's model cache)
    by_steps: bool = False  # refiner_switch_by_sample_steps


class _Switch:
    """The loop's model and conditioning, replaced by the refiner's once the switch is due."""

    def __init__(self, model: LoadedModel, conds_for, refiner: RefinerPlan | None, residuals=None):
        self.model = model
        self.conds = conds_for(model)
        self.residuals = residuals  # ControlNet's, for this model only (the refiner runs without)
        self.call = model_ops.denoiser(model, residuals)
        self.conds_for = conds_for
        self.refiner = refiner
        self.switched = False

    def due(self, i: int, t: torch.Tensor, total: int) -> bool:
        if self.refiner.by_steps:  # A1111: model calls done / the sampler's total
            return i / total >= self.refiner.switch_at
        return (999 - round(float(t))) / 1000 >= self.refiner.switch_at

    def before_step(self, i: int, t: torch.Tensor, total: int) -> None:
        if self.residuals is not None:
            self.residuals.at_step(i, total)
        if self.refiner is None or self.switched or not self.due(i, t, total):
            return
        self.model = self.refiner.load()
        self.conds = self.conds_for(self.model)
        self.residuals = None
        self.call = model_ops.denoiser(self.model)
        self.switched = True

    def cond_for_step(self, i: int):
        cond, uncond = self.conds.cond_for_step(i)
        return (cond, uncond) if self.residuals is None else self.residuals.mark(cond, uncond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        out = self.call(x, t, cond)
        return out if self.residuals is None else self.residuals.finish(x, t, cond, out)  # tile_colorfix


@dataclass
class PassResult:
    latents: torch.Tensor
    model: LoadedModel  # the model the pass ended on (the refiner when it switched)
    switched: bool = False


def run(model: LoadedModel, settings, *, sampler: str, schedule: str,
        conds_for: Callable[[LoadedModel], object], shape: tuple[int, ...], seeds: Seeds, steps: int,
        cfg_scale: float, hooks: denoise.DenoiseHooks,
        start: Callable[[torch.Tensor, object], Start] | None = None,
        refiner: RefinerPlan | None = None, image_cfg_scale: float | None = None,
        token_ratio: float = 0.0, cond_batching: denoise.CondBatching | None = None) -> PassResult:
    """Steps 1-4 of the module docstring. ``conds_for(model)`` returns the pass's
    ``ScheduledConditioning`` for that model; ``start(noise, scheduler)`` says where sampling starts
    (None: txt2img). ``settings`` is the job's ``GenerationSettings``. ``image_cfg_scale``: an
    instruct-pix2pix model's image guidance (its conditioning carries the picture as ``c_concat``).
    ``token_ratio``: token merging (A1111's token_merging_ratio*) during the pass. ``cond_batching``: the
    job's cond/uncond calls and padding (the empty prompt's context taken from the model that runs)."""
    spec = model.spec
    noise = rng.create_noise(shape, seeds.seeds, seeds.subseeds, seeds.subseed_strength, seeds.resize_from,
                             device=model.device, source=settings.randn_source)
    options = settings.sampler_options
    scheduler = model.family.build_scheduler(sampler, schedule, spec, shape, options)
    generators = rng.step_generators(seeds.seeds, settings.eta_noise_seed_delta, device=model.device, shape=shape,
                                     source=settings.randn_source)
    control = getattr(settings, "control", None)  # ControlNet units (modules.core.controlnet.ControlJob)
    if control is not None:  # (inpaint_only+lama starts from noise carrying its filled picture)
        noise = control.initial_noise(model, noise, lambda pixels: model_ops.encode_pixels(model, pixels))
    begin = start(noise, scheduler) if start is not None else Start()
    steps_run = begin.schedule_steps or steps
    switch = _Switch(model, conds_for, refiner, control.for_pass(model, shape) if control is not None else None)
    conds = switch.conds
    if cond_batching is not None:
        cond_batching = cond_batching.for_model(lambda: switch.conds.empty_context())
    with token_merging.merging(model.unet, token_ratio):  # ToMe on the pass's own model (not a refiner)
        latents = denoise.sample(
            switch, scheduler, (begin.noise if begin.noise is not None else noise).to(model.device),
            switch.cond_for_step, steps=steps_run, cfg_scale=cfg_scale, generators=generators, hooks=hooks,
            brownian_seeds=seeds.seeds,  # A1111 seeds the SDE samplers' Brownian trees from the image seeds
            init_latents=begin.init_latents, denoising_strength=begin.strength, composition=conds.composition,
            extra_noise=begin.extra_noise,
            before_step=switch.before_step if refiner is not None or switch.residuals is not None else None,
            image_cfg_scale=image_cfg_scale,
            uncond_skipping=denoise.UncondSkipping(options.skip_early_cond, options.s_min_uncond,
                                                   options.s_min_uncond_all),
            preview_content=getattr(settings, "live_preview_content", "Combined"),
            cond_batching=cond_batching,
        )
    return PassResult(latents, switch.model, switch.switched)

