"""POST /sdapi/v1/img2img, txt2img's hires fix and tiling, and the upscaler listings, over real HTTP
against the session's shared `server` (tiny SD1 loaded). Requests are tiny: 64-96 px, 1-2 steps.

The tiny VAE has random weights, so a picture does not survive img2img; what must hold exactly is
that inpainting pastes the input back outside the blurred mask."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core import masks

from tests.api_common import BASE, PROCESSED_KEYS, assert_error, decode
from tests.pictures import b64, encoded, picture, square_mask


# ------------------------------------------------------------------------------------ helpers


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def post(srv, path: str, body: dict) -> tuple[list[Image.Image], dict, dict]:
    """POST, expect success; returns (images, info, whole response)."""
    r = srv.post(path, json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"]), data


def img2img(srv, body: dict):
    return post(srv, "/sdapi/v1/img2img", body)


def txt2img(srv, body: dict):
    return post(srv, "/sdapi/v1/txt2img", body)


def i2i_body(init: Image.Image | None = None, **fields) -> dict:
    return {**BASE, "init_images": [b64(init or picture())], "denoising_strength": 0.6, **fields}


def serves_a_good_request(srv) -> None:
    images, info, _ = img2img(srv, i2i_body(steps=1))
    assert images[0].size == (64, 64) and info["sd_model_name"] == "tiny-sd1"


def kept(mask: Image.Image, blur: int = 4) -> np.ndarray:
    """Where inpainting must return the input exactly: outside the blurred mask."""
    return np.asarray(masks.blur(mask, blur, blur)) == 0


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


# ------------------------------------------------------------------------------------ img2img

def test_img2img_round_trip_size_info_and_parameters(server):
    body = i2i_body(picture(80, 64), width=72, height=96, denoising_strength=0.5)
    images, info, data = img2img(server, body)

    assert len(images) == 1 and images[0].size == (72, 96) and images[0].mode == "RGB"
    assert PROCESSED_KEYS <= set(info), PROCESSED_KEYS - set(info)
    assert (info["width"], info["height"], info["seed"], info["steps"]) == (72, 96, 1234, 2)
    assert info["denoising_strength"] == 0.5 and info["is_using_inpainting_conditioning"] is False
    assert info["extra_generation_params"]["Denoising strength"] == 0.5
    text = info["infotexts"][0]
    assert "Size: 72x96" in text and "Denoising strength: 0.5" in text
    assert images[0].info["parameters"] == text
    # A1111 echoes the request without its images unless include_init_images
    params = data["parameters"]
    assert params["init_images"] is None and params["mask"] is None
    assert params["prompt"] == BASE["prompt"] and params["denoising_strength"] == 0.5 and params["width"] == 72

    _, _, data = img2img(server, {**body, "include_init_images": True, "steps": 1})
    assert data["parameters"]["init_images"] == body["init_images"]

    # width/height left out (or null): the init image's size, not A1111's 512
    for size in ({}, {"width": None, "height": None}):
        rest = {k: v for k, v in body.items() if k not in ("width", "height")}
        images, info, _ = img2img(server, {**rest, **size, "steps": 1})
        assert images[0].size == (80, 64) and (info["width"], info["height"]) == (80, 64)


def test_data_url_and_bare_base64_give_the_same_image(server):
    init = picture()
    bare = img2img(server, i2i_body(init))[0][0]
    url = img2img(server, {**i2i_body(init), "init_images": ["data:image/png;base64," + b64(init)]})[0][0]
    assert np.array_equal(px(bare), px(url))
    other_seed = img2img(server, i2i_body(init, seed=99))[0][0]
    assert not np.array_equal(px(bare), px(other_seed))


@pytest.mark.parametrize("area", ["default", "whole picture"])
def test_inpainting_keeps_the_unmasked_pixels_of_the_input_exactly(server, area):
    init, mask = picture(96, 64), square_mask((96, 64), (8, 12, 40, 44))
    body = i2i_body(init, width=96, height=64, mask=b64(mask), denoising_strength=0.9)
    if area == "whole picture":
        body["inpaint_full_res"] = False
    images, info, _ = img2img(server, body)

    out, keep = px(images[0]), kept(mask)
    assert images[0].size == (96, 64) and keep.sum() > 2500
    assert np.array_equal(out[keep], px(init)[keep])
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside] - px(init)[inside]).mean() > 5
    text = info["infotexts"][0]
    assert "Mask blur: 4" in text and "Masked content: fill" in text
    # A1111's API defaults: inpaint_full_res true ("Only masked"), padding 0
    assert ("Inpaint area: Only masked, Masked area padding: 0" in text) == (area == "default")


def test_inpainting_checkpoint_reports_its_conditioning(server, tiny_checkpoints):
    models = server.get("/sdapi/v1/sd-models").json()
    title = next(m["title"] for m in models if Path(m["filename"]).name == Path(tiny_checkpoints.sd1_inpainting).name)
    body = i2i_body(mask=b64(square_mask()), override_settings={"sd_model_checkpoint": title})
    images, info, _ = img2img(server, body)
    assert info["is_using_inpainting_conditioning"] is True and "Conditional mask weight: 1" in info["infotexts"][0]
    assert np.array_equal(px(images[0])[kept(square_mask())], px(picture())[kept(square_mask())])
    serves_a_good_request(server)  # the override held for that request only


def _grey16() -> bytes:
    return encoded(Image.fromarray(np.asarray(picture().convert("L"), np.uint16) * 257))


def _rgba_left_transparent() -> Image.Image:
    rgba = picture().convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(64)[None, :] < 32, 0, 255).repeat(64, 0).astype(np.uint8)))
    return rgba


def _rgba_mask() -> Image.Image:
    """Transparent everywhere except an opaque (black!) square: the opaque part is the mask."""
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (16, 16, 48, 48))
    return mask


ODD_IMAGES = [
    ("16-bit-grey", {"init_images": [b64(_grey16())]}),
    ("cmyk-jpeg", {"init_images": [b64(picture().convert("CMYK"), "JPEG")]}),
    ("palette", {"init_images": [b64(picture().convert("P"))]}),
    ("webp", {"init_images": [b64(picture(), "WEBP")]}),
    ("mask-of-another-size", {"mask": b64(square_mask((32, 32), (8, 8, 24, 24)))}),
    ("rgba-mask", {"mask": b64(_rgba_mask())}),
]


@pytest.mark.parametrize("change", [c[1] for c in ODD_IMAGES], ids=[c[0] for c in ODD_IMAGES])
def test_unusual_images_and_masks_work(server, change):
    images, info, _ = img2img(server, {**i2i_body(), **change})
    assert images[0].size == (64, 64)
    assert "Denoising strength: 0.6" in info["infotexts"][0]
    if "mask" in change:  # stretched to the image / read from the alpha: the kept area is exact
        keep = kept(square_mask())
        assert np.array_equal(px(images[0])[keep], px(picture())[keep])
        assert "Mask blur: 4" in info["infotexts"][0]


def test_transparent_init_image_shows_the_background_colour(server):
    body = i2i_body(_rgba_left_transparent(), mask=b64(square_mask(box=(40, 0, 64, 64))), mask_blur=0)
    images, _, _ = img2img(server, body)
    assert (px(images[0])[:, :32] == 255).all()  # kept and transparent: white (the default background)
    assert np.array_equal(px(images[0])[:, 32:40], px(picture())[:, 32:40])  # kept and opaque: the input


# ------------------------------------------------------------------------------------ bad input

_PNG = encoded(picture())

BAD_IMG2IMG = [
    ("init-not-base64", {"init_images": ["this is not base64 !!!"]}, "init_images", "base64"),
    ("init-not-an-image", {"init_images": [b64(b"plain text, not a picture " * 4)]}, "init_images",
     "not a recognizable image"),
    ("init-truncated", {"init_images": [b64(_PNG[:len(_PNG) // 2])]}, "init_images", "truncated"),
    ("init-bad-data-url", {"init_images": ["data:image/png,abc"]}, "init_images", "base64"),
    ("init-missing", {"init_images": None}, "init_images", "image"),
    ("init-empty-list", {"init_images": []}, "init_images", "image"),
    ("init-a-number", {"init_images": [5]}, "init_images", "string"),
    ("mask-not-an-image", {"mask": b64(b"GIF89a but not really")}, "mask", "image"),
    ("mask-not-base64", {"mask": "%%% not base64 %%%"}, "mask", "base64"),
    ("init-count-vs-batch", {"init_images": [b64(picture())] * 2, "batch_size": 3}, "init_images", "batch size"),
    ("denoising-1.5", {"denoising_strength": 1.5}, "denoising_strength", "1"),
    ("resize-mode-9", {"resize_mode": 9}, "resize_mode", "3"),
    ("width-65", {"width": 65}, "width", "8"),
    ("unknown-sampler", {"sampler_name": "Nope Sampler"}, "sampler_name", "Euler"),
    ("unknown-checkpoint", {"override_settings": {"sd_model_checkpoint": "no-such.safetensors"}},
     "sd_model_checkpoint", "tiny-sd1"),
]


@pytest.mark.parametrize("change,field,hint", [c[1:] for c in BAD_IMG2IMG], ids=[c[0] for c in BAD_IMG2IMG])
def test_bad_img2img_input_is_a_4xx_naming_the_field_and_the_server_goes_on(server, change, field, hint):
    r = server.post("/sdapi/v1/img2img", json={**i2i_body(), **change})
    message = assert_error(r, field)
    assert hint in message, message
    serves_a_good_request(server)


def test_images_over_the_pixel_limit_are_refused(server):
    before = server.get("/sdapi/v1/options").json()["img2img_max_input_pixels"]
    assert server.post("/sdapi/v1/options", json={"img2img_max_input_pixels": 4096}).status_code == 200
    try:
        r = server.post("/sdapi/v1/img2img", json=i2i_body(picture(72, 72)))
        assert "4096" in assert_error(r, "init_images")
        r = server.post("/sdapi/v1/img2img", json=i2i_body(mask=b64(square_mask((72, 72)))))
        assert "4096" in assert_error(r, "mask")
        serves_a_good_request(server)  # 64x64 = 4096: at the limit is fine
    finally:
        assert server.post("/sdapi/v1/options", json={"img2img_max_input_pixels": before}).status_code == 200
    images, _, _ = img2img(server, i2i_body(picture(72, 72), width=None, height=None, steps=1))
    assert images[0].size == (72, 72)


def test_get_on_img2img_is_405(server):
    r = server.get("/sdapi/v1/img2img")
    assert r.status_code == 405 and "POST" in r.headers.get("allow", "")


def test_img2img_saves_to_the_img2img_folder_only_when_asked(server):
    samples = server.data_dir / "outputs" / "img2img-images"
    t2i = server.data_dir / "outputs" / "txt2img-images"
    before, before_t2i = files(samples), files(t2i)
    img2img(server, i2i_body(steps=1))  # save_images defaults to false
    assert files(samples) == before

    today = datetime.date.today().strftime("%Y-%m-%d")
    start = max([int(p.name[:5]) for p in files(samples / today) if p.name[:5].isdigit()], default=-1) + 1
    _, info, _ = img2img(server, i2i_body(seed=77, steps=1, save_images=True))
    new = sorted(files(samples) - before)
    assert [p.relative_to(samples).as_posix() for p in new] == [f"{today}/{start:05d}-77.png"]
    saved = Image.open(new[0])
    assert saved.size == (64, 64) and saved.info["parameters"] == info["infotexts"][0]
    assert files(t2i) == before_t2i


# ------------------------------------------------------------------------------------ txt2img hires fix, tiling

def test_txt2img_hires_fix_returns_the_upscaled_size(server):
    body = {**BASE, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6,
            "hr_second_pass_steps": 1, "hr_prompt": "a blue cube", "hr_sampler_name": "Euler"}
    images, info, data = txt2img(server, body)
    # info's width/height are A1111's p.width/p.height: the first pass's, as the infotext's Size
    assert images[0].size == (96, 96) and (info["width"], info["height"]) == (64, 64)
    text = info["infotexts"][0]
    for part in ("Size: 64x64", "Denoising strength: 0.6", "Hires upscale: 1.5", "Hires steps: 1",
                 "Hires upscaler: Latent", "Hires prompt: a blue cube", "Hires sampler: Euler"):
        assert part in text, (part, text)
    assert info["denoising_strength"] == 0.6 and info["extra_generation_params"]["Hires upscale"] == 1.5
    assert data["parameters"]["enable_hr"] is True and data["parameters"]["hr_scale"] == 1.5

    images, info, _ = txt2img(server, {**BASE, "enable_hr": True, "hr_upscaler": "Lanczos", "hr_resize_x": 128,
                                       "hr_resize_y": 96, "hr_second_pass_steps": 1})
    assert images[0].size == (128, 96)
    assert "Hires resize: 128x96" in info["infotexts"][0] and "Hires upscaler: Lanczos" in info["infotexts"][0]

    plain, info, _ = txt2img(server, {**BASE, "enable_hr": None, "hr_scale": None, "hr_upscaler": None})
    assert plain[0].size == (64, 64) and "Hires" not in info["infotexts"][0] and info["denoising_strength"] is None


BAD_HIRES = [
    ("unknown-upscaler", {"hr_upscaler": "ESRGAN_9000"}, "hr_upscaler", "Lanczos"),
    ("hr-scale-9", {"hr_scale": 9}, "hr_scale", "4"),
    ("unknown-hr-sampler", {"hr_sampler_name": "Nope"}, "hr_sampler_name", "Euler"),
    ("unknown-hr-checkpoint", {"hr_checkpoint_name": "no-such.safetensors"}, "hr_checkpoint_name", "tiny-sd1"),
]


@pytest.mark.parametrize("change,field,hint", [c[1:] for c in BAD_HIRES], ids=[c[0] for c in BAD_HIRES])
def test_bad_hires_input_is_a_4xx_naming_the_field_and_the_server_goes_on(server, change, field, hint):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, **change})
    message = assert_error(r, field)
    assert hint in message, message
    images, _, _ = txt2img(server, {**BASE, "steps": 1, "enable_hr": True, "hr_second_pass_steps": 1})
    assert images[0].size == (128, 128)


def test_tiling_writes_tiling_true(server):
    plain = txt2img(server, BASE)[0][0]
    images, info, _ = txt2img(server, {**BASE, "tiling": True})
    assert "Tiling: True" in info["infotexts"][0]
    assert not np.array_equal(px(images[0]), px(plain))  # circular padding changes the picture
    _, info, _ = img2img(server, i2i_body(tiling=True, steps=1))
    assert "Tiling: True" in info["infotexts"][0]


# ------------------------------------------------------------------------------------ listings

def test_upscalers_and_latent_upscale_modes(server):
    upscalers = server.get("/sdapi/v1/upscalers").json()
    by_name = {u["name"]: u for u in upscalers}
    assert {"None", "Lanczos", "Nearest"} <= set(by_name)
    for u in upscalers:
        assert set(u) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert by_name["Lanczos"]["scale"] == 4
    modes = [m["name"] for m in server.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[:2] == ["Latent", "Latent (antialiased)"] and "Latent (nearest-exact)" in modes
    assert not set(modes) & set(by_name)  # latent modes are not image upscalers
    for name in ("Nearest", modes[-1]):  # every listed name is accepted as hr_upscaler
        images, info, _ = txt2img(server, {**BASE, "steps": 1, "enable_hr": True, "hr_upscaler": name,
                                           "hr_second_pass_steps": 1})
        assert images[0].size == (128, 128) and f"Hires upscaler: {name}" in info["infotexts"][0]


# ------------------------------------------------------------------------------------ outpainting

def test_poor_mans_outpainting_extends_the_canvas_and_keeps_the_old_picture(server):
    # A1111's script title in any case; args: pixels, mask blur, masked content (index), directions
    body = i2i_body(script_name="Poor man's outpainting", script_args=[16, 2, 0, ["left", "down"]],
                    denoising_strength=0.9)
    images, info, _ = img2img(server, body)
    assert images[0].size == (64 + 16, 64 + 16)
    out, old = px(images[0]), px(picture())
    # the old picture sits at (16, 0); beyond the blend band it is untouched: the mask reaches 2 * blur
    # into it and is then blurred by 4 * blur, whose kernel (A1111's) reaches 2.5 times that
    band = 2 * 2 + int(2.5 * 4 * 2 + 0.5) + 1
    assert np.array_equal(out[:64 - band, 16 + band:], old[:64 - band, band:])
    assert not np.array_equal(out[:, :16], np.zeros_like(out[:, :16]))  # the new strip was painted
    assert "Denoising strength: 0.9" in info["infotexts"][0]


@pytest.mark.parametrize("change,hint", [
    ({"script_name": "No such script"}, "poor man's outpainting"),
    ({"script_name": "poor man's outpainting", "script_args": [16, 4, 0, ["sideways"]]}, "direction"),
    ({"script_name": "poor man's outpainting", "script_args": [3]}, "pixels"),
    ({"script_name": "poor man's outpainting", "script_args": [16, 4, 7]}, "inpainting_fill"),
], ids=["unknown-script", "bad-direction", "too-few-pixels", "bad-fill"])
def test_bad_script_requests_are_a_4xx_and_the_server_goes_on(server, change, hint):
    r = server.post("/sdapi/v1/img2img", json={**i2i_body(), **change})
    field = "script_name" if change["script_name"] == "No such script" else "script_args"
    message = assert_error(r, field)
    assert hint in message, message
    serves_a_good_request(server)
