"""The Extras upscale (modules.core.postprocess) and A1111's infotext defaults, without a server."""

import numpy as np
import pytest
from PIL import Image

from modules.core import postprocess
from modules.core.infotext_defaults import parse_generation_parameters
from modules.core.postprocess import UpscaleSettings
from modules.core.types import RequestError

from tests.pictures import picture


def px(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_scale_by_rounds_each_side_down_to_a_multiple_of_8_like_a1111():
    image, info = postprocess.upscale(picture(40, 30), UpscaleSettings(upscale_by=2.5, upscaler_1="Lanczos"))
    assert image.size == (96, 72)  # 100 -> 96, 75 -> 72
    assert image.mode == "RGB"
    assert info == {"Postprocess upscale by": 2.5, "Postprocess upscaler": "Lanczos"}
    assert postprocess.infotext(info) == "Postprocess upscale by: 2.5, Postprocess upscaler: Lanczos"


def test_nearest_by_4_repeats_every_pixel_4_times():
    source = picture(16, 8)
    image, _ = postprocess.upscale(source, UpscaleSettings(upscale_by=4, upscaler_1="Nearest"))
    assert image.size == (64, 32)
    assert np.array_equal(px(image), np.repeat(np.repeat(px(source), 4, axis=0), 4, axis=1))


def test_scale_to_with_crop_fills_the_exact_target_from_the_centre():
    source = picture(40, 20)  # scale to 64x64: factor 3.2 from the height, the width is cut
    image, info = postprocess.upscale(source, UpscaleSettings(mode=1, width=64, height=64, crop=True, upscaler_1="Nearest"))
    assert image.size == (64, 64)
    assert info == {"Postprocess upscale to": "64x64", "Postprocess crop to": "64x64", "Postprocess upscaler": "Nearest"}
    # every output colour comes from the picture (no black border, no blending with Nearest)
    colours = {tuple(c) for c in px(source).reshape(-1, 3)}
    assert all(tuple(c) in colours for c in px(image).reshape(-1, 3))
    # the centre column of the output is the centre column of the picture, stretched
    assert tuple(px(image)[32, 32]) == tuple(px(source)[10, 20])


def test_scale_to_without_crop_keeps_the_aspect():
    image, info = postprocess.upscale(picture(40, 20), UpscaleSettings(mode=1, width=64, height=64, crop=False,
                                                                        upscaler_1="Lanczos"))
    assert image.size == (128, 64)  # factor max(64/40, 64/20) = 3.2: 128x64
    assert "Postprocess crop to" not in info


def test_upscaler_none_returns_the_picture_unchanged():
    source = picture(24, 16)
    image, info = postprocess.upscale(source, UpscaleSettings(upscale_by=3, upscaler_1="None"))
    assert image.size == (24, 16) and np.array_equal(px(image), px(source)) and info == {}
    assert postprocess.plaintext_to_html(postprocess.infotext(info)) == "<p></p>"


def test_second_upscaler_is_blended_with_its_visibility():
    source = picture(16, 16)
    a, _ = postprocess.upscale(source, UpscaleSettings(upscale_by=2, upscaler_1="Lanczos"))
    b, _ = postprocess.upscale(source, UpscaleSettings(upscale_by=2, upscaler_1="Nearest"))
    both, info = postprocess.upscale(source, UpscaleSettings(upscale_by=2, upscaler_1="Lanczos", upscaler_2="Nearest",
                                                             upscaler_2_visibility=0.25))
    assert np.array_equal(px(both), px(Image.blend(a, b, 0.25)))
    assert info["Postprocess upscaler 2"] == "Nearest"


@pytest.mark.parametrize("settings,field", [
    (UpscaleSettings(mode=2), "resize_mode"),
    (UpscaleSettings(upscaler_1="ESRGAN_4x"), "upscaler_1"),
    (UpscaleSettings(upscaler_2="Latent"), "upscaler_2"),
    (UpscaleSettings(upscale_by=0, upscaler_1="Lanczos"), "upscaling_resize"),
    (UpscaleSettings(upscale_by=100, upscaler_1="Lanczos"), "upscaling_resize"),
])
def test_bad_settings_name_the_api_field(settings, field):
    with pytest.raises(RequestError) as err:
        settings.check(max_pixels=4096 * 4096, source=(64, 64))
    assert err.value.field == field
    if field.startswith("upscaler"):
        assert "Lanczos" in err.value.message  # the known names are listed


def test_a1111_defaults_and_combined_sampler_names():
    params = parse_generation_parameters("a (cat:1.2)\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768")
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert params["Size-1"] == "512" and params["Size-2"] == "768" and params["Steps"] == "20"
    assert params["Clip skip"] == "1" and params["RNG"] == "GPU" and params["Hires resize-1"] == 0
    assert params["Hires sampler"] == "Use same sampler" and params["Emphasis"] == "Original"
    plain = parse_generation_parameters("a cat\nSteps: 20, Sampler: Euler, Schedule type: Karras, Clip skip: 2")
    assert plain["Sampler"] == "Euler" and plain["Schedule type"] == "Karras" and plain["Clip skip"] == "2"
    assert "Emphasis" not in plain
    assert parse_generation_parameters("")["Prompt"] == ""
