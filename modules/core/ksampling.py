"""k-diffusion's samplers on any A1111 schedule type, behind diffusers' scheduler API.

Each algorithm is written once, as k-diffusion writes it, over a list of sigmas: a generator that
``yield``s ``(x, sigma)`` whenever it needs the denoiser and receives ``(denoised, x_seen)`` back
(``x_seen`` is the latents the loop actually fed the model: hooks such as inpainting may have edited
them; the algorithms take it at their state points and ignore it at intermediate points). When the
sigmas run out it returns the final latents. :class:`KSamplerScheduler` turns that into
``set_timesteps`` / ``scale_model_input`` / ``step`` for :mod:`modules.core.denoise`, with the
CompVis denoiser's scalings (eps or v) and k-diffusion's sigma -> timestep interpolation.

The model calls an algorithm makes depend only on the sigmas, so ``set_timesteps`` learns them by a
dry run on a scalar (the loop needs them up front). Noise: SDE samplers take a Brownian tree seeded
like A1111's ``create_noise_sampler`` (one tree per image, entropy = the image seed, over the
schedule's [sigma_min, sigma_max]); ancestral ones draw ``randn`` from the per-image generators.

The math is the published k-diffusion / DPM-Solver / A1111 math; tests compare each algorithm with
the ``k-diffusion`` package on the same denoiser and noise (tests/test_samplers_reference.py). On a
flow model (``flow=``) the algorithms that add noise get :class:`~modules.core.flow_matching.FlowSpace`
(tests/test_flow_samplers.py).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from . import flow_matching
from . import ksampling_algorithms as algorithms
from .sigma_schedules import TrainingSigmas, sigmas_for


class BrownianNoise:
    """k-diffusion's ``BrownianTreeNoiseSampler`` contract: one ``torchsde.BrownianTree`` per image
    (entropy = its seed) over [sigma_min, sigma_max]; ``noise(s, s_next)`` is the tree's increment
    between the two sigmas divided by sqrt(|s_next - s|), i.e. unit-variance noise."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: list[int] | None):
        import torchsde

        lo, hi = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        if seeds is None:
            seeds = [int(torch.randint(0, 2 ** 63 - 1, []))] * x.shape[0]
        if len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} Brownian seeds for a batch of {x.shape[0]}")
        w0 = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(lo, w0, hi, entropy=int(s)) for s in seeds]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():
            # torchsde warns when the schedule's own end points round a hair outside the tree's
            # float32 interval (A1111 logs the same warnings); the noise is unaffected
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign  # the trees run upward in sigma
        return w / (b - a).abs().sqrt()


class _ZeroNoise:
    def __call__(self, sigma, sigma_next):
        return 0.0


@dataclass
class KSamplerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


@dataclass(frozen=True)
class KAlgorithm:
    """One k-diffusion sampler: its generator and how it is fed."""

    function: Callable
    noise: str = "none"  # "none" | "brownian" | "randn"
    order: int = 1  # 2: two model calls per step but the last (Heun-like), for img2img's start
    discard_penultimate: bool = False  # A1111's discard_next_to_last_sigma
    uses_sigma_range: bool = False  # DPM fast: only [sigma_min, sigma_max] and the step count
    adaptive: bool = False  # DPM adaptive: its model calls depend on the model's answers (OpenTimesteps)
    options: tuple = ()  # keyword arguments for the function


ALGORITHMS: dict[str, KAlgorithm] = {
    "euler": KAlgorithm(algorithms.euler),
    "euler_ancestral": KAlgorithm(algorithms.euler_ancestral, noise="randn"),
    "lms": KAlgorithm(algorithms.lms),
    "heun": KAlgorithm(algorithms.heun, order=2),
    "dpm_2": KAlgorithm(algorithms.dpm_2, order=2, discard_penultimate=True),
    "dpm_2_ancestral": KAlgorithm(algorithms.dpm_2_ancestral, noise="randn", order=2, discard_penultimate=True),
    "dpmpp_2s_ancestral": KAlgorithm(algorithms.dpmpp_2s_ancestral, noise="randn", order=2),
    "dpmpp_2m": KAlgorithm(algorithms.dpmpp_2m),
    "dpmpp_sde": KAlgorithm(algorithms.dpmpp_sde, noise="brownian", order=2),
    "dpmpp_2m_sde": KAlgorithm(algorithms.dpmpp_2m_sde, noise="brownian"),
    "dpmpp_2m_sde_heun": KAlgorithm(algorithms.dpmpp_2m_sde, noise="brownian", options=(("solver", "heun"),)),
    "dpmpp_3m_sde": KAlgorithm(algorithms.dpmpp_3m_sde, noise="brownian", discard_penultimate=True),
    "dpm_fast": KAlgorithm(algorithms.dpm_fast, noise="randn", uses_sigma_range=True),
    "dpm_adaptive": KAlgorithm(algorithms.dpm_adaptive, noise="randn", uses_sigma_range=True, adaptive=True),
    "restart": KAlgorithm(algorithms.restart, noise="randn", order=2),
    # k-diffusion's sample_lcm (A1111's LCM): SD's Automatic / Uniform run diffusers' LCMScheduler,
    # the other schedule types this
    "lcm": KAlgorithm(algorithms.lcm, noise="randn"),
}
# algorithms only flow models run here (SD's PLMS is diffusers' PNDMScheduler)
FLOW_ALGORITHMS: dict[str, KAlgorithm] = {
    "plms": KAlgorithm(algorithms.plms),
}


