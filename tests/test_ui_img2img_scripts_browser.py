"""A1111's built-in img2img scripts picked and run from the page (Chromium through Playwright) on
the shared test server: SD upscale, Outpainting mk2 and Loopback, their controls set through
A1111's element ids (script_<title>_<item>), checked on the PNG files the jobs save. 64 px
pictures, 1-2 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.test_ui_browser import browser, page, set_number  # noqa: F401 - fixtures
from tests.test_ui_img2img_browser import generate_and_wait, gradient, img2img_outputs, only_new, open_img2img, px

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

SD_UPSCALE = "script_sd_upscale"
MK2 = "script_outpainting_mk2"
LOOPBACK = "script_loopback"


def upload(page: Page, tmp_path, picture: Image.Image) -> None:
    source = tmp_path / "source.png"
    picture.save(source)
    open_img2img(page)
    page.locator("#img2img_image input[type=file]").set_input_files(source)
    expect(page.locator("#img2img_image img").first).to_be_visible()


def pick_script(page: Page, title: str) -> None:
    field = page.locator("#tab_img2img #script_list input")  # txt2img has its own #script_list (A1111)
    field.click()
    page.locator("#tab_img2img #script_list [role=option]").filter(has_text=title).first.click()
    expect(field).to_have_value(title)


def test_sd_upscale_outpainting_mk2_and_loopback_from_the_page(page, server, tmp_path):
    """One page, one uploaded picture, the three scripts picked in turn (a page and an upload cost
    more than a 1-step job of 64 px)."""
    original = gradient(64, 64)
    upload(page, tmp_path, original)
    page.locator("#img2img_prompt textarea").fill("the same picture")
    set_number(page, "img2img_steps", 1)
    set_number(page, "img2img_width", 64)
    set_number(page, "img2img_height", 64)

    # SD upscale: the picture scaled by 2 with Lanczos, then redrawn in tiles of the job's size
    pick_script(page, "SD upscale")
    expect(page.locator(f"#{SD_UPSCALE}_overlap input[type=number]")).to_have_value("64")  # A1111's defaults
    expect(page.locator(f"#{SD_UPSCALE}_scale_factor input[type=number]")).to_have_value("2")
    set_number(page, f"{SD_UPSCALE}_overlap", 0)  # 4 tiles of 64 px (the seams are the API tests')
    page.locator(f"#{SD_UPSCALE}_upscaler_index").get_by_label("Lanczos", exact=True).check()
    before = set(img2img_outputs(server))
    info = generate_and_wait(page)
    assert "SD upscale overlap: 0" in info and "SD upscale upscaler: Lanczos" in info, info
    with Image.open(only_new(before, img2img_outputs(server))) as png:
        assert png.size == (128, 128)  # 64 px times the scale factor 2

    # Outpainting mk2: 16 px on the left only; mask blur 0 keeps the old picture pixel for pixel
    pick_script(page, "Outpainting mk2")
    expect(page.locator(f"#{SD_UPSCALE}_overlap")).to_be_hidden()  # the other script's controls go
    expect(page.locator(f"#{MK2}_pixels input[type=number]")).to_have_value("128")
    set_number(page, f"{MK2}_pixels", 16)
    set_number(page, f"{MK2}_mask_blur", 0)
    directions = page.locator(f"#{MK2}_direction")
    for side in ("right", "up", "down"):
        directions.get_by_label(side, exact=True).uncheck()
    expect(directions.get_by_label("left", exact=True)).to_be_checked()
    before = set(img2img_outputs(server))
    generate_and_wait(page)
    with Image.open(only_new(before, img2img_outputs(server))) as png:
        assert png.size == (80, 64)  # 16 px added on the left
        result = px(png)
    assert np.array_equal(result[:, 16:], px(original)), "the original area is kept"
    assert not np.array_equal(result[:, :16], px(original)[:, :16]), "the new strip is painted"

    # Loopback: 2 loops, each saved, from the job's denoising strength to the final one
    pick_script(page, "Loopback")
    expect(page.locator(f"#{LOOPBACK}_loops input[type=number]")).to_have_value("4")
    set_number(page, f"{LOOPBACK}_loops", 2)
    set_number(page, f"{LOOPBACK}_final_denoising_strength", 0.5)
    set_number(page, "img2img_denoising_strength", 0.3)
    before = set(img2img_outputs(server))
    generate_and_wait(page)
    expect(page.locator("#img2img_gallery .thumbnail-item")).to_have_count(3)  # the grid and the 2 loops
    new = sorted(set(img2img_outputs(server)) - before)
    assert len(new) == 2, new  # one saved picture per loop
    strengths = []
    for path in new:
        with Image.open(path) as png:
            assert png.size == (64, 64)
            strengths += [float(part.split(": ")[1]) for part in png.info["parameters"].split(", ")
                          if part.startswith("Denoising strength: ")]
    assert sorted(strengths) == [0.3, 0.5]
