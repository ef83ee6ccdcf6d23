"""Easel's k-diffusion samplers and A1111 schedule types against the ``k-diffusion`` package.

For every algorithm of :mod:`modules.core.ksampling` on every sigma schedule type, Easel's whole
path (``samplers.build_scheduler`` -> ``denoise.sample``: timesteps, input scaling, eps -> denoised,
the step) must land on the latents of k-diffusion's own ``sample_*`` function wrapped around the same
toy eps model with k-diffusion's ``DiscreteEpsDDPMDenoiser`` (the CompVis wrapping A1111 uses), on
the same sigmas, with the same noise (a seeded Brownian tree per image, or the same per-image randn
draws). Schedules are compared with k-diffusion's ``get_sigmas_*`` / ``DiscreteSchedule`` and with
A1111 1.10's ``sd_schedulers`` formulas, written out here on their own.

k-diffusion is a test requirement (requirements-test.txt, installed without its training deps);
only its ``sampling`` and ``external`` modules are loaded, under a private package name, because its
``__init__`` imports training code (torchvision, kornia, wandb ...).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.core import denoise, ksampling, samplers, sigma_schedules
from modules.core.sigma_schedules import TrainingSigmas
from tests.k_reference import (SEEDS, SHAPE, STEPS, TOL, _generators, _noise, _one_thread, eps_model,  # noqa: F401
                               kd, run_easel, training)

pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")  # torchsde, see ksampling

def run_reference(kd, training, algorithm, sigmas, quantize=False):
    """k-diffusion's sampler on the CompVis-wrapped toy model, fed the same noise as Easel."""
    model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=quantize)
    x = _noise() * sigmas[0]
    spec = ksampling.ALGORITHMS[algorithm]
    kwargs = dict(spec.options)
    if "solver" in kwargs:
        kwargs = {"solver_type": kwargs.pop("solver")}
    if spec.noise != "none":
        kwargs["eta"] = 1.0  # A1111's eta_ancestral (k-diffusion's dpm_fast defaults to 0)
    if spec.noise == "brownian":
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = kd.sampling.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=SEEDS)
    elif spec.noise == "randn":
        gens = _generators()
        kwargs["noise_sampler"] = lambda s, s_next: torch.stack(
            [torch.randn(SHAPE[1:], generator=g) for g in gens])
    function = getattr(kd.sampling, "sample_" + algorithm.replace("_heun", ""))
    if spec.uses_sigma_range:  # DPM fast takes the step count, DPM adaptive finds its own
        positive = sigmas[sigmas > 0]
        steps = () if spec.adaptive else (len(sigmas) - 1,)
        return function(model, x, float(positive.min()), float(sigmas.max()), *steps, disable=True, **kwargs)
    return function(model, x, sigmas, disable=True, **kwargs)


SIGMA_SCHEDULES = [sid for _label, sid in samplers.SCHEDULE_TYPES[1:]]


@pytest.mark.parametrize("algorithm", [a for a in ksampling.ALGORITHMS if a not in ("restart", "lcm")])
def test_algorithms_match_k_diffusion_on_every_schedule(kd, training, algorithm):
    worst = 0.0
    for schedule_id in SIGMA_SCHEDULES:
        scheduler = ksampling.KSamplerScheduler(algorithm, schedule_id, training=training)
        ours = run_easel(scheduler)
        ref = run_reference(kd, training, algorithm, scheduler.sigmas)
        assert torch.isfinite(ours).all(), schedule_id
        diff = float((ours - ref).abs().max())
        worst = max(worst, diff)
        assert diff < TOL, (algorithm, schedule_id, diff)
    print(f"{algorithm}: max |easel - k-diffusion| = {worst:.2e}")


def lcm_reference(training, sigmas):
    """k-diffusion's sample_lcm (newer than the pinned package, so written out from its contract):
    each step the prediction, noised afresh to the next sigma with the image's own noise."""
    generators = _generators()
    x = _noise() * sigmas[0]
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        c_in = 1 / (sigma ** 2 + 1) ** 0.5
        x = x - sigma * eps_model(x * c_in, training.sigma_to_t(sigma.reshape(1)).expand(x.shape[0]))
        if sigmas[i + 1] > 0:
            fresh = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators])
            x = x + sigmas[i + 1] * fresh
    return x


