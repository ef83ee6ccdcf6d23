"""The img2img tab and txt2img's Hires. fix in a real browser (Chromium through Playwright) against
the shared test server, as tests/test_ui_browser.py does it (its fixtures and helpers are reused).

What a user does: upload a picture and Generate; upload, paint a mask with the mouse and inpaint;
turn on Hires. fix; upload something that is not a picture and carry on; sketch over a picture;
outpaint with the Script dropdown. Every wait is on a condition of the page; jobs are 64-128 px
with 1-2 sampling steps.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.test_ui_browser import (JOB_TIMEOUT_MS, browser, expect_controls, fill_job, page,  # noqa: F401
                                   saved_images, set_number)

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

# A1111's element ids; Gradio renders a tab's content when the tab is first shown
IMG2IMG_IDS = ["tab_img2img", "img2img_prompt", "img2img_neg_prompt", "img2img_generate", "img2img_gallery",
               "html_info_img2img", "resize_mode", "img2img_steps", "img2img_width", "img2img_height",
               "img2img_denoising_strength", "img2img_cfg_scale", "img2img_seed", "img2img_image"]
SUB_TAB_IDS = {"Sketch": ["img2img_sketch"], "Inpaint": ["img2maskimg", "img2img_mask_blur", "img2img_mask_mode",
                                                         "img2img_inpainting_fill", "img2img_inpaint_full_res",
                                                         "img2img_inpaint_full_res_padding"],
               "Inpaint sketch": ["inpaint_sketch"], "Inpaint upload": ["img_inpaint_base", "img_inpaint_mask"],
               "Batch": ["img2img_batch_input_dir", "img2img_batch_output_dir", "img2img_batch_inpaint_mask_dir"]}
HIRES_IDS = ["txt2img_hr", "txt2img_hr_upscaler", "txt2img_hires_steps", "txt2img_denoising_strength",
             "txt2img_hr_scale", "txt2img_hr_resize_x", "txt2img_hr_resize_y"]
# shown with hires_fix_show_sampler / hires_fix_show_prompts (off by default, as in A1111; tests/test_a1111_page_browser.py)
HIRES_OPTIONAL_IDS = ["hr_checkpoint", "hr_sampler", "hr_scheduler", "hires_prompt", "hires_neg_prompt"]


def expect_ids(page: Page, ids: list[str]) -> None:
    for elem_id in ids:
        expect(page.locator(f"#{elem_id}").first).to_be_attached()


def gradient(width: int, height: int) -> Image.Image:
    """A smooth picture with structure, so a change anywhere shows."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 127 // (width + height)], -1)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def img2img_outputs(server) -> list[Path]:
    return sorted((Path(server.data_dir) / "outputs" / "img2img-images").glob("*/*.png"))


def open_img2img(page: Page, sub_tab: str = "img2img") -> None:
    page.locator("#tab_img2img-button").click()
    page.locator("#mode_img2img").get_by_role("tab", name=sub_tab, exact=True).click()


def expect_idle(page: Page, tab: str = "img2img") -> None:
    expect(page.locator(f"#{tab}_generate")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator(f"#{tab}_interrupt")).to_be_hidden()
    expect(page.locator(f"#{tab}_skip")).to_be_hidden()


