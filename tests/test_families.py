"""Model families as parts of their own (modules/core/families), and the SDXL refiner.

The refiner is checked against diffusers' own "ensemble of experts" (SDXL base with
``denoising_end``, then the refiner's img2img pipeline with ``denoising_start``) on the same tiny
weights, scheduler, noise and text embeddings: A1111's switch rule ``(999 - t) / 1000 >= switch_at``
splits the timesteps exactly where diffusers' ``denoising_end`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import families, model_ops, rng, samplers
from modules.core.checkpoint_file import CheckpointFile
from modules.core.conditioning import TextConditioner
from modules.core.devices import choose_policy
from modules.core.families import ConditioningOptions
from modules.core.model_detection import detect
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, JobObserver, generate
from modules.core.types import GenerationRequest, RequestError

POLICY, _ = choose_policy()
TITLE = "tiny-sdxl-refiner [0123456789]"


@pytest.fixture(scope="module")
def refiner(tiny_checkpoints):
    return load_checkpoint(tiny_checkpoints.sdxl_refiner, POLICY)


def _settings(sdxl, refiner, calls=None, **kw) -> GenerationSettings:
    def load_model(name):
        if calls is not None:
            calls.append(name)
        return refiner if name else sdxl

    def title(name):
        if name != "tiny-sdxl-refiner":
            raise ValueError(f"checkpoint {name!r} not found")
        return TITLE

    return GenerationSettings(load_model=load_model, checkpoint_title=title, **kw)


# -- the registry ----------------------------------------------------------------------------------

def test_registry_refuses_a_second_family_of_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.get("sdxl"))
    with pytest.raises(ValueError, match="unknown model family 'sd9'"):
        families.get("sd9")


def test_refiner_is_detected_from_its_shapes(tiny_checkpoints):
    ckpt = CheckpointFile(tiny_checkpoints.sdxl_refiner)
    spec = detect(ckpt.shapes, ckpt.metadata)
    assert (spec.family, spec.label, spec.native_size, spec.inpainting) == ("sdxl_refiner", "SDXL refiner",
                                                                           (1024, 1024), False)
    ref = tiny_checkpoints.components("sdxl_refiner").unet.config
    for key in ("block_out_channels", "down_block_types", "up_block_types", "cross_attention_dim",
                "projection_class_embeddings_input_dim", "addition_time_embed_dim"):
        assert tuple(np.atleast_1d(spec.unet_config[key])) == tuple(np.atleast_1d(ref[key])), key
    # the middle block is as deep as the attention levels, though the last level has none
    assert spec.unet_config["transformer_layers_per_block"][-1] == 2
    assert [e.prefix for e in spec.text_encoders] == ["conditioner.embedders.0.model."]


def test_refiner_modules_compute_like_the_originals(tiny_checkpoints, refiner):
    ref = tiny_checkpoints.components("sdxl_refiner")
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 10])
    ctx, pooled = torch.randn(2, 7, 64), torch.randn(2, 64)
    ids = torch.tensor([[64.0, 64, 0, 0, 6.0], [64, 64, 0, 0, 2.5]])
    added = {"text_embeds": pooled, "time_ids": ids}
    with torch.no_grad():
        ours = refiner.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        theirs = ref.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        tokens = torch.randint(0, 49407, (1, 77))
        a = refiner.text_encoders[0](input_ids=tokens, output_hidden_states=True)
        b = ref.text_encoder_2(input_ids=tokens, output_hidden_states=True)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    assert torch.allclose(a.hidden_states[-2], b.hidden_states[-2], atol=1e-5)
    assert torch.allclose(a.text_embeds, b.text_embeds, atol=1e-5)


def test_refiner_conditioning_carries_the_aesthetic_scores(refiner):
    options = ConditioningOptions(crop_top=8, crop_left=16, high_aesthetic_score=7.0, low_aesthetic_score=1.5)
    conditioner = TextConditioner(refiner, options=options)
    cond = conditioner.encode(["a cat"], 64, 48)
    uncond = conditioner.encode([""], 64, 48, negative=True)
    assert cond["context"].shape == (1, 77, 64) and cond["text_embeds"].shape == (1, 64)
    assert cond["time_ids"].tolist() == [[48.0, 64.0, 8.0, 16.0, 7.0]]  # original size (h, w), crop, score
    assert uncond["time_ids"].tolist() == [[48.0, 64.0, 8.0, 16.0, 1.5]]


def test_sdxl_crop_options_reach_the_size_ids(sdxl):
    cond = TextConditioner(sdxl, options=ConditioningOptions(crop_top=4, crop_left=2)).encode(["a"], 64, 32)
    assert cond["time_ids"].tolist() == [[32.0, 64.0, 4.0, 2.0, 32.0, 64.0]]


# -- the switch ------------------------------------------------------------------------------------

REQUEST = dict(prompt="a red cube", negative_prompt="blurry", seed=11, steps=10, cfg_scale=5.0, width=64,
               height=64, sampler_name="Euler", scheduler="Automatic")


def _ensemble_reference(tiny_checkpoints, sdxl, refiner, switch_at: float) -> np.ndarray:
    """diffusers' base pipeline to ``denoising_end``, then the refiner's img2img pipeline from
    ``denoising_start``, with Easel's text embeddings (tokenization is tested elsewhere)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base, ref = tiny_checkpoints.components("sdxl"), tiny_checkpoints.components("sdxl_refiner")

    def embeds(model, negative_too=True):
        conditioner = TextConditioner(model)
        c = conditioner.encode([REQUEST["prompt"]], 64, 64)
        u = conditioner.encode([REQUEST["negative_prompt"]], 64, 64, negative=True)
        return dict(prompt_embeds=c["context"], pooled_prompt_embeds=c["text_embeds"],
                    negative_prompt_embeds=u["context"], negative_pooled_prompt_embeds=u["text_embeds"])

    def scheduler():
        return samplers.build_scheduler("Euler", "Automatic", model_family="sdxl")

    noise = rng.create_noise((4, 8, 8), [REQUEST["seed"]], [0], 0.0, None, device=torch.device("cpu"), source="CPU")
    first = StableDiffusionXLPipeline(vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
                                      tokenizer=sdxl.tokenizers[0], tokenizer_2=sdxl.tokenizers[1], unet=base.unet,
                                      scheduler=scheduler())
    first.set_progress_bar_config(disable=True)
    latents = first(**embeds(sdxl), latents=noise, num_inference_steps=REQUEST["steps"], height=64, width=64,
                    guidance_scale=REQUEST["cfg_scale"], denoising_end=switch_at, output_type="latent").images
    second = StableDiffusionXLImg2ImgPipeline(vae=ref.vae, text_encoder=None, text_encoder_2=ref.text_encoder_2,
                                              tokenizer=None, tokenizer_2=refiner.tokenizers[0], unet=ref.unet,
                                              scheduler=scheduler(), requires_aesthetics_score=True)
    second.set_progress_bar_config(disable=True)
    return second(**embeds(refiner), image=latents, num_inference_steps=REQUEST["steps"],
                  guidance_scale=REQUEST["cfg_scale"], denoising_start=switch_at, output_type="np").images[0]