def job_reference(kd, training, scheduler):
    """The k-diffusion reference for whatever algorithm ``scheduler`` runs, on its sigmas."""
    algorithm, sigmas = scheduler.algorithm_name, scheduler.sigmas
    if algorithm == "lcm":
        return lcm_reference(training, sigmas)
    if algorithm == "restart":
        model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=False)
        gens = _generators()
        return restart_reference(kd, model, _noise() * sigmas[0], sigmas,
                                 lambda: torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens]))
    return run_reference(kd, training, algorithm, sigmas)


# A1111 1.10's timestep samplers (sd_samplers_timesteps: DDIM, PLMS, UniPC; DDIM CFG++) have no
# k-diffusion counterpart, nor has its LCM on its own schedule (sd_samplers_lcm's LCM denoiser)
NOT_K_DIFFUSION = {"DDIM", "DDIM CFG++", "PLMS", "UniPC"}


@pytest.mark.parametrize("name", [n for n in samplers.SAMPLER_NAMES if n not in NOT_K_DIFFUSION])
def test_job_path_matches_k_diffusion_for_every_schedule(kd, training, name):
    """What a job runs: ``build_scheduler`` with the default sampler parameters (as the engine passes
    them), for every schedule type the sampler takes, lands within TOL (2e-4 max abs on latents of
    size ~1..15) of k-diffusion's sampler on the same sigmas, model and noise."""
    from modules.core.sampler_options import SamplerOptions

    worst = 0.0
    for schedule in samplers.supported_schedules(name):
        scheduler = samplers.build_scheduler(name, schedule, options=SamplerOptions())
        if not isinstance(scheduler, ksampling.KSamplerScheduler):
            # only LCM's own schedule stays on diffusers (A1111's LCM denoiser, see samplers)
            assert name == "LCM" and samplers.effective_schedule(name, schedule) == "Uniform", (name, schedule)
            continue
        assert scheduler.algorithm_name == samplers.get_spec(name).kdiff
        ours = run_easel(scheduler)
        ref = job_reference(kd, training, scheduler)
        assert torch.isfinite(ours).all(), (name, schedule)
        diff = float((ours - ref).abs().max())
        worst = max(worst, diff)
        assert diff < TOL, (name, schedule, diff)
    print(f"{name}: max |job path - k-diffusion| = {worst:.2e}")


def test_job_path_does_not_depend_on_unrelated_options(training):
    """A sampler parameter that does not reach a sampler leaves its route and its picture alone."""
    from modules.core.sampler_options import SamplerOptions

    for name, schedule in [("DPM2", "Automatic"), ("DPM++ 2M", "Karras"), ("Euler a", "SGM Uniform")]:
        plain = samplers.build_scheduler(name, schedule, options=SamplerOptions())
        other = samplers.build_scheduler(name, schedule, options=SamplerOptions(eta_ddim=0.5, uni_pc_order=2))
        assert type(plain) is type(other) is ksampling.KSamplerScheduler
        assert torch.equal(run_easel(plain), run_easel(other)), name
    # DPM2 drops the next-to-last sigma on its default route too (A1111's discard_next_to_last_sigma)
    dpm2 = samplers.build_scheduler("DPM2", "Karras")
    dpm2.set_timesteps(STEPS)
    full = sigma_schedules.sigmas_for("karras", STEPS + 1, training)
    assert torch.equal(dpm2.sigmas, torch.cat([full[:-2], full[-1:]]))


@pytest.mark.parametrize("name,schedule", [("Euler", "Automatic"), ("DPM2", "Automatic"),
                                           ("DPM++ 2M SDE", "Karras"), ("DPM++ 2S a", "SGM Uniform")])
def test_enable_quantization_is_k_diffusions_quantize(kd, training, name, schedule):
    """A1111's enable_quantization: the model is called at the nearest training timestep (integers),
    as k-diffusion's CompVis denoiser with quantize=True; the result is k-diffusion's with it."""
    from modules.core.sampler_options import SamplerOptions

    scheduler = samplers.build_scheduler(name, schedule, options=SamplerOptions(enable_quantization=True))
    seen = []

    def model(x, t, cond):
        seen.extend(t.tolist())
        return eps_model(x, t)

    ours = denoise.sample(model, scheduler, _noise(), lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None),
                          steps=STEPS, cfg_scale=1.0, generators=_generators(), brownian_seeds=SEEDS)
    assert seen and all(float(t).is_integer() for t in seen), seen
    ref = run_reference(kd, training, scheduler.algorithm_name, scheduler.sigmas, quantize=True)
    assert float((ours - ref).abs().max()) < TOL
    # off (the default) the timesteps are interpolated, and the picture differs
    plain = samplers.build_scheduler(name, schedule, options=SamplerOptions())
    plain.set_timesteps(STEPS)
    assert not all(float(t).is_integer() for t in plain.timesteps)
    assert float((run_easel(plain) - ours).abs().max()) > 1e-4


