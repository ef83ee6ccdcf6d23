"""The Gradio 3 spellings A1111 extensions use, on Gradio 6 (modules/gradio_compat.py), and A1111's
`modules.ui_components`. Each test builds real Gradio blocks and checks what Gradio 6 made of them:
the page config it would send, the registered events, the components' properties."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import gradio as gr
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from modules import gradio_compat

gradio_compat.apply()

from modules import ui_components  # noqa: E402  (after apply, as extensions see it)


def layout_parent(block):
    """The layout a block was placed in (Gradio 6 wraps form controls in a Form of their own)."""
    parent = block.parent
    return parent.parent if isinstance(parent, gr.layouts.Form) else parent


def layout_children(layout) -> list:
    out = []
    for child in layout.children:
        out.extend(child.children if isinstance(child, gr.layouts.Form) else [child])
    return out


def dependency_js(demo: gr.Blocks) -> list:
    return [fn.js for fn in demo.fns.values()]


def components(demo: gr.Blocks) -> dict:
    """elem_id -> the component's config as the page gets it."""
    config = demo.get_config_file()
    return {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}


def test_apply_is_idempotent():
    listener = gr.Button.click
    gradio_compat.apply()
    assert gr.Button.click is listener


def test_js_underscore_argument_on_listeners_then_and_load():
    with gr.Blocks() as demo:
        box = gr.Textbox()
        button = gr.Button()
        dep = button.click(lambda x: x, inputs=box, outputs=box, _js="(x) => x + '!'")
        dep.then(None, _js="() => 'then'", outputs=box)
        demo.load(None, _js="() => 'load'", outputs=box)
        box.change(fn=None, _js="switch_to_txt2img", inputs=box)  # a global function's name, as A1111's
    assert dependency_js(demo) == ["(x) => x + '!'", "() => 'then'", "() => 'load'", "switch_to_txt2img"]


def test_show_api_status_tracker_and_every():
    with gr.Blocks() as demo:
        box = gr.Textbox()
        gr.Button().click(lambda: "x", outputs=box, show_api=False, status_tracker=None)
        demo.load(lambda: "tick", outputs=box, every=2)
    visibility = [fn.api_visibility for fn in demo.fns.values()]
    assert visibility[0] == "undocumented"
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    assert len(timers) == 1 and timers[0].value == 2
    ticks = [fn for fn in demo.fns.values() if any(t[0] == timers[0]._id and t[1] == "tick" for t in fn.targets)]
    assert len(ticks) == 1 and ticks[0].fn() == "tick"  # the same function, again every 2 s


def test_component_update_and_style():
    assert gr.Dropdown.update(choices=["a", "b"], value="a") == {"__type__": "update", "choices": ["a", "b"],
                                                                 "value": "a"}
    assert gr.Textbox.update("text") == {"__type__": "update", "value": "text"}
    assert gr.Row.update(visible=False) == {"__type__": "update", "visible": False}
    with gr.Blocks() as demo:
        button = gr.Button()
        assert button.update(visible=False) == {"__type__": "update", "visible": False}
        gallery = gr.Gallery(elem_id="g").style(grid=4, height="auto")
        with gr.Row(elem_id="row").style(equal_height=True) as row:
            inner = gr.Checkbox(elem_id="inner")
    assert isinstance(gallery, gr.Gallery) and isinstance(row, gr.Row)
    assert layout_parent(inner) is row


def test_dropped_constructor_arguments_are_translated_or_left_out():
    with gr.Blocks() as demo:
        image = gr.Image(source="upload", tool="sketch", brush_radius=20, shape=(64, 64), type="numpy",
                         elem_id="image")
        gallery = gr.Gallery(grid=3, show_share_button=False, elem_id="gallery")
        textbox = gr.Textbox(show_copy_button=True, elem_id="textbox")
        upload = gr.File(type="file", elem_id="file")
        group = gr.Group(variant="panel", elem_id="group")
        frame = gr.Dataframe(max_rows=5, elem_id="frame")
    assert image.sources == ["upload"] and image.type == "numpy"
    assert gallery.columns == 3
    assert textbox.buttons == ["copy"]
    assert upload.type == "filepath"
    assert group.elem_id == "group" and frame.elem_id == "frame"
    assert any("Image(tool=...)" in n for n in gradio_compat.notes)
    assert set(components(demo)) >= {"image", "gallery", "textbox", "file", "group", "frame"}
    with pytest.raises(TypeError):  # an argument that never existed still fails loudly
        gr.Textbox(no_such_argument=1)


def test_tooltip_is_kept_as_webui_tooltip():
    with gr.Blocks():
        button = gr.Button("x", tooltip="does x")
    assert button.webui_tooltip == "does x"