def test_base_then_refiner_equals_diffusers_ensemble_of_experts(tiny_checkpoints, sdxl, refiner):
    calls = []
    result = generate(GenerationRequest(**REQUEST, refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.8),
                      sdxl, _settings(sdxl, refiner, calls))
    assert calls == ["tiny-sdxl-refiner", None]  # loaded once, the job's checkpoint put back after the batch
    ours = np.asarray(result.images[0], dtype=np.float32) / 255
    theirs = _ensemble_reference(tiny_checkpoints, sdxl, refiner, 0.8)
    assert np.abs(ours - theirs).max() <= 2 / 255, np.abs(ours - theirs).max()
    assert f"Refiner: {TITLE}, Refiner switch at: 0.8" in result.infotexts[0]
    plain = generate(GenerationRequest(**REQUEST), sdxl, _settings(sdxl, refiner))
    assert np.abs(np.asarray(plain.images[0], dtype=np.float32) / 255 - ours).max() > 4 / 255  # the refiner mattered
    assert "Refiner" not in plain.infotexts[0]


def test_switch_by_sigma_and_by_steps(sdxl, refiner):
    switched_at = []

    class Watch(JobObserver):
        def on_step(self, step, total, latents, denoised):
            switched_at.append((step, len(calls)))

    calls: list = []
    generate(GenerationRequest(**REQUEST, refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.5), sdxl,
             _settings(sdxl, refiner, calls), Watch())
    by_sigma = min(step for step, loads in switched_at if loads)
    scheduler = samplers.build_scheduler("Euler", "Automatic", model_family="sdxl")
    scheduler.set_timesteps(10)
    expected = next(i for i, t in enumerate(scheduler.timesteps) if (999 - round(float(t))) / 1000 >= 0.5)
    assert by_sigma == expected

    switched_at.clear()
    calls.clear()
    result = generate(GenerationRequest(**REQUEST, refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.3),
                      sdxl, _settings(sdxl, refiner, calls, refiner_switch_by_sample_steps=True), Watch())
    assert min(step for step, loads in switched_at if loads) == 3  # 3 of 10 model calls done
    assert "Refiner switch by sampling steps: True" in result.infotexts[0]


