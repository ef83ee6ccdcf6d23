"""Sampler registry and denoising loop; the rows that run diffusers' schedulers checked numerically
against diffusers' own pipelines.

The acceptance check: for every sampler that stays on a diffusers scheduler (A1111's timestep
samplers DDIM, PLMS, UniPC, and LCM on its own schedule), our ``denoise.sample`` with
``samplers.build_scheduler`` must land on the same latents as diffusers' ``StableDiffusionPipeline``
driving the same scheduler (tiny random UNet, 6 steps, CFG 5, batch 2, per-image generators). The
k-diffusion rows are checked against the ``k-diffusion`` package in tests/test_samplers_reference.py."""

import pytest
import torch

from modules.core import denoise, ksampling, rng, samplers

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 vs diffusers internals

TOL = 1e-4  # max abs difference allowed on the final latents
# Where two computations batch the UNet differently its float rounding differs (~1e-7 relative);
# the sampler amplifies that by sigma_max * CFG, so these comparisons are relative to the latents
# (which reach |15| with a random UNet: it integrates its eps instead of denoising).
REL_TOL = 5e-5
LATENT = (4, 8, 8)
SEEDS = [1234, 1235]
STEPS = 6
CFG = 5.0


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is shared; a 0.8M-parameter UNet gains nothing from more
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    ).eval()
    # Re-draw every parameter, the zero-initialised output layers included, so the output
    # depends on input, timestep and context (norm scales around 1, everything else around 0).
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,), layers_per_block=1,
        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    ).eval()


def make_model(unet):
    def model(x, t, cond):
        return unet(x, t, encoder_hidden_states=cond["context"], return_dict=False)[0]

    return model


@pytest.fixture(scope="module")
def embeds():
    gen = torch.Generator().manual_seed(7)
    cond = torch.randn((2, 7, 32), generator=gen)
    uncond = torch.randn((2, 7, 32), generator=gen)
    return cond, uncond


def noise_for(seeds=SEEDS):
    return rng.create_noise(LATENT, seeds)


def gens_for(seeds=SEEDS):
    return rng.step_generators(seeds, shape=LATENT)


def run_ours(unet, scheduler, embeds, *, seeds=SEEDS, steps=STEPS, cfg=CFG, hooks=None, **kw):
    cond, uncond = embeds
    conds = ({"context": cond[: len(seeds)]}, {"context": uncond[: len(seeds)]})
    return denoise.sample(
        make_model(unet), scheduler, noise_for(seeds), lambda i: conds, steps=steps, cfg_scale=cfg,
        generators=gens_for(seeds), hooks=hooks, **kw,
    )