class OpenTimesteps:
    """The timesteps of an adaptive sampler, known one model call ahead (it decides the next call
    from the model's last answer). Iterating yields each call's timestep as the sampler asks for it
    and stops when it is done; indexing reaches the calls asked for so far (``[:1]`` is where
    sampling starts, ``[begin:]`` the sequence itself: it always starts where sampling starts).
    ``len`` is the calls asked for so far, plus at least one while the sampler runs, and never less
    than ``estimate`` before that: the loop's progress total."""

    def __init__(self, scheduler: "KSamplerScheduler", estimate: int):
        self.scheduler = scheduler
        self.estimate = estimate

    def __len__(self) -> int:
        known = len(self.scheduler._calls)
        return known if self.scheduler.finished else max(self.estimate, known + 1)

    def __iter__(self):
        i = 0
        while i < len(self.scheduler._calls):
            yield self.scheduler._timestep_of(i)
            i += 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            if index.stop is None and index.step is None:
                return self
            known = range(len(self.scheduler._calls))[index]
            return torch.stack([self.scheduler._timestep_of(i) for i in known])
        return self.scheduler._timestep_of(index)


class KSamplerScheduler:
    """A k-diffusion algorithm on the sigmas of one A1111 schedule type (diffusers' scheduler API).

    A1111's sampler parameters (:mod:`modules.core.sampler_options`): ``eta`` and ``algorithm_kwargs``
    (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``) go to the algorithm where its function takes
    them; ``schedule_kwargs`` (``sigma_min``, ``sigma_max``, ``rho``, ``alpha``, ``beta``) to the schedule
    (:func:`~modules.core.sigma_schedules.sigmas_for`); ``discard_penultimate`` overrides the
    algorithm's own choice; ``sgm_noise_multiplier`` makes txt2img's starting noise
    sqrt(1 + sigma_max^2) instead of sigma_max; ``quantize`` (A1111's ``enable_quantization``) feeds
    the model the nearest training timestep.
    """

    def __init__(self, algorithm: str, schedule_id: str, *, prediction_type: str = "epsilon",
                 training: TrainingSigmas | None = None, model_family: str = "sd1", eta: float = 1.0,
                 algorithm_kwargs: dict | None = None, schedule_kwargs: dict | None = None,
                 discard_penultimate: bool | None = None, sgm_noise_multiplier: bool = False,
                 flow: tuple | None = None, quantize: bool = False):
        known = {**ALGORITHMS, **FLOW_ALGORITHMS} if flow is not None else ALGORITHMS
        if algorithm not in known:
            raise ValueError(f"unknown k-diffusion algorithm {algorithm!r}")
        if prediction_type not in ("epsilon", "v_prediction", "flow"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'flow', not {prediction_type!r}")
        if (prediction_type == "flow") != (flow is not None):
            raise ValueError("a flow model's sampler needs its schedule: flow=(FlowShift, latent patches)")
        # flow models (Flux, SD3; ComfyUI's CONST sampling): x = (1 - sigma) x0 + sigma noise, the model
        # predicts the velocity, sees sigma * 1000 as its timestep and the latents unscaled; the
        # schedule id "flow" is the family's own schedule (its "Automatic"), the others are A1111's
        # schedule types on the model's shifted sigmas (flow_matching.schedule_sigmas)
        self.flow = flow
        self.space = flow_matching.FlowSpace(*flow) if flow is not None else algorithms.VE
        self.algorithm = known[algorithm]
        self.algorithm_name = algorithm
        self.schedule_id = schedule_id
        self.prediction_type = prediction_type
        self.training = training or TrainingSigmas.from_config()
        self.model_family = model_family
        self.eta = eta
        self.algorithm_kwargs = dict(algorithm_kwargs or {})
        self.schedule_kwargs = dict(schedule_kwargs or {})
        self.discard_penultimate = (self.algorithm.discard_penultimate if discard_penultimate is None
                                    else bool(discard_penultimate))
        self.sgm_noise_multiplier = sgm_noise_multiplier
        # A1111's enable_quantization (k-diffusion's quantize=True): the model sees the nearest
        # training timestep instead of the interpolated one; the scalings keep the exact sigma
        self.quantize = bool(quantize) and flow is None
        self.order = self.algorithm.order
        # what callers read of a diffusers scheduler's config
        self.config = SimpleNamespace(prediction_type=prediction_type, num_train_timesteps=len(self.training.sigmas),
                                      schedule_type=schedule_id, algorithm=algorithm, eta=eta)
        self.noise_sampler_seed = None if self.algorithm.noise == "brownian" else False
        self.timesteps = None
        self.sigmas = None

    # ---- plan ---------------------------------------------------------------------------------
    def _run(self, x, sigmas, noise):
        kwargs = dict(self.algorithm.options)
        accepted = inspect.signature(self.algorithm.function).parameters
        if "eta" in accepted:
            kwargs["eta"] = self.eta  # as A1111 passes its eta to the samplers that take one
        if "space" in accepted:
            kwargs["space"] = self.space
        kwargs.update({k: v for k, v in self.algorithm_kwargs.items() if k in accepted})
        if self.algorithm.uses_sigma_range:
            positive = sigmas[sigmas > 0]
            return self.algorithm.function(x, float(positive.min()), float(sigmas.max()), len(sigmas) - 1,
                                           noise, **kwargs)
        return self.algorithm.function(x, sigmas, noise, **kwargs)

    def _eval_sigmas(self, sigmas: torch.Tensor) -> list[torch.Tensor]:
        """The sigma of every model call, from a dry run on a scalar."""
        calls, gen = [], self._run(torch.zeros(1), sigmas, _ZeroNoise())
        try:
            x, sigma = next(gen)
            while True:
                calls.append(torch.as_tensor(sigma, dtype=torch.float32))
                x, sigma = gen.send((torch.zeros(1), x))
        except StopIteration:
            return calls

    def _plan(self, sigmas: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.algorithm.adaptive:  # only the first call is known before sampling
            calls = [sigmas.max().to(torch.float32)]
        else:
            calls = self._eval_sigmas(sigmas)
        if self.flow is not None:
            return calls, (torch.stack(calls) * 1000 if calls else torch.zeros(0))
        ts = self.training.sigma_to_t(torch.stack(calls), self.quantize) if calls else torch.zeros(0)
        return calls, ts

    def set_timesteps(self, num_inference_steps: int, device=None):
        if self.flow is not None and self.algorithm.uses_sigma_range:
            # DPM fast / adaptive ignore the schedule type: the flow model's whole sigma range
            sigmas = flow_matching.schedule_sigmas("uniform", num_inference_steps, *self.flow)
        elif self.flow is not None and self.schedule_id == "flow":
            sigmas = flow_matching.flow_sigmas(*self.flow, num_inference_steps)
        elif self.flow is not None:
            sigmas = flow_matching.schedule_sigmas(self.schedule_id, num_inference_steps, *self.flow,
                                                   self.discard_penultimate, **self.schedule_kwargs)
        else:
            sigmas = sigmas_for(self.schedule_id, num_inference_steps, self.training, self.model_family,
                                self.discard_penultimate, **self.schedule_kwargs)
        if self.flow is None and self.algorithm.uses_sigma_range and self.schedule_id != "uniform":
            # DPM fast / adaptive ignore the schedule type (A1111 hands them the training range)
            sigmas = sigmas_for("uniform", num_inference_steps, self.training, self.model_family)
        self.num_inference_steps = num_inference_steps
        self.sigmas = sigmas
        self._device = device
        self._calls, ts = self._plan(sigmas)
        self._call_timesteps = {}
        self.timesteps = OpenTimesteps(self, num_inference_steps) if self.algorithm.adaptive else ts.to(device)
        self._start_sigmas = None
        self._begin = 0
        self._done = 0
        self._gen = None
        self._request = None
        self._noise = None

    def set_begin_index(self, begin_index: int = 0):
        """img2img: restart the algorithm at step ``begin_index // order`` on the rest of the sigmas
        (A1111's ``sigma_sched``); the timesteps from ``begin_index`` on are replanned to match."""
        step = min(begin_index // self.order, len(self.sigmas) - 2)
        self._start_sigmas = self.sigmas[step:]
        calls, ts = self._plan(self._start_sigmas)
        if self.algorithm.adaptive:  # the open sequence starts again from the img2img start
            self._calls, self._call_timesteps, self._begin = calls, {}, 0
            return
        self._calls = self._calls[:begin_index] + calls
        self.timesteps = torch.cat([self.timesteps[:begin_index].cpu(), ts]).to(self._device)
        self._begin = begin_index

    @property
    def init_noise_sigma(self) -> float:
        if self.sgm_noise_multiplier:
            return float((1.0 + self.sigmas[0].double() ** 2) ** 0.5)
        return float(self.sigmas[0])

    @property
    def begin_index(self):
        return self._begin

    def __len__(self):
        return len(self.training.sigmas)

    @property
    def finished(self) -> bool:
        """The algorithm has returned its final latents."""
        return self._gen is not None and self._request is None

    def _timestep_of(self, i: int) -> torch.Tensor:
        """The timestep of model call ``i`` (an adaptive sampler's calls as they come)."""
        if i not in self._call_timesteps:
            sigma = self._calls[i]
            t = sigma * 1000 if self.flow is not None else self.training.sigma_to_t(sigma.reshape(1), self.quantize)[0]
            self._call_timesteps[i] = t.to(self._device)
        return self._call_timesteps[i]

    # ---- model input / output -----------------------------------------------------------------
    def _sigma_now(self) -> torch.Tensor:
        return self._calls[self._begin + self._done]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        if self.flow is not None:
            return sample
        sigma = float(self._sigma_now())
        return sample / ((sigma ** 2 + 1) ** 0.5)

    def _to_denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.prediction_type in ("epsilon", "flow"):  # flow: the velocity is noise - x0
            return sample - sigma * model_output
        return sample / (sigma ** 2 + 1) - model_output * (sigma / (sigma ** 2 + 1) ** 0.5)

    def _make_noise(self, sample: torch.Tensor, generator):
        kind = self.algorithm.noise
        if kind == "none" and self.algorithm_kwargs.get("s_churn"):
            kind = "randn"  # churn's fresh noise comes from the per-image generators
        if kind == "brownian":
            positive = self.sigmas[self.sigmas > 0]
            return BrownianNoise(sample, positive.min(), self.sigmas.max(), self.noise_sampler_seed)
        if kind == "randn":
            return lambda sigma, sigma_next: randn_tensor(sample.shape, generator=generator,
                                                          device=sample.device, dtype=sample.dtype)
        return _ZeroNoise()

    def _start(self, sample: torch.Tensor, generator) -> None:
        sigmas = self.sigmas if self._start_sigmas is None else self._start_sigmas
        self._noise = self._make_noise(sample, generator)
        self._gen = self._run(sample, sigmas.to(sample.device), self._noise)
        self._request = next(self._gen)

    def first_model_input(self, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """The latents of the first model call, from the starting latents: the same unless the
        algorithm changes them before its first call (churn adds noise there). The loop calls it once,
        before the first step, with the generators of ``step``."""
        if self._gen is None:
            self._start(sample, generator)
        return self._request[0]

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        if self._gen is None:
            self._start(sample, generator)
        sigma = float(self._request[1])
        denoised = self._to_denoised(model_output, sample, sigma)
        try:
            self._request = self._gen.send((denoised, sample))
            prev = self._request[0]
            if self.algorithm.adaptive:
                self._calls.append(torch.as_tensor(self._request[1], dtype=torch.float32))
        except StopIteration as done:
            prev, self._request = done.value, None
        self._done += 1
        if not return_dict:
            return (prev, denoised)
        return KSamplerOutput(prev_sample=prev, pred_original_sample=denoised)

    def _sigma_of(self, t: torch.Tensor) -> torch.Tensor:
        """The sigma of a planned model call with timestep ``t`` (exact), else interpolated."""
        if self.algorithm.adaptive:
            planned = torch.stack([self._timestep_of(i) for i in range(len(self._calls))]).cpu()
        else:
            planned = self.timesteps.cpu()
        sigmas = []
        for value in t.reshape(-1).tolist():
            hits = (planned == value).nonzero()
            if len(hits) == 0:  # not a planned call: interpolate
                return t / 1000 if self.flow is not None else self.training.t_to_sigma(t)
            sigmas.append(self._calls[int(hits[0])])  # equal timesteps have equal sigmas
        return torch.stack(sigmas).view(t.shape)

    def add_noise(self, original_samples, noise, timesteps):
        """x0 + sigma(t) * noise (k-diffusion's units), sigma being that of the timestep's call."""
        sigma = self._sigma_of(torch.as_tensor(timesteps, dtype=torch.float32).cpu())
        sigma = sigma.to(original_samples.device, original_samples.dtype)
        while sigma.ndim < original_samples.ndim:
            sigma = sigma.unsqueeze(-1)
        if self.flow is not None:
            return (1 - sigma) * original_samples + sigma * noise
        return original_samples + noise * sigma
