"""A1111's "User interface" options that shape the page when it is built (A1111: "Reload UI after a
change"), checked on the page as Gradio builds it (its config: component types, element ids, which
row holds what, the tabs' order and visibility) and once in a real browser:

- samplers_in_dropdown: the txt2img/img2img sampler picker is a dropdown, or a radio group (the
  schedule type stays a dropdown), `<tab>_sampling` either way; paste, send-to and the job still get it;
- dimensions_and_batch_together: the batch sliders beside the sizes, or a row of their own;
- ui_tab_order / hidden_tabs: the tabs they name (by label, extensions' too) come first / are left out.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from tests.browser import chromium  # noqa: F401  (the module's Chromium)
from tests.server import serve_webui as serve

LAYOUT_KEYS = ("samplers_in_dropdown", "dimensions_and_batch_together", "ui_tab_order", "hidden_tabs")
USUAL_TABS = ["txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Settings", "Extensions"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_checkpoints):
    """A real engine built by webui.build_engine; the two tab options get the page's tab names as the
    composition root gives them (modules.ui.tab_names.bind)."""
    import webui
    from modules import cmd_args
    from modules.ui import tab_names

    data = tmp_path_factory.mktemp("layout-data")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--skip-load-model-at-start"], extra_preloads=[])
    engine = webui.build_engine(opts)
    tab_names.bind(engine.options)
    return engine


class Page:
    """The built page's Gradio config, read as a tree of blocks."""

    def __init__(self, demo):
        self.demo = demo
        config = demo.config
        self.blocks = {c["id"]: c for c in config["components"]}
        self.parent: dict[int, int] = {}
        self.children: dict[int, list[int]] = {}

        def walk(node):
            kids = [child["id"] for child in node.get("children", [])]
            self.children[node["id"]] = kids
            for child in node.get("children", []):
                self.parent[child["id"]] = node["id"]
                walk(child)

        walk(config["layout"])

    def ids(self, elem_id: str) -> list[int]:
        return [i for i, c in self.blocks.items() if c.get("props", {}).get("elem_id") == elem_id and i in self.parent]

    def one(self, elem_id: str) -> int:
        found = self.ids(elem_id)
        assert len(found) == 1, (elem_id, found)
        return found[0]

    def kind(self, elem_id: str) -> str:
        return self.blocks[self.one(elem_id)]["type"]

    def props(self, elem_id: str) -> dict:
        return self.blocks[self.one(elem_id)]["props"]

    def ancestors(self, block: int) -> list[int]:
        chain = []
        while block in self.parent:
            block = self.parent[block]
            chain.append(block)
        return chain

    def row_of(self, elem_id: str) -> int:
        """The nearest row (or group) the element sits in."""
        return next(a for a in self.ancestors(self.one(elem_id)) if self.blocks[a]["type"] in ("row", "group"))

    def inside(self, elem_id: str, container: int) -> bool:
        return container in self.ancestors(self.one(elem_id))

    def main_tabs(self) -> list[tuple[str, bool]]:
        """(label, visible) of #tabs' tabs, in the page's order."""
        return [(self.blocks[t]["props"]["label"], self.blocks[t]["props"].get("visible") is not False)
                for t in self.children[self.one("tabs")]]

    def order(self, *elem_ids: str) -> list[str]:
        """`elem_ids` sorted by where they come in the page (depth-first)."""
        rank, counter = {}, iter(range(10**6))

        def walk(node):
            rank[node] = next(counter)
            for child in self.children.get(node, []):
                walk(child)

        walk(next(iter(self.children)))
        return sorted(elem_ids, key=lambda e: rank[self.one(e)])


@contextlib.contextmanager
def built(engine, **options):
    """The whole page (modules.ui.app.create_ui) built with `options` set, then set back."""
    from modules.ui.app import create_ui

    for key, value in options.items():
        engine.options.set(key, value)
    try:
        yield Page(create_ui(engine))
    finally:
        for key in options:
            engine.options.set(key, engine.options.defs[key].default)


def test_the_options_exist_with_a1111s_defaults(engine):
    assert [engine.options.get(k) for k in LAYOUT_KEYS] == [True, True, [], []]
    for key in LAYOUT_KEYS:
        assert "Reload UI" in engine.options.defs[key].label and engine.options.defs[key].section == "User interface"