def test_old_names():
    assert gr.Box is gr.Group and gr.Variable is gr.State
    assert gr.components.IOComponent is gr.components.Component
    import gradio.inputs  # noqa: F401 - importable as a module, as Gradio 3's was

    with gr.Blocks():
        box = gr.inputs.Textbox(default="hello", optional=True, label="old")
        number = gr.outputs.Number(default=3)
    assert isinstance(box, gr.Textbox) and box.value == "hello" and box.label == "old"
    assert isinstance(number, gr.Number) and number.value == 3


def test_base64_helpers_round_trip_pixels_and_text():
    picture = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), "RGB")
    picture.info["parameters"] = "a prompt\nSteps: 1"
    encoded = gr.processing_utils.encode_pil_to_base64(picture)
    assert encoded.startswith("data:image/png;base64,")
    decoded = gr.processing_utils.decode_base64_to_image(encoded)
    assert np.array_equal(np.asarray(decoded), np.asarray(picture))
    assert decoded.info["parameters"] == "a prompt\nSteps: 1"
    bare = gr.processing_utils.decode_base64_to_image(encoded.split(",", 1)[1])
    assert np.array_equal(np.asarray(bare), np.asarray(picture))


def test_extension_component_subclass_keeps_its_properties_and_writes_no_pyi(tmp_path):
    source = tmp_path / "cnet_like_button.py"
    source.write_text(textwrap.dedent('''
        import gradio as gr

        class ToolButton(gr.Button, gr.components.FormComponent):
            """ControlNet's own: a narrower __init__ than gr.Button's."""

            def __init__(self, **kwargs):
                super().__init__(variant="tool", elem_classes=kwargs.pop("elem_classes", []) + ["cnet"], **kwargs)

            def get_block_name(self):
                return "button"
    '''))
    spec = importlib.util.spec_from_file_location("cnet_like_button", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with gr.Blocks() as demo:
        module.ToolButton(value="🔄", elem_id="cnet_refresh", visible=False)
    props = components(demo)["cnet_refresh"]["props"]
    assert props["value"] == "🔄" and props["visible"] is False and props["elem_classes"] == ["cnet"]
    assert components(demo)["cnet_refresh"]["type"] == "button"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pyi") == []
    sys.modules.pop("cnet_like_button", None)


class Recorder:
    def __init__(self):
        self.calls = []

    def before(self, component, **kwargs):
        self.calls.append(("before", type(component).__name__, kwargs.get("elem_id"), component.is_rendered
                           if hasattr(component, "is_rendered") else False))
        if kwargs.get("elem_id") == "steps":  # an extension adding its own control before A1111's
            gr.HTML("marker", elem_id="marker")

    def after(self, component, **kwargs):
        self.calls.append(("after", type(component).__name__, kwargs.get("elem_id"), component.is_rendered))


def test_component_listeners_announce_each_component_once_before_and_after():
    recorder = Recorder()
    gradio_compat.component_listeners.append(recorder)
    try:
        with gr.Blocks() as demo:
            with gr.Column(elem_id="column") as column:
                ui_components.ToolButton("🔄", elem_id="tool")  # subclass -> gr.Button -> base: once
                gr.Slider(1, 10, elem_id="steps", label="Steps")
    finally:
        gradio_compat.component_listeners.remove(recorder)
    ids = [(when, name, elem_id) for when, name, elem_id, _ in recorder.calls if elem_id]
    assert ids == [("before", "Column", "column"), ("after", "Column", "column"),
                   ("before", "ToolButton", "tool"), ("after", "ToolButton", "tool"),
                   ("before", "Slider", "steps"), ("before", "HTML", "marker"), ("after", "HTML", "marker"),
                   ("after", "Slider", "steps")]
    rendered = {(when, elem_id): r for when, _, elem_id, r in recorder.calls if elem_id}
    assert rendered[("before", "steps")] is False and rendered[("after", "steps")] is True
    # what `before` made stands before the component on the page
    assert [c.elem_id for c in layout_children(column)] == ["tool", "marker", "steps"]
    assert set(components(demo)) >= {"column", "tool", "steps", "marker"}


def test_ui_components_on_gradio_6():
    with gr.Blocks() as demo:
        with ui_components.FormRow(elem_id="form_row"):
            ui_components.ToolButton("🎲", elem_id="dice", elem_classes=["mine"])
        with ui_components.FormColumn(elem_id="form_column"), ui_components.FormGroup(elem_id="form_group"):
            ui_components.FormHTML("<b>hi</b>", elem_id="form_html")
        with ui_components.ResizeHandleRow(elem_id="resize_row"):
            multi = ui_components.DropdownMulti(choices=["a", "b"], value=["a"], elem_id="multi")
            editable = ui_components.DropdownEditable(choices=["a"], value="a", elem_id="editable")
        ui_components.FormColorPicker("#ff0000", elem_id="color")
    found = components(demo)
    assert {k: found[k]["type"] for k in ("form_row", "dice", "form_column", "form_group", "form_html",
                                          "resize_row", "multi", "editable", "color")} == {
        "form_row": "row", "dice": "button", "form_column": "column", "form_group": "group", "form_html": "html",
        "resize_row": "row", "multi": "dropdown", "editable": "dropdown", "color": "colorpicker"}
    assert found["dice"]["props"]["elem_classes"] == ["tool", "mine"] and found["dice"]["props"]["value"] == "🎲"
    assert "resize-handle-row" in found["resize_row"]["props"]["elem_classes"]
    assert multi.multiselect and found["multi"]["props"]["multiselect"] is True
    assert editable.allow_custom_value
    assert isinstance(ui_components.ToolButton("x", render=False), ui_components.FormComponent)


def test_input_accordion_is_an_input_that_follows_the_accordion():
    with gr.Blocks() as demo:
        with ui_components.InputAccordion(True, label="My script", elem_id="my_acc") as enabled:
            inner = gr.Slider(0, 1, elem_id="inside")
            with enabled.extra():
                gr.Checkbox(label="extra", elem_id="extra_box")
    assert isinstance(enabled, gr.Checkbox) and enabled.value is True
    assert enabled.accordion.open is True and enabled.accordion.label == "My script"
    assert layout_parent(inner) is enabled.accordion
    found = components(demo)
    assert found["my_acc"]["type"] == "accordion" and "input-accordion" in found["my_acc"]["props"]["elem_classes"]
    assert found["my_acc-checkbox"]["type"] == "checkbox" and found["my_acc-checkbox"]["props"]["visible"] is False
    assert found["my_acc-extra"]["type"] == "column"
    # opening/closing sets the value in the page; a value set from Python opens/closes it
    by_trigger = {}
    for fn in demo.fns.values():
        for target, event in fn.targets:
            by_trigger[(target, event)] = fn
    assert by_trigger[(enabled.accordion._id, "expand")].js == "() => true"
    assert by_trigger[(enabled.accordion._id, "collapse")].js == "() => false"
    follow = by_trigger[(enabled._id, "change")]
    assert follow.fn(False) == {"__type__": "update", "open": False}


def test_create_refresh_button_refreshes_choices():
    refreshed = []
    with gr.Blocks() as demo:
        dropdown = gr.Dropdown(["old"], value="old", elem_id="models")
        button = ui_components.create_refresh_button(dropdown, lambda: refreshed.append(True),
                                                     lambda: {"choices": ["new1", "new2"]}, "refresh_models")
    assert components(demo)["refresh_models"]["type"] == "button"
    click = next(fn for fn in demo.fns.values() if (button._id, "click") in [tuple(t) for t in fn.targets])
    update = click.fn()
    assert refreshed == [True]
    assert update == {"__type__": "update", "choices": ["new1", "new2"]}
    assert dropdown.choices == ["new1", "new2"]


def test_a_gradio3_extension_ui_builds():
    """The shape of a ControlNet/ADetailer-era script UI, written for Gradio 3.41."""
    with gr.Blocks() as demo:
        with gr.Group(), gr.Tabs():
            with gr.Tab(label="Single Image"):
                with gr.Row(elem_classes=["cnet-image-row"]).style(equal_height=True):
                    gr.Image(source="upload", brush_radius=20, mirror_webcam=False, type="numpy", tool="sketch",
                             elem_id="cn_image").style(height=242)
        with gr.Row(variant="compact"):
            enabled = gr.Checkbox(label="Enable", value=False, elem_id="cn_enable")
            model = gr.Dropdown(["None"], value="None", label="Model", elem_id="cn_model")
        refresh = ui_components.ToolButton(value="\U0001f504", elem_id="cn_refresh")
        refresh.click(fn=lambda: gr.Dropdown.update(choices=["None", "canny"]), inputs=[], outputs=[model])
        enabled.change(fn=None, _js="(x) => x", inputs=[enabled], show_progress=False)
    found = components(demo)
    assert found["cn_image"]["props"]["sources"] == ["upload"]
    assert {"cn_enable", "cn_model", "cn_refresh"} <= set(found)
    click = next(fn for fn in demo.fns.values() if (refresh._id, "click") in [tuple(t) for t in fn.targets])
    assert click.fn() == {"__type__": "update", "choices": ["None", "canny"]}


def test_a1111_ui_helper_imports():
    from modules.ui import create_refresh_button, gr_show, plaintext_to_html  # noqa: F401
    from modules.ui_common import ToolButton

    assert ToolButton is ui_components.ToolButton
    assert plaintext_to_html("a <b>\nc", "info") == "<p class='info'>a &lt;b&gt;<br>\nc</p>"
    assert gr_show(False) == {"visible": False, "__type__": "update"}