def restart_reference(kd, model, x, sigmas, noise):
    """A1111's Restart recipe composed of k-diffusion parts: Heun over a shorter Karras schedule; at
    the sigma nearest 0.1, renoise up to the sigma nearest 2 and walk a Karras segment down again
    (9 steps once, or steps // 4 steps twice from 36 steps on)."""
    steps = len(sigmas) - 1
    if steps < 20:
        return kd.sampling.sample_heun(model, x, sigmas, disable=True)
    length, times = (steps // 4, 2) if steps >= 36 else (9, 1)
    main = kd.sampling.get_sigmas_karras(steps - length * times, sigmas[-2].item(), sigmas[0].item())
    low, high = int(torch.argmin((main - 0.1).abs())), int(torch.argmin((main - 2).abs()))
    loop = kd.sampling.get_sigmas_karras(length + 1, main[low].item(), main[high].item())[:-1]
    last = None
    for segment in [main[: low + 1], *[loop] * times, main[low:]]:
        if last is not None and last < segment[0]:
            x = x + noise() * (segment[0] ** 2 - last ** 2) ** 0.5
        x = kd.sampling.sample_heun(model, x, segment, disable=True)
        last = segment[-1]
    return x


@pytest.mark.parametrize("steps", [7, 24, 40])
@pytest.mark.parametrize("schedule_id", ["karras", "exponential", "align_your_steps"])
def test_restart_matches_a1111_recipe_on_k_diffusion_heun(kd, training, steps, schedule_id):
    scheduler = ksampling.KSamplerScheduler("restart", schedule_id, training=training)
    ours = run_easel(scheduler, steps=steps)
    model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=False)
    gens = _generators()
    ref = restart_reference(kd, model, _noise() * scheduler.sigmas[0], scheduler.sigmas,
                            lambda: torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens]))
    assert len(scheduler.timesteps) == 2 * steps - 1  # Heun: two calls a step but the last
    diff = float((ours - ref).abs().max())
    print(f"restart/{schedule_id}/{steps}: max |easel - reference| = {diff:.2e}")
    assert diff < TOL, diff


def test_brownian_noise_is_k_diffusions_tree(kd):
    x = torch.zeros(SHAPE)
    sigmas = torch.tensor([14.6, 5.0, 1.2, 0.3, 0.03])
    ours = ksampling.BrownianNoise(x, sigmas.min(), sigmas.max(), SEEDS)
    ref = kd.sampling.BrownianTreeNoiseSampler(x, sigmas.min(), sigmas.max(), seed=SEEDS)
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        assert torch.equal(ours(a, b), ref(a, b))
    # one tree per image: image 1 does not depend on image 0's seed
    other = ksampling.BrownianNoise(x, sigmas.min(), sigmas.max(), [1, SEEDS[1]])
    assert torch.equal(other(sigmas[0], sigmas[1])[1], ours(sigmas[0], sigmas[1])[1])


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------