def pipeline(cls, unet, vae, scheduler):
    pipe = cls(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(unet, vae, scheduler, embeds, *, steps=STEPS, cfg=CFG):
    from diffusers import StableDiffusionPipeline

    cond, uncond = embeds
    pipe = pipeline(StableDiffusionPipeline, unet, vae, scheduler)
    scale = pipe.vae_scale_factor
    return pipe(
        prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise_for(), num_inference_steps=steps,
        guidance_scale=cfg, output_type="latent", generator=gens_for(),
        height=LATENT[1] * scale, width=LATENT[2] * scale,
    ).images


def compare_cases():
    """Every sampler that a job runs on a diffusers scheduler (its own schedule: the others ignore the
    schedule type or run k-diffusion)."""
    for name in samplers.SAMPLER_NAMES:
        if name == "DDIM CFG++":
            continue  # Easel's own scheduler: checked in test_samplers_reference.py
        if not isinstance(samplers.build_scheduler(name), ksampling.KSamplerScheduler):
            yield name, "Automatic"


def test_compare_cases_are_the_diffusers_rows():
    assert list(compare_cases()) == [(n, "Automatic") for n in ("DDIM", "PLMS", "UniPC", "LCM")]


def build_pair(name, schedule, **kw):
    """Two identical fresh schedulers; SDE ones get the same per-image Brownian seeds."""
    ours, theirs = (samplers.build_scheduler(name, schedule, **kw) for _ in range(2))
    extra = {}
    if hasattr(theirs, "noise_sampler_seed"):
        theirs.noise_sampler_seed = list(SEEDS)
        extra["brownian_seeds"] = list(SEEDS)
    return ours, theirs, extra


# --------------------------------------------------------------------------------------------
# The acceptance check
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,schedule", list(compare_cases()))
def test_matches_diffusers_pipeline(unet, vae, embeds, name, schedule):
    ours_sched, their_sched, extra = build_pair(name, schedule)
    ours = run_ours(unet, ours_sched, embeds, **extra)
    theirs = run_diffusers(unet, vae, their_sched, embeds)
    diff = (ours - theirs).abs().max().item()
    assert torch.isfinite(ours).all()
    assert ours.abs().mean() > 0.05  # a real result, not a collapsed one
    assert diff <= TOL, f"{name} / {schedule}: max abs diff {diff:.3g}"


@pytest.mark.parametrize("name", ["DDIM", "PLMS", "UniPC"])
def test_v_prediction_matches_diffusers_pipeline(unet, vae, embeds, name):
    ours_sched, their_sched, extra = build_pair(name, "Automatic", prediction_type="v_prediction")
    ours = run_ours(unet, ours_sched, embeds, **extra)
    theirs = run_diffusers(unet, vae, their_sched, embeds)
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("name", samplers.SAMPLER_NAMES)
def test_v_prediction_builds_and_runs(unet, embeds, name):
    scheduler = samplers.build_scheduler(name, prediction_type="v_prediction")
    assert scheduler.config.prediction_type == "v_prediction"
    out = run_ours(unet, scheduler, embeds, steps=3, brownian_seeds=SEEDS)
    assert out.shape == (2, *LATENT) and torch.isfinite(out).all()


def test_img2img_matches_diffusers_pipeline(unet, vae, embeds):
    from diffusers import StableDiffusionImg2ImgPipeline

    cond, uncond = embeds
    init = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(3))
    strength = 0.5
    for name in ("DDIM", "PLMS", "UniPC"):
        pipe = pipeline(StableDiffusionImg2ImgPipeline, unet, vae, samplers.build_scheduler(name))
        theirs = pipe(
            prompt_embeds=cond, negative_prompt_embeds=uncond, image=init, strength=strength,
            num_inference_steps=STEPS, guidance_scale=CFG, output_type="latent",
            generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        ).images
        # diffusers draws the img2img noise from the generators it is given: do the same
        noise = rng.create_noise(LATENT, SEEDS)
        ours = denoise.sample(
            make_model(unet), samplers.build_scheduler(name), noise,
            lambda i: ({"context": cond}, {"context": uncond}), steps=STEPS, cfg_scale=CFG,
            generators=gens_for(), init_latents=init, denoising_strength=strength,
        )
        assert (ours - theirs).abs().max().item() <= TOL, name


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

def test_registry_lists():
    assert samplers.SAMPLER_NAMES == [
        "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
        "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM",
        "DDIM CFG++", "PLMS", "UniPC", "LCM",
    ]
    assert samplers.SCHEDULE_TYPES == [
        ("Automatic", "automatic"), ("Uniform", "uniform"), ("Karras", "karras"),
        ("Exponential", "exponential"), ("Polyexponential", "polyexponential"), ("SGM Uniform", "sgm_uniform"),
        ("KL Optimal", "kl_optimal"), ("Align Your Steps", "align_your_steps"), ("Simple", "simple"),
        ("Normal", "normal"), ("DDIM", "ddim"), ("Beta", "beta"),
    ]


