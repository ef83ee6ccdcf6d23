"""The sampling loop: one function, numbered steps, hook points as plain method calls.

It runs any scheduler with diffusers' API (see ``modules.core.samplers``) on a model callable with
classifier-free guidance. Conditioning is an opaque dict of batched tensors; cond and uncond are
run as one batch of 2B when their shapes allow it, otherwise as two calls.

Step numbering: the loop runs once per entry of ``scheduler.timesteps``, i.e. once per model
evaluation (cond + uncond together). For second-order samplers (Heun, DPM2, DPM2 a, DPM++ SDE,
DPM++ 2S a) that is ``2 * steps - 1`` iterations, for PLMS ``steps + 1``; DPM adaptive makes as many
as its step-size control needs (``total`` then grows as it goes). Hooks and
``cond_for_step`` get that iteration index (0-based, counted from where sampling starts, so img2img
starts at 0 too) and ``total`` is the number of iterations — the same counting A1111 uses for its
``sampling_step``/``sampling_steps`` (its CFG denoiser counts model calls).

Composable diffusion (A1111's ``a AND b :0.5``): with ``composition``, the cond dict has one row per
sub-prompt and ``composition[i]`` lists ``(row, weight)`` for image ``i``; the prediction is
``uncond_i + sum(weight * cfg_scale * (cond_row - uncond_i))`` (A1111's ``combine_denoised``), the
uncond pass then runs even at CFG scale 1.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import rng

ModelFn = Callable[[Tensor, Tensor, dict], Tensor]


class DenoiseHooks:
    """No-op hook points; subclass and override what you need (A1111's CFG callbacks)."""

    def cfg_denoiser(self, step: int, x: Tensor, t: Tensor, cond: dict, uncond: dict | None) -> None:
        """Before the model call. ``x`` is a copy of the current latents (B, C, H, W) and ``t`` the
        timestep per image (B,); edit ``x`` or the cond dicts in place to change what the model sees
        (A1111 ``on_cfg_denoiser``). The sampler's own latents are not affected. With a
        ``composition`` (AND), ``cond`` has one row per sub-prompt instead of one per image."""

    def cfg_denoised(self, step: int, x_pred: Tensor) -> None:
        """After the model, before the CFG combine. ``x_pred`` is the raw model output, cond rows
        first then uncond rows (A1111's order); only the cond rows when CFG is off."""

    def cfg_after_cfg(self, step: int, x_pred: Tensor) -> Tensor:
        """After the CFG combine; return the prediction the scheduler should use."""
        return x_pred

    def extra_noise(self, noise: Tensor, init_latents: Tensor, noised: Tensor) -> Tensor:
        """img2img with ``extra_noise`` > 0, once before the loop: return the noise to add on top of
        the noised init latents ``noised`` (A1111 ``on_extra_noise``; default: the seed noise)."""
        return noise

    def after_step(self, step: int, next_timestep: Tensor | None, latents: Tensor) -> Tensor:
        """After the scheduler step, before ``step_end``: return the latents the loop goes on with.
        ``next_timestep`` is the timestep of the next iteration, None after the last one. Inpainting
        uses it to put the unmasked area back, noised to that timestep (``scheduler.add_noise``)."""
        return latents

    def step_end(self, step: int, total: int, latents: Tensor, denoised: Tensor | None) -> None:
        """After the scheduler step: progress and previews. ``denoised`` is the x0 prediction when
        the scheduler reports one (``pred_original_sample``/``denoised``), else None."""

    def should_stop(self) -> bool:
        """Interrupt/skip: True ends the loop before the next iteration, keeping the current latents."""
        return False


_NO_HOOKS = DenoiseHooks()


@dataclass(frozen=True)
class UncondSkipping:
    """A1111's two ways to leave out the negative prompt's model pass on some steps (those steps then
    run at CFG scale 1, the uncond prediction taken from the image's first cond row):

    * ``early`` (``skip_early_cond``): the model calls ``i`` with ``i / total <= early``, when not 0;
    * ``min_sigma`` (``s_min_uncond``, NGMS): the calls whose sigma is below it, every other one
      (the odd ones) or all of them with ``every_step`` (``s_min_uncond_all``).

    Not for edit models (instruct-pix2pix) or the CFG++ samplers, which need the uncond pass."""

    early: float = 0.0
    min_sigma: float = 0.0
    every_step: bool = False

    def __bool__(self) -> bool:
        return bool(self.early or self.min_sigma)

    def skips(self, i: int, total: int, sigma: Callable[[], float | None]) -> bool:
        if self.early and i / total <= self.early:
            return True
        if self.min_sigma > 0 and (i % 2 or self.every_step):
            value = sigma()
            return value is not None and value < self.min_sigma
        return False


def k_sigma(scheduler, t: Tensor) -> float | None:
    """The k-diffusion sigma of the model call at timestep ``t`` (A1111's ``sigma``): from the
    k-diffusion adapter's plan, a flow scheduler's sigmas, or a diffusers scheduler's alphas_cumprod;
    None when the scheduler says nothing of it."""
    if hasattr(scheduler, "_sigma_of"):
        return float(scheduler._sigma_of(t.reshape(1).cpu())[0])
    if hasattr(scheduler, "_sigma_at"):
        return float(scheduler._sigma_at(t))
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        return None
    index = min(max(int(round(float(t))), 0), len(alphas) - 1)
    alpha = float(alphas[index])
    return ((1 - alpha) / alpha) ** 0.5


PAD_MODES = ("", "empty", "v0")


@dataclass
class CondBatching:
    """How the prompt's and the negative prompt's model calls are made (A1111's "Optimizations"):

    * ``together`` (``batch_cond_uncond``): one call of 2B rows when the two conditionings' shapes
      allow it; off, a call for each (less memory, same result up to the rounding of a batch);
    * ``pad`` pads the shorter text context to the longer one's length first, so that the two can be
      batched: "empty" (``pad_cond_uncond``) with whole chunks of the empty prompt's context, as many as
      the difference holds; "v0" (``pad_cond_uncond_v0``, which wins in A1111) the negative prompt's
      context cut to the prompt's length or lengthened by repeating its last vector. Both change the
      picture where the lengths differ. ``empty()`` gives the empty prompt's context (1, n, D) of the
      model that runs, or None where the context is not made of text chunks (SD3, Flux): nothing is
      padded there.
    * ``padded``: the modes that padded something so far (the job's infotext: "Pad conds", "Pad conds v0").
    """

    together: bool = True
    pad: str = ""
    empty: Callable[[], Tensor | None] | None = None
    padded: set = field(default_factory=set)

    def __post_init__(self):
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, not {self.pad!r}")

    def for_model(self, empty: Callable[[], Tensor | None] | None) -> "CondBatching":
        """The same settings and record, with the empty prompt's context of the model that now runs."""
        return CondBatching(self.together, self.pad, empty, self.padded)

    def pad_pair(self, cond: dict, uncond: dict) -> tuple[dict, dict]:
        a, b = cond["context"], uncond["context"]
        if not self.pad or self.empty is None or a.shape[1] == b.shape[1]:
            return cond, uncond
        empty = self.empty()
        if empty is None:
            return cond, uncond
        if self.pad == "v0":
            if b.shape[1] < a.shape[1]:
                b = torch.cat([b, b[:, -1:].expand(-1, a.shape[1] - b.shape[1], -1)], dim=1)
            else:
                b = b[:, :a.shape[1]]
            self.padded.add("v0")
            return cond, {**uncond, "context": b}
        repeats = (a.shape[1] - b.shape[1]) // empty.shape[1]  # (a floor: a shorter cond gives a negative count)
        if repeats == 0:
            return cond, uncond
        self.padded.add("empty")
        if repeats < 0:
            return {**cond, "context": _pad_context(a, -repeats, empty)}, uncond
        return cond, {**uncond, "context": _pad_context(b, repeats, empty)}


def _pad_context(context: Tensor, repeats: int, empty: Tensor) -> Tensor:
    fill = empty.to(context.device, context.dtype).expand(context.shape[0], -1, -1).repeat(1, repeats, 1)
    return torch.cat([context, fill], dim=1)


_ONE_CALL = CondBatching()

PREVIEW_CONTENTS = ("Combined", "Prompt", "Negative prompt")


def subject_denoised(denoised: Tensor, pred: Tensor, subject: Tensor, scheduler, t: Tensor) -> Tensor:
    """The x0 prediction had the model's output been ``subject`` (the prompt's or the negative
    prompt's own) instead of the guided ``pred`` whose x0 the step gave as ``denoised``. x0 is linear
    in the output with a slope that depends on the noise level only, in every scheduler's space
    (x0 = x - sigma * eps, for flow x - sigma * v, for v x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v),
    so the difference in outputs moves x0 by that slope. Unknown sigma: ``denoised`` as it is."""
    sigma = k_sigma(scheduler, t)
    if sigma is None:
        return denoised
    slope = -sigma
    if getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon") == "v_prediction":
        slope = -sigma / (sigma ** 2 + 1) ** 0.5
    return denoised + slope * (subject.to(denoised.dtype) - pred.to(denoised.dtype))


def _tensor_items(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, Tensor)}


