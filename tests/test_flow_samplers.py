"""A1111's samplers and schedule types on flow-matching models (Flux, SD3), each against a reference
on the same toy velocity model and noise (max |difference| on latents of size ~1..3 below TOL):

* the ODE samplers (Euler, Heun, DPM2, LMS, DPM++ 2M, DDIM, DPM fast / adaptive with eta 0, Restart
  under 20 steps) are k-diffusion's own samplers run on a CONST denoiser (``x0 = x - sigma * v``,
  ComfyUI's and Forge's way);
* the SDE samplers (DPM++ SDE, 2M SDE (Heun), 3M SDE) are k-diffusion's samplers through a change of
  variables: a flow at sigma is k-diffusion's space at sigma / (1 - sigma) with the latents divided
  by 1 - sigma (the flow's half log-SNR is k-diffusion's -log sigma), the Brownian tree asked at the
  matching flow sigmas — which is what ComfyUI's CONST SDE solvers compute;
* the ancestral ones (Euler a, DPM2 a, DPM++ 2S a, DDIM with eta, LCM, Restart's renoising) follow
  ComfyUI's RF formulas, written out here;
* the schedule types give ComfyUI's ``calculate_sigmas`` on the model's ModelSamplingDiscreteFlow /
  ModelSamplingFlux (training sigmas shift(t / 1000)), written out here, or k-diffusion's.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch

from modules.core import denoise, flow_matching
from modules.core.families import flow, get
from modules.core.sampler_options import SamplerOptions
from modules.core.types import RequestError
from tests.k_reference import _load_k_diffusion

pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")  # torchsde, see ksampling

SHAPE = (2, 16, 8, 8)
SEQ_LEN = 16  # latent patches of an 8x8 latent
SEEDS = [5, 77]
TOL = 2e-4


def velocity(x: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
    """A smooth toy velocity field that depends on the latents and the timestep."""
    s = (t / 1000).view(-1, 1, 1, 1)
    return torch.tanh(x * (0.5 + s)) - 0.3 * x + 0.2 * s


def const_denoiser(x, sigma, **kwargs):
    sigma = torch.as_tensor(sigma).reshape(-1)[:1].expand(x.shape[0])
    return x - sigma.view(-1, 1, 1, 1) * velocity(x, sigma * 1000)


@pytest.fixture(scope="module")
def kd():
    return _load_k_diffusion()[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Spec:
    unet_config = {"guidance_embeds": True}  # Flux dev: the dynamic shift


def _noise():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))


def _randn():
    """The per-image generators' fresh noise, as the scheduler draws it."""
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    return lambda *_: torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens])


def run_easel(family, sampler, schedule="Automatic", steps=6, options=None):
    scheduler = get(family).build_scheduler(sampler, schedule, _Spec(), SHAPE[1:], options)
    cond = {"context": torch.zeros(SHAPE[0], 1, 4)}  # the toy model reads no text
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    out = denoise.sample(velocity, scheduler, _noise(), lambda i: (cond, None), steps=steps, cfg_scale=1.0,
                         generators=gens, brownian_seeds=SEEDS)
    assert torch.isfinite(out).all()
    return out, scheduler


def _close(ours, theirs):
    diff = float((ours - theirs).abs().max())
    assert diff < TOL, diff


# ---- ODE samplers: k-diffusion on the CONST denoiser -------------------------------------------

@pytest.mark.parametrize("schedule", ["Automatic", "Karras", "Beta"])
@pytest.mark.parametrize("sampler,function", [("Euler", "sample_euler"), ("Heun", "sample_heun"),
                                              ("DPM2", "sample_dpm_2"), ("LMS", "sample_lms"),
                                              ("DPM++ 2M", "sample_dpmpp_2m"), ("DDIM", "sample_euler"),
                                              ("Restart", "sample_heun")])
def test_ode_samplers_match_k_diffusion_on_const(kd, sampler, function, schedule):
    ours, scheduler = run_easel("flux", sampler, schedule if sampler != "DDIM" else "Automatic")
    sigmas = getattr(scheduler, "sigmas")
    theirs = getattr(kd, function)(const_denoiser, _noise(), sigmas, disable=True)
    _close(ours, theirs)