@pytest.mark.parametrize("given,expected", [
    (("Euler a",), ("Euler a", "Automatic")),
    (("k_euler_a",), ("Euler a", "Automatic")),
    (("k_dpmpp_2m",), ("DPM++ 2M", "Automatic")),
    (("DPM++ 2M Karras",), ("DPM++ 2M", "Karras")),
    (("DPM++ 2M SDE Karras",), ("DPM++ 2M SDE", "Karras")),
    (("dpm++ 2m sde exponential",), ("DPM++ 2M SDE", "Exponential")),
    (("DPM2 a Karras",), ("DPM2 a", "Karras")),
    (("k_dpmpp_2m_ka",), ("DPM++ 2M", "Karras")),
    (("DPM++ 2M Karras", "Automatic"), ("DPM++ 2M", "Karras")),
    (("DPM++ 2M Karras", "karras"), ("DPM++ 2M", "Karras")),
    (("euler", "KARRAS"), ("Euler", "Karras")),
    (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform")),
    (("DDIM", "uniform"), ("DDIM", "Uniform")),
    (("  lcm  ", None), ("LCM", "Automatic")),
])
def test_resolve_accepts_names_aliases_and_ids(given, expected):
    assert samplers.resolve(*given) == expected


def test_resolve_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError) as err:
        samplers.resolve("Euler b")
    assert "Euler a" in str(err.value) and "DPM++ 2M SDE" in str(err.value) and "LCM" in str(err.value)
    with pytest.raises(ValueError, match="Karras"):
        samplers.resolve("Euler", "Karras Exponential")
    # A1111's timestep samplers take any schedule type and run their own timesteps (its infotexts
    # with "Sampler: DDIM, Schedule type: Karras" are reproduced); A1111's LCM is k-diffusion's
    assert samplers.resolve("DDIM", "Karras") == ("DDIM", "Karras")
    for name in ("DDIM", "PLMS", "DDIM CFG++", "UniPC"):
        ignored, own = samplers.build_scheduler(name, "Polyexponential"), samplers.build_scheduler(name)
        ignored.set_timesteps(7)
        own.set_timesteps(7)
        assert type(ignored) is type(own) and torch.equal(ignored.timesteps, own.timesteps), name
    lcm = samplers.build_scheduler("LCM", "SGM Uniform")
    assert lcm.algorithm_name == "lcm" and lcm.schedule_id == "sgm_uniform"
    with pytest.raises(ValueError, match="already names schedule"):
        samplers.resolve("DPM++ 2M Karras", "Exponential")
    # diffusers' LMS cannot rescale to zero terminal SNR: k-diffusion's LMS runs on the rescaled schedule
    zsnr_lms = samplers.build_scheduler("LMS", rescale_betas_zero_snr=True)
    assert zsnr_lms.algorithm_name == "lms" and float(zsnr_lms.training.alphas_cumprod[-1]) < 1e-6
    with pytest.raises(ValueError):
        samplers.resolve("")


def test_registry_refuses_duplicates():
    row = samplers.get_spec("Euler")
    with pytest.raises(ValueError, match="duplicate"):
        samplers._index([row, samplers.SamplerSpec("Euler", (), "EulerDiscreteScheduler")])
    with pytest.raises(ValueError, match="duplicate"):
        samplers._index([row, samplers.SamplerSpec("Other", ("K_EULER",), "EulerDiscreteScheduler")])


