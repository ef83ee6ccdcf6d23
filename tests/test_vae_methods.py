"""A1111's sd_vae_encode_method / sd_vae_decode_method = "TAESD": pictures encoded and latents decoded
by the tiny autoencoder of models/VAE-approx (madebyollin's file layout, random weights here) instead
of the checkpoint's VAE; the infotext says so, pasting it back sets the options, a missing file is a
4xx naming it and its folder."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from modules.core import model_ops, taesd
from modules.core.devices import RunOptions, choose_policy
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest, Img2ImgRequest, RequestError
from modules.services.model_cache import TaesdParts

POLICY, _ = choose_policy()
SMALL = dict(prompt="a red circle", width=64, height=64, steps=2, seed=5, save_images=False)


def write_taesd(folder, stem: str = "taesd", seed: int = 0, colour: tuple | None = None) -> AutoencoderTiny:
    """``<stem>_encoder.pth`` / ``<stem>_decoder.pth`` in madebyollin's layout (the decoder's Sequential
    starts with the clamp: DecoderTiny's layers.N is the file's N+1; the encoder's keys are as they are).
    ``colour``: the decoder's last convolution gives that RGB whatever the latents."""
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(latent_channels=4).eval()
    if colour is not None:
        last = tiny.decoder.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor(colour, dtype=torch.float32) / 255)  # [0, 1] before DecoderTiny's 2x-1
    folder.mkdir(parents=True, exist_ok=True)
    decoder = {f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v.clone()
               for k, v in tiny.decoder.state_dict().items()}
    encoder = {k[len("layers."):]: v.clone() for k, v in tiny.encoder.state_dict().items()}
    torch.save(decoder, folder / f"{stem}_decoder.pth")
    torch.save(encoder, folder / f"{stem}_encoder.pth")
    return tiny


@pytest.fixture(scope="module")
def approx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "VAE-approx"
    return folder, write_taesd(folder)


@pytest.fixture(scope="module")
def model(tiny_checkpoints, approx):
    """The tiny SD1 checkpoint with run options of its own, TAESD from ``approx``'s folder."""
    loaded = load_checkpoint(tiny_checkpoints.sd1, POLICY, run_options=RunOptions(vae_tiling="Never"))
    loaded.run_options.taesd = TaesdParts(loaded.memory, approx[0])
    return loaded


@pytest.fixture()
def methods(model):
    def set_methods(encode: str = "Full", decode: str = "Full"):
        model.run_options.vae_encode_method, model.run_options.vae_decode_method = encode, decode

    yield set_methods
    set_methods()


def test_the_file_layout_loads_as_written(tmp_path):
    reference = write_taesd(tmp_path, seed=3)
    encoder = taesd.load_encoder(tmp_path / "taesd_encoder.pth")
    decoder = taesd.load_decoder(tmp_path / "taesd_decoder.pth")
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    latents = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(taesd.encode_tensor(encoder, pixels), reference.encoder(pixels))
        assert torch.equal(taesd.decode_tensor(decoder, latents), reference.decoder(latents))


