"""Sampler registry: A1111 sampler name + schedule type -> a fresh diffusers-API scheduler.

Every sampler is one row of data (:data:`_ROWS`): its A1111 name and aliases, what implements it,
the schedule A1111's "Automatic" picks for it, and whether the schedule type shapes it. Names and
aliases are unique case-insensitively; a duplicate is an error at import.

Two kinds of rows, as in A1111 1.10:

* A1111's k-diffusion samplers (``sd_samplers_kdiffusion``: Euler a, Euler, LMS, Heun, DPM2, DPM2 a,
  DPM++ 2S a, DPM++ 2M, DPM++ SDE, DPM++ 2M SDE (Heun), DPM++ 3M SDE, DPM fast, DPM adaptive,
  Restart) run the row's k-diffusion algorithm (``kdiff``, :class:`~modules.core.ksampling.KSamplerScheduler`)
  on every schedule type (:mod:`modules.core.sigma_schedules`), whatever A1111's sampler parameters
  say: continuous timesteps interpolated in log sigma, A1111's sigma schedules, DPM2's and DPM++ 3M
  SDE's discarded next-to-last sigma, Brownian-tree noise for the SDE samplers. (diffusers'
  schedulers for these round timesteps to integers, space SGM Uniform differently and keep the
  next-to-last sigma, so their pictures differ from A1111's.)
* A1111's timestep samplers (``sd_samplers_timesteps``: DDIM, PLMS, UniPC; DDIM CFG++) have no
  k-diffusion counterpart: diffusers' schedulers (DDIM CFG++: :mod:`modules.core.ddim_cfgpp`) on
  A1111's timestep grid (``"leading"`` spacing + ``steps_offset=1`` for DDIM and PLMS). A1111 never
  reads the schedule type for them: any type is accepted, kept in the infotext, and runs the
  sampler's own timesteps. LCM (A1111's ``sd_samplers_lcm``: its own LCM denoiser with the 50-step
  skipping timesteps) is diffusers' ``LCMScheduler`` on Automatic / Uniform and k-diffusion's
  ``sample_lcm`` on the other schedule types.

"Automatic" follows A1111 1.9+, where it means the sampler's own default: Karras for DPM++ 2M,
DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a and Restart, Exponential for DPM++ 2M SDE (Heun) and DPM++ 3M
SDE, Uniform for the rest. So "DPM++ 2M" with "Automatic" makes the same image as A1111's "DPM++ 2M"
(which is Karras there).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
from diffusers import UniPCMultistepScheduler

from . import ksampling
from .ddim_cfgpp import DDIMCFGPPScheduler
from .sampler_options import KPlan, SamplerOptions, kdiff_plan, timestep_infotext
from .sigma_schedules import UNIPC_SKIP_TYPES, TrainingSigmas, unipc_sigmas, unipc_times

# Stable Diffusion's training noise schedule (SD 1.x, 2.x, XL).
SD_TRAINING_SCHEDULE = MappingProxyType(
    {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
)

# A1111 1.10's schedule types, in its order (sd_schedulers.schedulers)
SCHEDULE_TYPES: list[tuple[str, str]] = [
    ("Automatic", "automatic"),
    ("Uniform", "uniform"),
    ("Karras", "karras"),
    ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"),
    ("SGM Uniform", "sgm_uniform"),
    ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"),
    ("Simple", "simple"),
    ("Normal", "normal"),
    ("DDIM", "ddim"),
    ("Beta", "beta"),
]
_SCHEDULE_LABEL_BY_KEY = {k.lower(): label for label, sid in SCHEDULE_TYPES for k in (label, sid)}
_SCHEDULE_LABEL_BY_KEY["sgmuniform"] = "SGM Uniform"  # A1111's alias
_SCHEDULE_ID_BY_LABEL = dict(SCHEDULE_TYPES)
# the diffusers rows run their own timesteps ("uniform"); k-diffusion's algorithms
# (modules.core.ksampling) run on every schedule type of modules.core.sigma_schedules
_OWN_SCHEDULE = frozenset({"uniform"})
_SIGMA_SCHEDULES = frozenset(sid for _label, sid in SCHEDULE_TYPES[1:])


# --------------------------------------------------------------------------------------------
# UniPC on A1111's times
# --------------------------------------------------------------------------------------------

class A1111UniPCScheduler(UniPCMultistepScheduler):
    """diffusers' UniPC update on the times A1111's UniPC runs at (``uni_pc_skip_type``:
    :func:`~modules.core.sigma_schedules.unipc_times`): continuous model timesteps (t - 1/N) * N, not
    diffusers' rounded ones, and their sigmas, down to the smallest training sigma (A1111's t_0)."""

    skip_type = "time_uniform"

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        n = len(self.timesteps)
        total = len(self.alphas_cumprod)
        times = unipc_times(self.skip_type, n, self.alphas_cumprod)
        self.timesteps = ((times[:-1] - 1.0 / total) * total).to(device=device, dtype=torch.float32)
        self.sigmas = unipc_sigmas(times, self.alphas_cumprod).to(torch.float32)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    scheduler: str | type | None  # a diffusers class name or a class; None: the k-diffusion algorithm
    options: Mapping = field(default_factory=dict)  # constructor options that make it A1111's
    default_schedule: str = "uniform"  # what "Automatic" means for it (schedule id)
    schedules: frozenset = _OWN_SCHEDULE  # schedule ids the diffusers scheduler honours
    stochastic: bool = False  # adds noise at each step (ancestral / SDE / LCM)
    uniform_spacing: str = "linspace"  # diffusers' spacing for Uniform; "leading" for A1111's timestep samplers
    # k-diffusion algorithm (modules.core.ksampling.ALGORITHMS): A1111's k-diffusion samplers run it on
    # every schedule type; a row with a diffusers scheduler too (LCM) runs it on the types that
    # scheduler lacks
    kdiff: str | None = None
    # A1111's timestep samplers (DDIM, PLMS, UniPC, DDIM CFG++) run their own timesteps whatever the
    # schedule type says, and the infotext keeps the type: such infotexts are reproduced as A1111
    # made them (a type the row cannot honour runs as Automatic)
    ignores_schedule: bool = False

    def accepts(self, schedule_id: str) -> bool:
        return self.honours(schedule_id) or self.ignores_schedule

    def honours(self, schedule_id: str) -> bool:
        """Whether the schedule type really shapes this sampler's steps."""
        if self.scheduler is not None and schedule_id in self.schedules:
            return True
        return self.kdiff is not None and schedule_id in _SIGMA_SCHEDULES

    def runs_diffusers(self, schedule_id: str) -> bool:
        """Whether ``schedule_id`` (a concrete one) runs the row's diffusers scheduler."""
        return self.scheduler is not None and (self.kdiff is None or schedule_id in self.schedules)

    def second_order(self) -> bool:
        """A1111's ``second_order`` (two model calls a step): prompt schedules count steps twice."""
        if self.scheduler is None:
            return ksampling.ALGORITHMS[self.kdiff].order == 2
        return getattr(self.scheduler_class(), "order", 1) == 2

    def scheduler_class(self) -> type:
        if self.scheduler is None:
            return ksampling.KSamplerScheduler
        if isinstance(self.scheduler, type):
            return self.scheduler
        import diffusers

        return getattr(diffusers, self.scheduler)