def test_automatic_follows_a1111_defaults_and_schedules_map_to_config():
    assert samplers.effective_schedule("DPM++ 2M") == "Karras"
    assert samplers.effective_schedule("DPM++ 2M SDE") == "Exponential"
    assert samplers.effective_schedule("Euler a") == "Uniform"
    assert samplers.effective_schedule("DPM++ 2M", "Uniform") == "Uniform"
    # A1111's k-diffusion samplers: k-diffusion's algorithm on the schedule ("Automatic": the sampler's own)
    for name, schedule, expected in [("DPM++ 2M", "Automatic", ("dpmpp_2m", "karras")),
                                     ("DPM++ 2M SDE", "Automatic", ("dpmpp_2m_sde", "exponential")),
                                     ("Euler", "Uniform", ("euler", "uniform")),
                                     ("Euler", "SGM Uniform", ("euler", "sgm_uniform")),
                                     ("DPM2", "Automatic", ("dpm_2", "karras"))]:
        scheduler = samplers.build_scheduler(name, schedule)
        assert (scheduler.algorithm_name, scheduler.schedule_id) == expected, name
    training = samplers.build_scheduler("Euler").training
    assert float(training.sigma_max) == pytest.approx(14.6146, abs=1e-4)  # SD's scaled-linear betas
    cfg = samplers.build_scheduler("DDIM").config
    assert (cfg.timestep_spacing, cfg.steps_offset, cfg.clip_sample, cfg.set_alpha_to_one) == ("leading", 1, False, False)
    assert samplers.build_scheduler("PLMS").config.skip_prk_steps
    assert samplers.build_scheduler("DDIM", rescale_betas_zero_snr=True).config.rescale_betas_zero_snr
    assert samplers.build_scheduler("UniPC", options={"solver_order": 2}).config.solver_order == 2


def test_every_supported_combination_builds():
    for name in samplers.SAMPLER_NAMES:
        for schedule in samplers.supported_schedules(name):
            scheduler = samplers.build_scheduler(name, schedule)
            scheduler.set_timesteps(5)
            # A1111's DDIM CFG++ makes steps - 1 model calls (its grid's top down to its second point)
            assert len(scheduler.timesteps) >= (4 if name == "DDIM CFG++" else 5), (name, schedule)


def test_is_ancestral():
    assert {n for n in samplers.SAMPLER_NAMES if samplers.is_ancestral(n)} == {
        "Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE",
        "DPM fast", "DPM adaptive", "Restart", "LCM"}
    assert samplers.is_ancestral("k_euler_a") and not samplers.is_ancestral("DPM++ 2M Karras")


# --------------------------------------------------------------------------------------------
# Loop behaviour
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE", "DPM++ 2S a"])
def test_same_seed_twice_is_identical(unet, embeds, name):
    first = run_ours(unet, samplers.build_scheduler(name), embeds, steps=4)
    second = run_ours(unet, samplers.build_scheduler(name), embeds, steps=4)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE"])
def test_image_does_not_depend_on_its_batch(unet, embeds, name):
    batch = run_ours(unet, samplers.build_scheduler(name), embeds, steps=4, brownian_seeds=SEEDS)
    cond, uncond = embeds
    single = run_ours(unet, samplers.build_scheduler(name), (cond[1:], uncond[1:]), seeds=SEEDS[1:], steps=4,
                      brownian_seeds=SEEDS[1:])
    # the UNet run at batch 2 vs 4 differs in float rounding only; different noise would be O(1)
    assert (batch[1:] - single).abs().max().item() <= REL_TOL * single.abs().max().item()


class Recorder(denoise.DenoiseHooks):
    def __init__(self, stop_after=None):
        self.calls, self.stop_after, self.ends = [], stop_after, []

    def cfg_denoiser(self, step, x, t, cond, uncond):
        self.calls.append(("denoiser", step, tuple(x.shape), tuple(t.shape)))

    def cfg_denoised(self, step, x_pred):
        self.calls.append(("denoised", step, x_pred.shape[0]))

    def cfg_after_cfg(self, step, x_pred):
        self.calls.append(("after_cfg", step, x_pred.shape[0]))
        return x_pred

    def step_end(self, step, total, latents, denoised):
        self.calls.append(("end", step, total, denoised is not None))
        self.ends.append(latents.clone())

    def should_stop(self):
        return self.stop_after is not None and len(self.ends) >= self.stop_after