def test_samplers_in_dropdown_makes_the_sampler_picker_a_dropdown_or_a_radio_group(engine):
    from modules.core import samplers

    names = samplers.visible_sampler_names([])
    with built(engine) as page:  # A1111's default: a dropdown, beside the schedule type
        for tab in ("txt2img", "img2img"):
            assert page.kind(f"{tab}_sampling") == "dropdown" and page.kind(f"{tab}_scheduler") == "dropdown"
            assert page.kind(f"sampler_selection_{tab}") == "row"
            assert page.row_of(f"{tab}_sampling") == page.row_of(f"{tab}_scheduler") == page.one(f"sampler_selection_{tab}")
    with built(engine, samplers_in_dropdown=False) as page:
        for tab in ("txt2img", "img2img"):
            radio = page.props(f"{tab}_sampling")
            assert page.kind(f"{tab}_sampling") == "radio"
            assert [c[0] for c in radio["choices"]] == names and radio["value"] == samplers.default_visible_sampler()
            assert page.kind(f"{tab}_scheduler") == "dropdown"  # the schedule type stays a dropdown (A1111's)
            group = page.one(f"sampler_selection_{tab}")  # A1111's order there: steps, sampler, schedule type
            assert page.kind(f"sampler_selection_{tab}") == "group"
            assert all(page.inside(f"{tab}_{name}", group) for name in ("steps", "sampling", "scheduler"))
            assert page.order(f"{tab}_scheduler", f"{tab}_sampling", f"{tab}_steps") == [
                f"{tab}_steps", f"{tab}_sampling", f"{tab}_scheduler"]
        # the radio is what the send-to buttons set in img2img and what picking a sampler updates
        radio = page.one("img2img_sampling")
        senders = [d for d in page.demo.config["dependencies"]
                   if any(t[0] == page.one("txt2img_send_to_img2img") for t in d["targets"])]
        assert senders and any(radio in d["outputs"] for d in senders)
        changes = [d for d in page.demo.config["dependencies"] if [page.one("txt2img_sampling"), "change"] in
                   [list(t) for t in d["targets"]]]
        assert any(page.one("txt2img_scheduler") in d["outputs"] for d in changes)


def test_the_radio_variant_takes_pasted_samplers_and_gives_its_value_to_the_request(engine):
    import gradio as gr

    from modules.ui import paste_params
    from modules.ui.txt2img import Txt2ImgTab

    engine.options.set("samplers_in_dropdown", False)
    try:
        tab = Txt2ImgTab(engine)
        with gr.Blocks():
            tab.build()
    finally:
        engine.options.set("samplers_in_dropdown", True)
    assert isinstance(tab.sampler, gr.Radio) and (tab.sampler, "Sampler") in tab.paste_fields()
    assert paste_params.update_for(tab.sampler, "DPM++ SDE")["value"] == "DPM++ SDE"
    assert "value" not in paste_params.update_for(tab.sampler, "No such sampler")  # left as it is
    values = {c: getattr(c, "value", None) for c in tab.inputs() | {tab.styles.dropdown}}
    values[tab.sampler], values[tab.scheduler] = "Heun", "Karras"
    request = tab.make_request(values)
    assert (request.sampler_name, request.scheduler) == ("Heun", "Karras")


def test_dimensions_and_batch_together_puts_the_batch_sliders_beside_the_sizes_or_in_a_row_of_their_own(engine):
    with built(engine) as page:  # A1111's default: one row, the batch sliders in a column of it
        for tab in ("txt2img", "img2img"):
            column = page.one(f"{tab}_column_batch")
            assert page.kind(f"{tab}_column_batch") == "column"
            assert page.inside(f"{tab}_batch_count", column) and page.inside(f"{tab}_batch_size", column)
            row = page.parent[column]
            assert page.blocks[row]["type"] == "row" and page.inside(f"{tab}_width", row)
            assert page.inside(f"{tab}_height", row)
    with built(engine, dimensions_and_batch_together=False) as page:
        for tab in ("txt2img", "img2img"):
            row = page.one(f"{tab}_column_batch")
            assert page.kind(f"{tab}_column_batch") == "row" and page.row_of(f"{tab}_batch_count") == row
            assert page.row_of(f"{tab}_batch_size") == row and not page.inside(f"{tab}_width", row)
            assert not page.inside(f"{tab}_batch_count", page.row_of(f"{tab}_width"))
            # A1111's "batch" section: after the seed, before the scripts
            assert page.order(f"{tab}_batch_count", f"{tab}_seed", f"{tab}_cfg_scale") == [
                f"{tab}_cfg_scale", f"{tab}_seed", f"{tab}_batch_count"]
    with built(engine, dimensions_and_batch_together=False, ui_reorder_list=["batch"]) as page:
        # ui_reorder_list moves the batch row as any section (A1111's ordered_ui_categories)
        assert page.order("txt2img_batch_count", "txt2img_steps") == ["txt2img_batch_count", "txt2img_steps"]