def test_switch_at_one_never_switches(sdxl, refiner):
    calls = []
    result = generate(GenerationRequest(**REQUEST, refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=1.0),
                      sdxl, _settings(sdxl, refiner, calls))
    assert calls == [] and "Refiner" not in result.infotexts[0]


def test_unknown_refiner_is_refused_before_any_work(sdxl, refiner):
    calls = []
    with pytest.raises(RequestError) as info:
        generate(GenerationRequest(**REQUEST, refiner_checkpoint="missing", refiner_switch_at=0.5), sdxl,
                 _settings(sdxl, refiner, calls))
    assert info.value.field == "refiner_checkpoint" and "missing" in info.value.message
    assert calls == []
    for none in ("", "None"):  # A1111's "no refiner"
        result = generate(GenerationRequest(**REQUEST, refiner_checkpoint=none), sdxl, _settings(sdxl, refiner))
        assert "Refiner" not in result.infotexts[0]


@pytest.mark.parametrize("mode, first, second", [("second pass", False, True), ("first pass", True, False),
                                                 ("both passes", True, False)])
def test_hires_fix_refiner_pass(sdxl, refiner, mode, first, second):
    """A1111's hires_fix_refiner_pass: the refiner switches in the first pass, in the hires pass, or
    in the first (after which the hires pass runs on the refiner: it is the loaded model)."""
    loads_by_pass = []

    class Watch(JobObserver):
        def begin_batch(self, batch_index, batch_count, steps):
            loads_by_pass.append(len(calls))

    calls: list = []
    result = generate(GenerationRequest(**REQUEST, refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.5,
                                        enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6),
                      sdxl, _settings(sdxl, refiner, calls, hires_fix_refiner_pass=mode), Watch())
    loads_before_hires = loads_by_pass[1]
    assert (loads_before_hires == 1) is first
    assert calls.count("tiny-sdxl-refiner") == 1 and calls[-1] is None
    assert (len(calls) - 1 - loads_before_hires == 1) is second
    text = result.infotexts[0]
    assert f"Refiner: {TITLE}" in text
    assert ("Hires refiner: " + mode in text) is (mode != "second pass")


def test_denoiser_of_each_family_is_the_familys(sdxl, refiner, tiny_checkpoints):
    """model_ops.denoiser goes through the family: SDXL's added conditioning reaches the UNet."""
    call = model_ops.denoiser(refiner)
    cond = TextConditioner(refiner).encode(["a"], 64, 64)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        expected = refiner.unet(x, t, encoder_hidden_states=cond["context"],
                                added_cond_kwargs={"text_embeds": cond["text_embeds"],
                                                   "time_ids": cond["time_ids"]}).sample
        assert torch.allclose(call(x, t, cond), expected)
    assert refiner.family.a1111_flags["is_sdxl"] and sdxl.family.embedding_keys == ("clip_l", "clip_g")
