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

import json

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
    # a user's A1111 layout preference: Seed and CFG moved up (test_ui_reorder_list_moves_the_parts)
    # and the hires fix's sampler and prompt rows shown (test_hires_fix_rows_follow_their_options)
    (data / "config.json").write_text(json.dumps({"ui_reorder_list": ["seed", "cfg"], "hires_fix_show_sampler": True,
                                                  "hires_fix_show_prompts": True}), encoding="utf-8")
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
    # every img2img sub-tab's picture is on the page at load (Gradio 6 mounts a tab when first shown),
    # and the options are there for the onUiLoaded callbacks
    assert probe["img2imgEditors"] == [] and probe["optsAtLoad"] == "string", probe
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

    # a hidden button in a closed accordion is in the page at load (Gradio 6 mounts a closed
    # accordion's children only when first opened), and the accordion is shown closed
    assert probe["buttonInClosedAccordion"], probe
    page.evaluate("() => gradioApp().querySelector('#probe-load-tree-button').click()")
    page.wait_for_function("() => gradioApp().querySelector('#probe-s2c-message-textbox textarea').value === 'tree loaded'")
    page.locator("#tab_txt2img-button").click()
    expect(page.locator("#tab_txt2img")).to_be_visible()
    page.wait_for_timeout(500)  # (the after-update callbacks of that change have run)
    page.evaluate("() => { window.pageProbe.sawOwnTab = false; }")
    page.locator("#tab_page_probe-button").click()  # shown before: only a class change
    page.wait_for_function("() => window.pageProbe.sawOwnTab === true")  # onAfterUiUpdate ran on the tab change
    expect(page.locator("#probe-closed-accordion")).to_be_visible()
    expect(page.locator("#probe-closed-text")).to_be_hidden()
    page.locator("#probe-closed-accordion button.label-wrap").first.click()  # the user opens it
    expect(page.locator("#probe-closed-text")).to_be_visible()

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


def _layout_ids(server) -> list[str]:
    """The page's elem_ids in layout order (depth first over /config's layout tree)."""
    import requests

    config = requests.get(server.url + "/config", timeout=60).json()
    elem_ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    found = []

    def walk(node):
        if elem_ids.get(node["id"]):
            found.append(elem_ids[node["id"]])
        for child in node.get("children", []):
            walk(child)

    walk(config["layout"])
    return found


def test_ui_reorder_list_moves_the_parts(page_server, server):
    """A1111's ui_reorder_list: item i goes right after the i-th part of the default order (its
    ordered_ui_categories), so ["seed", "cfg"] puts Seed after "prompt" and CFG after "image": both
    before the sampler; the shared server keeps A1111's default order."""
    from modules.ui.generation_tab import ordered_categories

    assert ordered_categories(["seed", "cfg"])[:6] == ["prompt", "seed", "image", "cfg", "inpaint", "sampler"]
    assert ordered_categories([]) == list(ordered_categories(None))

    def order(ids, names):
        return sorted(names, key=ids.index)

    moved, default = _layout_ids(page_server), _layout_ids(server)
    names = ["txt2img_sampling", "txt2img_hr", "txt2img_tiling", "txt2img_width", "txt2img_cfg_scale", "txt2img_seed"]
    assert order(default, names) == names  # sampler, accordions, checkboxes, dimensions, cfg, seed
    assert order(moved, names) == ["txt2img_seed", "txt2img_cfg_scale", "txt2img_sampling", "txt2img_hr",
                                   "txt2img_tiling", "txt2img_width"]
    img2img = ["img2img_seed", "mode_img2img", "img2img_cfg_scale", "inpaint_controls", "img2img_sampling",
               "img2img_denoising_strength"]
    assert order(moved, img2img) == img2img
    assert order(default, img2img) == ["mode_img2img", "inpaint_controls", "img2img_sampling", "img2img_cfg_scale",
                                       "img2img_denoising_strength", "img2img_seed"]


def _visible_by_elem_id(server) -> dict[str, bool]:
    config = requests.get(server.url + "/config", timeout=60).json()
    return {c["props"]["elem_id"]: c["props"].get("visible", True) is not False
            for c in config["components"] if c["props"].get("elem_id")}


def test_hires_fix_rows_follow_their_options(page_server, server):
    """A1111's hires_fix_show_sampler / hires_fix_show_prompts (off by default): the Hires. fix
    accordion's checkpoint/sampler/schedule row and its prompts row are shown only with them on; the
    controls exist either way (a pasted "Hires sampler" still reaches the job)."""
    shown, default = _visible_by_elem_id(page_server), _visible_by_elem_id(server)
    for row in ("txt2img_hires_fix_row3", "txt2img_hires_fix_row4"):
        assert shown[row] is True and default[row] is False, row
    for elem_id in ("hr_checkpoint", "hr_sampler", "hr_scheduler", "hires_prompt", "hires_neg_prompt"):
        assert elem_id in default and elem_id in shown