def _check_composition(composition, batch: int) -> list[int] | None:
    """Which image each cond row belongs to; None for the plain one-row-per-image case."""
    if composition is None:
        return None
    if len(composition) != batch:
        raise ValueError(f"composition has {len(composition)} entries for a batch of {batch}")
    owner: dict[int, int] = {}
    for image, rows in enumerate(composition):
        if not rows:
            raise ValueError(f"composition[{image}] lists no cond rows")
        for row, _weight in rows:
            if row in owner:
                raise ValueError(f"cond row {row} is listed twice in composition")
            owner[row] = image
    if sorted(owner) != list(range(len(owner))):
        raise ValueError(f"composition must name the cond rows 0..{len(owner) - 1}, got {sorted(owner)}")
    return [owner[row] for row in range(len(owner))]


def _check_cond(name: str, cond, batch: int) -> None:
    if not isinstance(cond, dict) or "context" not in cond:
        raise ValueError(f"{name} must be a dict with at least a 'context' tensor, got {type(cond).__name__}")
    for key, value in _tensor_items(cond).items():
        if value.shape[0] != batch:
            raise ValueError(f"{name}[{key!r}] has batch {value.shape[0]}, the latents have {batch}")


def _can_batch(cond: dict, uncond: dict) -> bool:
    """One 2B call is possible when both dicts have the same keys, tensors agree on every dim but
    the batch (cond/uncond contexts of different token lengths do not), and the rest is equal."""
    if cond.keys() != uncond.keys():
        return False
    for key, a in cond.items():
        b = uncond[key]
        if isinstance(a, Tensor) != isinstance(b, Tensor):
            return False
        if isinstance(a, Tensor):
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                return False
        elif a is not b and a != b:
            return False
    return True


