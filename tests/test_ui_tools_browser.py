"""The PNG Info and Extras tabs in a real browser. PNG Info: a picture's parameters are shown and
the sends fill txt2img's or img2img's controls (and img2img's picture). Extras: an upload is
upscaled, shown and saved. Reuses tests/test_ui_browser.py's fixtures."""

from __future__ import annotations

import pytest
from PIL import Image, PngImagePlugin

from tests.test_ui_browser import JOB_TIMEOUT_MS, browser, expect_controls, page  # noqa: F401

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

INFOTEXT = ("a blue square, (sharp:1.1)\nNegative prompt: red\nSteps: 9, Sampler: Euler a, Schedule type: Karras, "
            "CFG scale: 5.5, Seed: 4321, Size: 64x96, Denoising strength: 0.35")


def _picture(path, text: str | None = INFOTEXT, **extra) -> None:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    for key, value in extra.items():
        info.add_text(key, value)
    Image.new("RGB", (64, 96), (20, 60, 200)).save(path, pnginfo=info)


def _open(page: Page) -> None:
    page.locator("#tab_pnginfo-button").click()
    expect(page.locator("#pnginfo_image")).to_be_visible()


def test_png_info_shows_the_parameters_and_sends_them_to_txt2img_and_img2img(page, tmp_path):
    source = tmp_path / "made.png"
    _picture(source, Software="a painter")
    _open(page)
    page.locator("#pnginfo_image input[type=file]").set_input_files(source)
    shown = page.locator("#pnginfo_html")
    expect(shown).to_contain_text("Steps: 9, Sampler: Euler a")
    expect(shown).to_contain_text("Software")
    expect(shown).to_contain_text("a painter")

    page.locator("#pnginfo_send_txt2img").click()
    expect(page.locator("#tab_txt2img-button")).to_have_attribute("aria-selected", "true")
    expect_controls(page, "txt2img", prompt="a blue square, (sharp:1.1)", negative="red", steps=9, cfg=5.5,
                    seed=4321, height=96, sampler="Euler a")

    _open(page)
    page.locator("#pnginfo_send_img2img").click()
    expect(page.locator("#tab_img2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_image img").first).to_be_visible()
    expect_controls(page, "img2img", prompt="a blue square, (sharp:1.1)", steps=9, denoising=0.35, height=96)


@pytest.mark.parametrize("kind, message", [("plain", "Nothing found in the image."),
                                           ("broken", "broken.png is not an image Easel can read")])
def test_png_info_of_a_plain_picture_or_a_broken_file(page, tmp_path, kind, message):
    path = tmp_path / f"{kind}.png"
    if kind == "plain":
        _picture(path, text=None)
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 20)
    _open(page)
    page.locator("#pnginfo_image input[type=file]").set_input_files(path)
    expect(page.locator("#pnginfo_html")).to_contain_text(message)
    page.locator("#tab_txt2img-button").click()  # the page goes on working
    expect(page.locator("#txt2img_generate")).to_be_visible(timeout=JOB_TIMEOUT_MS)


def test_extras_upscales_shows_and_saves(page, server, tmp_path):
    from pathlib import Path

    source = tmp_path / "small.png"
    _picture(source)
    folder = Path(server.data_dir) / "outputs" / "extras-images"
    before = set(folder.glob("*.png"))
    page.locator("#tab_extras-button").click()
    page.locator("#extras_image input[type=file]").set_input_files(source)
    expect(page.locator("#extras_image img").first).to_be_visible()
    page.locator("#extras_upscaler_1 input").click()
    page.locator("[role=option]").filter(has_text="Lanczos").first.click()
    page.locator("#extras_generate").click()
    expect(page.locator("#html_info_extras")).to_contain_text("Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos",
                                                              timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#extras_gallery img").first).to_be_visible()
    new = sorted(set(folder.glob("*.png")) - before)
    assert len(new) == 1
    with Image.open(new[0]) as png:
        assert png.size == (128, 192)
        assert png.info["parameters"] == INFOTEXT
