"""img2img, inpainting and outpainting end to end on the tiny real checkpoints (64 px, few steps).

The tiny VAE has random weights, so a picture does not survive encode -> decode; where a test
needs "the input, processed", it compares with that round trip computed on its own. Pixels outside
the blurred mask must be the input's exactly: they are pasted back, not decoded."""

import base64
import datetime
import io

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import image_io, masks
from modules.core.color_correction import color_target
from modules.core.devices import choose_policy
from modules.core.img2img import Img2ImgSettings, flatten
from modules.core.infotext import parse_infotext
from modules.core.outpaint import extend_canvas, outpaint_request
from modules.core.pipeline import GenerationSettings, decode_latents, encode_pixels, generate
from modules.core.types import Img2ImgRequest, RequestError
from modules.core.upscaling import resize_latents
from tests.pictures import picture, square_mask

POLICY, _ = choose_policy()
DAY = datetime.date(2026, 11, 23)


def settings(tmp_path=None, **img2img) -> GenerationSettings:
    out = dict(outdir_samples=tmp_path / "img2img-images", outdir_grids=tmp_path / "img2img-grids") if tmp_path else {}
    return GenerationSettings(model_name="tiny-sd1", model_hash="0123456789", version="easel-test", today=lambda: DAY,
                              img2img=Img2ImgSettings(**img2img), **out)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(model, init=None, cfg=None, **fields):
    fields = {"prompt": "a red circle", "seed": 5, "steps": 6, "save_images": False, **fields}
    return generate(Img2ImgRequest(init_images=[init or picture()], **fields), model, cfg or settings())


def vae_round_trip(model, image: Image.Image, latent_size=None) -> np.ndarray:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy())[None] / 127.5 - 1
    latents = encode_pixels(model, pixels)
    if latent_size:
        latents = resize_latents(latents, *latent_size, "Latent")
    return px(decode_latents(model, latents)[0])


def kept(mask: Image.Image, blur=4, invert=False) -> np.ndarray:
    """Where the output must equal the input exactly: outside the blurred (inverted) mask."""
    if invert:
        mask = masks.invert(mask)
    return np.asarray(masks.blur(mask, blur, blur)) == 0


# -- img2img ---------------------------------------------------------------------------------

def test_denoising_zero_is_the_vae_round_trip_and_more_denoising_changes_more(sd1):
    init = picture()
    zero = px(run(sd1, init, denoising_strength=0.0).images[0])
    assert np.array_equal(zero, vae_round_trip(sd1, init))
    low = px(run(sd1, init, denoising_strength=0.3).images[0])
    high = px(run(sd1, init, denoising_strength=0.9).images[0])
    assert 0 < np.abs(low - zero).mean() < np.abs(high - zero).mean()


def test_same_seed_same_pixels_and_infotext(sd1):
    a = run(sd1, seed=11)
    b = run(sd1, seed=11)
    c = run(sd1, seed=12)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    assert np.abs(px(a.images[0]) - px(c.images[0])).mean() > 0.5
    assert a.infotexts[0].splitlines()[-1] == (
        "Steps: 6, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 11, Size: 64x64, "
        "Model hash: 0123456789, Model: tiny-sd1, Denoising strength: 0.75, RNG: CPU, Version: easel-test")


def test_one_init_image_serves_the_whole_batch_and_size_defaults_to_it(sd1):
    init = picture(75, 80)  # no size given: the init image's, rounded down to a multiple of 8
    batch = run(sd1, init, seed=3, batch_size=2)
    single = run(sd1, init, seed=4)
    assert [im.size for im in batch.images] == [(72, 80), (72, 80)]
    assert np.abs(px(batch.images[1]) - px(single.images[0])).max() <= 1
    with pytest.raises(RequestError) as info:
        generate(Img2ImgRequest(init_images=[init, init], batch_size=3, steps=2), sd1, settings())
    assert info.value.field == "init_images"