# A1111 1.10's sd_samplers_kdiffusion rows: k-diffusion's algorithms on every schedule type (as A1111
# runs them: continuous timesteps, its sigma schedules; diffusers' schedulers round timesteps, space
# them differently and keep the next-to-last sigma, so they are not used for these)
_ROWS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), None, stochastic=True, kdiff="euler_ancestral"),
    SamplerSpec("Euler", ("k_euler",), None, kdiff="euler"),
    SamplerSpec("LMS", ("k_lms",), None, kdiff="lms"),
    SamplerSpec("Heun", ("k_heun",), None, kdiff="heun"),
    SamplerSpec("DPM2", ("k_dpm_2",), None, default_schedule="karras", kdiff="dpm_2"),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), None, default_schedule="karras", stochastic=True,
                kdiff="dpm_2_ancestral"),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), None, default_schedule="karras", stochastic=True,
                kdiff="dpmpp_2s_ancestral"),
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), None, default_schedule="karras", kdiff="dpmpp_2m"),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), None, default_schedule="karras", stochastic=True, kdiff="dpmpp_sde"),
    # Brownian-tree SDE samplers (seeded as A1111's create_noise_sampler)
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), None, default_schedule="exponential", stochastic=True,
                kdiff="dpmpp_2m_sde"),
    SamplerSpec("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), None, default_schedule="exponential",
                stochastic=True, kdiff="dpmpp_2m_sde_heun"),
    SamplerSpec("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), None, default_schedule="exponential", stochastic=True,
                kdiff="dpmpp_3m_sde"),
    # DPM-Solver-fast: ancestral (A1111's eta 1) and, like A1111, blind to the schedule type
    SamplerSpec("DPM fast", ("k_dpm_fast",), None, stochastic=True, kdiff="dpm_fast"),
    # DPM-Solver-23 with step-size control: as many model calls as it needs (the steps are ignored),
    # on the training sigma range like DPM fast
    SamplerSpec("DPM adaptive", ("k_dpm_ad",), None, stochastic=True, kdiff="dpm_adaptive"),
    # A1111's Restart: Heun steps with one or two noisy jumps back up (from 20 steps on)
    SamplerSpec("Restart", ("restart",), None, default_schedule="karras", stochastic=True, kdiff="restart"),
    # A1111's sd_samplers_timesteps rows: diffusers' schedulers on A1111's timestep grids, whatever
    # the schedule type (A1111's get_timesteps never reads it)
    SamplerSpec("DDIM", (), "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False},
                schedules=_OWN_SCHEDULE, uniform_spacing="leading", ignores_schedule=True),
    # A1111's "DDIM CFG++": its own timestep grid, guidance / 12.5, the uncond prediction to renoise
    SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), DDIMCFGPPScheduler, schedules=_OWN_SCHEDULE,
                uniform_spacing="leading", ignores_schedule=True),
    SamplerSpec("PLMS", (), "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False},
                schedules=_OWN_SCHEDULE, uniform_spacing="leading", ignores_schedule=True),
    # A1111's UniPC defaults: order 3, variant bh1, lower order final; like A1111 it stops at the
    # smallest training sigma (diffusers' bh1 step to sigma 0 also divides by zero: NaN latents)
    SamplerSpec("UniPC", ("uni_pc",), A1111UniPCScheduler,
                {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True,
                 "final_sigmas_type": "sigma_min"}, schedules=_OWN_SCHEDULE, ignores_schedule=True),
    # A1111's LCM (sd_samplers_lcm) runs sample_lcm on its own LCM denoiser: the 50-step skipping
    # timesteps and the consistency boundary scalings, which diffusers' LCMScheduler has and plain
    # k-diffusion does not; the other schedule types run k-diffusion's sample_lcm on their sigmas
    SamplerSpec("LCM", ("k_lcm",), "LCMScheduler", schedules=_OWN_SCHEDULE, stochastic=True, kdiff="lcm"),
)