def a1111_reference_sigmas(kd, schedule_id, n, kd_model, family="sd1"):
    """A1111 1.10 sd_schedulers, on k-diffusion's DiscreteSchedule (written out independently)."""
    train = kd_model.sigmas.double()
    lo, hi = float(kd_model.sigmas[0]), float(kd_model.sigmas[-1])
    if schedule_id == "uniform":
        return kd_model.get_sigmas(n)
    if schedule_id == "karras":
        return kd.sampling.get_sigmas_karras(n, lo, hi, rho=7.0)
    if schedule_id == "exponential":
        return kd.sampling.get_sigmas_exponential(n, lo, hi)
    if schedule_id == "polyexponential":
        return kd.sampling.get_sigmas_polyexponential(n, lo, hi, rho=1.0)
    t_hi = float(kd_model.sigma_to_t(torch.tensor(hi)))
    t_lo = float(kd_model.sigma_to_t(torch.tensor(lo)))
    if schedule_id in ("sgm_uniform", "normal"):
        ts = np.linspace(t_hi, t_lo, n + 1)[:-1] if schedule_id == "sgm_uniform" else np.linspace(t_hi, t_lo, n)
        return torch.tensor([float(kd_model.t_to_sigma(torch.tensor(t, dtype=torch.float32))) for t in ts] + [0.0])
    if schedule_id == "kl_optimal":
        i = np.arange(n + 1) / n
        return torch.tensor(np.tan(i * np.arctan(lo) + (1 - i) * np.arctan(hi)))
    if schedule_id == "align_your_steps":
        knots = np.array(sigma_schedules.AYS_SIGMAS[family])
        if n == len(knots):
            return torch.tensor([*knots, 0.0])
        log_interp = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(knots)), np.log(knots[::-1]))
        return torch.tensor([*np.exp(log_interp)[::-1], 0.0])
    if schedule_id == "simple":
        return torch.tensor([float(train[len(train) - 1 - int(i * len(train) / n)]) for i in range(n)] + [0.0])
    if schedule_id == "ddim":
        step = max(len(train) // n, 1)
        return torch.tensor([float(train[i]) for i in reversed(range(1, len(train), step))] + [0.0])
    if schedule_id == "beta":
        from scipy import stats

        q = stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
        return torch.tensor([*(lo + q * (hi - lo)), 0.0])
    raise AssertionError(schedule_id)


@pytest.mark.parametrize("schedule_id", SIGMA_SCHEDULES)
@pytest.mark.parametrize("n", [1, 7, 10, 20, 33])
def test_schedules_match_references(kd, training, schedule_id, n):
    kd_model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=False)
    ours = sigma_schedules.sigmas_for(schedule_id, n, training)
    ref = a1111_reference_sigmas(kd, schedule_id, n, kd_model).to(torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape, (schedule_id, ours.shape, ref.shape)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), (schedule_id, (ours - ref).abs().max())
    assert bool((ours[:-1] >= ours[1:]).all()), "sigmas must not increase"


def test_schedule_details_match_a1111():
    ts = TrainingSigmas.from_config(**samplers.SD_TRAINING_SCHEDULE)
    assert ts.sigma_min == pytest.approx(0.0292, abs=1e-4) and ts.sigma_max == pytest.approx(14.6146, abs=1e-4)
    # AYS: NVIDIA's 11 sigmas as they are for 11 steps, log-linearly resampled otherwise
    ays = sigma_schedules.sigmas_for("align_your_steps", 11, ts)
    assert ays.tolist() == pytest.approx([14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152,
                                          0.029, 0], rel=1e-6)
    assert sigma_schedules.sigmas_for("align_your_steps", 11, ts, "sdxl")[1] == pytest.approx(6.315)
    assert len(sigma_schedules.sigmas_for("align_your_steps", 10, ts)) == 11
    kl = sigma_schedules.sigmas_for("kl_optimal", 5, ts)
    assert len(kl) == 6 and float(kl[-1]) == pytest.approx(ts.sigma_min, rel=1e-5)  # ends at sigma_min
    assert len(sigma_schedules.sigmas_for("ddim", 30, ts)) == 32  # 1000 // 30 = 33: 31 steps, as in A1111
    # DPM2 / DPM++ 3M SDE drop the next-to-last sigma of a one-step-longer schedule
    full = sigma_schedules.sigmas_for("karras", 8, ts)
    assert torch.equal(sigma_schedules.sigmas_for("karras", 7, ts, discard_penultimate=True),
                       torch.cat([full[:-2], full[-1:]]))


# --------------------------------------------------------------------------------------------
# Registry routing
# --------------------------------------------------------------------------------------------

NEW_SAMPLERS = ["DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart"]  # DDIM CFG++: deterministic


def test_every_sampler_takes_every_sigma_schedule_it_should():
    timestep_samplers = {"DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"}
    for name in samplers.SAMPLER_NAMES:
        labels = samplers.supported_schedules(name)
        if name in timestep_samplers:
            continue
        assert labels == [label for label, _ in samplers.SCHEDULE_TYPES], name


