"""SD1, SD2 (v-prediction) and SDXL base each generate what diffusers' own pipeline generates on the same
tiny single-file weights, scheduler, noise and text embeddings (SD3, Flux and the SDXL refiner have
theirs in test_sd3.py, test_flux.py and test_families.py).

The pipeline's own parts are compared here: the loaded single file against the original modules, the
guidance, the noise scaling and the VAE decode. The schedulers are checked against k-diffusion in
test_samplers_reference.py, the tokenizers and prompt weighting in their own tests: the reference is
given Easel's scheduler and text embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import rng, samplers
from modules.core.conditioning import TextConditioner
from modules.core.devices import choose_policy
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest

POLICY, _ = choose_policy()
REQUEST = dict(prompt="a red cube on a table", negative_prompt="blurry", seed=21, steps=6, cfg_scale=5.0, width=64,
               height=64, sampler_name="Euler", scheduler="Automatic", save_images=False)
# fixture name -> (diffusers pipeline class, the family's prediction kind)
CASES = {"sd1": ("StableDiffusionPipeline", "epsilon"), "sd2_v": ("StableDiffusionPipeline", "v_prediction"),
         "sdxl": ("StableDiffusionXLPipeline", "epsilon")}


def _embeddings(model, sdxl: bool) -> dict:
    conditioner = TextConditioner(model)
    cond = conditioner.encode([REQUEST["prompt"]], 64, 64)
    uncond = conditioner.encode([REQUEST["negative_prompt"]], 64, 64, negative=True)
    out = dict(prompt_embeds=cond["context"], negative_prompt_embeds=uncond["context"])
    if sdxl:
        out.update(pooled_prompt_embeds=cond["text_embeds"], negative_pooled_prompt_embeds=uncond["text_embeds"])
    return out


def _reference(tiny_checkpoints, name: str, model) -> np.ndarray:
    import diffusers

    pipeline_class, prediction = CASES[name]
    parts = tiny_checkpoints.components(name)
    scheduler = samplers.build_scheduler(REQUEST["sampler_name"], REQUEST["scheduler"], prediction_type=prediction,
                                         model_family=model.family.name)
    sdxl = pipeline_class == "StableDiffusionXLPipeline"
    modules = dict(vae=parts.vae.float(), unet=parts.unet.float(), scheduler=scheduler, tokenizer=None,
                   text_encoder=None)
    if sdxl:
        modules.update(text_encoder_2=None, tokenizer_2=None)
    else:
        modules.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = getattr(diffusers, pipeline_class)(**modules)
    pipe.set_progress_bar_config(disable=True)
    noise = rng.create_noise((4, 8, 8), [REQUEST["seed"]], [0], 0.0, None, device=torch.device("cpu"), source="CPU")
    noise = noise if noise.ndim == 4 else noise[None]
    kwargs = dict(original_size=(64, 64), target_size=(64, 64)) if sdxl else {}
    out = pipe(**_embeddings(model, sdxl), latents=noise, num_inference_steps=REQUEST["steps"],
               guidance_scale=REQUEST["cfg_scale"], height=64, width=64, output_type="np", **kwargs)
    return out.images[0]


@pytest.mark.parametrize("name", list(CASES))
def test_generation_equals_diffusers_pipeline(tiny_checkpoints, name):
    model = load_checkpoint(tiny_checkpoints[name], POLICY)
    assert model.spec.prediction_type == CASES[name][1]
    result = generate(GenerationRequest(**REQUEST), model, GenerationSettings())
    ours = np.asarray(result.images[0], dtype=np.float32) / 255
    theirs = _reference(tiny_checkpoints, name, model)
    assert ours.shape == theirs.shape == (64, 64, 3)
    assert theirs.std() > 0.01  # a picture, not a flat field the two could agree on by accident
    assert np.abs(ours - theirs).max() <= 2 / 255, np.abs(ours - theirs).max()
