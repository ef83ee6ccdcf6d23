"""The Settings tab in a real browser (Chromium through Playwright) against the shared test server,
with the fixtures of tests/test_ui_browser.py.

What a user does: open Settings, change an option, Apply; the value is in config.json and in the
API's options. A value out of range is refused with a message naming the option and changes
nothing, not even the valid changes made with it. The shared server's options are put back after.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from tests.test_ui_browser import browser, page  # noqa: F401

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

DEFAULTS = {"img2img_color_correction": False, "img2img_max_input_pixels": 4096 * 4096, "jpeg_quality": 80}
IMG2IMG_OPTIONS = ["img2img_color_correction", "inpainting_mask_weight", "initial_noise_multiplier",
                   "img2img_fix_steps", "img2img_background_color", "img2img_max_input_pixels"]


@pytest.fixture
def restore_options(server):
    yield
    r = requests.post(server.url + "/sdapi/v1/options", json=DEFAULTS, timeout=120)
    assert r.status_code == 200, r.text


def api_options(server) -> dict:
    r = requests.get(server.url + "/sdapi/v1/options", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def stored(server) -> dict:
    return json.loads((Path(server.data_dir) / "config.json").read_text(encoding="utf-8"))


def open_section(page: Page, section_id: str) -> None:
    page.locator("#tab_settings-button").click()
    page.locator(f"#{section_id}-button").click()


def test_apply_changes_config_and_api_and_refuses_bad_values(page, server, restore_options):
    # a value set through the API since the server started shows once the page is (re)loaded
    r = requests.post(server.url + "/sdapi/v1/options", json={"jpeg_quality": 77}, timeout=120)
    assert r.status_code == 200, r.text
    page.reload()
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^tiny-sd1\.safetensors \["))
    open_section(page, "settings_saving_images")
    expect(page.locator("#setting_jpeg_quality input[type=number]")).to_have_value("77")

    open_section(page, "settings_img2img")
    for key in IMG2IMG_OPTIONS:
        expect(page.locator(f"#setting_{key}")).to_be_visible()
    checkbox = page.locator("#setting_img2img_color_correction input[type=checkbox]")
    expect(checkbox).not_to_be_checked()
    checkbox.check()
    page.locator("#settings_submit").click()

    result = page.locator("#settings_result")
    expect(result).to_contain_text("1 settings changed: img2img_color_correction.")
    assert stored(server)["img2img_color_correction"] is True
    assert api_options(server)["img2img_color_correction"] is True

    # a bad number with a good change beside it: the message names the option, nothing changes
    checkbox.uncheck()
    pixels = page.locator("#setting_img2img_max_input_pixels input[type=number]")
    pixels.fill("100")
    page.locator("#settings_submit").click()
    expect(result.locator(".error")).to_contain_text("option img2img_max_input_pixels must be at least 4096")
    on_disk, in_api = stored(server), api_options(server)
    for options in (on_disk, in_api):
        assert options["img2img_color_correction"] is True
        assert options["img2img_max_input_pixels"] == 4096 * 4096

    # corrected, both changes go through
    pixels.fill("1048576")
    page.locator("#settings_submit").click()
    expect(result).to_contain_text("2 settings changed: img2img_color_correction, img2img_max_input_pixels.")
    for options in (stored(server), api_options(server)):
        assert options["img2img_color_correction"] is False
        assert options["img2img_max_input_pixels"] == 1048576


def test_quicksettings_list_puts_options_above_the_tabs_and_applies_them_at_once(page, server):
    """A1111's quicksettings_list (the shared server starts with the VAE and Clip skip in it): their
    controls are in the top row, not in Settings; a change there is in effect, in config.json and in
    the API's options at once, without Apply."""
    from tests.conftest import QUICKSETTINGS

    assert api_options(server)["quicksettings_list"] == QUICKSETTINGS
    quick = page.locator("#quicksettings")
    for key in QUICKSETTINGS:
        expect(quick.locator(f"#setting_{key}")).to_be_visible()
        expect(page.locator(f"#setting_{key}")).to_have_count(1)  # not also in the Settings tab
    open_section(page, "settings_user_interface")
    expect(page.locator("#setting_quicksettings_list")).to_be_visible()
    page.locator("#tab_txt2img-button").click()
    clip_skip = quick.locator("#setting_CLIP_stop_at_last_layers input[type=number]")
    try:
        clip_skip.fill("2")
        clip_skip.press("Enter")  # the slider's number field: a finished change (release)
        clip_skip.blur()
        for _ in range(100):
            if stored(server).get("CLIP_stop_at_last_layers") == 2:
                break
            page.wait_for_timeout(100)
        assert stored(server)["CLIP_stop_at_last_layers"] == 2
        assert api_options(server)["CLIP_stop_at_last_layers"] == 2
        page.wait_for_function("() => window.opts.CLIP_stop_at_last_layers === 2", timeout=15000)  # the page's opts
    finally:
        r = requests.post(server.url + "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, timeout=120)
        assert r.status_code == 200, r.text


def test_quicksettings_keep_the_checkpoint_first_and_skip_names_that_are_no_option(tmp_path, capsys):
    from modules.services.options import Options
    from modules.ui.settings import quicksettings

    options = Options(tmp_path / "config.json")
    assert quicksettings(options) == ["sd_model_checkpoint"]  # A1111's default
    options.set("quicksettings_list", ["CLIP_stop_at_last_layers", "no_such_option", "sd_model_checkpoint", "sd_vae"])
    assert quicksettings(options) == ["sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae"]
    assert "'no_such_option', which is no option" in capsys.readouterr().out
    with pytest.raises(ValueError, match="option quicksettings_list must be list"):
        options.check("quicksettings_list", "sd_vae")


def test_ui_config_file_sets_the_page_and_settings_defaults_writes_changes_to_it(page, server):
    """A1111's ui-config.json: the shared server starts with txt2img's steps up to 151 (conftest's
    UI_CONFIG); Settings → Defaults shows a changed control (View changes) and writes it (Apply)."""
    from tests.test_ui_browser import set_number

    expect(page.locator("#txt2img_steps input[type=range]")).to_have_attribute("max", "151")
    path = Path(server.data_dir) / "ui-config.json"
    before = path.read_text(encoding="utf-8")
    assert json.loads(before)["txt2img/CFG Scale/value"] == 7  # written at start: the keys the file lacked
    try:
        set_number(page, "txt2img_cfg_scale", 8.5)
        open_section(page, "settings_tab_defaults")
        page.locator("#ui_defaults_view").click()
        row = page.locator("#ui_defaults_review tr", has_text="txt2img/CFG Scale/value")
        expect(row.locator("td")).to_have_text(["txt2img/CFG Scale/value", re.compile(r"^7(\.0)?$"), "8.5"])
        assert json.loads(path.read_text(encoding="utf-8")) == json.loads(before)  # viewing writes nothing
        page.locator("#ui_defaults_apply").click()
        expect(page.locator("#ui_defaults_review")).to_contain_text("Wrote")
        assert json.loads(path.read_text(encoding="utf-8"))["txt2img/CFG Scale/value"] == 8.5
    finally:
        path.write_text(before, encoding="utf-8")