@pytest.mark.parametrize("sampler", ["DPM fast", "DPM adaptive"])
def test_dpm_solver_with_eta_0_is_k_diffusions_on_the_models_range(kd, sampler):
    ours, scheduler = run_easel("sd3", sampler, "Karras", options=SamplerOptions(eta_ancestral=0.0))
    model_sigmas = flow_matching.model_sigmas(get("sd3").flow_shift(_Spec()), SEQ_LEN)
    lo, hi = float(model_sigmas[0]), float(model_sigmas[-1])
    assert (float(scheduler.sigmas[0]), float(scheduler.sigmas[-2])) == pytest.approx((hi, lo))
    if sampler == "DPM fast":
        theirs = kd.sample_dpm_fast(const_denoiser, _noise(), lo, hi, 6, disable=True)
    else:
        theirs = kd.sample_dpm_adaptive(const_denoiser, _noise(), lo, hi, disable=True)
    _close(ours, theirs)


def test_dpm_fast_renoises_the_flow_way():
    """With A1111's eta 1 the steps are RF ancestral: other latents than eta 0's, but the same picture
    scale (the flow's unit-variance noise at each sigma, not k-diffusion's growing one)."""
    noisy, _ = run_easel("flux", "DPM fast")
    plain, _ = run_easel("flux", "DPM fast", options=SamplerOptions(eta_ancestral=0.0))
    assert float((noisy - plain).abs().max()) > 1e-2
    assert 0.5 < float(noisy.std() / plain.std()) < 2


# ---- SDE samplers: k-diffusion through the flow <-> k-diffusion change of variables --------------