def test_new_rows_follow_a1111():
    assert samplers.resolve("k_dpmpp_2m_sde_heun") == ("DPM++ 2M SDE Heun", "Automatic")
    assert samplers.resolve("k_dpmpp_3m_sde", "kl_optimal") == ("DPM++ 3M SDE", "KL Optimal")
    assert samplers.resolve("k_dpm_fast", "SGMUniform") == ("DPM fast", "SGM Uniform")
    assert samplers.resolve("DPM++ 3M SDE Karras") == ("DPM++ 3M SDE", "Karras")
    assert samplers.effective_schedule("DPM++ 2M SDE Heun") == "Exponential"
    assert samplers.effective_schedule("DPM++ 3M SDE") == "Exponential"
    assert samplers.effective_schedule("DPM fast") == "Uniform"
    assert samplers.resolve("k_dpm_ad", "Karras") == ("DPM adaptive", "Karras")
    assert samplers.effective_schedule("DPM adaptive") == "Uniform"
    assert samplers.resolve("restart", "Simple") == ("Restart", "Simple")
    assert samplers.effective_schedule("Restart") == "Karras"
    assert samplers.get_spec("Restart").second_order() and not samplers.get_spec("DPM fast").second_order()
    assert all(samplers.is_ancestral(n) for n in NEW_SAMPLERS)


@pytest.mark.parametrize("name,schedule,algorithm", [
    ("DPM++ 2M SDE", "Automatic", "dpmpp_2m_sde"),
    ("DPM++ 2M SDE Heun", "Karras", "dpmpp_2m_sde_heun"),
    ("DPM++ 3M SDE", "Beta", "dpmpp_3m_sde"),
    ("Euler", "Align Your Steps", "euler"),
    ("DPM++ 2M", "KL Optimal", "dpmpp_2m"),
])
def test_build_scheduler_routes_to_k_diffusion(name, schedule, algorithm):
    scheduler = samplers.build_scheduler(name, schedule)
    assert isinstance(scheduler, ksampling.KSamplerScheduler) and scheduler.algorithm_name == algorithm
    # every k-diffusion row runs k-diffusion's algorithm, on diffusers' schedule types as well (A1111
    # does); only the timestep samplers and LCM's own schedule keep a diffusers scheduler
    assert samplers.build_scheduler("Euler", "Karras").algorithm_name == "euler"
    assert not isinstance(samplers.build_scheduler("UniPC", "Karras"), ksampling.KSamplerScheduler)
    assert not isinstance(samplers.build_scheduler("LCM"), ksampling.KSamplerScheduler)


def test_brownian_seeds_make_sde_images_independent_of_the_batch(training):
    one = ksampling.KSamplerScheduler("dpmpp_2m_sde", "exponential", training=training)
    both = ksampling.KSamplerScheduler("dpmpp_2m_sde", "exponential", training=training)
    noise = _noise()
    common = dict(steps=5, cfg_scale=1.0)
    solo = denoise.sample(lambda x, t, c: eps_model(x, t), one, noise[1:],
                          lambda i: ({"context": torch.zeros(1, 1, 1)}, None), brownian_seeds=SEEDS[1:], **common)
    pair = denoise.sample(lambda x, t, c: eps_model(x, t), both, noise,
                          lambda i: ({"context": torch.zeros(2, 1, 1)}, None), brownian_seeds=SEEDS, **common)
    assert torch.allclose(solo[0], pair[1], atol=1e-5)


def test_img2img_restarts_on_the_tail_of_the_schedule(kd, training):
    """A1111's img2img: the sampler runs fresh on sigmas[steps - t_enc - 1:] from x0 + noise * sigma."""
    scheduler = ksampling.KSamplerScheduler("dpmpp_3m_sde", "karras", training=training)
    init = torch.full(SHAPE, 0.3)
    ours = denoise.sample(lambda x, t, c: eps_model(x, t), scheduler, _noise(),
                          lambda i: ({"context": torch.zeros(2, 1, 1)}, None), steps=8, cfg_scale=1.0,
                          init_latents=init, denoising_strength=0.5, brownian_seeds=SEEDS)
    full = scheduler.sigmas
    tail = full[4:]
    ac = training.alphas_cumprod
    model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, ac, quantize=False)
    positive = full[full > 0]
    noise_sampler = kd.sampling.BrownianTreeNoiseSampler(init, positive.min(), full.max(), seed=SEEDS)
    ref = kd.sampling.sample_dpmpp_3m_sde(model, init + _noise() * tail[0], tail, disable=True,
                                          noise_sampler=noise_sampler)
    assert float((ours - ref).abs().max()) < TOL