def _concat(cond: dict, uncond: dict) -> dict:
    return {k: torch.cat([v, uncond[k]]) if isinstance(v, Tensor) else v for k, v in cond.items()}


def _predict(model: ModelFn, x: Tensor, t: Tensor, cond: dict, uncond: dict | None,
             owner: list[int] | None = None, together: bool = True) -> Tensor:
    """Raw model output: cond rows, then uncond rows when ``uncond`` is given. ``owner[row]`` is the
    image of each cond row (composable prompts); None: one cond row per image.

    The cond/uncond concatenation is redone every step on purpose: it costs microseconds next to the
    UNet, and a cache keyed on the dicts would go stale when a ``cfg_denoiser`` hook edits a tensor
    in place. Callers cache the conditioning itself (``cond_for_step`` may return the same objects).
    ``together`` off (batch_cond_uncond): a call for the cond rows, another for the uncond rows.
    """
    x_cond, t_cond = (x, t) if owner is None else (x[owner], t[owner])
    if uncond is None:
        return model(x_cond, t_cond, cond)
    if together and _can_batch(cond, uncond):
        return model(torch.cat([x_cond, x]), torch.cat([t_cond, t]), _concat(cond, uncond))
    return torch.cat([model(x_cond, t_cond, cond), model(x, t, uncond)])