@pytest.fixture
def extension_tab():
    """An extension's on_ui_tabs tab ("Tab of an extension", id tab_ext_layout), for one test."""
    import gradio as gr

    from modules import script_callbacks

    def tabs():
        with gr.Blocks(analytics_enabled=False) as blocks:
            gr.Textbox(label="in the extension's tab", elem_id="ext_layout_box")
        return [(blocks, "Tab of an extension", "ext_layout")]

    script_callbacks.on_ui_tabs(tabs)
    try:
        yield "Tab of an extension"
    finally:
        script_callbacks.remove_callbacks_for_function(tabs)


def test_ui_tab_order_puts_the_named_tabs_first_the_rest_in_their_usual_order(engine, extension_tab):
    with built(engine) as page:
        assert page.main_tabs() == [(label, True) for label in [*USUAL_TABS[:5], extension_tab, *USUAL_TABS[5:]]]
    # the two options list the page's tabs, the extension's too; a name of no tab is refused
    from modules.ui import tab_names

    assert list(tab_names.choices()) == [*USUAL_TABS[:5], extension_tab, *USUAL_TABS[5:]]
    with pytest.raises(ValueError, match="ui_tab_order"):
        engine.options.set("ui_tab_order", ["No such tab"])
    with built(engine, ui_tab_order=[extension_tab, "Settings", "PNG Info"]) as page:
        assert [label for label, _ in page.main_tabs()] == [
            extension_tab, "Settings", "PNG Info", "txt2img", "img2img", "Extras", "Checkpoint Merger", "Extensions"]
        assert page.props("tab_settings")["label"] == "Settings" and page.inside("ext_layout_box", page.one("tab_ext_layout"))


def test_hidden_tabs_leaves_the_named_tabs_out_of_the_page_settings_included(engine, extension_tab):
    hide = ["Extras", "Settings", extension_tab]  # A1111 lets Settings be hidden too
    with built(engine, hidden_tabs=hide, ui_tab_order=["img2img"]) as page:
        shown = [label for label, visible in page.main_tabs() if visible]
        assert shown == ["img2img", "txt2img", "PNG Info", "Checkpoint Merger", "Extensions"]
        assert {label for label, visible in page.main_tabs() if not visible} == set(hide)
        # what other tabs send to a hidden one is still there for them (no broken wiring)
        assert page.kind("extras_image") == "image"
        assert page.kind("ext_layout_box") == "textbox"
    with built(engine) as page:
        assert all(visible for _, visible in page.main_tabs())


# ------------------------------------------------------------------------------------ in a browser

def test_a_sampler_picked_in_the_radio_group_makes_the_picture(chromium, tiny_checkpoints, tmp_path):  # noqa: F811
    """samplers_in_dropdown off: the user clicks "Euler" among the radio buttons and generates; the
    picture's infotext names Euler."""
    from playwright.sync_api import expect

    config = {"samplers_in_dropdown": False, "sd_model_checkpoint": "tiny-sd1.safetensors"}
    with serve(tmp_path / "data", tiny_checkpoints.checkpoints_dir, config) as url:
        context = chromium.new_context(viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url)
            picker = page.locator("#txt2img_sampling")
            picker.get_by_label("Euler", exact=True).check()
            expect(picker.get_by_label("Euler", exact=True)).to_be_checked()
            page.locator("#txt2img_prompt textarea").fill("a radio cube")
            for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
                field = page.locator(f"#{elem_id} input[type=number]")
                field.fill(str(value))
                field.press("Enter")
                expect(field).to_have_value(str(value))
            page.locator("#txt2img_generate").click()
            info = page.locator("#html_info_txt2img")
            expect(info).to_contain_text("Steps: 2,", timeout=120_000)
            assert re.search(r"Sampler: Euler,", info.inner_text()), info.inner_text()
            assert "Size: 64x64" in info.inner_text()
        finally:
            context.close()
