"""The buttons under the galleries (A1111's ids), in a real browser against the shared server:
💾 saves the pictures with their infotext to log/images (one log.csv row each) and offers them as
downloads, only the selected one once a picture is selected; 🗃️ adds a zip of them (named as A1111 names it); 📂 says where the
output folder is (no desktop here to open it on); 📐 sends the picture to Extras; img2img's own
gallery sends its picture on to Inpaint; the gallery shows live previews while a job runs."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.test_ui_browser import JOB_TIMEOUT_MS, browser, fill_job, page, set_number  # noqa: F401
from tests.test_ui_img2img_browser import generate_and_wait, open_img2img

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402


def save_dir(server) -> Path:
    return Path(server.data_dir) / "log" / "images"


def log_rows(server) -> list[list[str]]:
    path = save_dir(server) / "log.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf8") as f:
        return list(csv.reader(f))


def test_save_zip_folder_and_send_to_extras(page, server):
    for tab in ("txt2img", "img2img"):
        for name in ("open_folder", "send_to_img2img", "send_to_inpaint", "send_to_extras"):
            expect(page.locator(f"#{tab}_{name}")).to_have_count(1)
        for name in ("save", "save_zip", "html_log"):  # (download_files_<tab> shows once something is saved)
            expect(page.locator(f"#{name}_{tab}")).to_have_count(1)

    fill_job(page, "a blue square", steps=1, batch_count=2)
    info = generate_and_wait(page, "txt2img")
    expect(page.locator("#txt2img_gallery .thumbnail-item")).to_have_count(3)  # the grid, then 2 pictures
    rows_before = len(log_rows(server))

    # nothing selected: every picture (grid included) is saved, with its infotext
    page.locator("#save_txt2img").click()
    expect(page.locator("#html_log_txt2img")).to_contain_text("Saved:", timeout=JOB_TIMEOUT_MS)
    rows = log_rows(server)
    assert rows[0][:3] == ["prompt", "seed", "width"] and len(rows) - max(rows_before, 1) == 3
    assert all(row[0] == "a blue square" for row in rows[-3:])
    saved = [save_dir(server) / row[7] for row in rows[-3:]]
    for path in saved:
        with Image.open(path) as picture:
            assert "a blue square" in picture.info["parameters"] and "Steps: 1" in picture.info["parameters"]
    expect(page.locator("#download_files_txt2img a")).to_have_count(3)

    # a selected picture alone, with 🗃️: the zip holds it
    page.locator("#txt2img_gallery .thumbnail-item").nth(2).click()
    page.locator("#save_zip_txt2img").click()
    downloads = page.locator("#download_files_txt2img")
    expect(downloads.locator("a")).to_have_count(2, timeout=JOB_TIMEOUT_MS)  # the zip, then the picture
    expect(downloads).to_contain_text(".zip")
    rows_now = log_rows(server)
    assert len(rows_now) == len(rows) + 1
    second_seed = int(rows_now[-1][1])
    assert str(second_seed) in info or second_seed > 0
    # A1111's archive name (grid_zip_filename_pattern's default "[datetime]_[[model_name]]_[seed]-[seed_last]")
    (zipped,) = save_dir(server).glob(f"*_{second_seed}.zip")
    with zipfile.ZipFile(zipped) as archive:
        assert archive.namelist() == [rows_now[-1][7]]

    # 📂: the page says where the folder is (the server has no desktop to open it on)
    page.locator("#txt2img_open_folder").click()
    expect(page.get_by_text("txt2img-images").first).to_be_visible()

    # 📐: the selected picture into Extras' single image
    page.locator("#txt2img_send_to_extras").click()
    expect(page.locator("#tab_extras-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_image img").first).to_be_visible()

    # img2img's own gallery sends its picture on: to its Inpaint tab
    page.locator("#tab_txt2img-button").click()
    page.locator("#txt2img_send_to_img2img").click()
    open_img2img(page)
    set_number(page, "img2img_steps", 1)
    generate_and_wait(page, "img2img")
    page.locator("#img2img_gallery .thumbnail-item").first.click()
    page.locator("#tab_txt2img-button").click()
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_send_to_inpaint").click()
    inpaint_tab = page.locator("#mode_img2img").get_by_role("tab", name="Inpaint", exact=True)
    expect(inpaint_tab).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2maskimg").get_by_text("Upload an image")).to_be_hidden()


def test_the_gallery_shows_the_picture_forming_while_the_job_runs(page, server):
    """A1111's live previews in the page: with show_progress_every_n_steps 1 a preview of the
    running job is in the gallery before the job ends; the final picture replaces it."""
    import requests

    r = requests.post(server.url + "/sdapi/v1/options", json={"show_progress_every_n_steps": 1}, timeout=60)
    assert r.status_code == 200, r.text
    try:
        # 256 px: 150 steps last long enough on a loaded CI machine for the checks below (at 64 px
        # the job had ended before the progress was asked for); interrupted once the preview is seen
        fill_job(page, "a green circle", steps=150, size=256)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_interrupt")).to_be_visible()
        gallery_image = page.locator("#txt2img_gallery img").first
        expect(gallery_image).to_be_visible(timeout=JOB_TIMEOUT_MS)
        preview_src = gallery_image.get_attribute("src")
        # read while the job was still sampling, so this picture can only be a preview (the page's
        # Interrupt button may still show for a moment after the final picture came)
        state = requests.get(server.url + "/sdapi/v1/progress", timeout=30).json()["state"]
        assert state["job"] and state["sampling_step"] < state["sampling_steps"], state
        requests.post(server.url + "/sdapi/v1/interrupt", timeout=30)  # the picture so far replaces the preview
        expect(page.locator("#txt2img_generate")).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#html_info_txt2img")).to_contain_text("Steps: 150")
        expect(page.locator("#txt2img_gallery img").first).not_to_have_attribute("src", preview_src or "")
    finally:
        r = requests.post(server.url + "/sdapi/v1/options", json={"show_progress_every_n_steps": 10}, timeout=60)
        assert r.status_code == 200, r.text