def _combine(pred_cond: Tensor, pred_uncond: Tensor, cfg_scale: float, composition) -> Tensor:
    """Classifier-free guidance; with a composition, A1111's weighted sum over sub-prompts."""
    if composition is None:
        return pred_uncond + cfg_scale * (pred_cond - pred_uncond)
    pred = pred_uncond.clone()
    for image, rows in enumerate(composition):
        for row, weight in rows:
            pred[image] += (pred_cond[row] - pred_uncond[image]) * (weight * cfg_scale)
    return pred


def _step_kwargs(scheduler, generators, extra: dict | None) -> dict:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if generators is not None and "generator" in accepted:
        kwargs["generator"] = generators
    for key, value in (extra or {}).items():
        if key not in accepted:
            raise ValueError(f"{type(scheduler).__name__}.step() takes no {key!r}; it takes {sorted(accepted)}")
        kwargs[key] = value
    return kwargs


def _seed_brownian_noise(scheduler, batch: int, brownian_seeds, generators) -> None:
    """Brownian-tree SDE samplers (DPM++ SDE) take seeds, not generators: one tree per image."""
    if getattr(scheduler, "noise_sampler_seed", False) is False:
        return  # not a Brownian sampler (k-diffusion schedulers say so with False): leave the generators be
    if brownian_seeds is None and generators is not None:
        brownian_seeds = [
            int(torch.randint(0, 2**62, (), generator=g, device=g.device)) for g in generators
        ]
    if brownian_seeds is not None:
        if len(brownian_seeds) != batch:
            raise ValueError(f"brownian_seeds has {len(brownian_seeds)} seeds for a batch of {batch}")
        scheduler.noise_sampler_seed = [int(s) for s in brownian_seeds]
        scheduler.noise_sampler = None