def generate_and_wait(page: Page, tab: str = "img2img") -> str:
    page.locator(f"#{tab}_generate").click()
    expect(page.locator(f"#{tab}_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect_idle(page, tab)
    return page.locator(f"#html_info_{tab}").inner_text()


def only_new(before: set[Path], now: list[Path]) -> Path:
    new = sorted(set(now) - before)
    assert len(new) == 1, new
    return new[0]


def draw_stroke(page, editor) -> None:
    """A 120 px horizontal mouse stroke through the middle of the editor's canvas."""
    box = editor.locator("canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy, steps=20)
    page.mouse.up()


# -------------------------------------------------------------------------------------- tests

def test_sub_tabs_show_their_controls(page):
    open_img2img(page)
    expect_ids(page, IMG2IMG_IDS)
    expect(page.locator("#inpaint_controls").first).to_be_hidden()
    for sub_tab, ids in SUB_TAB_IDS.items():
        open_img2img(page, sub_tab)
        expect_ids(page, ids)
        # the inpainting controls belong to the inpaint sub-tabs (and Batch, for a mask folder)
        controls = page.locator("#inpaint_controls").first
        if sub_tab == "Sketch":
            expect(controls).to_be_hidden()
        else:
            expect(controls).to_be_visible()
    page.locator("#img2img_tab_resize_by-button").click()
    expect(page.locator("#img2img_scale")).to_be_visible()


def test_img2img_upload_and_generate(page, server, tmp_path):
    source = tmp_path / "input.png"
    gradient(64, 64).save(source)
    before = set(img2img_outputs(server))

    open_img2img(page)
    page.locator("#img2img_image input[type=file]").set_input_files(source)
    expect(page.locator("#img2img_image img").first).to_be_visible()
    page.locator("#img2img_prompt textarea").fill("a red circle")
    set_number(page, "img2img_steps", 2)
    set_number(page, "img2img_width", 64)
    set_number(page, "img2img_height", 64)
    set_number(page, "img2img_denoising_strength", 0.5)
    info = generate_and_wait(page)

    assert "a red circle" in info and "Denoising strength: 0.5" in info and "Size: 64x64" in info
    with Image.open(only_new(before, img2img_outputs(server))) as png:
        assert png.size == (64, 64)
        assert "Denoising strength: 0.5" in png.info["parameters"]


@pytest.mark.parametrize("sub_tab, editor_id", [("Inpaint", "img2maskimg"), ("Inpaint sketch", "inpaint_sketch")])
def test_inpaint_a_stroke_drawn_with_the_mouse(page, server, tmp_path, sub_tab, editor_id):
    """Inpaint: the stroke is only the mask; Inpaint sketch: the stroke's colour is also painted
    into the picture. Either way the job repaints the stroke and keeps the rest."""
    source = tmp_path / "inpaint.png"
    original = gradient(128, 96)
    original.save(source)
    before = set(img2img_outputs(server))

    open_img2img(page, sub_tab)
    editor = page.locator(f"#{editor_id}")
    with page.expect_file_chooser() as chooser:  # as a user does it: click the empty editor, pick a file
        editor.get_by_text("Upload an image").click()
    chooser.value.set_files(source)
    expect(editor.get_by_text("Upload an image")).to_be_hidden()  # the picture is on the canvas
    expect(page.locator("#inpaint_controls").first).to_be_visible()  # shown for the inpaint sub-tabs
    # after an upload the brush is the active tool; a horizontal stroke through the middle of the
    # picture (the editor centres it on the canvas)
    draw_stroke(page, editor)

    page.locator("#img2img_mask_mode").get_by_text("Inpaint masked", exact=True).click()
    set_number(page, "img2img_steps", 2)
    set_number(page, "img2img_width", 128)
    set_number(page, "img2img_height", 96)
    info = generate_and_wait(page)
    assert "Mask blur: 4" in info and "Denoising strength: 0.75" in info

    with Image.open(only_new(before, img2img_outputs(server))) as png:
        result = px(png)
    want = px(original)
    assert result.shape == want.shape
    centre = (slice(40, 56), slice(52, 76))
    assert np.abs(result[centre] - want[centre]).mean() > 5, "the stroke's area was repainted"
    for far in ((slice(0, 6), slice(None)), (slice(90, 96), slice(None)), (slice(None), slice(0, 4))):
        assert np.array_equal(result[far], want[far]), "far from the stroke the picture is the input's, exactly"


def test_hires_fix_gives_the_upscaled_size(page, server):
    before = set(saved_images(server))
    fill_job(page, "a blue square", steps=1)
    page.locator("#txt2img_hr").get_by_text("Hires. fix").click()  # open = on, as in A1111
    expect_ids(page, HIRES_IDS + ["txt2img_tiling"])
    for elem_id in HIRES_OPTIONAL_IDS:
        expect(page.locator(f"#{elem_id}")).to_be_hidden()
    set_number(page, "txt2img_hires_steps", 1)
    expect(page.locator("#txtimg_hr_finalres")).to_contain_text("from 64x64 to 128x128")
    info = generate_and_wait(page, "txt2img")

    assert "Hires upscale: 2" in info and "Hires upscaler: Latent" in info and "Denoising strength: 0.7" in info
    assert "Size: 64x64" in info  # A1111 writes the first pass's size
    with Image.open(only_new(before, saved_images(server))) as png:
        assert png.size == (128, 128)

    before = set(saved_images(server))
    page.locator("#txt2img_hr").get_by_text("Hires. fix").click()  # closed = off
    info = generate_and_wait(page, "txt2img")
    assert "Hires" not in info
    with Image.open(only_new(before, saved_images(server))) as png:
        assert png.size == (64, 64)


def test_invalid_upload_is_a_message_and_the_page_keeps_working(page, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 20)
    good = tmp_path / "fine.png"
    gradient(64, 64).save(good)

    open_img2img(page)
    upload = page.locator("#img2img_image input[type=file]")
    upload.set_input_files(bad)
    error = page.locator("#html_info_img2img .error")
    expect(error).to_contain_text(re.compile(r"broken\.png is not an image Easel can read"))
    expect(page.locator(".toast-body").filter(has_text="broken.png").first).to_be_visible()
    expect(page.locator("#img2img_image img")).to_have_count(0)  # the upload was removed again

    # Generate without a picture: a message, and the buttons come back
    page.locator("#img2img_generate").click()
    expect(error).to_contain_text("no image: upload one in the img2img tab")
    expect_idle(page)

    page.locator("#img2img_image input[type=file]").set_input_files(good)
    set_number(page, "img2img_steps", 1)
    set_number(page, "img2img_width", 64)
    set_number(page, "img2img_height", 64)
    info = generate_and_wait(page)
    assert "Denoising strength: 0.75" in info
    expect(error).to_have_count(0)


def test_send_to_img2img_and_inpaint(page, server):
    fill_job(page, "a green triangle", negative="blurry", steps=1)
    generate_and_wait(page, "txt2img")

    page.locator("#txt2img_send_to_img2img").click()
    expect(page.locator("#tab_img2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_image img").first).to_be_visible()
    expect_controls(page, "img2img", prompt="a green triangle", negative="blurry", width=64)

    page.locator("#tab_txt2img-button").click()
    page.locator("#txt2img_send_to_inpaint").click()
    inpaint_tab = page.locator("#mode_img2img").get_by_role("tab", name="Inpaint", exact=True)
    expect(inpaint_tab).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2maskimg").get_by_text("Upload an image")).to_be_hidden()
    expect(page.locator("#inpaint_controls").first).to_be_visible()
    set_number(page, "img2img_steps", 1)
    info = generate_and_wait(page)  # nothing painted: the whole picture is img2img'd
    assert "a green triangle" in info and "Size: 64x64" in info and "Mask blur" not in info


def upload_to_editor(page: Page, editor_id: str, source: Path) -> None:
    """As a user does it: click the empty editor, pick a file; then the picture is on the canvas."""
    editor = page.locator(f"#{editor_id}")
    with page.expect_file_chooser() as chooser:
        editor.get_by_text("Upload an image").click()
    chooser.value.set_files(source)
    expect(editor.get_by_text("Upload an image")).to_be_hidden()


RED = (204, 50, 50)  # one of the Sketch brush's colours (SKETCH_COLOURS)


def sent_composite(bodies: list[str], server) -> Image.Image:
    """The Sketch editor's composite as the page sent it with Generate (fetched from the server)."""
    for body in bodies:
        for value in json.loads(body).get("data") or []:
            if isinstance(value, dict) and (value.get("composite") or {}).get("url"):
                r = requests.get(value["composite"]["url"], timeout=60)
                assert r.status_code == 200, r.text
                return Image.open(io.BytesIO(r.content)).convert("RGB")
    raise AssertionError("Generate sent no Sketch composite")


def test_sketch_strokes_are_part_of_the_picture(page, server, tmp_path, tiny_checkpoints):
    """Sketch: a red stroke drawn over the uploaded picture is painted into the init image. At
    denoising strength 0 an img2img job is the VAE's round trip of its init image (the tiny VAE
    has random weights, so that mixes the whole picture), which makes the check exact."""
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint
    from tests.test_img2img import vae_round_trip

    bodies: list[str] = []
    page.on("request", lambda r: bodies.append(r.post_data) if "/queue/join" in r.url and r.post_data else None)
    source = tmp_path / "sketch.png"
    original = gradient(128, 96)
    original.save(source)
    before = set(img2img_outputs(server))

    open_img2img(page, "Sketch")
    upload_to_editor(page, "img2img_sketch", source)
    expect(page.locator("#inpaint_controls").first).to_be_hidden()  # Sketch has no mask
    editor = page.locator("#img2img_sketch")
    editor.get_by_role("button", name="Color", exact=True).click()
    editor.locator(f"menu.swatch button.color[style*='rgb{RED}']").click()  # style: rgb(204, 50, 50)
    editor.get_by_role("button", name="Brush", exact=True).click()
    # a horizontal stroke through the middle of the picture (the editor centres it on the canvas)
    draw_stroke(page, editor)
    set_number(page, "img2img_steps", 1)
    set_number(page, "img2img_width", 128)
    set_number(page, "img2img_height", 96)
    set_number(page, "img2img_denoising_strength", 0)
    info = generate_and_wait(page)
    assert "Denoising strength: 0" in info and "Size: 128x96" in info and "Mask blur" not in info

    # what was sent: the picture with the red stroke across its middle, untouched at its edges
    sketched, want = px(sent_composite(bodies, server)), px(original)
    assert sketched.shape == want.shape == (96, 128, 3)
    assert (sketched[44:52, 52:76] == RED).all(), "the stroke is red where it was drawn"
    for far in ((slice(0, 8), slice(None)), (slice(88, 96), slice(None)), (slice(None), slice(0, 8))):
        assert np.array_equal(sketched[far], want[far]), "away from the stroke the picture is the upload"

    # what was made from it: the job ran on the sketched picture, not on the upload alone
    model = load_checkpoint(tiny_checkpoints.sd1, choose_policy()[0])
    with Image.open(only_new(before, img2img_outputs(server))) as png:
        result = px(png)
    assert np.abs(result - vae_round_trip(model, Image.fromarray(sketched.astype(np.uint8)))).max() <= 1
    assert np.abs(result - vae_round_trip(model, original)).mean() > 5, "the stroke changed the result"


OUTPAINT = "script_poor_mans_outpainting"


def test_poor_mans_outpainting_script(page, server, tmp_path):
    source = tmp_path / "outpaint.png"
    original = gradient(64, 64)
    original.save(source)
    before = set(img2img_outputs(server))

    open_img2img(page)
    page.locator("#img2img_image input[type=file]").set_input_files(source)
    expect(page.locator("#img2img_image img").first).to_be_visible()
    expect(page.locator(f"#{OUTPAINT}_pixels")).to_be_hidden()
    field = page.locator("#tab_img2img #script_list input")  # txt2img has its own #script_list (A1111)
    field.click()
    page.locator("#tab_img2img #script_list [role=option]").filter(has_text="Poor man's outpainting").click()
    expect(field).to_have_value("Poor man's outpainting")

    # A1111's controls and defaults
    expect(page.locator(f"#{OUTPAINT}_pixels input[type=number]")).to_have_value("128")
    expect(page.locator(f"#{OUTPAINT}_mask_blur input[type=number]")).to_have_value("4")
    expect(page.locator(f"#{OUTPAINT}_inpainting_fill").get_by_label("fill", exact=True)).to_be_checked()
    directions = page.locator(f"#{OUTPAINT}_direction")
    for side in ("left", "right", "up", "down"):
        expect(directions.get_by_label(side, exact=True)).to_be_checked()

    set_number(page, f"{OUTPAINT}_pixels", 16)
    for side in ("right", "up", "down"):
        directions.get_by_label(side, exact=True).uncheck()
    page.locator("#img2img_prompt textarea").fill("more of the same")
    set_number(page, "img2img_steps", 2)
    info = generate_and_wait(page)
    assert "more of the same" in info and "Size: 80x64" in info, info

    with Image.open(only_new(before, img2img_outputs(server))) as png:
        assert png.size == (80, 64)  # 16 px added on the left; 80 is already a multiple of 8
        result = px(png)
    want = px(original)
    # the mask keeps the picture from x = 16 + 2 * 4 on; blurred by 16 px (kernel half-width 40),
    # it is exactly 0 from x = 64: there the output is the input, pixel for pixel
    assert np.array_equal(result[:, 64:], want[:, 48:]), "the right part is the input's"