def test_fix_steps_runs_exactly_the_requested_steps(sd1):
    from modules.core.pipeline import JobObserver

    class Count(JobObserver):
        def __init__(self):
            self.steps = 0

        def on_step(self, step, total, latents, denoised):
            self.steps += 1

    default, fixed = Count(), Count()
    request = dict(init_images=[picture()], steps=8, denoising_strength=0.5, sampler_name="Euler", save_images=False)
    generate(Img2ImgRequest(**request), sd1, settings(), default)
    generate(Img2ImgRequest(**request), sd1, settings(fix_steps=True), fixed)
    # A1111: a k-diffusion sampler runs int(8 * 0.5) + 1 steps of 8 (sigmas[8 - 4 - 1:]); fixed: exactly 8
    assert (default.steps, fixed.steps) == (5, 8)


# -- inpainting ------------------------------------------------------------------------------

def test_outside_the_blurred_mask_the_output_is_the_input(sd1):
    init, mask = picture(), square_mask()
    result = run(sd1, init, mask=mask)
    out, keep = px(result.images[0]), kept(mask)
    assert keep.sum() > 1000
    assert np.array_equal(out[keep], px(init)[keep])
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside] - px(init)[inside]).mean() > 5
    assert result.infotexts[0].splitlines()[-1].endswith(
        "Denoising strength: 0.75, RNG: CPU, Mask blur: 4, Masked content: fill, Version: easel-test")


def test_kept_latents_follow_the_init_image_noised_to_each_step(sd1):
    """Per-step blend: with Euler the kept area is init + sigma_next * (the seed's noise), and the
    init latents themselves after the last step."""
    from modules.core import rng
    from modules.core.pipeline import JobObserver

    class Grab(JobObserver):
        latents = []

        def on_step(self, step, total, latents, denoised):
            self.latents.append(latents.clone())

    init, grab = picture(), Grab()
    generate(Img2ImgRequest(init_images=[init], mask=square_mask(), seed=5, steps=6, sampler_name="Euler",
                            inpainting_fill=1, save_images=False), sd1, settings(), grab)  # 1: encode as is
    pixels = torch.from_numpy(np.asarray(init, dtype=np.float32).transpose(2, 0, 1).copy())[None] / 127.5 - 1
    init_latents = encode_pixels(sd1, pixels)[..., 0, :]  # latent row 0: far outside the mask
    noise = rng.create_noise((4, 8, 8), [5])[..., 0, :]
    assert len(grab.latents) == 5  # A1111's k-diffusion img2img: int(6 * 0.75) + 1 steps
    sigmas = []
    for latents in grab.latents[:-1]:
        ratio = (latents[..., 0, :] - init_latents) / noise
        assert float(ratio.std()) < 1e-3 * float(ratio.mean())
        sigmas.append(float(ratio.mean()))
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[-1] > 0
    assert torch.equal(grab.latents[-1][..., 0, :], init_latents)


def test_inpaint_not_masked_flips_the_kept_area(sd1):
    init, mask = picture(), square_mask()
    result = run(sd1, init, mask=mask, inpainting_mask_invert=1)
    out, keep = px(result.images[0]), kept(mask, invert=True)
    assert keep.sum() >= 144
    assert np.array_equal(out[keep], px(init)[keep])  # the square's core stays
    outside = np.asarray(mask) == 0
    assert np.abs(out[outside] - px(init)[outside]).mean() > 5
    assert "Mask mode: Inpaint not masked, Mask blur: 4" in result.infotexts[0]


def test_masked_content_modes_run_and_differ(sd1):
    init, mask = picture(), square_mask()
    inside = np.asarray(mask) == 255
    results = [run(sd1, init, mask=mask, inpainting_fill=fill, denoising_strength=0.6) for fill in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(px(results[i].images[0])[inside] - px(results[j].images[0])[inside]).mean() > 1, (i, j)
    names = [parse_infotext(r.infotexts[0]).get("Masked content") for r in results]
    assert names == ["fill", None, "latent noise", "latent nothing"]  # A1111 writes nothing for "original"


def test_only_masked_changes_only_the_crop_region(sd1):
    init = picture(128, 128)
    mask = square_mask((128, 128), (80, 80, 96, 96))
    result = run(sd1, init, mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8, width=64, height=64)
    out = px(result.images[0])
    assert result.images[0].size == (128, 128)  # pasted back into the full picture
    blurred = masks.blur(mask, 4, 4)
    x1, y1, x2, y2 = masks.expand_to_aspect(masks.crop_region(blurred, 8), 64, 64, 128, 128)
    assert (x2 - x1, y2 - y1) == (52, 52)
    outside = np.ones((128, 128), bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], px(init)[outside])
    assert np.array_equal(out[kept(mask)], px(init)[kept(mask)])
    assert np.abs(out[80:96, 80:96] - px(init)[80:96, 80:96]).mean() > 5
    assert "Inpaint area: Only masked, Masked area padding: 8" in result.infotexts[0]