class _Recorder(denoise.DenoiseHooks):
    def __init__(self):
        self.ends, self.nexts = [], []

    def after_step(self, i, t_next, latents):
        self.nexts.append(None if t_next is None else float(t_next))
        return latents

    def step_end(self, i, total, latents, denoised):
        self.ends.append((i, total))


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_dpm_adaptive_runs_until_its_step_control_is_done(kd, training, eta):
    """DPM adaptive's model calls are not known before it ends: the loop runs exactly the calls
    k-diffusion's sample_dpm_adaptive makes (rejected tries included), each hook sees the timestep
    of the call that follows (None after the last) and the progress total grows past the steps."""
    scheduler = ksampling.KSamplerScheduler("dpm_adaptive", "uniform", training=training, eta=eta)
    seen, recorder = [], _Recorder()

    def model(x, t, cond):
        seen.append(float(t[0]))
        return eps_model(x, t)

    ours = denoise.sample(model, scheduler, _noise(), lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None),
                          steps=STEPS, cfg_scale=1.0, generators=_generators(), hooks=recorder)
    sigmas = scheduler.sigmas
    ref_model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=False)
    gens = _generators()
    noise = lambda s, s_next: torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens])  # noqa: E731
    ref, info = kd.sampling.sample_dpm_adaptive(ref_model, _noise() * sigmas[0], float(sigmas[sigmas > 0].min()),
                                                float(sigmas.max()), disable=True, eta=eta, noise_sampler=noise,
                                                return_info=True)
    assert float((ours - ref).abs().max()) < TOL
    assert len(seen) == info["nfe"] > STEPS  # the step count does not bound it
    assert recorder.nexts == seen[1:] + [None]
    assert [i for i, _ in recorder.ends] == list(range(len(seen)))
    assert recorder.ends[-1][1] == len(seen) and all(total >= STEPS for _, total in recorder.ends)
    if eta:
        assert info["n_reject"] > 0  # this run retries some steps: the retries are model calls too


def test_dpm_adaptive_img2img_starts_from_the_tail(kd, training):
    """A1111's img2img hands DPM adaptive the rest of the schedule's range: [sigma_min, start sigma]."""
    scheduler = ksampling.KSamplerScheduler("dpm_adaptive", "uniform", training=training, eta=0.0)
    init = torch.full(SHAPE, 0.3)
    ours = denoise.sample(lambda x, t, c: eps_model(x, t), scheduler, _noise(),
                          lambda i: ({"context": torch.zeros(2, 1, 1)}, None), steps=8, cfg_scale=1.0,
                          init_latents=init, denoising_strength=0.5)
    tail = scheduler.sigmas[4:]
    model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=False)
    ref = kd.sampling.sample_dpm_adaptive(model, init + _noise() * tail[0], float(tail[tail > 0].min()),
                                          float(tail.max()), disable=True, eta=0.0)
    assert float((ours - ref).abs().max()) < TOL


def test_v_prediction_matches_k_diffusion(kd, training):
    scheduler = ksampling.KSamplerScheduler("dpmpp_2m_sde_heun", "exponential", training=training,
                                            prediction_type="v_prediction")
    ours = run_easel(scheduler)
    ac = training.alphas_cumprod
    model = kd.external.DiscreteVDDPMDenoiser(eps_model, ac, quantize=False)
    sigmas = scheduler.sigmas
    x = _noise() * sigmas[0]
    noise_sampler = kd.sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=SEEDS)
    ref = kd.sampling.sample_dpmpp_2m_sde(model, x, sigmas, disable=True, noise_sampler=noise_sampler,
                                          solver_type="heun")
    assert float((ours - ref).abs().max()) < TOL
    assert math.isfinite(float(ours.abs().max()))


