"""instruct-pix2pix checkpoints (8-channel UNet): detected from the weights, the picture's latents as
the extra UNet input, A1111's image CFG (a third pass without the picture) checked against diffusers'
StableDiffusionInstructPix2PixPipeline on the same tiny weights, and the img2img job around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import denoise, model_ops, rng, samplers
from modules.core.conditioning import TextConditioner
from modules.core.devices import choose_policy
from modules.core.image_io import to_model_pixels
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import Img2ImgRequest
from tests.fixtures.tiny_models import build_components, write_checkpoint

POLICY, _ = choose_policy()


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory):
    components = build_components("sd1", edit=True, seed=7, dtype=torch.float16)
    path = write_checkpoint(tmp_path_factory.mktemp("ip2p") / "tiny-ip2p.safetensors", "sd1", components=components,
                            dtype=torch.float16)
    return load_checkpoint(path, POLICY), components


def _picture() -> Image.Image:
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)],
                                    axis=-1))


def test_detected_as_an_edit_model(ip2p):
    model, _ = ip2p
    assert model.spec.edit_model and not model.spec.inpainting
    assert model.spec.label == "SD1.x instruct-pix2pix"


def test_image_cfg_equals_diffusers_pipeline(ip2p):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    model, components = ip2p
    conditioner = TextConditioner(model)
    cond, uncond = conditioner.encode(["make it red"], 64, 64), conditioner.encode([""], 64, 64, negative=True)
    picture = _picture()
    scaled = model_ops.encode_pixels(model, to_model_pixels([picture]))
    image = model_ops.edit_image_conditioning(model, scaled, 1, (4, 8, 8))
    noise = rng.create_noise((4, 8, 8), [5], [0], 0.0, None, device=torch.device("cpu"), source="CPU")
    latents = denoise.sample(model_ops.denoiser(model), samplers.build_scheduler("Euler", "Automatic"), noise,
                             lambda i: ({**cond, "c_concat": image}, {**uncond, "c_concat": image}), steps=4,
                             cfg_scale=6.0, image_cfg_scale=1.7)
    ours = np.asarray(model_ops.decode_latents(model, latents)[0], dtype=np.float32) / 255
    pipe = StableDiffusionInstructPix2PixPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                                  tokenizer=model.tokenizers[0], unet=components.unet,
                                                  scheduler=samplers.build_scheduler("Euler", "Automatic"),
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=cond["context"], negative_prompt_embeds=uncond["context"], image=picture,
                  num_inference_steps=4, guidance_scale=6.0, image_guidance_scale=1.7, latents=noise,
                  output_type="np").images[0]
    assert np.abs(ours - theirs).max() <= 2 / 255, np.abs(ours - theirs).max()


def test_img2img_job_writes_image_cfg_and_it_matters(ip2p):
    model, _ = ip2p
    base = dict(prompt="make it red", init_images=[_picture()], denoising_strength=0.9, steps=4, seed=9,
                sampler_name="Euler", save_images=False, width=64, height=64)
    low = generate(Img2ImgRequest(**base, image_cfg_scale=1.0), model, GenerationSettings())
    high = generate(Img2ImgRequest(**base, image_cfg_scale=2.5), model, GenerationSettings())
    assert "Image CFG scale: 1" in low.infotexts[0] and "Image CFG scale: 2.5" in high.infotexts[0]
    difference = np.abs(np.asarray(low.images[0], dtype=float) - np.asarray(high.images[0], dtype=float))
    assert difference.max() > 4
    plain = generate(Img2ImgRequest(**base), model, GenerationSettings())  # no image CFG: two passes, no key
    assert "Image CFG scale" not in plain.infotexts[0]