@pytest.mark.parametrize("name,evaluations", [("Euler", STEPS), ("Heun", 2 * STEPS - 1), ("DPM++ 2M", STEPS)])
def test_hooks_called_once_per_step_in_order(unet, embeds, name, evaluations):
    rec = Recorder()
    run_ours(unet, samplers.build_scheduler(name), embeds, hooks=rec)
    expected = []
    for i in range(evaluations):
        expected += [("denoiser", i, (2, *LATENT), (2,)), ("denoised", i, 4), ("after_cfg", i, 2),
                     ("end", i, evaluations, True)]  # (k-diffusion's DPM++ 2M hands its denoised out too)
    assert rec.calls == expected


def test_should_stop_ends_early_with_current_latents(unet, embeds):
    rec = Recorder(stop_after=3)
    out = run_ours(unet, samplers.build_scheduler("Euler a"), embeds, hooks=rec)
    assert len(rec.ends) == 3 and torch.equal(out, rec.ends[-1])


def test_after_cfg_hook_result_is_used(unet, embeds):
    class Zero(denoise.DenoiseHooks):
        def cfg_after_cfg(self, step, x_pred):
            return torch.zeros_like(x_pred)

    out = run_ours(unet, samplers.build_scheduler("DDIM"), embeds, hooks=Zero(), steps=3)
    # with eps == 0 every DDIM step only rescales the latents towards x0 = x / sqrt(alpha)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, run_ours(unet, samplers.build_scheduler("DDIM"), embeds, steps=3))


def _counting(unet):
    calls = []
    inner = make_model(unet)

    def model(x, t, cond):
        calls.append((x.shape[0], cond["context"].shape[1], t.shape[0]))
        return inner(x, t, cond)

    return model, calls


def test_cond_uncond_batched_and_split(unet, embeds):
    cond, uncond = embeds
    model, calls = _counting(unet)
    run = lambda conds, cfg: denoise.sample(  # noqa: E731
        model, samplers.build_scheduler("Euler"), noise_for(), lambda i: conds, steps=2, cfg_scale=cfg)

    batched = run(({"context": cond}, {"context": uncond}), CFG)
    assert calls == [(4, 7, 4)] * 2
    calls.clear()
    longer = torch.cat([uncond, uncond], dim=1)  # 14 tokens against 7: two calls
    run(({"context": cond}, {"context": longer}), CFG)
    assert calls == [(2, 7, 2), (2, 14, 2)] * 2
    calls.clear()
    run(({"context": cond}, None), 1.0)  # CFG 1: no uncond pass at all
    assert calls == [(2, 7, 2)] * 2
    calls.clear()

    # the split path computes the same thing as the batched one
    split = run(({"context": cond, "tag": "a"}, {"context": uncond, "tag": "b"}), CFG)
    assert calls == [(2, 7, 2), (2, 7, 2)] * 2
    assert (split - batched).abs().max().item() <= REL_TOL * batched.abs().max().item()


def test_cond_for_step_sees_every_step(unet, embeds):
    cond, uncond = embeds
    seen = []

    def cond_for_step(i):
        seen.append(i)
        return {"context": cond if i < 2 else -cond}, {"context": uncond}

    denoise.sample(make_model(unet), samplers.build_scheduler("Euler"), noise_for(), cond_for_step,
                   steps=4, cfg_scale=CFG)
    assert seen == [0, 1, 2, 3]


def test_input_checks(unet, embeds):
    cond, uncond = embeds
    model, scheduler = make_model(unet), samplers.build_scheduler("Euler")
    conds = lambda i: ({"context": cond}, {"context": uncond})  # noqa: E731
    with pytest.raises(ValueError, match="generators"):
        denoise.sample(model, scheduler, noise_for(), conds, steps=2, cfg_scale=CFG, generators=gens_for()[:1])
    with pytest.raises(ValueError, match="init_latents"):
        denoise.sample(model, scheduler, noise_for(), conds, steps=2, cfg_scale=CFG, denoising_strength=0.5)
    with pytest.raises(ValueError, match="context"):
        denoise.sample(model, scheduler, noise_for(), lambda i: ({"ctx": cond}, {"ctx": uncond}), steps=2,
                       cfg_scale=CFG)
    with pytest.raises(ValueError, match="batch"):
        denoise.sample(model, scheduler, noise_for(), lambda i: ({"context": cond[:1]}, {"context": uncond}),
                       steps=2, cfg_scale=CFG)
    with pytest.raises(ValueError, match="takes no 'eta'"):
        denoise.sample(model, scheduler, noise_for(), conds, steps=2, cfg_scale=CFG, extra_step_kwargs={"eta": 1.0})
    init = torch.zeros((2, *LATENT))
    same = denoise.sample(model, scheduler, noise_for(), conds, steps=4, cfg_scale=CFG, init_latents=init,
                          denoising_strength=0.0)
    assert torch.equal(same, init)