def _index(rows) -> dict[str, SamplerSpec]:
    by_key: dict[str, SamplerSpec] = {}
    for row in rows:
        for key in (row.name, *row.aliases):
            k = key.lower()
            # (a row may repeat its own name as an alias: A1111's Restart has the alias "restart")
            if by_key.get(k, row) is not row:
                raise ValueError(f"duplicate sampler name or alias {key!r} ({row.name} and {by_key[k].name})")
            by_key[k] = row
        unknown = (row.schedules | {row.default_schedule}) - _SIGMA_SCHEDULES
        if unknown:
            raise ValueError(f"sampler {row.name!r} names unknown schedule ids {sorted(unknown)}")
        if row.scheduler is None and row.kdiff is None:
            raise ValueError(f"sampler {row.name!r} names neither a scheduler nor a k-diffusion algorithm")
        if row.kdiff is not None and row.kdiff not in ksampling.ALGORITHMS:
            raise ValueError(f"sampler {row.name!r} names unknown k-diffusion algorithm {row.kdiff!r}")
    return by_key


_BY_KEY = _index(_ROWS)
_BY_NAME = {row.name: row for row in _ROWS}
SAMPLER_NAMES: list[str] = [row.name for row in _ROWS]
# A1111 >= 1.9 lists DPM++ 2M first, so its UI starts on it (with Automatic = Karras); its API's
# default stays sampler_index's "Euler"
DEFAULT_SAMPLER = "DPM++ 2M"


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _schedule_label(schedule_type: str | None) -> str:
    if schedule_type is None or (isinstance(schedule_type, str) and not schedule_type.strip()):
        return "Automatic"
    label = _SCHEDULE_LABEL_BY_KEY.get(str(schedule_type).strip().lower())
    if label is None:
        known = ", ".join(f"{label} ({sid})" for label, sid in SCHEDULE_TYPES)
        raise ValueError(f"unknown schedule type {schedule_type!r}; known: {known}")
    return label


