"""Sampler registry: A1111 sampler name + schedule type -> a fresh diffusers-API scheduler.

Every sampler is one row of data (:data:`_ROWS`): its A1111 name and aliases, the scheduler that
implements it, the constructor options that make it behave like A1111, the schedule A1111's
"Automatic" picks for it, and the schedule types it can honour. Names and aliases are unique
case-insensitively; a duplicate is an error at import.

Schedule types map onto scheduler configuration:

=============  ============  ==========================================================
label          id            configuration
=============  ============  ==========================================================
Automatic      automatic     the sampler's default schedule (A1111 >= 1.9 semantics)
Uniform        uniform       ``timestep_spacing="linspace"`` (t = 999 -> 0, like k-diffusion);
                             DDIM/PLMS: ``"leading"`` + ``steps_offset=1`` like A1111's
                             timestep samplers
Karras         karras        ``use_karras_sigmas=True`` (rho 7, training sigma range)
Exponential    exponential   ``use_exponential_sigmas=True``
SGM Uniform    sgm_uniform   ``timestep_spacing="trailing"``
=============  ============  ==========================================================

"Automatic" follows A1111 1.9+, where it means the sampler's own default: Karras for DPM++ 2M,
DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a and Restart, Exponential for DPM++ 2M SDE (Heun) and DPM++ 3M
SDE, Uniform for the rest. So
"DPM++ 2M" with "Automatic" makes the same image as A1111's "DPM++ 2M" (which is Karras there).

The other A1111 1.10 schedule types (Polyexponential, KL Optimal, Align Your Steps, Simple, Normal,
DDIM, Beta; :mod:`modules.core.sigma_schedules`) run the row's k-diffusion algorithm (``kdiff``,
:mod:`modules.core.ksampling`), as do the rows without a diffusers scheduler on every schedule
type: the Brownian-tree SDE samplers (DPM++ 2M SDE, DPM++ 2M SDE Heun, DPM++ 3M SDE), DPM fast,
DPM adaptive and Restart.

Unsupported combinations raise ``ValueError`` (DDIM, DDIM CFG++, PLMS and UniPC are timestep
samplers, which A1111 runs without a schedule type; LCM keeps its own skipping schedule). "DPM++ 2S a" has no diffusers
scheduler: it is implemented below (:class:`DPMPP2SAncestralScheduler`) on the sigmas of ``EulerDiscreteScheduler``,
and "Euler a" gets Karras/Exponential by taking its sigmas from ``EulerDiscreteScheduler`` as well.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from . import ksampling
from .ddim_cfgpp import DDIMCFGPPScheduler
from .sampler_options import KPlan, SamplerOptions, kdiff_plan, timestep_infotext
from .sigma_schedules import TrainingSigmas

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
# the schedule types diffusers' schedulers can be configured for; the rest run on k-diffusion's
# algorithms (modules.core.ksampling) over modules.core.sigma_schedules
_ALL_SCHEDULES = frozenset({"uniform", "karras", "exponential", "sgm_uniform"})
_SIGMA_SCHEDULES = frozenset(sid for _label, sid in SCHEDULE_TYPES[1:])


# --------------------------------------------------------------------------------------------
# Schedulers that diffusers lacks
# --------------------------------------------------------------------------------------------

def _plain_config(config: Mapping) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class EulerAncestralAnyScheduleScheduler(EulerAncestralDiscreteScheduler):
    """diffusers' Euler ancestral step on sigmas from ``EulerDiscreteScheduler``.

    ``EulerAncestralDiscreteScheduler`` only knows timestep spacings; A1111 offers "Euler a" with
    Karras and Exponential too. The ancestral step only reads ``self.sigmas``/``self.timesteps``,
    so we let ``EulerDiscreteScheduler`` (same training schedule) compute them.
    ``sigma_options`` holds ``use_karras_sigmas``/``use_exponential_sigmas``.
    """

    sigma_options: Mapping = MappingProxyType({})

    def set_timesteps(self, num_inference_steps: int, device=None):
        super().set_timesteps(num_inference_steps, device=device)
        if not self.sigma_options:
            return
        source = EulerDiscreteScheduler(**_plain_config(self.config), **self.sigma_options)
        source.set_timesteps(num_inference_steps, device=device)
        self.sigmas = source.sigmas
        self.timesteps = source.timesteps


@dataclass
class DPMPP2SAncestralOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DPMPP2SAncestralScheduler:
    """k-diffusion's ``sample_dpmpp_2s_ancestral`` (eta 1, s_noise 1) behind diffusers' scheduler API.

    Each step from sigma_i to sigma_{i+1} splits into an ancestral pair (sigma_down, sigma_up). A
    DPM-Solver++(2S) step goes to sigma_down through a midpoint at sigma_s = sqrt(sigma_i*sigma_down)
    (half way in log sigma), then noise of size sigma_up is added. The last step (to sigma 0) has
    sigma_down 0 and is a plain Euler step. So every step but the last costs two model calls, and
    ``timesteps`` interleaves them: [t_0, t_s0, t_1, t_s1, ..., t_{n-1}] (2n - 1 entries, ``order`` 2,
    so ``timesteps[k * order]`` is the start of step k, as diffusers' img2img expects).

    Sigmas (and the timesteps of the step starts) come from ``EulerDiscreteScheduler`` with the same
    configuration, so every schedule type Euler supports works here. Midpoint timesteps are found by
    interpolating log sigma over the training schedule, as k-diffusion's ``sigma_to_t``.
    """

    order = 2

    def __init__(self, **config):
        self._sigma_source = EulerDiscreteScheduler(**config)
        self.config = self._sigma_source.config
        if self.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"DPM++ 2S a supports epsilon and v_prediction, not {self.config.prediction_type!r}")
        alphas_cumprod = self._sigma_source.alphas_cumprod.double().numpy()
        self._log_train_sigmas = np.log(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._step_index = None
        self._begin_index = None

    # ---- schedule ---------------------------------------------------------------------------
    @staticmethod
    def _ancestral(sigma_from: float, sigma_to: float) -> tuple[float, float]:
        sigma_up = min(sigma_to, (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
        sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
        return sigma_down, sigma_up

    def _sigma_to_t(self, sigma: float) -> float:
        log_train = self._log_train_sigmas
        log_sigma = math.log(sigma)
        low = int(np.clip(np.searchsorted(log_train, log_sigma, side="right") - 1, 0, len(log_train) - 2))
        w = (log_train[low] - log_sigma) / (log_train[low] - log_train[low + 1])
        return low + min(max(w, 0.0), 1.0)

    def set_timesteps(self, num_inference_steps: int, device=None):
        source = self._sigma_source
        source.set_timesteps(num_inference_steps, device="cpu")
        sigmas = [float(s) for s in source.sigmas]
        step_timesteps = [float(t) for t in source.timesteps]

        # One entry per model call: (step index, is first stage, sigma of the call).
        self._stages: list[tuple[int, bool, float]] = []
        timesteps = []
        self._plan = []  # per step: (sigma, sigma_next, sigma_down, sigma_up, sigma_mid)
        for i in range(num_inference_steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            sigma_down, sigma_up = self._ancestral(sigma, sigma_next)
            sigma_mid = math.sqrt(sigma * sigma_down) if sigma_down > 0 else None
            self._plan.append((sigma, sigma_next, sigma_down, sigma_up, sigma_mid))
            self._stages.append((i, True, sigma))
            timesteps.append(step_timesteps[i])
            if sigma_mid is not None:
                self._stages.append((i, False, sigma_mid))
                timesteps.append(self._sigma_to_t(sigma_mid))

        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.tensor(sigmas, dtype=torch.float32)
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32, device=device)
        self._step_index = None
        self._begin_index = None
        self._x_start = None

    @property
    def init_noise_sigma(self) -> float:
        return float(self.sigmas.max())

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    @property
    def state_in_first_order(self) -> bool:
        return self._stages[self._current_index()][1]

    def __len__(self):
        return self.config.num_train_timesteps

    def _current_index(self) -> int:
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        return self._step_index

    # ---- model input / output ----------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        sigma = self._stages[self._current_index()][2]
        return sample / ((sigma ** 2 + 1) ** 0.5)

    def _to_denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return sample - sigma * model_output
        # v-prediction in sigma terms (k-diffusion CompVisVDenoiser)
        return sample / (sigma ** 2 + 1) - model_output * (sigma / (sigma ** 2 + 1) ** 0.5)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        index = self._current_index()
        step_i, first_stage, sigma = self._stages[index]
        sigma_i, sigma_next, sigma_down, sigma_up, sigma_mid = self._plan[step_i]
        denoised = self._to_denoised(model_output, sample, sigma)

        if first_stage and sigma_mid is None:
            # sigma_down == 0: Euler step straight to the end
            derivative = (sample - denoised) / sigma_i
            prev = sample + derivative * (sigma_down - sigma_i)
            prev = self._add_noise_up(prev, sigma_next, sigma_up, generator)
        elif first_stage:
            # to the midpoint: t = -log sigma, h = t_down - t, s = t + h / 2
            h = math.log(sigma_i) - math.log(sigma_down)
            self._x_start, self._h = sample, h
            prev = (sigma_mid / sigma_i) * sample - math.expm1(-h / 2) * denoised
        else:
            x_start, h = self._x_start, self._h
            prev = (sigma_down / sigma_i) * x_start - math.expm1(-h) * denoised
            prev = self._add_noise_up(prev, sigma_next, sigma_up, generator)
            self._x_start = None

        self._step_index = index + 1
        if not return_dict:
            return (prev, denoised)
        return DPMPP2SAncestralOutput(prev_sample=prev, pred_original_sample=denoised)

    @staticmethod
    def _add_noise_up(x, sigma_next, sigma_up, generator):
        if sigma_next <= 0:
            return x
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + noise * sigma_up

    def add_noise(self, original_samples, noise, timesteps):
        """img2img start: sigma of the step where sampling begins (``set_begin_index``)."""
        index = self._begin_index if self._begin_index is not None else 0
        if self._step_index is not None:
            index = self._step_index
        sigma = self._stages[index][2]
        return original_samples + noise * sigma


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    scheduler: str | type | None  # a diffusers class name, a class defined here, or None (kdiff only)
    options: Mapping = field(default_factory=dict)  # constructor options that make it A1111's
    default_schedule: str = "uniform"  # what "Automatic" means for it (schedule id)
    schedules: frozenset = _ALL_SCHEDULES  # schedule ids the diffusers scheduler honours
    stochastic: bool = False  # adds noise at each step (ancestral / SDE / LCM)
    uniform_spacing: str = "linspace"  # k-diffusion style; "leading" for A1111's timestep samplers
    sigma_schedules_via: str = "config"  # "config": use_*_sigmas kwargs; "attribute": sigma_options
    # k-diffusion algorithm (modules.core.ksampling.ALGORITHMS) for every other schedule type
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


_DPMPP = {"solver_order": 2, "solver_type": "midpoint", "lower_order_final": True}
_ROWS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), EulerAncestralAnyScheduleScheduler,
                stochastic=True, sigma_schedules_via="attribute", kdiff="euler_ancestral"),
    SamplerSpec("Euler", ("k_euler",), "EulerDiscreteScheduler", kdiff="euler"),
    SamplerSpec("LMS", ("k_lms",), "LMSDiscreteScheduler", kdiff="lms"),
    SamplerSpec("Heun", ("k_heun",), "HeunDiscreteScheduler", kdiff="heun"),
    SamplerSpec("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", default_schedule="karras", kdiff="dpm_2"),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", default_schedule="karras",
                stochastic=True, kdiff="dpm_2_ancestral"),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), DPMPP2SAncestralScheduler, default_schedule="karras",
                stochastic=True, kdiff="dpmpp_2s_ancestral"),
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
                {"algorithm_type": "dpmsolver++", **_DPMPP}, default_schedule="karras", kdiff="dpmpp_2m"),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", default_schedule="karras",
                stochastic=True, kdiff="dpmpp_sde"),
    # Brownian-tree SDE samplers: k-diffusion's algorithms on every schedule type (diffusers'
    # sde-dpmsolver++ draws fresh noise per step instead of A1111's seeded Brownian tree)
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
    SamplerSpec("DDIM", (), "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False},
                schedules=frozenset({"uniform", "sgm_uniform"}), uniform_spacing="leading", ignores_schedule=True),
    # A1111's "DDIM CFG++": its own timestep grid, guidance / 12.5, the uncond prediction to renoise
    SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), DDIMCFGPPScheduler, schedules=frozenset({"uniform"}),
                uniform_spacing="leading", ignores_schedule=True),
    SamplerSpec("PLMS", (), "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False},
                schedules=frozenset({"uniform", "sgm_uniform"}), uniform_spacing="leading", ignores_schedule=True),
    # A1111's UniPC defaults: order 3, variant bh1, lower order final; like A1111 it stops at the
    # smallest training sigma (diffusers' bh1 step to sigma 0 also divides by zero: NaN latents)
    SamplerSpec("UniPC", ("uni_pc",), "UniPCMultistepScheduler",
                {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True,
                 "final_sigmas_type": "sigma_min"}, ignores_schedule=True),
    # A1111's LCM is k-diffusion's sample_lcm: the other schedule types run it on their sigmas
    SamplerSpec("LCM", ("k_lcm",), "LCMScheduler", schedules=frozenset({"uniform"}), stochastic=True, kdiff="lcm"),
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
    if schedule_id == "sgm_uniform":
        return {"timestep_spacing": "trailing"}
    if schedule_id == "karras":
        return {"timestep_spacing": "linspace", "use_karras_sigmas": True}
    if schedule_id == "exponential":
        return {"timestep_spacing": "linspace", "use_exponential_sigmas": True}
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
    Schedule types diffusers cannot do run the row's k-diffusion algorithm
    (:class:`~modules.core.ksampling.KSamplerScheduler`, mapping options: ``eta``), and so does any
    k-diffusion sampler whose sampler parameters differ from the defaults; ``model_family``
    ("sd1"/"sd2"/"sdxl") picks Align Your Steps' sigmas.
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
    plan = None
    if spec.kdiff is not None and sampler_options is not None:
        training = TrainingSigmas.from_config(**SD_TRAINING_SCHEDULE, rescale_betas_zero_snr=rescale_betas_zero_snr)
        plan = _kdiff_plan(spec, schedule, sampler_options, training)
    schedule_id = _SCHEDULE_ID_BY_LABEL[schedule]
    if schedule_id == "automatic" or not spec.honours(schedule_id):  # (a timestep sampler's ignored type)
        schedule_id = spec.default_schedule
    if plan is not None and (spec.scheduler is None or schedule_id not in spec.schedules or plan.changes_anything()
                             or sampler_options.zero_terminal_snr):
        # A1111's parameters reach k-diffusion's algorithms, not diffusers' schedulers
        return ksampling.KSamplerScheduler(
            spec.kdiff, schedule_id, prediction_type=prediction_type, training=training, model_family=model_family,
            eta=plan.algorithm_kwargs.get("eta", 1.0), algorithm_kwargs=plan.algorithm_kwargs,
            schedule_kwargs=plan.schedule_kwargs, discard_penultimate=plan.discard_penultimate,
            sgm_noise_multiplier=plan.sgm_noise_multiplier)
    if sampler_options is not None and spec.kdiff is None:
        options = _timestep_sampler_config(name, sampler_options)
    if spec.scheduler is None or schedule_id not in spec.schedules or (
            rescale_betas_zero_snr and spec.kdiff is not None
            and "rescale_betas_zero_snr" not in _constructor_params(spec.scheduler_class())):
        # (k-diffusion's algorithm also where diffusers' scheduler cannot rescale the schedule)
        extra = dict(options or {})
        refused = sorted(set(extra) - {"eta"})
        if refused:
            raise ValueError(f"{name!r} (k-diffusion {spec.kdiff}) does not support {', '.join(refused)}")
        training = TrainingSigmas.from_config(**SD_TRAINING_SCHEDULE, rescale_betas_zero_snr=rescale_betas_zero_snr)
        return ksampling.KSamplerScheduler(spec.kdiff, schedule_id, prediction_type=prediction_type,
                                           training=training, model_family=model_family, **extra)

    cls = spec.scheduler_class()
    # steps_offset 1 as in SD's shipped scheduler config (only "leading" spacing reads it; diffusers'
    # SD pipelines would otherwise rewrite it)
    config = {**SD_TRAINING_SCHEDULE, "steps_offset": 1, "prediction_type": prediction_type, **spec.options}
    schedule_config = _schedule_config(spec, schedule_id)
    sigma_options = {}
    if spec.sigma_schedules_via == "attribute":
        sigma_options = {k: schedule_config.pop(k) for k in ("use_karras_sigmas", "use_exponential_sigmas")
                         if k in schedule_config}
    config.update(schedule_config)
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
    if sigma_options:
        scheduler.sigma_options = MappingProxyType(sigma_options)
    if name == "DDIM" and sampler_options is not None and sampler_options.eta_ddim:
        # diffusers' DDIM takes eta per step: A1111's eta_ddim becomes the step's default
        scheduler.step = functools.partial(scheduler.step, eta=float(sampler_options.eta_ddim))
    return scheduler


def _zero_snr_betas() -> list[float]:
    """SD's training betas rescaled to zero terminal SNR (A1111's rescale, last alpha_bar 4.9e-8)."""
    ac = TrainingSigmas.from_config(**SD_TRAINING_SCHEDULE, rescale_betas_zero_snr=True).alphas_cumprod.double()
    return (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()


def _constructor_params(cls: type) -> set[str]:
    if cls is DPMPP2SAncestralScheduler:
        cls = EulerDiscreteScheduler  # it forwards its configuration there
    return set(inspect.signature(cls.__init__).parameters) - {"self"}
