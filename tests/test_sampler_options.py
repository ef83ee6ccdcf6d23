"""A1111's "Sampler parameters" settings (modules.core.sampler_options) against A1111's contract.

Each option must change the result as it does in A1111: k-diffusion's own ``sample_*`` functions
(the ``k-diffusion`` package, loaded as tests/test_samplers_reference.py loads it) called with the
same parameters on the same toy eps model, sigmas and noise must land on Easel's latents. The
infotext keys must appear exactly where A1111 1.10 writes them. Also: the option table's rows,
hide_samplers in the UI's sampler lists, paste/override_settings, img2img_fix_steps' step count.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from modules.core import denoise, samplers
from modules.core.sampler_options import SamplerOptions
from tests.k_reference import (SEEDS, SHAPE, STEPS, TOL, _generators, _noise, _one_thread, eps_model,  # noqa: F401
                               kd, run_easel, training)

pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")


class _PerImageTorch:
    """A1111's TorchHijack: k-diffusion's ``torch.randn_like`` drawn from the per-image generators."""

    def __init__(self, generators):
        self.generators = generators

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators])


def reference(kd, training, function: str, sigmas, *, brownian=False, randn=False, **params):
    """k-diffusion's sampler ``function`` with ``params`` on the CompVis-wrapped toy model."""
    model = kd.external.DiscreteEpsDDPMDenoiser(eps_model, training.alphas_cumprod, quantize=False)
    x = _noise() * sigmas[0]
    gens = _generators()
    if brownian:
        positive = sigmas[sigmas > 0]
        params["noise_sampler"] = kd.sampling.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=SEEDS)
    elif randn:
        params["noise_sampler"] = lambda s, s_next: torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens])
    saved = kd.sampling.torch
    kd.sampling.torch = _PerImageTorch(gens)
    try:
        fn = getattr(kd.sampling, function)
        if function in ("sample_dpm_fast", "sample_dpm_adaptive"):  # the sigma range (and dpm_fast's steps)
            positive = sigmas[sigmas > 0]
            steps = (len(sigmas) - 1,) if function == "sample_dpm_fast" else ()
            return fn(model, x, float(positive.min()), float(sigmas.max()), *steps, disable=True, **params)
        return fn(model, x, sigmas, disable=True, **params)
    finally:
        kd.sampling.torch = saved


def _close(ours, ref):
    assert torch.isfinite(ours).all()
    diff = float((ours - ref).abs().max())
    assert diff < TOL, diff


CHURN = SamplerOptions(s_churn=3.0, s_tmin=0.5, s_tmax=8.0, s_noise=0.9)


@pytest.mark.parametrize("sampler,function", [("Euler", "sample_euler"), ("Heun", "sample_heun"),
                                              ("DPM2", "sample_dpm_2")])
def test_churn_and_noise_match_k_diffusion(kd, training, sampler, function):
    scheduler = samplers.build_scheduler(sampler, "Karras", options=CHURN)
    ours = run_easel(scheduler)
    ref = reference(kd, training, function, scheduler.sigmas, s_churn=3.0, s_tmin=0.5, s_tmax=8.0, s_noise=0.9)
    _close(ours, ref)
    plain = reference(kd, training, function, scheduler.sigmas)
    assert float((ours - plain).abs().max()) > 1e-2  # the churn changed the picture
    # [s_tmin, s_tmax] gates the churn: no sigma in [100, 200] is k-diffusion's plain run again
    gated = run_easel(samplers.build_scheduler(sampler, "Karras", options=SamplerOptions(s_churn=3.0, s_tmin=100.0,
                                                                                       s_tmax=200.0)))
    _close(gated, plain)


ANCESTRAL = [
    ("Euler a", "sample_euler_ancestral", "randn", False),  # A1111 passes no s_noise to Euler a
    ("DPM2 a", "sample_dpm_2_ancestral", "randn", True),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", "randn", True),
    ("DPM++ SDE", "sample_dpmpp_sde", "brownian", True),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", "brownian", True),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", "brownian", True),
    ("DPM fast", "sample_dpm_fast", "randn", True),
    ("DPM adaptive", "sample_dpm_adaptive", "randn", False),  # A1111 passes it eta, not s_noise
]