@pytest.mark.parametrize("name", ["Euler", "DDIM"])  # sigma-space and alpha-space add_noise
def test_extra_noise_adds_noise_in_k_diffusion_units(unet, embeds, name):
    """A1111's img2img_extra_noise: x_i = x0 + sigma * n, then x_i += extra * n (k-diffusion's
    scale); a scheduler that works in sqrt(alpha) units sees the same picture scaled by sqrt(alpha)."""
    class FirstInput(denoise.DenoiseHooks):
        def __init__(self, replace=None):
            self.first, self.replace, self.seen = None, replace, []

        def extra_noise(self, noise, init_latents, noised):
            self.seen.append((noise.clone(), init_latents.clone(), noised.clone()))
            return noise if self.replace is None else self.replace

        def cfg_denoiser(self, step, x, t, cond, uncond):
            if step == 0:
                self.first, self.t = x.clone(), t[0].item()

    init = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(3))
    noise = noise_for()
    plain, extra, zeroed = FirstInput(), FirstInput(), FirstInput(torch.zeros_like(noise))
    for hooks, amount in ((plain, 0.0), (extra, 0.5), (zeroed, 0.5)):
        run_ours(unet, samplers.build_scheduler(name), embeds, hooks=hooks, steps=6, init_latents=init,
                 denoising_strength=0.5, extra_noise=amount)
    assert plain.seen == [] and len(extra.seen) == 1
    assert torch.equal(extra.seen[0][0], noise) and torch.equal(extra.seen[0][1], init)
    assert torch.equal(extra.seen[0][2], plain.first)  # the noised init latents before the extra noise
    # the start without extra noise is c0 * init + c1 * noise: c0 = 1 in sigma space (Euler), sqrt(alpha) (DDIM)
    basis = torch.stack([init.flatten(), noise.flatten()], dim=1)
    c0, c1 = torch.linalg.lstsq(basis, plain.first.flatten()[:, None]).solution.flatten().tolist()
    assert torch.allclose(plain.first, c0 * init + c1 * noise, atol=1e-5)
    if name == "Euler":
        assert c0 == pytest.approx(1.0, abs=1e-4)
    else:
        alpha = samplers.build_scheduler(name).alphas_cumprod[round(plain.t)].item()
        assert c0 == pytest.approx(alpha ** 0.5, abs=1e-4)
    # k-diffusion's x_i + 0.5 * noise, in the scheduler's units
    assert torch.allclose(extra.first, plain.first + 0.5 * c0 * noise, atol=1e-5)
    assert torch.equal(zeroed.first, plain.first)  # the hook's noise is what is added


def test_uses_ensd_follows_a1111():
    """A1111 names ENSD in the infotext for its "uses_ensd" samplers only, and not at eta 0; the SDE
    samplers' Brownian noise comes from the image seeds."""
    assert {n for n in samplers.SAMPLER_NAMES if samplers.uses_ensd(n)} == {"Euler a", "DPM2 a", "DPM++ 2S a",
                                                                           "DPM fast", "DPM adaptive"}
    assert not samplers.uses_ensd("Euler a", eta=0.0) and samplers.uses_ensd("k_euler_a", eta=0.5)
    assert not samplers.uses_ensd("DPM++ SDE") and not samplers.uses_ensd("no such sampler")