def _find_sampler(sampler_name: str) -> tuple[SamplerSpec, str | None]:
    """The sampler row, plus the schedule label an old combined name carried ("DPM++ 2M Karras")."""
    key = sampler_name.strip().lower()
    if key in _BY_KEY:
        return _BY_KEY[key], None
    for label, sid in SCHEDULE_TYPES[1:]:
        suffix = " " + label.lower()
        if key.endswith(suffix) and key[: -len(suffix)].strip() in _BY_KEY:
            return _BY_KEY[key[: -len(suffix)].strip()], label
    if key.endswith("_ka") and key[:-3] in _BY_KEY:  # old aliases: k_dpmpp_2m_ka
        return _BY_KEY[key[:-3]], "Karras"
    known = ", ".join(SAMPLER_NAMES)
    raise ValueError(f"unknown sampler {sampler_name!r}; known samplers: {known}")


def get_spec(sampler_name: str) -> SamplerSpec:
    if not isinstance(sampler_name, str) or not sampler_name.strip():
        raise ValueError(f"sampler name must be a non-empty string; known samplers: {', '.join(SAMPLER_NAMES)}")
    return _find_sampler(sampler_name)[0]


def supported_schedules(sampler_name: str) -> list[str]:
    """Schedule labels this sampler honours, "Automatic" first."""
    spec = get_spec(sampler_name)
    return ["Automatic"] + [label for label, sid in SCHEDULE_TYPES[1:] if spec.accepts(sid)]


def resolve(sampler_name: str, schedule_type: str | None = None) -> tuple[str, str]:
    """Canonical ``(sampler name, schedule label)``.

    Accepts names and aliases (``k_dpmpp_2m``), old combined names (``"DPM++ 2M Karras"``,
    ``"DPM++ 2M SDE Karras"``, ``k_dpmpp_2m_ka``) and schedule labels or ids, all case-insensitive.
    A combined name's schedule applies when ``schedule_type`` is empty/Automatic; naming a different
    one is a conflict. Unknown names and unsupported combinations raise ``ValueError``.
    """
    spec = get_spec(sampler_name)
    _, carried = _find_sampler(sampler_name)
    schedule = _schedule_label(schedule_type)
    if carried is not None:
        if schedule not in ("Automatic", carried):
            raise ValueError(
                f"sampler {sampler_name!r} already names schedule {carried!r} but schedule type {schedule!r} was given"
            )
        schedule = carried
    sid = _SCHEDULE_ID_BY_LABEL[schedule]
    if sid != "automatic" and not spec.accepts(sid):
        raise ValueError(
            f"sampler {spec.name!r} does not support schedule type {schedule!r}; "
            f"supported: {', '.join(supported_schedules(spec.name))}"
        )
    return spec.name, schedule


def effective_schedule(sampler_name: str, schedule_type: str | None = None) -> str:
    """The concrete schedule label that will run ("Automatic" replaced by the sampler's default)."""
    name, schedule = resolve(sampler_name, schedule_type)
    if schedule != "Automatic":
        return schedule
    default = _BY_NAME[name].default_schedule
    return next(label for label, sid in SCHEDULE_TYPES if sid == default)


def visible_sampler_names(hidden=()) -> list[str]:
    """The sampler names a UI lists: all but ``hidden`` (A1111's ``hide_samplers``; its API still
    lists every one). Hiding all of them hides none (a dropdown needs a choice)."""
    hidden = set(hidden or ())
    return [name for name in SAMPLER_NAMES if name not in hidden] or list(SAMPLER_NAMES)


def default_visible_sampler(hidden=()) -> str:
    """The sampler a UI starts on: DEFAULT_SAMPLER unless hidden, else the first one listed."""
    visible = visible_sampler_names(hidden)
    return DEFAULT_SAMPLER if DEFAULT_SAMPLER in visible else visible[0]


# A1111's "uses_ensd" samplers: the ones whose infotext names the eta noise seed delta
_USES_ENSD = ("Euler a", "DPM2 a", "DPM++ 2S a", "DPM fast", "DPM adaptive")