@pytest.mark.parametrize("sampler,function,noise,takes_s_noise", ANCESTRAL)
def test_eta_and_s_noise_match_k_diffusion(kd, training, sampler, function, noise, takes_s_noise):
    options = SamplerOptions(eta_ancestral=0.6, s_noise=0.8)
    scheduler = samplers.build_scheduler(sampler, options=options)
    ours = run_easel(scheduler)
    params = {"eta": 0.6, **({"s_noise": 0.8} if takes_s_noise else {})}
    ref = reference(kd, training, function, scheduler.sigmas, brownian=noise == "brownian", randn=noise == "randn",
                    **params)
    _close(ours, ref)
    plain = run_easel(samplers.build_scheduler(sampler))
    assert float((ours - plain).abs().max()) > 1e-2


def test_sigma_range_and_rho_reach_the_schedule(kd, training):
    options = SamplerOptions(sigma_min=0.1, sigma_max=10.0, rho=5.0)
    scheduler = samplers.build_scheduler("DPM++ 2M", "Karras", options=options)
    scheduler.set_timesteps(STEPS)
    expected = kd.sampling.get_sigmas_karras(STEPS, 0.1, 10.0, rho=5.0)
    assert torch.allclose(scheduler.sigmas, expected, atol=1e-5)
    _close(run_easel(scheduler), reference(kd, training, "sample_dpmpp_2m", expected))

    poly = samplers.build_scheduler("Euler", "Polyexponential", options=SamplerOptions(sigma_max=12.0, rho=2.0))
    poly.set_timesteps(STEPS)
    expected = kd.sampling.get_sigmas_polyexponential(STEPS, training.sigma_min, 12.0, rho=2.0)
    assert torch.allclose(poly.sigmas, expected, atol=1e-5)

    expo = samplers.build_scheduler("Euler", "Exponential", options=SamplerOptions(sigma_min=0.2, rho=3.0))
    expo.set_timesteps(STEPS)  # rho means nothing to Exponential
    assert torch.allclose(expo.sigmas, kd.sampling.get_sigmas_exponential(STEPS, 0.2, training.sigma_max), atol=1e-5)

    # A1111: a sampler's "Automatic" that is Uniform reads none of the schedule options
    auto = samplers.build_scheduler("Euler", options=options)
    auto.set_timesteps(STEPS)
    plain = samplers.build_scheduler("Euler", "Uniform")
    plain.set_timesteps(STEPS)
    assert torch.allclose(auto.sigmas, plain.sigmas, atol=1e-5)


def test_beta_schedule_takes_alpha_and_beta(training):
    from scipy import stats

    scheduler = samplers.build_scheduler("Euler", "Beta", options=SamplerOptions(beta_dist_alpha=0.3, beta_dist_beta=0.9))
    scheduler.set_timesteps(STEPS)
    lo, hi = training.sigma_min, training.sigma_max
    quantiles = [stats.beta.ppf(1 - q, 0.3, 0.9) for q in torch.linspace(0, 1, STEPS).tolist()]
    expected = torch.tensor([lo + q * (hi - lo) for q in quantiles] + [0.0], dtype=torch.float32)
    assert torch.allclose(scheduler.sigmas, expected, atol=1e-4)
    default = samplers.build_scheduler("Euler", "Beta")
    default.set_timesteps(STEPS)
    assert not torch.allclose(scheduler.sigmas, default.sigmas, atol=1e-3)


def test_always_discard_next_to_last_sigma(kd, training):
    options = SamplerOptions(always_discard_next_to_last_sigma=True)
    scheduler = samplers.build_scheduler("Euler", "Karras", options=options)
    scheduler.set_timesteps(STEPS)
    longer = kd.sampling.get_sigmas_karras(STEPS + 1, training.sigma_min, training.sigma_max)
    expected = torch.cat([longer[:-2], longer[-1:]])
    assert torch.allclose(scheduler.sigmas, expected, atol=1e-5)
    _close(run_easel(scheduler), reference(kd, training, "sample_euler", expected))
    assert samplers.infotext_params("Euler", "Karras", options) == {"Discard penultimate sigma": True}
    assert samplers.infotext_params("DPM2", "Karras", options) == {}  # DPM2 discards anyway