def test_empty_mask_is_plain_img2img(sd1):
    plain = run(sd1)
    empty = run(sd1, mask=Image.new("L", (64, 64), 0))
    assert np.array_equal(px(plain.images[0]), px(empty.images[0]))
    assert empty.infotexts[0] == plain.infotexts[0]  # no mask fields


def test_mask_of_another_size_is_stretched_to_the_image(sd1):
    init = picture()
    result = run(sd1, init, mask=square_mask((32, 32), (8, 8, 24, 24)))
    big = square_mask()  # the same square at the image's size
    out, keep = px(result.images[0]), kept(big)
    assert np.array_equal(out[keep], px(init)[keep])
    assert np.abs(out[24:40, 24:40] - px(init)[24:40, 24:40]).mean() > 5


def test_inpainting_checkpoint_gets_the_9_channel_conditioning(sd1_inpainting):
    assert sd1_inpainting.unet.config.in_channels == 9
    init, mask = picture(), square_mask()
    full = run(sd1_inpainting, init, mask=mask)
    half = run(sd1_inpainting, init, mask=mask, cfg=settings(mask_weight=0.5))
    keep = kept(mask)
    for result in (full, half):
        assert np.array_equal(px(result.images[0])[keep], px(init)[keep])
    inside = np.asarray(mask) == 255
    assert np.abs(px(full.images[0])[inside] - px(half.images[0])[inside]).mean() > 0.5
    assert "Denoising strength: 0.75, Conditional mask weight: 1.0, RNG: CPU, Mask blur: 4" in full.infotexts[0]
    assert "Conditional mask weight: 0.5" in half.infotexts[0]


# -- resize modes, colour correction -----------------------------------------------------------

def test_resize_modes_give_the_requested_size_with_a1111_geometry(sd1):
    wide = picture(96, 64)
    top, bottom = (200, 10, 10), (10, 10, 200)
    tall = Image.new("RGB", (64, 96), top)
    tall.paste(bottom, (0, 48, 64, 96))
    # crop and resize: the centre 64 of 96 columns; resize and fill: bands stretched from the edges
    assert np.array_equal(px(masks.resize_image(1, wide, 64, 64)), px(wide.crop((16, 0, 80, 64))))
    filled = px(masks.resize_image(2, tall, 64, 64))  # fits as 42x64, 11-pixel bands left and right
    assert np.array_equal(filled[:, :10], np.broadcast_to(filled[:, 11:12], (64, 10, 3)))
    assert np.abs(filled[4, 5] - top).max() <= 2 and np.abs(filled[60, 60] - bottom).max() <= 2
    for mode in (0, 1, 2):
        out = run(sd1, wide, resize_mode=mode, width=64, height=64, denoising_strength=0.0).images[0]
        assert out.size == (64, 64)
        assert np.array_equal(px(out), vae_round_trip(sd1, masks.resize_image(mode, wide, 64, 64)))
    latent = run(sd1, wide, resize_mode=3, width=64, height=64, denoising_strength=0.0).images[0]
    assert np.array_equal(px(latent), vae_round_trip(sd1, wide, latent_size=(8, 8)))


def test_color_correction_moves_colours_toward_the_input(sd1):
    init = picture()
    plain = run(sd1, init, denoising_strength=0.8).images[0]
    corrected = run(sd1, init, denoising_strength=0.8, cfg=settings(color_correction=True)).images[0]
    target = color_target(init).reshape(-1, 3).astype(float)

    def distance(image):  # per LAB channel: how far mean and spread are from the input's
        lab = color_target(image).reshape(-1, 3).astype(float)
        return np.abs(lab.mean(0) - target.mean(0)).sum() + np.abs(lab.std(0) - target.std(0)).sum()

    assert distance(corrected) < 0.7 * distance(plain)


