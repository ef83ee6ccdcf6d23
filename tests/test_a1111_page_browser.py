"""The page as popular A1111 extensions expect it (issue 18), in a real browser against one server
with the fixture extension tests/fixtures/extensions/a1111_page:

- its JavaScript runs from a <script> tag in the page's <head>, before DOMContentLoaded, after
  A1111's globals (onUiLoaded, titles, gradioApp);
- the Gradio 3 DOM paths it selects on (`#txt2img_prompt > label > textarea`), A1111's
  `txt2img_res_switch_btn` (which swaps width and height), its hidden textboxes and button;
- `titles` entries become tooltips; `/file=` serves its data file;
- the send-to buttons it registered with `bind_buttons` fill txt2img's controls.
"""

from __future__ import annotations

import pytest
import requests

from tests.server import run_server
from tests.test_extensions import add

pytest.importorskip("playwright")
from tests.test_ui_browser import browser  # noqa: E402,F401  (the shared fixture)
from playwright.sync_api import Page, expect  # noqa: E402

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page_server(tiny_checkpoints, tmp_path_factory):
    data = tmp_path_factory.mktemp("a1111-page")
    (data / "extensions").mkdir()
    add(data / "extensions", "a1111_page")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--ckpt", str(tiny_checkpoints.sd1),
                    "--skip-load-model-at-start") as server:
        yield server


@pytest.fixture(scope="module")
def page(browser, page_server) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_server.url)
    page.wait_for_function("() => window.pageProbe && window.pageProbe.done")
    page.errors = errors
    yield page
    context.close()


def test_extension_script_runs_from_the_head_before_domcontentloaded(page: Page, page_server):
    html = requests.get(page_server.url + "/", timeout=60).text  # written by the server, not by script
    probe = page.evaluate("() => window.pageProbe")
    assert probe["readyStateAtLoad"] == "loading" and probe["domContentLoaded"] is True
    assert probe["globalsFirst"] == "function"  # A1111's script.js globals came first
    tag = page.locator('head script[data-source="a1111_page/javascript/page_probe.js"]')
    expect(tag).to_have_count(1)
    assert "/file=" in tag.get_attribute("src")
    assert page.evaluate("() => document.querySelectorAll('script[data-source=\"a1111_page/javascript/page_probe.js\"]')"
                         ".length") == 1  # not run a second time by the load event
    assert 'data-source="a1111_page/javascript/page_probe.js"' in html.split("</head>")[0]


def test_gradio3_selectors_switch_button_hidden_components_and_file_route(page: Page):
    probe = page.evaluate("() => window.pageProbe")
    assert probe["promptBox"] and probe["negBox"], probe
    assert probe["switchButton"] and probe["hiddenOutbox"] and probe["hiddenButton"], probe
    assert probe["csv"] == "probe_tag,0\nsecond_tag,1"
    assert not page.errors, page.errors

    # the hidden components work as message boxes (sd-dynamic-prompts' pattern)
    page.evaluate("""() => {
        const outbox = gradioApp().querySelector('#probe-c2s-message-textbox textarea');
        outbox.value = 'ping';
        updateInput(outbox);
        gradioApp().querySelector('#probe-c2s-action-button').click();
    }""")
    page.wait_for_function("() => gradioApp().querySelector('#probe-s2c-message-textbox textarea').value === 'echo: ping'")
    assert not page.locator("#probe-c2s-message-textbox").is_visible()

    # the switch button swaps width and height
    page.locator("#tab_txt2img-button").click()
    width = page.locator("#txt2img_width input[type=number]")
    height = page.locator("#txt2img_height input[type=number]")
    width.fill("512")
    width.press("Enter")
    height.fill("320")
    height.press("Enter")
    page.locator("#txt2img_res_switch_btn").click()
    expect(width).to_have_value("320")
    expect(height).to_have_value("512")


def test_titles_become_tooltips(page: Page):
    page.locator("#tab_page_probe-button").click()
    expect(page.locator("#probe-titled-button")).to_have_attribute("title", "A tooltip from the probe extension")


def test_send_to_buttons_registered_by_the_extension_fill_txt2img(page: Page):
    page.locator("#tab_page_probe-button").click()
    box = page.locator("#probe-infotext textarea")
    box.fill("a probe cat\nNegative prompt: blurry\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 1234, Size: 256x192")
    page.locator("#txt2img_tab").click()  # A1111's id of create_buttons' "Send to txt2img"
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a probe cat")
    expect(page.locator("#txt2img_neg_prompt textarea")).to_have_value("blurry")
    expect(page.locator("#txt2img_steps input[type=number]")).to_have_value("7")
    expect(page.locator("#txt2img_seed input")).to_have_value("1234")
    # "Send to extras": the extension's picture into Extras' single image
    page.locator("#tab_page_probe-button").click()
    page.locator("#extras_tab").click()
    expect(page.locator("#tab_extras-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#extras_image img").first).to_be_visible()
