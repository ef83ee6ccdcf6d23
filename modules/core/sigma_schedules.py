"""A1111's schedule types as sigma lists, for the samplers of :mod:`modules.core.ksampling`.

Each function takes the step count and a :class:`TrainingSigmas` (the model's discrete noise levels,
k-diffusion's ``DiscreteSchedule``) and returns a float32 tensor of sigmas, high to low, ending at 0
(KL Optimal, like A1111, ends at the smallest training sigma instead). ``sigma_min``/``sigma_max``
are the training range, as A1111 passes them (``model_wrap.sigmas[0]``/``[-1]``). The formulas are
A1111 1.10's ``sd_schedulers`` and k-diffusion's ``get_sigmas_*`` (defaults: Karras rho 7,
Polyexponential rho 1, Beta alpha = beta = 0.6); DDIM's list may have a different length than the
requested step count, as in A1111.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch

# Align Your Steps: NVIDIA's published 10-step sigmas (SD 1.5 and SDXL), log-linearly interpolated
# to other step counts, as A1111 does.
AYS_SIGMAS = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}
BETA_ALPHA = 0.6  # A1111's beta_dist_alpha / beta_dist_beta defaults
BETA_BETA = 0.6


class TrainingSigmas:
    """The model's 1000 training sigmas (ascending) and k-diffusion's sigma <-> t interpolation."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = alphas_cumprod.to(torch.float32)
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self._range: tuple[float, float] | None = None  # A1111's sigma_min/sigma_max options

    def with_range(self, sigma_min: float | None = None, sigma_max: float | None = None) -> "TrainingSigmas":
        """The same training sigmas with the range the schedule functions see replaced (A1111's
        ``sigma_min``/``sigma_max`` options); None keeps the model's end."""
        view = object.__new__(TrainingSigmas)
        view.__dict__.update(self.__dict__)
        view._range = (self.sigma_min if sigma_min is None else float(sigma_min),
                       self.sigma_max if sigma_max is None else float(sigma_max))
        return view

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor) -> "TrainingSigmas":
        """A model given by its noise levels themselves (ascending), e.g. a flow model's shifted
        sigmas: the schedule functions then run on its range and its levels."""
        view = object.__new__(cls)
        view.sigmas = sigmas.to(torch.float32)
        view.log_sigmas = view.sigmas.log()
        view.alphas_cumprod = 1 / (1 + view.sigmas.double() ** 2)
        view._range = None
        return view

    @classmethod
    def from_config(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                    beta_schedule: str = "scaled_linear", rescale_betas_zero_snr: bool = False, **_ignored):
        """Like the LDM/A1111 model: betas in float64, alphas_cumprod stored as float32."""
        if beta_schedule == "scaled_linear":
            betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
        elif beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
        alphas_cumprod = np.cumprod(1.0 - betas)
        if rescale_betas_zero_snr:
            # zero terminal SNR (A1111 rescales the same way); the last sigma would be infinite, so it
            # is kept just below, as A1111 does with its 4096 cap
            sqrt_ac = np.sqrt(alphas_cumprod)
            first, last = sqrt_ac[0], sqrt_ac[-1]
            sqrt_ac = (sqrt_ac - last) * first / (first - last)
            alphas_cumprod = sqrt_ac ** 2
            alphas_cumprod[-1] = 4.8973451890853435e-08
        return cls(torch.tensor(alphas_cumprod, dtype=torch.float32))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0]) if self._range is None else self._range[0]

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1]) if self._range is None else self._range[1]

    def sigma_to_t(self, sigma, quantize: bool = False) -> torch.Tensor:
        """k-diffusion's ``DiscreteSchedule.sigma_to_t``: t interpolated in log sigma, or with
        ``quantize`` (A1111's ``enable_quantization``) the nearest training timestep (as a float)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).to(torch.float32).view(torch.as_tensor(sigma).shape)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        t = (1 - w) * low + w * high
        return t.view(torch.as_tensor(sigma).shape)

    def t_to_sigma(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float32), sigmas.new_zeros([1], dtype=torch.float32)])


def uniform(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    t = torch.linspace(len(ts.sigmas) - 1, 0, n)
    return _append_zero(ts.t_to_sigma(t))


def karras_range(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): n sigmas evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def karras(n: int, ts: TrainingSigmas, family: str, rho: float = 7.0) -> torch.Tensor:
    return karras_range(n, ts.sigma_min, ts.sigma_max, rho)


def exponential(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(ts.sigma_max), math.log(ts.sigma_min), n).exp())


def polyexponential(n: int, ts: TrainingSigmas, family: str, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    log_min, log_max = math.log(ts.sigma_min), math.log(ts.sigma_max)
    return _append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def _t_range(ts: TrainingSigmas) -> tuple[float, float]:
    return float(ts.sigma_to_t(torch.tensor(ts.sigma_max))), float(ts.sigma_to_t(torch.tensor(ts.sigma_min)))


def sgm_uniform(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    start, end = _t_range(ts)
    return _append_zero(torch.stack([ts.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]]))


def normal(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    start, end = _t_range(ts)
    return _append_zero(torch.stack([ts.t_to_sigma(t) for t in torch.linspace(start, end, n)]))


def kl_optimal(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    a_min = torch.arctan(torch.tensor(ts.sigma_min))
    a_max = torch.arctan(torch.tensor(ts.sigma_max))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * a_min + (1.0 - frac) * a_max).to(torch.float32)


def align_your_steps(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    knots = AYS_SIGMAS["sdxl" if family == "sdxl" else "sd1"]
    if n == len(knots):
        return torch.tensor([*knots, 0.0], dtype=torch.float32)
    log_rising = np.log(np.asarray(knots[::-1]))
    rising = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(knots)), log_rising)
    return torch.tensor([*np.exp(rising)[::-1], 0.0], dtype=torch.float32)


def simple(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    stride = len(ts.sigmas) / n
    return torch.tensor([float(ts.sigmas[-(1 + int(i * stride))]) for i in range(n)] + [0.0], dtype=torch.float32)


def ddim(n: int, ts: TrainingSigmas, family: str) -> torch.Tensor:
    stride = max(len(ts.sigmas) // n, 1)
    picked = [float(ts.sigmas[i]) for i in range(1, len(ts.sigmas), stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


def beta(n: int, ts: TrainingSigmas, family: str, alpha: float = BETA_ALPHA, beta_: float = BETA_BETA) -> torch.Tensor:
    from scipy import stats

    quantiles = [float(stats.beta.ppf(q, alpha, beta_)) for q in 1 - np.linspace(0, 1, n)]
    lo, hi = ts.sigma_min, ts.sigma_max
    return torch.tensor([lo + q * (hi - lo) for q in quantiles] + [0.0], dtype=torch.float32)


SCHEDULES: Mapping[str, Callable[[int, TrainingSigmas, str], torch.Tensor]] = {
    "uniform": uniform,
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform,
    "kl_optimal": kl_optimal,
    "align_your_steps": align_your_steps,
    "simple": simple,
    "normal": normal,
    "ddim": ddim,
    "beta": beta,
}


def sigmas_for(schedule_id: str, steps: int, ts: TrainingSigmas, family: str = "sd1",
               discard_penultimate: bool = False, *, sigma_min: float | None = None,
               sigma_max: float | None = None, rho: float | None = None, alpha: float | None = None,
               beta: float | None = None) -> torch.Tensor:
    """The sigmas of ``steps`` steps; ``discard_penultimate`` (A1111's DPM2 / DPM++ 3M SDE option)
    plans one step more and drops the next-to-last sigma. ``sigma_min``/``sigma_max`` replace the
    range the schedule functions see, ``rho`` Karras' / Polyexponential's, ``alpha``/``beta`` Beta's
    (A1111's sampler parameters); a schedule without such a parameter ignores it, as in A1111."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sigma_min is not None or sigma_max is not None:
        ts = ts.with_range(sigma_min, sigma_max)
    function = SCHEDULES[schedule_id]
    extra = {}
    if rho is not None and schedule_id in ("karras", "polyexponential"):
        extra["rho"] = rho
    if schedule_id == "beta":
        extra.update(alpha=BETA_ALPHA if alpha is None else alpha, beta_=BETA_BETA if beta is None else beta)
    sigmas = function(steps + (1 if discard_penultimate else 0), ts, family, **extra)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


UNIPC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


def unipc_times(skip_type: str, n: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's UniPC times (its uni_pc.py ``get_time_steps`` on the discrete ``NoiseScheduleVP``):
    ``n + 1`` continuous times from t_T = 1 down to t_0 = 1/N (N training steps), uniform in t
    ("time_uniform"), in sqrt(t) ("time_quadratic") or in log SNR ("logSNR"; log alpha interpolated
    piecewise linearly over t_i = (i + 1) / N). The model sees (t - 1/N) * N, float64 here."""
    log_alpha = 0.5 * torch.as_tensor(alphas_cumprod, dtype=torch.float64).log().numpy()
    total = len(log_alpha)
    t_grid = np.linspace(0.0, 1.0, total + 1)[1:]
    t_T, t_0 = 1.0, 1.0 / total
    if skip_type == "time_uniform":
        t = np.linspace(t_T, t_0, n + 1)
    elif skip_type == "time_quadratic":
        t = np.linspace(t_T ** 0.5, t_0 ** 0.5, n + 1) ** 2
    elif skip_type == "logSNR":
        def lam(time):
            lmc = np.interp(time, t_grid, log_alpha)
            return lmc - 0.5 * np.log(1 - np.exp(2 * lmc))

        lambdas = np.linspace(lam(t_T), lam(t_0), n + 1)
        log_alphas = -0.5 * np.logaddexp(0.0, -2.0 * lambdas)
        t = np.interp(log_alphas, log_alpha[::-1], t_grid[::-1])
    else:
        raise ValueError(f"UniPC skip type must be one of {', '.join(UNIPC_SKIP_TYPES)}, not {skip_type!r}")
    return torch.from_numpy(np.asarray(t, dtype=np.float64))


def unipc_sigmas(times: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The sigmas (k-diffusion's, sqrt(1 - a) / sqrt(a)) of UniPC times, log alpha interpolated as
    A1111's NoiseScheduleVP does."""
    log_alpha = 0.5 * torch.as_tensor(alphas_cumprod, dtype=torch.float64).log().numpy()
    t_grid = np.linspace(0.0, 1.0, len(log_alpha) + 1)[1:]
    lmc = np.interp(times.numpy(), t_grid, log_alpha)
    return torch.from_numpy(np.sqrt(1 - np.exp(2 * lmc)) / np.exp(lmc))