# --------------------------------------------------------------------------------------------
# End to end: the real pipeline on the tiny SD1 checkpoint, and the API listings
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,schedule", [
    ("DPM++ 2M SDE Heun", "Automatic"),
    ("DPM++ 3M SDE", "Align Your Steps"),
    ("DPM fast", "Automatic"),
    ("DPM adaptive", "Automatic"),
    ("Restart", "Normal"),
    ("DDIM CFG++", "Automatic"),
    ("DPM++ 2M SDE", "Beta"),
    ("Euler a", "KL Optimal"),
])
def test_pipeline_makes_seeded_pictures_with_a1111_infotext(tmp_path, sd1, name, schedule):
    from tests.test_generation import SMALL, pixels, settings

    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest

    def run(seed):
        request = GenerationRequest(prompt="a red circle", seed=seed, batch_size=2, sampler_name=name,
                                    scheduler=schedule, save_images=False, **SMALL)
        return generate(request, sd1, settings(tmp_path))

    first, again = run(11), run(11)  # images of seeds 11 and 12
    assert all(np.isfinite(pixels(image)).all() for image in first.images)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(first.images, again.images))
    assert not np.array_equal(pixels(first.images[0]), pixels(first.images[1]))
    # the schedule type as requested (A1111 writes the label it was given; pasted back it resolves
    # to the same schedule)
    assert f"Sampler: {name}, Schedule type: {schedule}, " in first.infotexts[0], first.infotexts[0]
    assert samplers.resolve(name, schedule) == (name, schedule)


def test_api_lists_the_new_samplers_and_schedule_types():
    from fastapi import APIRouter, FastAPI
    from fastapi.testclient import TestClient

    from modules.api import routes_listings

    router = APIRouter()
    routes_listings.add_routes(router)
    app = FastAPI()
    app.include_router(router, prefix="/sdapi/v1")
    client = TestClient(app)
    listed = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert listed["DPM++ 2M SDE Heun"] == {"name": "DPM++ 2M SDE Heun", "aliases": ["k_dpmpp_2m_sde_heun"],
                                           "options": {"scheduler": "exponential", "brownian_noise": "True",
                                                       "solver_type": "heun"}}
    assert listed["DPM++ 3M SDE"]["options"] == {"scheduler": "exponential", "discard_next_to_last_sigma": "True",
                                                 "brownian_noise": "True"}
    assert listed["DPM fast"] == {"name": "DPM fast", "aliases": ["k_dpm_fast"], "options": {"uses_ensd": "True"}}
    assert listed["DPM adaptive"] == {"name": "DPM adaptive", "aliases": ["k_dpm_ad"], "options": {"uses_ensd": "True"}}
    assert listed["DDIM CFG++"] == {"name": "DDIM CFG++", "aliases": ["ddim_cfgpp"], "options": {}}
    assert listed["Restart"] == {"name": "Restart", "aliases": ["restart"],
                                 "options": {"scheduler": "karras", "second_order": "True"}}
    schedules = client.get("/sdapi/v1/schedulers").json()
    assert [s["name"] for s in schedules] == [sid for _label, sid in samplers.SCHEDULE_TYPES]
    by_name = {s["name"]: s for s in schedules}
    assert by_name["polyexponential"]["default_rho"] == 1.0
    assert by_name["align_your_steps"]["label"] == "Align Your Steps"
    assert by_name["beta"]["need_inner_model"] is True


def test_inpainting_and_hires_run_on_k_diffusion_samplers(sd1):
    """img2img starts the k-diffusion sampler on the schedule's tail; inpainting's per-step blend
    reads sigmas back from timesteps (add_noise); the hires pass runs one as well."""
    from tests.pictures import picture, square_mask
    from tests.test_generation import pixels

    from modules.core import rng
    from modules.core.img2img import Img2ImgSettings
    from modules.core.pipeline import GenerationSettings, JobObserver, encode_pixels, generate
    from modules.core.types import GenerationRequest, Img2ImgRequest

    class Grab(JobObserver):
        def __init__(self):
            self.latents = []

        def on_step(self, step, total, latents, denoised):
            self.latents.append(latents.clone())

    init, grab = picture(), Grab()
    cfg = GenerationSettings(model_name="tiny-sd1", model_hash="0123456789", version="easel-test",
                             img2img=Img2ImgSettings())
    generate(Img2ImgRequest(init_images=[init], mask=square_mask(), seed=5, steps=6, sampler_name="DPM++ 2M SDE",
                            scheduler="Simple", inpainting_fill=1, save_images=False), sd1, cfg, grab)
    image = torch.from_numpy(np.asarray(init, dtype=np.float32).transpose(2, 0, 1).copy())[None] / 127.5 - 1
    init_latents = encode_pixels(sd1, image)[..., 0, :]  # latent row 0: far outside the mask
    noise = rng.create_noise((4, 8, 8), [5])[..., 0, :]
    assert len(grab.latents) == 5  # A1111's k-diffusion img2img: int(6 * 0.75) + 1 steps
    ratios = [float(((latents[..., 0, :] - init_latents) / noise).mean()) for latents in grab.latents[:-1]]
    expected = sigma_schedules.sigmas_for("simple", 6, TrainingSigmas.from_config(**samplers.SD_TRAINING_SCHEDULE))
    assert ratios == pytest.approx(expected[2:6].tolist(), rel=1e-3)  # sigma after each step (from sigmas[1])
    assert torch.allclose(grab.latents[-1][..., 0, :], init_latents)

    def hires(seed):
        request = GenerationRequest(prompt="a red circle", seed=seed, width=64, height=64, steps=3, enable_hr=True,
                                    hr_sampler_name="DPM++ 3M SDE", hr_scheduler="Beta", save_images=False)
        return generate(request, sd1, cfg)

    first, again = hires(3), hires(3)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert "Hires sampler: DPM++ 3M SDE" in first.infotexts[0] and "Hires schedule type: Beta" in first.infotexts[0]