def uses_ensd(sampler_name: str, eta: float = 1.0) -> bool:
    """A1111's ``is_sampler_using_eta_noise_seed_delta``: an ancestral-noise sampler with eta not 0
    (``eta_ancestral``); the SDE samplers' Brownian noise comes from the image seeds, not the delta."""
    try:
        name = get_spec(sampler_name).name
    except ValueError:
        return False
    return name in _USES_ENSD and eta != 0


def is_ancestral(sampler_name: str) -> bool:
    """True when the sampler draws fresh noise at each step (ancestral, SDE, LCM)."""
    return get_spec(sampler_name).stochastic


def _schedule_config(spec: SamplerSpec, schedule_id: str) -> dict:
    if schedule_id == "uniform":
        return {"timestep_spacing": spec.uniform_spacing}
    raise AssertionError(schedule_id)


def _kdiff_plan(spec: SamplerSpec, schedule: str, options: SamplerOptions | None, training: TrainingSigmas,
                txt2img: bool = True) -> KPlan:
    schedule_id = _SCHEDULE_ID_BY_LABEL[schedule]
    # A1111: a sampler's "Automatic" without a schedule of its own takes the model's sigmas and
    # none of the schedule options
    schedule_function = not (schedule_id == "automatic" and spec.default_schedule == "uniform")
    if schedule_id == "automatic":
        schedule_id = spec.default_schedule
    return kdiff_plan(spec.kdiff, schedule_id, schedule_function, options, training,
                      discards_already=ksampling.ALGORITHMS[spec.kdiff].discard_penultimate, txt2img=txt2img)


def infotext_params(sampler_name: str, schedule_type: str | None = "Automatic",
                    options: SamplerOptions | None = None, *, txt2img: bool = True,
                    rescale_betas_zero_snr: bool = False) -> dict:
    """The infotext keys A1111 writes for its sampler parameters (``options``) on this sampler and
    schedule, in its order, only where it writes them ("Eta", "Schedule min sigma", "Sigma churn",
    "Discard penultimate sigma", "SGM noise multiplier" (``txt2img`` only), "Eta DDIM" ...).
    See :mod:`modules.core.sampler_options` for the rules."""
    name, schedule = resolve(sampler_name, schedule_type)
    spec = _BY_NAME[name]
    if options is None:
        return {}
    if spec.kdiff is None:
        return timestep_infotext(name, options)
    rescale = rescale_betas_zero_snr or options.zero_terminal_snr
    training = TrainingSigmas.from_config(**SD_TRAINING_SCHEDULE, rescale_betas_zero_snr=rescale)
    return dict(_kdiff_plan(spec, schedule, options, training, txt2img).infotext)


def _timestep_sampler_config(name: str, options: SamplerOptions) -> dict:
    """Constructor options from A1111's sampler parameters for the samplers without k-diffusion."""
    if name == "UniPC":
        return {"solver_type": options.uni_pc_variant, "solver_order": int(options.uni_pc_order),
                "lower_order_final": bool(options.uni_pc_lower_order_final)}
    if name == "DDIM CFG++" and options.eta_ddim:
        return {"eta": float(options.eta_ddim)}
    return {}


