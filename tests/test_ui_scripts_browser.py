"""Extensions' scripts in the page, in a real browser (Chromium through Playwright), against a server
of its own with the `ui_probe` test extension (tests/fixtures/extensions/ui_probe) installed.

What a user sees and does: the extension's AlwaysVisible accordion in the parameters column, opened,
with a note typed in, reaches the generated picture's infotext (closed, it does not); a script
chosen in the "Script" dropdown shows its controls (hidden again with "None"), its Gradio 3 style
button works, and its value reaches the infotext; the extension's own tab and its style.css; its
option in Settings, applied, reaches the page's `opts` and its onOptionsChanged callback; its
javascript ran through A1111's globals (onUiLoaded found elements of every main tab). Jobs are 64x64
with 1 step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.server import run_server
from tests.test_extensions import add
from tests.test_ui_browser import browser, fill_job, set_number  # noqa: F401  (browser: the shared fixture)

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

TIMEOUT_MS = 60_000
JOB_TIMEOUT_MS = 120_000
A1111_IDS = ("prompt", "neg_prompt", "sampling", "steps", "width", "height", "cfg_scale", "seed", "batch_count",
             "batch_size", "generate")


@pytest.fixture(scope="module")
def probe_server(tiny_checkpoints, tmp_path_factory):
    data = tmp_path_factory.mktemp("ui-scripts")
    (data / "extensions").mkdir()
    add(data / "extensions", "ui_probe")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1)) as server:
        yield server


@pytest.fixture
def page(browser, probe_server) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(probe_server.url)
    # ready once A1111's onUiLoaded callbacks have run (the extension's script marks the body)
    expect(page.locator("body[data-ui-probe=loaded]")).to_have_count(1)
    yield page
    context.close()


def generate(page: Page, prompt: str) -> str:
    """Generate on txt2img; the info box's text once it shows this job (each job's prompt differs)."""
    info = page.locator("#html_info_txt2img")
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(info).to_contain_text(prompt, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#txt2img_generate")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    return info.inner_text()


def test_always_visible_accordion_value_reaches_the_infotext(page):
    accordion = page.locator("#tab_txt2img #script_txt2img_ui_probe_enabled")
    expect(accordion).to_be_visible()
    # the script's controls sit in A1111's script container, after the parameters
    container = page.locator("#txt2img_script_container")
    expect(container.locator("#script_txt2img_ui_probe_enabled")).to_have_count(1)
    expect(container.locator("#script_list")).to_have_count(1)

    fill_job(page, "a probe with the accordion closed", steps=1)
    assert "UI probe" not in generate(page, "a probe with the accordion closed")

    accordion.locator("button").first.click()  # open: the script is on
    note = page.locator("#script_txt2img_ui_probe_note textarea")
    expect(note).to_be_visible()
    note.fill("hello from the probe")
    page.locator("#txt2img_prompt textarea").fill("a probe with the accordion open")
    info = generate(page, "a probe with the accordion open")
    assert "UI probe: hello from the probe" in info
    assert "Steps: 1," in info and "Size: 64x64" in info

    # before_component/after_component saw A1111's components: the marker stands right before
    # the steps slider, and the list the script built (after them) names them all
    seen = page.locator("#script_txt2img_ui_probe_seen").inner_text().split()
    assert set(seen[1:]) == {f"txt2img_{name}" for name in A1111_IDS}, seen
    marker_first = page.evaluate("""() => {
        const marker = document.querySelector('#ui_probe_before_txt2img_steps');
        const steps = document.querySelector('#txt2img_steps');
        return !!marker && !!(marker.compareDocumentPosition(steps) & Node.DOCUMENT_POSITION_FOLLOWING);
    }""")
    assert marker_first
    expect(page.locator("#ui_probe_before_txt2img_steps")).to_have_text("probe before txt2img steps")

    # closed again: off again
    accordion.locator("button").first.click()
    expect(note).to_be_hidden()
    page.locator("#txt2img_prompt textarea").fill("a probe closed again")
    assert "UI probe" not in generate(page, "a probe closed again")


def test_script_chosen_in_the_dropdown_runs_with_its_controls(page):
    dropdown = page.locator("#tab_txt2img #script_list")
    factor = page.locator("#script_txt2img_ui_probe_selectable_factor")
    expect(factor).to_be_hidden()
    dropdown.locator("input").click()
    options = dropdown.locator("[role=option]")
    expect(options.filter(has_text="UI probe selectable")).to_have_count(1)
    assert "UI probe" not in [t.strip() for t in options.all_inner_texts()]  # AlwaysVisible: not listed
    options.filter(has_text="UI probe selectable").click()
    expect(dropdown.locator("input")).to_have_value("UI probe selectable")
    expect(factor).to_be_visible()

    # its ToolButton: a `_js=` handler in the page, and a `gr.Slider.update(...)` from the server
    page.locator("#script_txt2img_ui_probe_selectable_mark").click()
    expect(factor.locator("input[type=number]")).to_have_value("7")
    assert page.evaluate("() => window.uiProbeMarked") == 1

    fill_job(page, "a probe run by the selected script", steps=1)
    info = generate(page, "a probe run by the selected script")
    assert "UI probe selectable: 7" in info

    dropdown.locator("input").click()
    dropdown.locator("input").fill("")  # the list shows what matches the field's text
    dropdown.locator("[role=option]").filter(has_text=re.compile(r"(^|\s)None\s*$")).click()
    expect(dropdown.locator("input")).to_have_value("None")
    expect(factor).to_be_hidden()
    page.locator("#txt2img_prompt textarea").fill("a probe without the script")
    assert "UI probe selectable" not in generate(page, "a probe without the script")


def test_extension_page_script_tab_style_and_setting(page, probe_server):
    # its javascript ran through A1111's globals: onUiLoaded once, with every main tab on the page
    state = page.evaluate("() => window.uiProbeState")
    assert state["loaded"] == 1
    assert state["found"] == {"txt2img_prompt": True, "img2img_prompt": True, "tab_settings": True,
                              "tab_ui_probe": True, "script_list": True}
    assert state["option"] == 3 and state["tabChanges"] == 0
    assert page.evaluate("() => typeof gradioApp === 'function' && gradioApp().querySelector('#tabs') !== null")
    assert page.evaluate("() => get_uiCurrentTab().id") == "tab_txt2img-button"

    # its on_ui_tabs tab, styled by its style.css; onUiTabChange saw the change
    page.locator("#tab_ui_probe-button").click()
    text = page.locator("#ui_probe_tab_text")
    expect(text).to_be_visible()
    expect(text).to_contain_text("UI probe tab content")
    expect(text).to_have_css("color", "rgb(10, 20, 30)")
    page.wait_for_function("() => window.uiProbeState.lastTab === 'tab_ui_probe-button'")
    assert page.evaluate("() => get_uiCurrentTabContent().id") == "tab_ui_probe"

    # its on_ui_settings option, in its own section, with the control the extension asked for
    page.locator("#tab_settings-button").click()
    page.locator("#settings_ui_probe-button").click()
    option = page.locator("#setting_ui_probe_option")
    expect(option).to_be_visible()
    expect(option).to_contain_text("UI probe option")
    field = option.locator("input[type=number]")
    expect(field).to_have_value("3")
    expect(option.locator("input[type=range]")).to_have_attribute("max", "10")
    # a section's controls take the page-load values just after they first appear; the same value
    # here (3), so give that a moment before typing, and type again if it landed in between
    for _ in range(5):
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        field.fill("5")
        field.press("Enter")
        page.evaluate("() => new Promise(r => setTimeout(r, 200))")
        if field.input_value() == "5":
            break
    set_number(page, "setting_ui_probe_option", 5)
    page.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text("1 settings changed: ui_probe_option.")
    # the page's opts follow, and the extension's onOptionsChanged callback saw the new value
    page.wait_for_function("() => window.opts.ui_probe_option === 5 && window.uiProbeState.option === 5")
    r = probe_server.get("/sdapi/v1/options")
    assert r.status_code == 200, r.text
    assert r.json()["ui_probe_option"] == 5
    config = json.loads((Path(probe_server.data_dir) / "config.json").read_text(encoding="utf-8"))
    assert config["ui_probe_option"] == 5