def _via_k_diffusion(kd, function, sigmas, calls, top, **kwargs):
    """k-diffusion's ``function`` on the flow: sigma -> sigma / (1 - sigma), x -> x / (1 - sigma)
    (the first sigma 1 moved to ``top``, as ComfyUI's CONST SDE solvers start); the noise is the
    Brownian tree over the flow sigmas, asked at the flow sigmas (``calls``: those of the model calls,
    where a converted sigma lands within rounding; a Brownian path moves by ~sqrt(rounding))."""
    sigmas = sigmas.clone()
    sigmas[0] = top
    ve = sigmas.double() / (1 - sigmas.double())
    known = torch.cat([sigmas, torch.stack(calls)])

    def to_flow(s):
        s = torch.as_tensor(s, dtype=torch.float64)
        return s / (1 + s)

    def snapped(s):
        return known[(known.double() - to_flow(s)).abs().argmin()]

    def model(x, sigma_ve, **_):
        sigma = to_flow(sigma_ve).float()
        return const_denoiser(x * (1 - sigma.view(-1, 1, 1, 1)), sigma)

    positive = sigmas[sigmas > 0]
    x = _noise()
    tree = kd.BrownianTreeNoiseSampler(x, positive.min(), torch.tensor(1.0), seed=SEEDS)
    return function(model, x / (1 - sigmas[0].double()), ve, disable=True,
                    noise_sampler=lambda a, b: tree(snapped(a), snapped(b)), **kwargs).float()


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("schedule", ["Automatic", "Exponential"])
@pytest.mark.parametrize("sampler,function,kwargs", [("DPM++ SDE", "sample_dpmpp_sde", {}),
                                                     ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", {}),
                                                     ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde",
                                                      {"solver_type": "heun"}),
                                                     ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", {})])
def test_sde_samplers_are_k_diffusions_in_the_flows_log_snr(kd, family, schedule, sampler, function, kwargs):
    ours, scheduler = run_easel(family, sampler, schedule)
    top = float(get(family).flow_shift(_Spec()).apply(torch.tensor(1 - 1e-4, dtype=torch.float64), SEQ_LEN))
    theirs = _via_k_diffusion(kd, getattr(kd, function), scheduler.sigmas, scheduler._calls, top, **kwargs)
    _close(ours, theirs)


# ---- ancestral samplers: ComfyUI's RF formulas ---------------------------------------------------

def rf_ancestral_reference(x, sigmas, noise, eta, kind):
    """ComfyUI's sample_euler_ancestral_RF / sample_dpmpp_2s_ancestral_RF, and DPM2's midpoint step
    in the same RF frame: step down to sigma_down = s' (1 + (s'/s - 1) eta), rescale by
    (1 - s') / (1 - sigma_down), add noise of size sqrt(s'^2 - sigma_down^2 (1 - s')^2 / (1 - sigma_down)^2)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d0 = const_denoiser(x, s)
        if s_next == 0:
            x = d0
            continue
        down = s_next * (1 + (s_next / s - 1) * eta)
        if kind == "euler":
            x = (down / s) * x + (1 - down / s) * d0
        elif kind == "dpm_2":
            mid = (s.log() + down.log()).div(2).exp()
            x_mid = x + (x - d0) / s * (mid - s)
            d_mid = const_denoiser(x_mid, mid)
            x = x + (x_mid - d_mid) / mid * (down - s)
        else:  # dpmpp_2s: midpoint half way in log((1 - sigma) / sigma)
            lam = lambda v: ((1 - v) / v).log()  # noqa: E731
            mid = torch.tensor(0.9999) if s == 1 else 1 / (1 + ((lam(s) + lam(down)) / 2).exp())
            d_mid = const_denoiser((mid / s) * x + (1 - mid / s) * d0, mid)
            x = (down / s) * x + (1 - down / s) * d_mid
        if eta > 0:
            alpha_next, alpha_down = 1 - s_next, 1 - down
            x = (alpha_next / alpha_down) * x + noise() * (s_next ** 2 - down ** 2 * alpha_next ** 2
                                                           / alpha_down ** 2) ** 0.5
    return x


@pytest.mark.parametrize("schedule", ["Automatic", "Karras", "SGM Uniform"])
@pytest.mark.parametrize("sampler,kind", [("Euler a", "euler"), ("DPM2 a", "dpm_2"), ("DPM++ 2S a", "dpmpp_2s")])
def test_ancestral_samplers_follow_comfyuis_rf_formulas(sampler, kind, schedule):
    ours, scheduler = run_easel("flux", sampler, schedule)
    theirs = rf_ancestral_reference(_noise(), scheduler.sigmas, _randn(), 1.0, kind)
    _close(ours, theirs)


def test_eta_and_ddims_eta_reach_the_rf_steps():
    half, scheduler = run_easel("sd3", "Euler a", options=SamplerOptions(eta_ancestral=0.5))
    _close(half, rf_ancestral_reference(_noise(), scheduler.sigmas, _randn(), 0.5, "euler"))
    ddim, scheduler = run_easel("sd3", "DDIM", options=SamplerOptions(eta_ddim=0.3))
    _close(ddim, rf_ancestral_reference(_noise(), scheduler.sigmas, _randn(), 0.3, "euler"))


def test_lcm_jumps_to_the_prediction_and_renoises_it():
    ours, scheduler = run_easel("flux", "LCM", steps=4)
    x, noise, sigmas = _noise(), _randn(), scheduler.sigmas
    for i in range(len(sigmas) - 1):
        x = const_denoiser(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = (1 - sigmas[i + 1]) * x + sigmas[i + 1] * noise()
    _close(ours, x)


def test_restart_jumps_back_the_flow_way(kd):
    """From 20 steps on, A1111's recipe with its restart levels 0.1 and 2 at the same signal-to-noise
    ratio on the flow (1/11 and 2/3): Heun down, rescale and renoise up, Heun down again."""
    steps = 24
    ours, scheduler = run_easel("flux", "Restart", "Karras", steps=steps)
    sigmas = scheduler.sigmas
    main = kd.get_sigmas_karras(steps - 9, sigmas[-2].item(), sigmas[0].item())
    low, high = int(torch.argmin((main - 1 / 11).abs())), int(torch.argmin((main - 2 / 3).abs()))
    loop = kd.get_sigmas_karras(10, main[low].item(), main[high].item())[:-1]
    x, noise = _noise(), _randn()
    x = kd.sample_heun(const_denoiser, x, main[: low + 1], disable=True)
    scale = (1 - loop[0]) / (1 - main[low])
    x = scale * x + noise() * (loop[0] ** 2 - (scale * main[low]) ** 2) ** 0.5
    x = kd.sample_heun(const_denoiser, x, loop, disable=True)
    x = kd.sample_heun(const_denoiser, x, main[low:], disable=True)
    assert len(scheduler.timesteps) == 2 * steps - 1
    _close(ours, x)


# ---- DDIM CFG++: ComfyUI's euler_ancestral_cfg_pp on CONST ----------------------------------------

def guided_velocity(x, t, cond):
    """The toy velocity plus a pull from the prompt (its context: 1 for the prompt, 0 without)."""
    return velocity(x, t) + 0.4 * cond["context"].view(-1, 1, 1, 1)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("schedule", ["Automatic", "Uniform"])
def test_ddim_cfgpp_follows_comfyuis_cfgpp_step(eta, schedule):
    cfg = 7.5
    scheduler = get("sd3").build_scheduler("DDIM CFG++", schedule, _Spec(), SHAPE[1:], SamplerOptions(eta_ddim=eta))
    conds = ({"context": torch.ones(SHAPE[0], 1, 1)}, {"context": torch.zeros(SHAPE[0], 1, 1)})
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    ours = denoise.sample(guided_velocity, scheduler, _noise(), lambda i: conds, steps=5, cfg_scale=cfg,
                          generators=gens)
    x, noise, sigmas = _noise(), _randn(), scheduler.sigmas
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        t = (s * 1000).expand(SHAPE[0])
        v_cond, v_uncond = guided_velocity(x, t, conds[0]), guided_velocity(x, t, conds[1])
        denoised = x - s * (v_uncond + cfg / 12.5 * (v_cond - v_uncond))
        if s_next == 0:
            x = denoised
            continue
        alpha_s, alpha_t = 1 - s, 1 - s_next
        d = (x - alpha_s * (x - s * v_uncond)) / s
        # k-diffusion's get_ancestral_step on sigma / alpha (infinite at sigma 1: all of it noise-free)
        ve, ve_next = (s / alpha_s if alpha_s > 0 else torch.tensor(math.inf)), s_next / alpha_t
        up = min(ve_next, eta * (ve_next ** 2 * (1 - (ve_next / ve) ** 2)) ** 0.5)
        x = alpha_t * denoised + alpha_t * (ve_next ** 2 - up ** 2) ** 0.5 * d
        if eta > 0:
            x = x + alpha_t * noise() * up
    _close(ours, x)


# ---- UniPC: diffusers' flow UniPC, ending at 1e-3 ------------------------------------------------

@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("schedule", ["Automatic", "Karras"])
def test_unipc_is_diffusers_flow_unipc_on_the_schedules_sigmas(variant, schedule):
    from diffusers import UniPCMultistepScheduler

    ours, scheduler = run_easel("flux", "UniPC", schedule, steps=7, options=SamplerOptions(uni_pc_variant=variant))
    planned = scheduler.sigmas_for(7)
    reference = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=3,
                                        solver_type=variant, lower_order_final=True)
    reference.set_timesteps(sigmas=planned[:-1].double().numpy())
    reference.sigmas[-1] = min(1e-3, float(planned[-2]) / 2)
    x = _noise()
    for i, t in enumerate(reference.timesteps):
        sigma = reference.sigmas[i]
        x = reference.step(velocity(x, (sigma * 1000).expand(SHAPE[0])), t, x).prev_sample
    _close(ours, x)


def test_unipc_solves_the_flow_ode(kd):
    """On Flux's schedule UniPC converges to the ODE's solution (k-diffusion's Heun on 200 steps)
    faster than Euler: nearer on 12 steps, and more than twice as near on 12 steps as on 8."""
    sigmas = flow_matching.flow_sigmas(get("flux").flow_shift(_Spec()), SEQ_LEN, 200)
    fine = kd.sample_heun(const_denoiser, _noise(), sigmas, disable=True)
    error = {steps: float((run_easel("flux", "UniPC", steps=steps)[0] - fine).abs().max()) for steps in (8, 12)}
    euler = float((run_easel("flux", "Euler", steps=12)[0] - fine).abs().max())
    assert error[12] < euler / 2 and error[12] < error[8] / 2, (error, euler)


# ---- schedule types: ComfyUI's calculate_sigmas on the flow model sampling ----------------------

def comfy_sigmas(schedule_id, n, shift, kd):
    """ComfyUI's schedulers on a flow model sampling whose sigmas are shift(t / 1000), t = 1..1000
    (timestep(sigma) = 1000 sigma, sigma(timestep) = shift(timestep / 1000)); Uniform is A1111's
    (k-diffusion's DiscreteSchedule.get_sigmas)."""
    table = shift(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    lo, hi = float(table[0]), float(table[-1])
    if schedule_id == "uniform":
        schedule = kd_external().DiscreteSchedule(table.float(), quantize=False)
        return schedule.get_sigmas(n)
    if schedule_id == "karras":
        return kd.get_sigmas_karras(n, lo, hi)
    if schedule_id == "exponential":
        return kd.get_sigmas_exponential(n, lo, hi)
    if schedule_id == "polyexponential":
        return kd.get_sigmas_polyexponential(n, lo, hi)
    if schedule_id == "simple":
        return [float(table[-(1 + int(i * (1000 / n)))]) for i in range(n)] + [0.0]
    if schedule_id == "ddim":
        picked = [float(table[i]) for i in range(1, 1000, 1000 // n)]
        return picked[::-1] + [0.0]
    if schedule_id in ("sgm_uniform", "normal"):
        count = n + 1 if schedule_id == "sgm_uniform" else n
        t = np.linspace(1000 * hi, 1000 * lo, count)[: n]
        return [float(shift(torch.tensor(v / 1000, dtype=torch.float64))) for v in t] + [0.0]
    if schedule_id == "kl_optimal":
        return [math.tan(i / (n - 1) * math.atan(lo) + (1 - i / (n - 1)) * math.atan(hi)) for i in range(n)] + [0.0]
    if schedule_id == "beta":
        from scipy import stats

        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), 0.6, 0.6) * 999)
        return [float(table[int(t)]) for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]] + [0.0]
    raise AssertionError(schedule_id)


def kd_external():
    return _load_k_diffusion()[1]


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("schedule", [s for s in flow.SCHEDULES if s != "Automatic"])
@pytest.mark.parametrize("steps", [4, 7])
def test_schedule_types_give_comfyuis_flow_sigmas(kd, family, schedule, steps):
    shift = get(family).flow_shift(_Spec())
    scheduler = get(family).build_scheduler("Euler", schedule, _Spec(), SHAPE[1:])
    scheduler.set_timesteps(steps)
    ours = scheduler.sigmas
    schedule_id = dict(flow.samplers.SCHEDULE_TYPES)[schedule]
    theirs = torch.as_tensor(comfy_sigmas(schedule_id, steps, lambda t: shift.apply(t, SEQ_LEN), kd),
                             dtype=torch.float32)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    assert float(ours[-1]) == 0 and bool((ours[1:] < ours[:-1]).all())
    if schedule != "DDIM":  # ComfyUI's ddim_uniform starts at a training sigma below the top
        assert float(ours[0]) == pytest.approx(1.0, abs=1e-6)  # the shifted sigma_max
    assert torch.allclose(scheduler.timesteps, torch.as_tensor(ours[:-1]) * 1000)  # Euler: one call per sigma


def test_automatic_stays_the_family_schedule_and_options_reach_the_flow_schedules():
    shift = get("flux").flow_shift(_Spec())
    automatic = get("flux").build_scheduler("DPM++ 2M", "Automatic", _Spec(), SHAPE[1:])
    automatic.set_timesteps(5)
    assert torch.equal(automatic.sigmas, flow_matching.flow_sigmas(shift, SEQ_LEN, 5))
    karras = get("flux").build_scheduler("DPM++ 2M", "Karras", _Spec(), SHAPE[1:],
                                         SamplerOptions(rho=3.0, sigma_min=0.05))
    karras.set_timesteps(5)
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    expected = (1 + ramp * (0.05 ** (1 / 3) - 1)) ** 3
    assert torch.allclose(karras.sigmas[:-1], expected.float(), atol=1e-6)
    with pytest.raises(RequestError) as info:  # an SD sigma range makes no flow schedule
        get("flux").build_scheduler("DPM++ 2M", "Karras", _Spec(), SHAPE[1:], SamplerOptions(sigma_max=14.6))
    assert info.value.field == "sigma_max"
    discard = get("flux").build_scheduler("DPM2", "Karras", _Spec(), SHAPE[1:])  # A1111 drops the penultimate
    discard.set_timesteps(5)
    plain = get("flux").build_scheduler("DPM++ 2M", "Karras", _Spec(), SHAPE[1:])
    plain.set_timesteps(6)
    assert torch.equal(discard.sigmas, torch.cat([plain.sigmas[:-2], plain.sigmas[-1:]]))


# ---- what is refused, and a job end to end ------------------------------------------------------

@pytest.mark.parametrize("schedule", ["Automatic", "SGM Uniform"])
def test_plms_is_a1111s_recipe_on_the_velocity(schedule):
    """A1111's PLMS steps on the flow's derivative: pseudo improved Euler first, then PNDM's 2nd, 3rd
    and 4th order blends of the last derivatives, each an Euler (a flow's DDIM) step."""
    ours, scheduler = run_easel("flux", "PLMS", schedule, steps=7)
    x, sigmas, old = _noise(), scheduler.sigmas, []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = velocity(x, (s * 1000).expand(SHAPE[0]))
        if not old:
            d_next = velocity(x + d * (s_next - s), (s_next * 1000).expand(SHAPE[0]))
            slope = (d + d_next) / 2
        else:
            weights = {1: ([3, -1], 2), 2: ([23, -16, 5], 12), 3: ([55, -59, 37, -9], 24)}[len(old)]
            slope = sum(w * e for w, e in zip(weights[0], [d, *old[::-1]])) / weights[1]
        old = (old + [d])[-3:]
        x = x + slope * (s_next - s)
    assert len(scheduler.timesteps) == 8  # the first step's two model calls, then one each
    _close(ours, x)


def test_every_a1111_sampler_runs_and_align_your_steps_is_refused_with_the_list():
    assert flow.SAMPLERS == tuple(flow.samplers.SAMPLER_NAMES)
    with pytest.raises(RequestError) as info:
        get("sd3").build_scheduler("Euler", "Align Your Steps", _Spec(), SHAPE[1:])
    assert info.value.field == "scheduler" and "Karras" in info.value.message and "Beta" in info.value.message


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_every_sampler_and_schedule_pair_runs_on_a_flow(family):
    """Every pair A1111's table accepts (samplers.resolve) but Align Your Steps: finite latents on the
    toy model, from noise of unit size to latents of about its size."""
    conds = ({"context": torch.ones(SHAPE[0], 1, 1)}, {"context": torch.zeros(SHAPE[0], 1, 1)})
    ran = 0
    for sampler in flow.SAMPLERS:
        for schedule in flow.SCHEDULES:
            try:
                flow.samplers.resolve(sampler, schedule)
            except ValueError:
                continue  # e.g. DDIM with Karras: A1111's timestep samplers take no schedule type
            scheduler = get(family).build_scheduler(sampler, schedule, _Spec(), SHAPE[1:])
            gens = [torch.Generator().manual_seed(s) for s in SEEDS]
            out = denoise.sample(guided_velocity, scheduler, _noise(), lambda i: conds, steps=4, cfg_scale=2.0,
                                 generators=gens, brownian_seeds=SEEDS)
            assert torch.isfinite(out).all() and 0.2 < float(out.std()) < 5, (sampler, schedule)
            ran += 1
    assert ran > 150


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "Restart", "PLMS", "UniPC", "DDIM CFG++", "LCM"])
def test_img2img_starts_part_way_on_a_flow(sampler):
    """Half the steps from the init latents noised the flow way: the result stays near them."""
    conds = ({"context": torch.ones(SHAPE[0], 1, 1)}, {"context": torch.zeros(SHAPE[0], 1, 1)})
    init = torch.full(SHAPE, 0.5)
    scheduler = get("flux").build_scheduler(sampler, "Automatic", _Spec(), SHAPE[1:])
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    out = denoise.sample(guided_velocity, scheduler, _noise(), lambda i: conds, steps=6, cfg_scale=2.0,
                         generators=gens, brownian_seeds=SEEDS, init_latents=init, denoising_strength=0.5)
    full = denoise.sample(guided_velocity, get("flux").build_scheduler(sampler, "Automatic", _Spec(), SHAPE[1:]),
                          _noise(), lambda i: conds, steps=6, cfg_scale=2.0,
                          generators=[torch.Generator().manual_seed(s) for s in SEEDS], brownian_seeds=SEEDS)
    assert torch.isfinite(out).all()
    assert float((out - init).abs().mean()) < float((full - init).abs().mean())