def build_scheduler(
    sampler_name: str,
    schedule_type: str = "Automatic",
    *,
    prediction_type: str = "epsilon",
    rescale_betas_zero_snr: bool = False,
    options: "SamplerOptions | Mapping | None" = None,
    model_family: str = "sd1",
):
    """A fresh scheduler (diffusers API: set_timesteps / timesteps / init_noise_sigma /
    scale_model_input / step / order) for an A1111 sampler and schedule type.

    ``options``: A1111's sampler parameters (:class:`~modules.core.sampler_options.SamplerOptions`:
    eta, churn, sigma range, rho, discard, SGM noise, UniPC's ...), or a mapping that overrides
    constructor options of the row (e.g. ``{"solver_order": 2}`` for UniPC).
    A1111's k-diffusion samplers always run their k-diffusion algorithm
    (:class:`~modules.core.ksampling.KSamplerScheduler`, mapping options: ``eta``); LCM does on the
    schedule types other than its own, and on its own one when A1111's sampler parameters change
    something there; ``model_family`` ("sd1"/"sd2"/"sdxl") picks Align Your Steps' sigmas.
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}")
    name, schedule = resolve(sampler_name, schedule_type)
    spec = _BY_NAME[name]
    sampler_options = options if isinstance(options, SamplerOptions) else None
    if sampler_options is not None:
        options = None
        # A1111's sd_noise_schedule: every sampler on the rescaled schedule (k-diffusion ones on
        # A1111's own rescale, below)
        rescale_betas_zero_snr = rescale_betas_zero_snr or sampler_options.zero_terminal_snr
    schedule_id = _SCHEDULE_ID_BY_LABEL[schedule]
    if schedule_id == "automatic" or not spec.honours(schedule_id):  # (a timestep sampler's ignored type)
        schedule_id = spec.default_schedule
    if spec.kdiff is not None:
        training = TrainingSigmas.from_config(**SD_TRAINING_SCHEDULE, rescale_betas_zero_snr=rescale_betas_zero_snr)
        plan = _kdiff_plan(spec, schedule, sampler_options, training)
        # LCM keeps diffusers' LCMScheduler (A1111's LCM denoiser) on Uniform unless A1111's sampler
        # parameters or the rescaled schedule ask for what only the k-diffusion route does
        keep_diffusers = spec.runs_diffusers(schedule_id) and not (
            plan.changes_anything() or (sampler_options is not None and sampler_options.zero_terminal_snr))
        if not keep_diffusers:
            extra = dict(options or {})
            refused = sorted(set(extra) - {"eta"})
            if refused:
                raise ValueError(f"{name!r} (k-diffusion {spec.kdiff}) does not support {', '.join(refused)}")
            algorithm_kwargs = dict(plan.algorithm_kwargs)
            eta = float(extra.get("eta", algorithm_kwargs.get("eta", 1.0)))
            if "eta" in algorithm_kwargs:
                algorithm_kwargs["eta"] = eta
            return ksampling.KSamplerScheduler(
                spec.kdiff, schedule_id, prediction_type=prediction_type, training=training,
                model_family=model_family, eta=eta, algorithm_kwargs=algorithm_kwargs,
                schedule_kwargs=plan.schedule_kwargs, discard_penultimate=plan.discard_penultimate,
                sgm_noise_multiplier=plan.sgm_noise_multiplier,
                quantize=sampler_options is not None and sampler_options.enable_quantization)
    if sampler_options is not None and spec.kdiff is None:
        options = _timestep_sampler_config(name, sampler_options)

    cls = spec.scheduler_class()
    # steps_offset 1 as in SD's shipped scheduler config (only "leading" spacing reads it; diffusers'
    # SD pipelines would otherwise rewrite it)
    config = {**SD_TRAINING_SCHEDULE, "steps_offset": 1, "prediction_type": prediction_type, **spec.options}
    config.update(_schedule_config(spec, schedule_id))
    accepted = _constructor_params(cls)
    if rescale_betas_zero_snr:
        if "rescale_betas_zero_snr" in accepted or "trained_betas" not in accepted:
            config["rescale_betas_zero_snr"] = True
        else:  # PLMS: the rescaled schedule as explicit betas
            config["trained_betas"] = _zero_snr_betas()
    if options:
        config.update(options)

    refused = sorted(k for k in config if k not in accepted)
    if refused:
        raise ValueError(f"{name!r} ({cls.__name__}) does not support {', '.join(refused)}")
    scheduler = cls(**config)
    if name == "UniPC":
        skip_type = sampler_options.uni_pc_skip_type if sampler_options is not None else "time_uniform"
        if skip_type not in UNIPC_SKIP_TYPES:
            raise ValueError(f"UniPC skip type must be one of {', '.join(UNIPC_SKIP_TYPES)}, not {skip_type!r}")
        scheduler.skip_type = skip_type
    if name == "DDIM" and sampler_options is not None and sampler_options.eta_ddim:
        # diffusers' DDIM takes eta per step: A1111's eta_ddim becomes the step's default
        scheduler.step = functools.partial(scheduler.step, eta=float(sampler_options.eta_ddim))
    return scheduler


def _zero_snr_betas() -> list[float]:
    """SD's training betas rescaled to zero terminal SNR (A1111's rescale, last alpha_bar 4.9e-8)."""
    ac = TrainingSigmas.from_config(**SD_TRAINING_SCHEDULE, rescale_betas_zero_snr=True).alphas_cumprod.double()
    return (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()


def _constructor_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}