def test_sgm_noise_multiplier_scales_the_starting_noise():
    scheduler = samplers.build_scheduler("Euler", "Karras", options=SamplerOptions(sgm_noise_multiplier=True))
    scheduler.set_timesteps(STEPS)
    sigma_max = float(scheduler.sigmas[0])
    assert scheduler.init_noise_sigma == pytest.approx(math.sqrt(1 + sigma_max ** 2))
    plain = samplers.build_scheduler("Euler", "Karras")
    plain.set_timesteps(STEPS)
    assert plain.init_noise_sigma == pytest.approx(sigma_max)
    on = SamplerOptions(sgm_noise_multiplier=True)
    assert samplers.infotext_params("Euler", "Karras", on) == {"SGM noise multiplier": True}
    assert samplers.infotext_params("Euler", "Karras", on, txt2img=False) == {}


def test_eta_ddim_is_ddims_step_eta():
    run = lambda scheduler, **kw: denoise.sample(  # noqa: E731
        lambda x, t, cond: eps_model(x, t), scheduler, _noise(), lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None),
        steps=STEPS, cfg_scale=1.0, generators=_generators(), **kw)
    ours = run(samplers.build_scheduler("DDIM", options=SamplerOptions(eta_ddim=0.5)))
    direct = run(samplers.build_scheduler("DDIM"), extra_step_kwargs={"eta": 0.5})
    assert torch.equal(ours, direct)
    assert float((ours - run(samplers.build_scheduler("DDIM"))).abs().max()) > 1e-2
    cfgpp = samplers.build_scheduler("DDIM CFG++", options=SamplerOptions(eta_ddim=0.5))
    assert cfgpp.config.eta == 0.5
    assert samplers.infotext_params("DDIM", None, SamplerOptions(eta_ddim=0.5)) == {"Eta DDIM": 0.5}
    assert samplers.infotext_params("PLMS", None, SamplerOptions(eta_ddim=0.5)) == {}


def test_unipc_options_configure_unipc():
    options = SamplerOptions(uni_pc_variant="bh2", uni_pc_order=2, uni_pc_lower_order_final=False)
    scheduler = samplers.build_scheduler("UniPC", options=options)
    assert (scheduler.config.solver_type, scheduler.config.solver_order, scheduler.config.lower_order_final) == (
        "bh2", 2, False)
    default = samplers.build_scheduler("UniPC", options=SamplerOptions())
    assert (default.config.solver_type, default.config.solver_order, default.config.lower_order_final) == (
        "bh1", 3, True)
    assert float((run_easel(scheduler) - run_easel(default)).abs().max()) > 1e-3
    assert samplers.infotext_params("UniPC", None, options) == {}  # A1111 writes none for them