def test_flow_img2img_noises_the_flow_way():
    scheduler = get("sd3").build_scheduler("DPM++ 2M SDE", "Karras", _Spec(), SHAPE[1:])
    scheduler.set_timesteps(5)
    x0, noise = torch.ones(1, 16, 8, 8), torch.zeros(1, 16, 8, 8)
    t = scheduler.timesteps[2:3]
    sigma = float(t) / 1000
    assert torch.allclose(scheduler.add_noise(x0, noise, t), x0 * (1 - sigma), atol=1e-6)


def test_api_job_on_tiny_sd3_with_euler_a_and_karras(tmp_path):
    import requests
    from PIL import Image

    from tests.fixtures.tiny_models import build_sd3_components, write_sd3_checkpoint
    from tests.server import run_server

    data = tmp_path / "data"
    checkpoint = write_sd3_checkpoint(data / "models" / "Stable-diffusion" / "tiny-sd35.safetensors",
                                      build_sd3_components(dtype=torch.float16))
    body = {"prompt": "a red cube", "seed": 4, "steps": 3, "cfg_scale": 2.0, "width": 64, "height": 64,
            "sampler_name": "Euler a", "scheduler": "Karras"}
    with run_server(data, checkpoint.parent, "--api", "--ckpt", str(checkpoint)) as server:
        reply = requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=180)
        assert reply.status_code == 200, reply.text
        picture = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0])))
        assert picture.size == (64, 64) and np.asarray(picture).std() > 1
        info = reply.json()["info"]
        assert "Sampler: Euler a" in info and "Schedule type: Karras" in info
        refused = requests.post(server.url + "/sdapi/v1/txt2img", json={**body, "scheduler": "Align Your Steps"},
                                timeout=60)
        assert refused.status_code == 422 and "Align Your Steps" in refused.text
        _page_generates(server.url)


def _page_generates(url: str) -> None:
    """The page's Generate on an SD3 checkpoint: a picture, and the infotext of what the page asked."""
    from playwright.sync_api import expect

    from tests.browser import launch_browser, require_chromium
    from tests.test_ui_browser import JOB_TIMEOUT_MS, fill_job, info_text

    require_chromium()
    with launch_browser() as browser:
        page = browser.new_page()
        page.goto(url)
        page.locator("#txt2img_prompt textarea").wait_for(timeout=60_000)
        fill_job(page, "a blue sphere", steps=2)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#html_info_txt2img")).to_contain_text("a blue sphere", timeout=JOB_TIMEOUT_MS)
        info = info_text(page)
        assert "Steps: 2," in info and "Size: 64x64" in info and "Model: tiny-sd35" in info, info
