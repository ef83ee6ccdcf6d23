"""A1111's "Sampler parameters" settings as one value, and what each does to one sampler.

:class:`SamplerOptions` holds the options under their A1111 names (``eta_ancestral``, ``s_churn``,
``sigma_min`` ...). :func:`kdiff_plan` says, for one k-diffusion algorithm on one schedule type, which
of them apply and which infotext keys A1111 writes for them; :mod:`modules.core.samplers` uses it to
build the scheduler and to answer ``infotext_params``. The rules are A1111 1.10's:

* ``eta_ancestral`` goes to every algorithm that takes an eta (ancestral and SDE ones, DPM fast);
  "Eta" is written when it is not 1. ``eta_ddim`` goes to DDIM and DDIM CFG++ ("Eta DDIM" when not 0).
* ``s_churn``/``s_tmin``/``s_tmax`` reach Euler, Heun and DPM2 only; ``s_noise`` those three and the
  noise-adding ones but Euler a and Restart (A1111's ``sampler_extra_params``). Each key is written
  when its value is not the default (``s_tmax`` 0 means infinity).
* ``use_old_karras_scheduler_sigmas`` (Compatibility): the range every schedule function sees is
  0.1 to 10 instead of the model's (A1111 1.10 passes it to all of them, not only Karras); a
  ``sigma_min``/``sigma_max`` option set still replaces its end. No infotext key. Flow models
  (sigmas ending at 1) keep their own range.
* ``sigma_min``/``sigma_max`` (0: the model's) and ``rho`` (0: the schedule's own, 7 for Karras,
  1 for Polyexponential, no other schedule has one) reach the schedule function; A1111 writes
  "Schedule min/max sigma" whenever a schedule function runs (every schedule type but a sampler's
  "Automatic" that means Uniform), even for the few that ignore the range (Uniform, Simple, DDIM,
  Align Your Steps), and "Schedule rho" only for Karras and Polyexponential.
* Beta: "Beta schedule alpha"/"Beta schedule beta" are always written (A1111 does).
* ``always_discard_next_to_last_sigma`` drops the next-to-last sigma of the samplers that do not
  already (DPM2, DPM2 a, DPM++ 3M SDE do): "Discard penultimate sigma: True".
* ``sgm_noise_multiplier``: txt2img's starting noise is scaled by sqrt(1 + sigma_max^2) instead of
  sigma_max (SDXL's reference code): "SGM noise multiplier: True" (txt2img only, as A1111).
* UniPC: ``uni_pc_variant`` (bh1/bh2), ``uni_pc_order``, ``uni_pc_lower_order_final``,
  ``uni_pc_skip_type`` (the times it runs at: uniform in t, in sqrt(t) or in log SNR); A1111 writes no
  infotext for them (its option table names "UniPC skip type" etc., so a pasted one is read back).
* ``enable_quantization``: the k-diffusion samplers call the model at the nearest training timestep
  instead of the interpolated one (k-diffusion's ``quantize=True``, A1111's CompVisDenoiser); no
  infotext key.
* ``sd_noise_schedule`` "Zero Terminal SNR": the training schedule rescaled to zero terminal SNR
  (last alpha_bar 4.9e-8, A1111's) for every sampler: "Noise Schedule: Zero Terminal SNR", first.
* ``skip_early_cond``, ``s_min_uncond`` (NGMS) and ``s_min_uncond_all`` skip the negative prompt's
  model pass on some steps (:class:`modules.core.denoise.UncondSkipping`): "Skip Early CFG" and
  "NGMS" (A1111 writes NGMS among the last keys, after RNG; "NGMS all steps" is written here too, so
  that a paste brings the whole setting back).

The request fields A1111's API and ``p`` carry for some of them (``eta``, ``s_churn``, ``s_tmin``,
``s_tmax``, ``s_noise``, ``s_min_uncond``) win over the options when given: :func:`field_overrides`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from .sigma_schedules import BETA_ALPHA, BETA_BETA, TrainingSigmas


@dataclass(frozen=True)
class SamplerOptions:
    """A1111 1.10's sampler parameters (option names as fields); the defaults change nothing."""

    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: infinity
    s_noise: float = 1.0
    sigma_min: float = 0.0  # 0: the model's smallest training sigma
    sigma_max: float = 0.0  # 0: the model's largest
    rho: float = 0.0  # 0: the schedule's own (Karras 7, Polyexponential 1)
    always_discard_next_to_last_sigma: bool = False
    sgm_noise_multiplier: bool = False
    uni_pc_variant: str = "bh1"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    uni_pc_skip_type: str = "time_uniform"  # the times UniPC runs at (A1111's uni_pc.py get_time_steps)
    beta_dist_alpha: float = BETA_ALPHA
    beta_dist_beta: float = BETA_BETA
    sd_noise_schedule: str = "Default"  # "Zero Terminal SNR": the training schedule rescaled
    # the negative prompt's model pass skipped (modules.core.denoise.UncondSkipping)
    skip_early_cond: float = 0.0  # the first fraction of the model calls
    s_min_uncond: float = 0.0  # NGMS: below this sigma, every other call (all with s_min_uncond_all)
    s_min_uncond_all: bool = False
    # Compatibility: the schedule functions see sigmas 0.1 to 10 instead of the model's range (A1111
    # writes no infotext key for it; sigma_min/sigma_max, when set, still win)
    use_old_karras_scheduler_sigmas: bool = False
    # k-diffusion's quantize=True: the model is called at the nearest training timestep (no infotext)
    enable_quantization: bool = False

    @property
    def zero_terminal_snr(self) -> bool:
        return self.sd_noise_schedule == ZERO_TERMINAL_SNR

    @classmethod
    def from_options(cls, get: Callable[[str], Any]) -> "SamplerOptions":
        """From an option getter (``Options.get``); a missing option keeps its default."""
        values = {}
        for f in fields(cls):
            value = get(f.name)
            if value is not None:
                values[f.name] = value
        return cls(**values)