def test_infotext_keys_only_where_a1111_writes_them():
    every = [(name, label) for name in samplers.SAMPLER_NAMES for label in samplers.supported_schedules(name)]
    for name, label in every:  # the defaults write nothing (but Beta's parameters)
        if label != "Beta":
            assert samplers.infotext_params(name, label, SamplerOptions()) == {}, (name, label)
    eta = SamplerOptions(eta_ancestral=0.5)
    assert samplers.infotext_params("Euler a", None, eta) == {"Eta": 0.5}
    assert samplers.infotext_params("DPM++ 2M SDE", None, eta) == {"Eta": 0.5}
    assert samplers.infotext_params("Euler", None, eta) == {}
    assert samplers.infotext_params("Restart", None, eta) == {}
    churn = SamplerOptions(s_churn=1.5, s_tmin=0.2, s_tmax=9.0, s_noise=0.95)
    assert samplers.infotext_params("Heun", None, churn) == {"Sigma churn": 1.5, "Sigma tmin": 0.2, "Sigma tmax": 9.0,
                                                             "Sigma noise": 0.95}
    assert samplers.infotext_params("Euler a", None, churn) == {}
    assert samplers.infotext_params("DPM2 a", None, churn) == {"Sigma noise": 0.95}
    sigma = SamplerOptions(sigma_min=0.1, sigma_max=10.0, rho=5.0)
    assert samplers.infotext_params("Euler", None, sigma) == {}  # "Automatic" = the model's sigmas
    assert samplers.infotext_params("Euler", "Karras", sigma) == {
        "Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 5.0}
    assert samplers.infotext_params("DPM++ 2M", None, sigma) == {  # its Automatic is Karras
        "Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 5.0}
    assert samplers.infotext_params("Euler", "Exponential", sigma) == {
        "Schedule min sigma": 0.1, "Schedule max sigma": 10.0}
    assert samplers.infotext_params("Euler", "Karras", SamplerOptions(rho=7.0)) == {}  # Karras' own rho
    assert samplers.infotext_params("Euler", "Beta", SamplerOptions()) == {
        "Beta schedule alpha": 0.6, "Beta schedule beta": 0.6}  # A1111 always names them for Beta


def test_option_table_rows():
    from modules.services.options import Options

    options = Options(None)
    expected = {
        "hide_samplers": [], "eta_ddim": 0.0, "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0,
        "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "eta_noise_seed_delta": 0,
        "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False, "uni_pc_variant": "bh1",
        "uni_pc_order": 3, "uni_pc_lower_order_final": True, "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6,
        "sd_noise_schedule": "Default",
    }
    for key, default in expected.items():
        d = options.defs[key]
        assert (d.default, d.section, d.section_id) == (default, "Sampler parameters", "sampler-params"), key
    assert options.defs["eta_ancestral"].label == "Eta for k-diffusion samplers"
    assert options.defs["s_churn"].label == "sigma churn"
    assert options.defs["img2img_fix_steps"].default is False and options.defs["img2img_fix_steps"].section == "img2img"
    with pytest.raises(ValueError, match="hide_samplers"):
        options.check("hide_samplers", ["No such sampler"])
    assert options.check("hide_samplers", ["Euler", "LMS"]) == ["Euler", "LMS"]
    with pytest.raises(ValueError, match="s_noise"):
        options.check("s_noise", 2.0)
    # what the engine hands the job
    options.set("s_churn", 2.5)
    options.set("uni_pc_variant", "bh2")
    got = SamplerOptions.from_options(options.get)
    assert (got.s_churn, got.uni_pc_variant, got.eta_ancestral) == (2.5, "bh2", 1.0)


def test_hide_samplers_leaves_them_out_of_the_ui_lists_only():
    from modules.services.options import Options
    from modules.ui.generation_tab import GenerationTab
    from modules.ui.txt2img import Txt2ImgTab

    options = Options(None)
    options.set("hide_samplers", ["DPM++ 2M", "LMS"])
    family = {"samplers": None}  # the loaded model's family's samplers (None: all)
    tab = types.SimpleNamespace(engine=types.SimpleNamespace(options=options, family_samplers=lambda: family["samplers"]))
    tab.hidden_samplers = lambda: GenerationTab.hidden_samplers(tab)
    tab._sampler_names = lambda: GenerationTab._sampler_names(tab)
    main, hires_list = Txt2ImgTab.sampler_choices(tab)
    assert "LMS" not in main["choices"] and "DPM++ 2M" not in main["choices"] and "Euler a" in main["choices"]
    assert hires_list["choices"][0] == "Use same sampler" and "LMS" not in hires_list["choices"]
    assert len(main["choices"]) == len(samplers.SAMPLER_NAMES) - 2
    assert GenerationTab.sampler_choices(tab)["choices"] == main["choices"]
    family["samplers"] = ("Euler", "Heun", "DPM++ 2M", "LMS")  # a flow model: its samplers, less the hidden ones
    assert GenerationTab.sampler_choices(tab)["choices"] == ["Euler", "Heun"]
    # the UI starts on the first sampler listed when A1111's first (DPM++ 2M) is hidden
    assert samplers.default_visible_sampler(["DPM++ 2M"]) == samplers.SAMPLER_NAMES[0]
    assert samplers.default_visible_sampler([]) == "DPM++ 2M"
    # the API's list (/sdapi/v1/samplers) and what runs are not affected
    assert "LMS" in samplers.SAMPLER_NAMES and samplers.build_scheduler("LMS") is not None


def test_infotext_keys_map_back_to_the_options():
    from modules import infotext_utils
    from modules.api.request_fields import SETTINGS_FROM_INFOTEXT

    written = {}
    for options in (SamplerOptions(eta_ancestral=0.4, s_noise=0.9), SamplerOptions(sigma_min=0.2, sigma_max=9.0, rho=4.0),
                    SamplerOptions(always_discard_next_to_last_sigma=True, sgm_noise_multiplier=True)):
        written.update(samplers.infotext_params("DPM++ 2S a", "Karras", options))
    written.update(samplers.infotext_params("Heun", None, SamplerOptions(s_churn=1.0, s_tmin=0.3, s_tmax=5.0)))
    written.update(samplers.infotext_params("DDIM", None, SamplerOptions(eta_ddim=0.3)))
    written.update(samplers.infotext_params("Euler", "Beta", SamplerOptions(beta_dist_alpha=0.5, beta_dist_beta=0.7)))
    pairs = [f"{k}: {v}" for k, v in written.items()]
    settings = infotext_utils.create_override_settings_dict(pairs)
    assert settings == {
        "eta_ddim": 0.3, "eta_ancestral": 0.4, "s_churn": 1.0, "s_tmin": 0.3, "s_tmax": 5.0, "s_noise": 0.9,
        "sigma_min": 0.2, "sigma_max": 9.0, "rho": 4.0, "always_discard_next_to_last_sigma": True,
        "sgm_noise_multiplier": True, "beta_dist_alpha": 0.5, "beta_dist_beta": 0.7,
    }
    # the API's infotext -> override_settings, with the option's type
    api = {option: convert(str(written[key])) for key, (option, convert) in SETTINGS_FROM_INFOTEXT.items()
           if key in written}
    assert api == settings
    assert infotext_utils.create_override_settings_dict(["Noise Schedule: Zero Terminal SNR"]) == {
        "sd_noise_schedule": "Zero Terminal SNR"}


class _Count(denoise.DenoiseHooks):
    def __init__(self):
        self.steps = 0

    def step_end(self, step, total, latents, denoised):
        self.steps += 1


@pytest.mark.parametrize("sampler,fix,expected", [("Euler", False, 6), ("Euler", True, 10), ("DPM2", False, 6),
                                                  ("DDIM", False, 5), ("DDIM", True, 10)])
def test_img2img_fix_steps_sets_the_steps_run(sampler, fix, expected):
    from modules.core import img2img

    kdiff = samplers.get_spec(sampler).kdiff is not None
    schedule, strength = img2img.sampler_steps(10, 0.5, fix, kdiffusion=kdiff)
    scheduler = samplers.build_scheduler(sampler)
    count = _Count()
    denoise.sample(lambda x, t, cond: eps_model(x, t), scheduler, _noise(),
                   lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None), steps=schedule, cfg_scale=1.0,
                   generators=_generators(), hooks=count, init_latents=torch.zeros(SHAPE), denoising_strength=strength)
    # A1111: 10 steps at strength 0.5 run int(0.5 * 10) + 1 = 6 k-diffusion steps (5 DDIM steps); with
    # img2img_fix_steps exactly 10, at the end of a 20-step schedule; second-order ones count model calls
    calls_per_step = 2 if samplers.get_spec(sampler).second_order() else 1
    assert count.steps == expected * calls_per_step - (1 if calls_per_step == 2 else 0)
    assert schedule == (20 if fix else 10)


def test_the_engine_hands_the_job_its_sampler_options(tmp_path):
    from modules.services.checkpoints import CheckpointRegistry, HashCache
    from modules.services.engine import Engine
    from modules.services.jobs import JobState, WorkQueue
    from modules.services.options import Options
    from modules.ui.settings import component_for

    options = Options(None)
    options.set("eta_ancestral", 0.3)
    state = JobState()
    engine = Engine(options, CheckpointRegistry([tmp_path], HashCache(None)), types.SimpleNamespace(model=None),
                    state, WorkQueue(state), tmp_path)
    info = types.SimpleNamespace(model_name="tiny", shorthash="0123456789", filename=str(tmp_path / "tiny.safetensors"))
    got = engine.settings_for(info, overrides={"s_churn": 2.0}).sampler_options  # override_settings win
    assert (got.eta_ancestral, got.s_churn, got.s_noise) == (0.3, 2.0, 1.0)
    # the Settings tab shows hide_samplers as A1111's checkboxes
    import gradio as gr

    with gr.Blocks():
        control = component_for("hide_samplers", options.defs["hide_samplers"], ["LMS"])
    assert isinstance(control, gr.CheckboxGroup) and control.value == ["LMS"]


def test_zero_terminal_snr_noise_schedule_rescales_every_sampler(training):
    ac = training.alphas_cumprod.double()  # A1111's rescale_zero_terminal_snr_abar, written out
    root = ac.sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    expected = root ** 2
    expected[-1] = 4.8973451890853435e-08
    options = SamplerOptions(sd_noise_schedule="Zero Terminal SNR")
    euler = samplers.build_scheduler("Euler", options=options)
    assert torch.allclose(euler.training.alphas_cumprod.double(), expected, rtol=1e-5, atol=1e-12)
    euler.set_timesteps(STEPS)
    assert float(euler.sigmas[0]) == pytest.approx(float(((1 - expected[-1]) / expected[-1]) ** 0.5), rel=1e-4)
    plms = samplers.build_scheduler("PLMS", options=options)  # diffusers' PNDM, given the betas
    assert torch.allclose(plms.alphas_cumprod.double(), expected, rtol=1e-4, atol=1e-9)
    ddim = samplers.build_scheduler("DDIM", options=options)
    assert float(ddim.alphas_cumprod[-1]) < 1e-6 and float(samplers.build_scheduler("DDIM").alphas_cumprod[-1]) > 1e-3
    assert samplers.infotext_params("Euler a", None, SamplerOptions(sd_noise_schedule="Zero Terminal SNR",
                                                                    eta_ancestral=0.5)) == {
        "Noise Schedule": "Zero Terminal SNR", "Eta": 0.5}
    assert samplers.infotext_params("PLMS", None, options) == {"Noise Schedule": "Zero Terminal SNR"}


def test_options_reach_a_real_job_and_its_infotext(sd1):
    """The pipeline hands the options to the scheduler it builds and writes A1111's keys."""
    import numpy as np

    from modules.core.pipeline import GenerationSettings, generate
    from modules.core.types import GenerationRequest

    request = dict(prompt="a red cube", seed=4, steps=4, width=64, height=64, sampler_name="Euler",
                   scheduler="Karras", save_images=False)
    plain = generate(GenerationRequest(**request), sd1, GenerationSettings())
    churned = generate(GenerationRequest(**request), sd1,
                       GenerationSettings(sampler_options=SamplerOptions(s_churn=0.5, s_noise=0.9, rho=5.0)))
    assert "Sigma churn: 0.5" in churned.infotexts[0] and "Schedule rho: 5" in churned.infotexts[0]
    assert "Sigma churn" not in plain.infotexts[0]
    difference = np.abs(np.asarray(plain.images[0], dtype=float) - np.asarray(churned.images[0], dtype=float))
    assert difference.max() > 8


def test_enable_quantization_travels_from_the_options_to_the_scheduler():
    """A1111's enable_quantization reaches the k-diffusion samplers of a job (the numbers: the
    k-diffusion comparison in test_samplers_reference.py); no infotext key, no effect elsewhere."""
    from modules.core import ksampling
    from modules.services.options import Options

    options = Options(None)
    assert options.get("enable_quantization") is False
    options.set("enable_quantization", True)
    got = SamplerOptions.from_options(options.get)
    assert got.enable_quantization is True
    scheduler = samplers.build_scheduler("DPM++ 2M", "Karras", options=got)
    assert isinstance(scheduler, ksampling.KSamplerScheduler) and scheduler.quantize
    scheduler.set_timesteps(8)
    assert torch.equal(scheduler.timesteps, scheduler.timesteps.round())
    assert not samplers.build_scheduler("DPM++ 2M", "Karras", options=SamplerOptions()).quantize
    assert samplers.infotext_params("DPM++ 2M", "Karras", got) == {}


def _a1111_unipc_model_times(skip_type, n):
    """A1111's uni_pc.py: NoiseScheduleVP('discrete') on SD's alphas_cumprod, get_time_steps from
    t_T = 1 to t_0 = 1/1000, the model fed (t - 1/1000) * 1000 (written out in torch float64)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    log_alpha = 0.5 * torch.cumprod(1 - betas, 0).log()
    t_array = torch.linspace(0, 1, 1001, dtype=torch.float64)[1:]

    def interp(x, xs, ys):  # piecewise linear, xs ascending
        i = torch.searchsorted(xs, x).clamp(1, len(xs) - 1)
        w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        return ys[i - 1] + w * (ys[i] - ys[i - 1])

    def marginal_lambda(t):
        lmc = interp(t, t_array, log_alpha)
        return lmc - 0.5 * torch.log(1 - torch.exp(2 * lmc))

    t_T, t_0 = torch.tensor([1.0], dtype=torch.float64), torch.tensor([1e-3], dtype=torch.float64)
    if skip_type == "logSNR":
        lambdas = torch.linspace(float(marginal_lambda(t_T)), float(marginal_lambda(t_0)), n + 1, dtype=torch.float64)
        la = -0.5 * torch.logaddexp(torch.zeros(1, dtype=torch.float64), -2 * lambdas)
        t = interp(la, log_alpha.flip(0), t_array.flip(0))
    elif skip_type == "time_quadratic":
        t = torch.linspace(1.0, 1e-3 ** 0.5, n + 1, dtype=torch.float64) ** 2
    else:
        t = torch.linspace(1.0, 1e-3, n + 1, dtype=torch.float64)
    return ((t[:-1] - 1e-3) * 1000).to(torch.float32)


@pytest.mark.parametrize("skip_type", ["time_uniform", "time_quadratic", "logSNR"])
def test_unipc_skip_type_sets_a1111s_unipc_times(skip_type):
    from modules import infotext_utils
    from modules.services.options import Options

    options = Options(None)
    assert options.get("uni_pc_skip_type") == "time_uniform"
    options.set("uni_pc_skip_type", skip_type)
    got = SamplerOptions.from_options(options.get)
    scheduler = samplers.build_scheduler("UniPC", options=got)
    scheduler.set_timesteps(10)
    expected = _a1111_unipc_model_times(skip_type, 10)
    assert scheduler.timesteps.shape == expected.shape
    assert torch.allclose(scheduler.timesteps, expected, atol=2e-3), (scheduler.timesteps, expected)
    # the sigmas are the training schedule's at those times, ending at its smallest sigma (A1111's t_0)
    ac = scheduler.alphas_cumprod.double()
    train = ((1 - ac) / ac) ** 0.5
    assert float(scheduler.sigmas[-1]) == pytest.approx(float(train[0]), rel=1e-5)
    assert float(scheduler.sigmas[0]) == pytest.approx(float(train[-1]), rel=1e-5)
    # the sampler runs there (the model sees those timesteps) and the choice changes the picture
    seen = []

    def model(x, t, cond):
        seen.append(float(t[0]))
        return eps_model(x, t)

    out = denoise.sample(model, samplers.build_scheduler("UniPC", options=got), _noise(),
                         lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None), steps=10, cfg_scale=1.0)
    assert torch.isfinite(out).all() and seen == pytest.approx(expected.tolist(), abs=2e-3)
    if skip_type != "time_uniform":
        default = denoise.sample(lambda x, t, c: eps_model(x, t), samplers.build_scheduler("UniPC"), _noise(),
                                 lambda i: ({"context": torch.zeros(SHAPE[0], 1, 1)}, None), steps=10, cfg_scale=1.0)
        assert float((out - default).abs().max()) > 1e-3
    # A1111 writes no infotext key for it; its option's infotext name pastes back
    assert samplers.infotext_params("UniPC", None, got) == {}
    assert infotext_utils.create_override_settings_dict([f"UniPC skip type: {skip_type}"]) == {
        "uni_pc_skip_type": skip_type}
    with pytest.raises(ValueError, match="skip type"):
        samplers.build_scheduler("UniPC", options=SamplerOptions(uni_pc_skip_type="quad"))