# -- outpainting -----------------------------------------------------------------------------

def test_outpainting_extends_the_canvas_and_keeps_the_old_area(sd1):
    init = picture()
    canvas = extend_canvas(init, 16, ["right"], mask_blur=1)
    assert canvas.image.size == (80, 64) and canvas.offset == (0, 0)
    assert np.array_equal(px(canvas.image)[:, :64], px(init))
    mask = np.asarray(canvas.mask)
    assert (mask[:, 62:] == 255).all() and (mask[:, :62] == 0).all()  # new area + 2 px blend band
    assert px(canvas.image)[:, 64:].std() > 1  # filled from the edge, not left black
    result = generate(outpaint_request(init, 16, ["right"], mask_blur=1, prompt="sky", seed=2, steps=6,
                                       save_images=False), sd1, settings())
    out = px(result.images[0])
    assert result.images[0].size == (80, 64)
    assert np.array_equal(out[:, :48], px(init)[:, :48])
    assert np.abs(out[:, 66:] - px(canvas.image)[:, 66:]).mean() > 2
    rounded = extend_canvas(init, 20, ["left", "up"], mask_blur=4, inpainting_fill=2)
    assert rounded.image.size == (88, 88) and rounded.offset == (24, 24)  # 84 -> multiple of 8
    assert np.array_equal(px(rounded.image)[24:, 24:], px(init))
    assert (rounded.mask_blur_x, rounded.mask_blur_y) == (16, 16)


# -- bad input, saving, the engine -----------------------------------------------------------

def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data,message", [
    ("not base64 at all!", "not valid base64"),
    (base64.b64encode(b"plain text, not a picture " * 4).decode(), "not a recognizable image"),
    (base64.b64encode(_png(picture())[:len(_png(picture())) // 2]).decode(), "truncated or corrupt"),
    (base64.b64encode(_png(picture(100, 100))).decode(), "exceeds the limit of 5000 pixels"),
    (12345, "must be a base64-encoded image"),
])
def test_bad_image_data_names_the_field(data, message):
    with pytest.raises(RequestError, match=message) as info:
        image_io.decode_image(data, "mask", max_pixels=5000)
    assert info.value.field == "mask"


def test_odd_image_modes_become_rgb_and_alpha_shows_the_background(sd1):
    rgb = picture()
    cmyk = image_io.decode_image(base64.b64encode(_jpeg_cmyk(rgb)).decode(), "init_images")
    grey16 = image_io.decode_image(_png(Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)), "x")
    palette = image_io.decode_image("data:image/png;base64," + base64.b64encode(_png(rgb.convert("P"))).decode(), "x")
    assert (cmyk.mode, grey16.mode, palette.mode) == ("RGB", "RGB", "RGB")
    assert np.abs(px(grey16) - px(rgb.convert("L").convert("RGB"))).max() <= 1
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(64)[None, :] < 32, 0, 255).repeat(64, 0).astype(np.uint8)))
    decoded = image_io.decode_image(_png(rgba), "init_images")
    assert decoded.mode == "RGBA"
    assert (px(flatten(decoded, "#00ff00"))[:, :32] == (0, 255, 0)).all()
    result = run(sd1, decoded, mask=square_mask(box=(40, 16, 56, 48)), cfg=settings(background_color="#00ff00"))
    assert (px(result.images[0])[:, :20] == (0, 255, 0)).all()  # kept area: the flattened input
    for image in (cmyk, grey16, palette, Image.fromarray(np.asarray(rgb.convert("L")), "L")):
        assert run(sd1, image, steps=2).images[0].size == (64, 64)