# A1111's sampler_extra_params, by k-diffusion algorithm (modules.core.ksampling.ALGORITHMS)
CHURN_ALGORITHMS = frozenset({"euler", "heun", "dpm_2"})
S_NOISE_ALGORITHMS = CHURN_ALGORITHMS | {"dpm_fast", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                                         "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}
# the algorithms whose function takes an eta (A1111 passes eta_ancestral to them)
ETA_ALGORITHMS = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpm_fast", "dpm_adaptive",
                            "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"})
DEFAULT_RHO = {"karras": 7.0, "polyexponential": 1.0}  # sd_schedulers' default_rho (-1: none)
OLD_KARRAS_RANGE = (0.1, 10.0)  # use_old_karras_scheduler_sigmas: (sigma_min, sigma_max)
ZERO_TERMINAL_SNR = "Zero Terminal SNR"


@dataclass
class KPlan:
    """What the options do to one k-diffusion algorithm on one schedule."""

    algorithm_kwargs: dict  # keyword arguments of the algorithm's function (eta, s_churn, ...)
    schedule_kwargs: dict  # sigma_min, sigma_max, rho, alpha, beta for modules.core.sigma_schedules
    discard_penultimate: bool | None  # None: the algorithm's own choice
    sgm_noise_multiplier: bool
    infotext: dict  # A1111's keys, in its order

    def changes_anything(self) -> bool:
        defaults = {"eta": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
        changed_kwargs = any(defaults.get(k) != v for k, v in self.algorithm_kwargs.items())
        changed_schedule = {k: v for k, v in self.schedule_kwargs.items()
                            if k not in ("alpha", "beta") or v != {"alpha": BETA_ALPHA, "beta": BETA_BETA}[k]}
        return bool(changed_kwargs or changed_schedule or self.discard_penultimate or self.sgm_noise_multiplier)


def kdiff_plan(algorithm: str, schedule_id: str, schedule_function: bool, options: SamplerOptions | None,
               training: TrainingSigmas, *, discards_already: bool, txt2img: bool = True) -> KPlan:
    """The options' effect on k-diffusion ``algorithm`` over ``schedule_id`` (the concrete schedule).
    ``schedule_function`` is False for a sampler's "Automatic" that means Uniform (A1111 then takes the
    model's own sigmas and reads none of the schedule options)."""
    o = options or SamplerOptions()
    kwargs: dict = {}
    schedule: dict = {}
    info: dict = noise_schedule_infotext(o)

    # sigmas (A1111's KDiffusionSampler.get_sigmas, in its order)
    discard = None
    if o.always_discard_next_to_last_sigma and not discards_already:
        discard = True
        info["Discard penultimate sigma"] = True
    if schedule_function:
        if o.use_old_karras_scheduler_sigmas and training.sigma_max > 1.0:
            # (a flow model's sigmas end at 1: SD's old range means nothing there, it keeps its own)
            schedule["sigma_min"], schedule["sigma_max"] = OLD_KARRAS_RANGE
        if o.sigma_min != 0 and o.sigma_min != training.sigma_min:
            schedule["sigma_min"] = float(o.sigma_min)
            info["Schedule min sigma"] = o.sigma_min
        if o.sigma_max != 0 and o.sigma_max != training.sigma_max:
            schedule["sigma_max"] = float(o.sigma_max)
            info["Schedule max sigma"] = o.sigma_max
        default_rho = DEFAULT_RHO.get(schedule_id)
        if default_rho is not None and o.rho != 0 and o.rho != default_rho:
            schedule["rho"] = float(o.rho)
            info["Schedule rho"] = o.rho
        if schedule_id == "beta":
            schedule["alpha"], schedule["beta"] = float(o.beta_dist_alpha), float(o.beta_dist_beta)
            info["Beta schedule alpha"] = o.beta_dist_alpha
            info["Beta schedule beta"] = o.beta_dist_beta

    # txt2img's starting noise (KDiffusionSampler.sample)
    sgm = bool(o.sgm_noise_multiplier) and txt2img
    if sgm:
        info["SGM noise multiplier"] = True

    # the algorithm's own parameters (Sampler.initialize)
    if algorithm in ETA_ALGORITHMS:
        kwargs["eta"] = float(o.eta_ancestral)
        if o.eta_ancestral != 1.0:
            info["Eta"] = o.eta_ancestral
    if algorithm in CHURN_ALGORITHMS:
        s_tmax = o.s_tmax or math.inf
        kwargs.update(s_churn=float(o.s_churn), s_tmin=float(o.s_tmin), s_tmax=float(s_tmax))
        if o.s_churn != 0.0:
            info["Sigma churn"] = o.s_churn
        if o.s_tmin != 0.0:
            info["Sigma tmin"] = o.s_tmin
        if s_tmax != math.inf:
            info["Sigma tmax"] = s_tmax
    if algorithm in S_NOISE_ALGORITHMS:
        kwargs["s_noise"] = float(o.s_noise)
        if o.s_noise != 1.0:
            info["Sigma noise"] = o.s_noise
    return KPlan(kwargs, schedule, discard, sgm, info)


def noise_schedule_infotext(options: SamplerOptions) -> dict:
    """A1111 writes the noise schedule before any sampler key (apply_alpha_schedule_override)."""
    return {"Noise Schedule": options.sd_noise_schedule} if options.zero_terminal_snr else {}


def timestep_infotext(sampler: str, options: SamplerOptions | None) -> dict:
    """A1111's keys for its timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC)."""
    o = options or SamplerOptions()
    info = noise_schedule_infotext(o)
    if sampler in ("DDIM", "DDIM CFG++") and o.eta_ddim != 0.0:
        info["Eta DDIM"] = o.eta_ddim
    return info


def uncond_skip_infotext(options: SamplerOptions) -> dict:
    info = {}
    if options.skip_early_cond:
        info["Skip Early CFG"] = options.skip_early_cond
    if options.s_min_uncond:
        info["NGMS"] = options.s_min_uncond
        if options.s_min_uncond_all:
            info["NGMS all steps"] = True
    return info


# the timestep samplers (modules.core.samplers' diffusers ones): A1111's eta field means eta_ddim there
TIMESTEP_SAMPLERS = frozenset({"DDIM", "DDIM CFG++", "PLMS", "UniPC"})


FIELD_OPTIONS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond")  # A1111's request fields


def field_overrides(sampler_name: str | None, *, eta=None, s_churn=None, s_tmin=None, s_tmax=None, s_noise=None,
                    s_min_uncond=None) -> dict[str, Any]:
    """A1111's request fields as this job's option values (A1111: a field given wins over its option;
    ``eta`` is eta_ddim for the timestep samplers and eta_ancestral for k-diffusion's)."""
    out: dict[str, Any] = {}
    if eta is not None:
        out["eta_ddim" if sampler_name in TIMESTEP_SAMPLERS else "eta_ancestral"] = float(eta)
    for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_tmax", s_tmax), ("s_noise", s_noise),
                        ("s_min_uncond", s_min_uncond)):
        if value is not None:
            out[name] = 0.0 if name == "s_tmax" and math.isinf(float(value)) else float(value)
    return out