@torch.no_grad()
def sample(
    model: ModelFn,
    scheduler,
    noise: Tensor,
    cond_for_step: Callable[[int], tuple[dict, dict | None]],
    *,
    steps: int,
    cfg_scale: float,
    generators: list[torch.Generator] | None = None,
    hooks: DenoiseHooks | None = None,
    init_latents: Tensor | None = None,
    denoising_strength: float = 1.0,
    extra_step_kwargs: dict | None = None,
    brownian_seeds: list[int] | None = None,
    composition: list[list[tuple[int, float]]] | None = None,
    extra_noise: float = 0.0,
    before_step: Callable[[int, Tensor, int], None] | None = None,
    image_cfg_scale: float | None = None,
    uncond_skipping: UncondSkipping | None = None,
    preview_content: str = "Combined",
    cond_batching: CondBatching | None = None,
) -> Tensor:
    """Run the sampler and return the final latents (B, C, H, W).

    ``model(x, t, cond)`` returns the UNet's raw output (eps or v) for a batch, ``t`` being the
    timestep per row. ``cond_for_step(i)`` returns ``(cond, uncond)`` for iteration ``i``; with
    ``cfg_scale == 1`` the uncond pass is skipped (uncond may then be None). ``generators`` (one per
    image) feed the step noise of ancestral/SDE schedulers. ``brownian_seeds`` seed DPM++ SDE's
    per-image Brownian trees (A1111 uses the image seeds); without them they are drawn from
    ``generators``. ``extra_step_kwargs`` go to ``scheduler.step`` (e.g. ``{"eta": 0.5}`` for DDIM).
    img2img: pass ``init_latents`` and ``denoising_strength`` < 1; ``extra_noise`` (A1111's
    ``img2img_extra_noise``) adds that much more of the noise on top, in k-diffusion's units (the
    init latents' own scale: ``x0 + sigma * noise + extra_noise * noise``). ``composition``: see the
    module docstring (AND); None means one cond row per image with weight 1. ``before_step(i, t,
    total)`` runs at the top of each iteration, before ``cond_for_step(i)`` (the SDXL refiner
    switches models there). ``image_cfg_scale`` (instruct-pix2pix, A1111's edit models): a third pass
    with the uncond text and no picture (``c_concat`` zeros), combined as
    ``u0 + cfg * (cond - u_img) + image_cfg * (u_img - u0)``. ``uncond_skipping``: the steps whose
    uncond pass is left out (see :class:`UncondSkipping`). ``preview_content`` (A1111's
    ``live_preview_content``): what ``hooks.step_end`` gets as ``denoised``: the guided prediction
    ("Combined"), the prompt's own ("Prompt") or the negative prompt's ("Negative prompt").
    ``cond_batching``: how the cond and uncond calls are made (:class:`CondBatching`; default: one call
    when the shapes allow, no padding).
    """
    hooks = hooks or _NO_HOOKS
    batching = cond_batching or _ONE_CALL
    if preview_content not in PREVIEW_CONTENTS:
        raise ValueError(f"preview_content must be one of {', '.join(PREVIEW_CONTENTS)}, not {preview_content!r}")

    # 1. Check inputs.
    if noise.ndim != 4:
        raise ValueError(f"noise must be (B, C, H, W), got shape {tuple(noise.shape)}")
    batch = noise.shape[0]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if generators is not None and len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for a batch of {batch}")
    if not 0.0 <= denoising_strength <= 1.0:
        raise ValueError(f"denoising_strength must be within [0, 1], got {denoising_strength}")
    if init_latents is None and denoising_strength != 1.0:
        raise ValueError("denoising_strength < 1 needs init_latents (img2img)")
    if init_latents is not None and init_latents.shape != noise.shape:
        raise ValueError(f"init_latents {tuple(init_latents.shape)} and noise {tuple(noise.shape)} differ in shape")
    owner = _check_composition(composition, batch)
    if image_cfg_scale is not None and owner is not None:
        raise ValueError("an edit model's image CFG takes one prompt per picture (no AND)")
    cond_rows = batch if owner is None else len(owner)
    # CFG++ samplers (DDIM CFG++) scale the guidance down and step with the uncond prediction too
    needs_uncond = getattr(scheduler, "needs_uncond_prediction", False)
    use_cfg = cfg_scale != 1.0 or composition is not None or needs_uncond
    guidance = cfg_scale * getattr(scheduler, "cfg_scale_multiplier", 1.0)
    skipping = uncond_skipping if uncond_skipping and image_cfg_scale is None and not needs_uncond else None
    first_rows = list(range(batch)) if owner is None else [rows[0][0] for rows in composition]

    # 2. Timesteps.
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps

    # 3. Starting latents: pure noise, or the init image noised to where sampling starts.
    if init_latents is None:
        latents = noise * scheduler.init_noise_sigma
    else:
        denoise_steps = min(int(steps * denoising_strength), steps)
        if denoise_steps == 0:
            return init_latents.clone()
        begin = (steps - denoise_steps) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)  # k-diffusion schedulers replan the timesteps from here
        timesteps = scheduler.timesteps[begin:]
        start = timesteps[:1].repeat(batch)
        latents = scheduler.add_noise(init_latents, noise, start)
        if extra_noise > 0:
            # the init latents' coefficient at this timestep: 1 for sigma-space schedulers (Euler,
            # DPM++ ...), sqrt(alpha_cumprod) for the others (DDIM, PLMS ...)
            scale = scheduler.add_noise(torch.ones_like(init_latents[:1]), torch.zeros_like(noise[:1]), start[:1])
            latents = latents + extra_noise * scale * hooks.extra_noise(noise, init_latents, latents)

    # 4. Sources of the per-step noise.
    step_kwargs = _step_kwargs(scheduler, generators, extra_step_kwargs)
    _seed_brownian_noise(scheduler, batch, brownian_seeds, generators)
    if hasattr(scheduler, "first_model_input"):
        # k-diffusion samplers may change the latents before their first model call (churn's noise)
        with rng.step_noise(generators):
            latents = scheduler.first_model_input(latents, step_kwargs.get("generator"))

    # 5. The loop (an adaptive sampler's timesteps grow as it goes: see ksampling.OpenTimesteps).
    for i, t in enumerate(timesteps):
        total = len(timesteps)
        if hooks.should_stop():
            break
        if before_step is not None:
            before_step(i, t, total)
        cond, uncond = cond_for_step(i)
        _check_cond("cond", cond, cond_rows)
        if use_cfg:
            _check_cond("uncond", uncond, batch)

        # 5a. Model input; hooks may edit the copy and the conds.
        x = latents.clone()
        t_batch = t.expand(batch)
        hooks.cfg_denoiser(i, x, t_batch, cond, uncond if use_cfg else None)
        x_in = scheduler.scale_model_input(x, t)
        if use_cfg:  # (after the hooks, as A1111 pads: they see the conds as encoded)
            cond, uncond = batching.pad_pair(cond, uncond)
        together = batching.together

        # 5b. Model, then classifier-free guidance.
        if image_cfg_scale is not None:  # edit model: cond, uncond (with the picture), uncond without it
            no_picture = {**uncond, "c_concat": torch.zeros_like(uncond["c_concat"])}
            x_pred = torch.cat([_predict(model, x_in, t_batch, cond, uncond, together=together),
                                model(x_in, t_batch, no_picture)])
            hooks.cfg_denoised(i, x_pred)
            pred_cond, pred_uncond, pred_no_picture = x_pred.chunk(3)
            pred = (pred_no_picture + guidance * (pred_cond - pred_uncond)
                    + image_cfg_scale * (pred_uncond - pred_no_picture))
        elif use_cfg and skipping is not None and skipping.skips(i, total, lambda: k_sigma(scheduler, t)):
            # the cond pass only; the uncond rows are the images' first cond rows (A1111's fake uncond)
            pred_cond = _predict(model, x_in, t_batch, cond, None, owner)
            pred_uncond = pred_cond[first_rows]
            hooks.cfg_denoised(i, torch.cat([pred_cond, pred_uncond]))
            pred = pred_cond if owner is None else _combine(pred_cond, pred_uncond, 1.0, composition)
        else:
            x_pred = _predict(model, x_in, t_batch, cond, uncond if use_cfg else None, owner, together)
            hooks.cfg_denoised(i, x_pred)
            if use_cfg:
                pred_cond, pred_uncond = x_pred[:cond_rows], x_pred[cond_rows:]
                pred = _combine(pred_cond, pred_uncond, guidance, composition)
            else:
                pred = x_pred
        pred = hooks.cfg_after_cfg(i, pred)

        # 5c. Scheduler step.
        with rng.step_noise(generators):  # the "NV" source's draws are NVIDIA's Philox numbers
            uncond_kwargs = {"noise_uncond": pred_uncond} if needs_uncond else {}
            out = scheduler.step(pred, t, latents, **step_kwargs, **uncond_kwargs)
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else None
        latents = hooks.after_step(i, t_next, out.prev_sample)
        denoised = getattr(out, "pred_original_sample", None)
        if denoised is None:
            denoised = getattr(out, "denoised", None)
        if preview_content != "Combined" and denoised is not None and use_cfg and image_cfg_scale is None:
            subject = pred_cond[first_rows] if preview_content == "Prompt" else pred_uncond
            denoised = subject_denoised(denoised, pred, subject, scheduler, t)
        hooks.step_end(i, len(timesteps), latents, denoised)  # (known now if the sampler just ended)

    return latents