def test_decode_with_taesd_is_the_taesd_decoder_on_the_latents(model, approx, methods):
    reference = approx[1]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    full = model_ops.decode_pixels(model, latents)
    methods(decode="TAESD")
    tiny = model_ops.decode_pixels(model, latents)
    with torch.no_grad():
        expected = reference.decoder(latents)  # TAESD reads the latents as the UNet sees them
    assert torch.equal(tiny, expected) and tiny.shape == full.shape == (2, 3, 64, 64)
    assert not torch.allclose(tiny, full, atol=1e-2)
    pictures = model_ops.decode_latents(model, latents)
    assert np.array_equal(np.asarray(pictures[1]),
                          ((expected[1] / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def test_encode_with_taesd_is_the_taesd_encoder_on_the_pixels(model, approx, methods):
    reference = approx[1]
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    full = model_ops.encode_pixels(model, pixels)
    methods(encode="TAESD")
    tiny = model_ops.encode_pixels(model, pixels)
    with torch.no_grad():
        assert torch.equal(tiny, reference.encoder(pixels))
    assert tiny.shape == full.shape == (1, 4, 8, 8) and not torch.allclose(tiny, full, atol=1e-2)
    # an img2img job encodes its picture by TAESD and says so; its decode stays the VAE's
    picture = Image.fromarray(((pixels[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    request = Img2ImgRequest(**SMALL, init_images=[picture], denoising_strength=0.5)
    infotext = generate(request, model, GenerationSettings()).infotexts[0]
    assert "VAE Encoder: TAESD" in infotext and "VAE Decoder" not in infotext
    methods()
    assert "VAE Encoder" not in generate(request, model, GenerationSettings()).infotexts[0]


def test_txt2img_infotext_names_the_decoder_and_the_encoder_of_a_hires_pass_from_pixels(model, methods):
    methods(encode="TAESD", decode="TAESD")
    result = generate(GenerationRequest(**SMALL), model, GenerationSettings())
    assert "VAE Decoder: TAESD" in result.infotexts[0] and "VAE Encoder" not in result.infotexts[0]
    hires = dict(SMALL, steps=1, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, denoising_strength=0.5)
    pixels = generate(GenerationRequest(**hires, hr_upscaler="Lanczos"), model, GenerationSettings())
    assert "VAE Encoder: TAESD, VAE Decoder: TAESD" in pixels.infotexts[0]
    assert pixels.images[0].size == (96, 96)
    latent = generate(GenerationRequest(**hires, hr_upscaler="Latent"), model, GenerationSettings())
    assert "VAE Encoder" not in latent.infotexts[0] and "VAE Decoder: TAESD" in latent.infotexts[0]


def test_a_missing_file_names_the_file_and_the_folder(tiny_checkpoints, tmp_path):
    loaded = load_checkpoint(tiny_checkpoints.sd1, POLICY, run_options=RunOptions(vae_tiling="Never"))
    loaded.run_options.taesd = TaesdParts(loaded.memory, tmp_path / "models" / "VAE-approx")
    loaded.run_options.vae_decode_method = "TAESD"
    with pytest.raises(RequestError, match=r"taesd_decoder\.pth in .*models/VAE-approx") as error:
        model_ops.decode_pixels(loaded, torch.zeros(1, 4, 8, 8))
    assert error.value.field == "sd_vae_decode_method"
    loaded.run_options.vae_encode_method = "TAESD"
    with pytest.raises(RequestError, match=r"taesd_encoder\.pth in .*models/VAE-approx"):
        model_ops.encode_pixels(loaded, torch.zeros(1, 3, 64, 64))


def _picture(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))


def test_api_override_settings_infotext_paste_and_missing_file(server):
    """Through the shared server: a missing file is a 422 naming it; with the file the picture is
    TAESD's (a decoder that paints one colour), the infotext names it, and pasting that infotext
    back sets the option for the job."""
    folder = server.data_dir / "models" / "VAE-approx"
    body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 5,
            "override_settings": {"sd_vae_decode_method": "TAESD"}}
    url = server.url + "/sdapi/v1/txt2img"
    assert not (folder / "taesd_decoder.pth").exists()
    missing = requests.post(url, json=body, timeout=120)
    assert missing.status_code == 422, missing.text
    assert "taesd_decoder.pth" in missing.text and "VAE-approx" in missing.text
    colour = (200, 40, 90)
    write_taesd(folder, colour=colour)
    try:
        answer = requests.post(url, json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        picture = _picture(answer.json())
        assert picture.shape == (64, 64, 3) and (np.abs(picture.astype(int) - colour) <= 1).all()
        info = answer.json()["info"]
        assert "VAE Decoder: TAESD" in info
        full = requests.post(url, json={k: v for k, v in body.items() if k != "override_settings"}, timeout=120)
        assert "VAE Decoder" not in full.json()["info"]
        assert not (np.abs(_picture(full.json()).astype(int) - colour) <= 1).all()
        pasted = requests.post(url, json={"prompt": "", "infotext": _infotext(answer.json())}, timeout=120)
        assert pasted.status_code == 200, pasted.text
        assert (np.abs(_picture(pasted.json()).astype(int) - colour) <= 1).all()
        assert "VAE Decoder: TAESD" in pasted.json()["info"]
    finally:
        for part in ("encoder", "decoder"):
            (folder / f"taesd_{part}.pth").unlink(missing_ok=True)


def _infotext(answer: dict) -> str:
    import json

    return json.loads(answer["info"])["infotexts"][0]