# infotext key -> option, for paste and the API's override_settings: A1111's `infotext=` names, plus
# the keys A1111 writes under another name ("Beta schedule alpha", "SGM noise multiplier": A1111's own
# option labels say "Beta scheduler alpha" and "SGM noise multplier", so its paste misses them)
INFOTEXT_TO_OPTION: Mapping[str, str] = {
    "Eta DDIM": "eta_ddim",
    "Eta": "eta_ancestral",
    "Sigma churn": "s_churn",
    "Sigma tmin": "s_tmin",
    "Sigma tmax": "s_tmax",
    "Sigma noise": "s_noise",
    "Schedule min sigma": "sigma_min",
    "Schedule max sigma": "sigma_max",
    "Schedule rho": "rho",
    "Discard penultimate sigma": "always_discard_next_to_last_sigma",
    "SGM noise multiplier": "sgm_noise_multiplier",
    "SGM noise multplier": "sgm_noise_multiplier",
    "UniPC variant": "uni_pc_variant",
    "UniPC order": "uni_pc_order",
    "UniPC lower order final": "uni_pc_lower_order_final",
    "UniPC skip type": "uni_pc_skip_type",
    "Beta schedule alpha": "beta_dist_alpha",
    "Beta schedule beta": "beta_dist_beta",
    "Beta scheduler alpha": "beta_dist_alpha",
    "Beta scheduler beta": "beta_dist_beta",
    "Noise Schedule": "sd_noise_schedule",
    "Skip Early CFG": "skip_early_cond",
    "NGMS": "s_min_uncond",
    "NGMS all steps": "s_min_uncond_all",
}