# --------------------------------------------------------------------------------------------
# DDIM CFG++ (no k-diffusion counterpart: checked against the CFG++ update written out here)
# --------------------------------------------------------------------------------------------

def guided_model(x, t, cond):
    """eps that depends on the prompt: cond rows (context 1) and uncond rows (context 0) differ."""
    return eps_model(x, t) + 0.3 * cond["context"].view(-1, 1, 1, 1) * torch.cos(x)


def cfgpp_reference(x, steps, cfg, alphas_cumprod, prediction="epsilon"):
    grid = list(range(0, 1000, 1000 // steps))
    grid = [min(g + 1, 999) for g in grid]
    for index in range(len(grid) - 1, 0, -1):
        t = torch.full((x.shape[0],), grid[index])
        a_t, a_prev = float(alphas_cumprod[grid[index]]), float(alphas_cumprod[grid[index - 1]])
        outs = [guided_model(x, t, {"context": torch.full((x.shape[0], 1, 1), c)}) for c in (1.0, 0.0)]
        if prediction == "v_prediction":
            outs = [math.sqrt(a_t) * v + math.sqrt(1 - a_t) * x for v in outs]
        e_cond, e_uncond = outs
        e_guided = e_uncond + cfg / 12.5 * (e_cond - e_uncond)
        x0 = (x - math.sqrt(1 - a_t) * e_guided) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e_uncond
    return x


@pytest.mark.parametrize("steps,cfg,prediction", [(6, 7.0, "epsilon"), (30, 1.0, "epsilon"), (8, 12.5, "v_prediction")])
def test_ddim_cfgpp_follows_the_cfgpp_update_on_a1111s_grid(training, steps, cfg, prediction):
    scheduler = samplers.build_scheduler("ddim_cfgpp", prediction_type=prediction)
    batch = SHAPE[0]
    conds = ({"context": torch.ones(batch, 1, 1)}, {"context": torch.zeros(batch, 1, 1)})
    calls = []

    def model(x, t, cond):
        calls.append(int(t[0]))
        return guided_model(x, t, cond)

    ours = denoise.sample(model, scheduler, _noise(), lambda i: conds, steps=steps, cfg_scale=cfg)
    ref = cfgpp_reference(_noise(), steps, cfg, training.alphas_cumprod, prediction)
    grid = [min(g + 1, 999) for g in range(0, 1000, 1000 // steps)]
    assert calls == grid[:0:-1]  # A1111: from the top of the grid down to its second point
    diff = float((ours - ref).abs().max())
    print(f"ddim_cfgpp/{steps}/{cfg}/{prediction}: max |easel - reference| = {diff:.2e}")
    assert diff < TOL, diff
    # guidance reaches the update: the same run at another CFG scale differs
    other = denoise.sample(guided_model, samplers.build_scheduler("DDIM CFG++", prediction_type=prediction),
                           _noise(), lambda i: conds, steps=steps, cfg_scale=cfg + 3)
    assert float((other - ours).abs().max()) > 1e-3


def test_lcm_is_k_diffusions_sample_lcm_on_every_schedule(training):
    """k-diffusion's sample_lcm (written out: lcm_reference) on every schedule."""
    for schedule_id in SIGMA_SCHEDULES:
        scheduler = ksampling.KSamplerScheduler("lcm", schedule_id, training=training)
        ours = run_easel(scheduler)
        assert float((ours - lcm_reference(training, scheduler.sigmas)).abs().max()) < TOL, schedule_id