def _jpeg_cmyk(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("CMYK").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_refused_requests_name_the_field_and_write_nothing(tmp_path, sd1):
    cfg = settings(tmp_path, max_input_pixels=4096)  # 64x64 passes, one more column does not
    for fields, field in [
        (dict(init_images=[picture(65, 64)]), "init_images"),
        (dict(init_images=[picture(32, 32)], mask=Image.new("L", (100, 100))), "mask"),
    ]:
        with pytest.raises(RequestError, match="over the limit of 4096 pixels") as info:
            generate(Img2ImgRequest(steps=2, **fields), sd1, cfg)
        assert info.value.field == field
    assert not (tmp_path / "img2img-images").exists()
    for fields, field in [
        (dict(), "init_images"), (dict(init_images=[]), "init_images"), (dict(init_images=["x"]), "init_images"),
        (dict(init_images=[picture()], mask=b"png"), "mask"),
        (dict(init_images=[picture()], denoising_strength=1.5), "denoising_strength"),
        (dict(init_images=[picture()], resize_mode=4), "resize_mode"),
        (dict(init_images=[picture()], inpainting_fill=7), "inpainting_fill"),
        (dict(init_images=[picture()], enable_hr=True), "enable_hr"),
    ]:
        with pytest.raises(RequestError) as info:
            Img2ImgRequest(**fields)
        assert info.value.field == field


def test_saved_png_carries_the_img2img_infotext(tmp_path, sd1):
    result = run(sd1, mask=square_mask(), seed=77, save_images=True, cfg=settings(tmp_path))
    path = tmp_path / "img2img-images" / "2026-11-23" / "00000-77.png"
    assert result.paths == [str(path)]
    with Image.open(path) as saved:
        text = saved.info["parameters"]
    assert text == result.infotexts[0]
    parsed = parse_infotext(text)
    assert (parsed["Denoising strength"], parsed["Mask blur"], parsed["Masked content"]) == ("0.75", "4", "fill")


def test_engine_img2img_saves_to_the_img2img_folder(tmp_path, tiny_checkpoints):
    from modules.services.checkpoints import CheckpointRegistry, HashCache
    from modules.services.engine import Engine
    from modules.services.jobs import JobState, WorkQueue
    from modules.services.model_cache import ModelCache
    from modules.services.options import Options

    options = Options(None)
    options.data["img2img_color_correction"] = True
    state = JobState()
    engine = Engine(options, CheckpointRegistry([tiny_checkpoints.checkpoints_dir], HashCache(None)),
                    ModelCache(POLICY), state, WorkQueue(state), tmp_path)
    request = Img2ImgRequest(init_images=[picture()], checkpoint="tiny-sd1", seed=9, steps=2)
    result = engine.submit_img2img(request, overrides={"initial_noise_multiplier": 0.9}).result(timeout=120)
    assert result.paths and "img2img-images" in result.paths[0]
    assert "Noise multiplier: 0.9" in result.infotexts[0]
    with pytest.raises(RequestError) as info:
        engine.submit_img2img(request, overrides={"inpainting_mask_weight": 2.0})
    assert info.value.field == "override_settings.inpainting_mask_weight"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (8-bit RGB) with no pixel data: what a huge upload looks like
    to a reader that checks the size before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "base64"])
def test_a_20000_pixel_square_upload_is_refused_before_decoding(as_text):
    data = _png_header_only(20000, 20000)
    with pytest.raises(RequestError) as err:
        image_io.decode_image(base64.b64encode(data).decode() if as_text else data, "init_images", 4096 * 4096)
    assert err.value.field == "init_images"
    assert err.value.message == "image is too large: 400000000 pixels exceeds the limit of 16777216 pixels"


@pytest.mark.parametrize("invert", [0, 1], ids=["inpaint-masked", "inpaint-not-masked"])
@pytest.mark.parametrize("fill", [0, 1, 2, 3], ids=["fill", "original", "latent-noise", "latent-nothing"])
def test_kept_pixels_are_exact_for_every_masked_content_and_mask_mode(sd1, fill, invert):
    init, mask = picture(), square_mask()
    result = run(sd1, init, mask=mask, inpainting_fill=fill, inpainting_mask_invert=invert, denoising_strength=0.6)
    keep = kept(mask, invert=bool(invert))
    assert keep.sum() >= 144
    assert np.array_equal(px(result.images[0])[keep], px(init)[keep])
