"""A1111's postprocessing scripts (modules.scripts_postprocessing) and Easel's Extras steps written as
such scripts (scripts/postprocessing_*.py): the runner in this process with script classes of the
test's own (what an extension's scripts/ file holds), the Extras job over a stand-in engine (the
worker inline), and the built-in steps through the shared server's API."""

from __future__ import annotations

import io
from concurrent.futures import Future
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules import postprocessing, scripts, scripts_postprocessing, shared
from modules.services import extras, face_restorers
from modules.services.jobs import JobState
from tests.api_common import assert_error, decode
from tests.pictures import picture

BUILTIN_ORDER = ["Upscale", "GFPGAN", "CodeFormer", "Caption", "Split oversized images", "Create flipped copies"]


def b64(image: Image.Image) -> str:
    import base64

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


class _InlineQueue:
    def submit(self, name, fn, *args, task_id=None):
        future = Future()
        future.set_result(fn(*args))
        return future


def stand_in_engine(tmp_path, **options):
    """What modules.services.extras uses of the engine, the job run at once on this thread."""
    values = {"enable_pnginfo": True, "samples_format": "png", **options}
    return SimpleNamespace(options=SimpleNamespace(get=lambda key, default=None: values.get(key, default)),
                           state=JobState(), queue=_InlineQueue(), data_path=tmp_path)


def runner_of(*classes) -> scripts_postprocessing.ScriptPostprocessingRunner:
    runner = scripts_postprocessing.ScriptPostprocessingRunner()
    runner.initialize_scripts([scripts.ScriptClassData(cls, f"/ext/scripts/{cls.__name__}.py", "/ext", None)
                               for cls in classes])
    return runner


@pytest.fixture
def options(monkeypatch):
    """Set shared.opts values for one test."""
    def set_option(key, value):
        monkeypatch.setitem(shared.opts.data, key, value)
    return set_option


# -- an extension's script -----------------------------------------------------------------------------

class Invert(scripts_postprocessing.ScriptPostprocessing):
    """What an extension's scripts/ file defines: a control dict, keyword arguments, pp.info."""

    name = "Invert"
    order = 5000

    def ui(self):
        with gr.Row():
            enable = gr.Checkbox(False, label="Invert")
            amount = gr.Slider(0, 1, value=1, label="Amount")
        return {"enable": enable, "amount": amount}

    def process(self, pp: scripts_postprocessing.PostprocessedImage, enable, amount):
        if not enable:
            return
        inverted = Image.eval(pp.image, lambda v: 255 - v)
        pp.image = Image.blend(pp.image, inverted, amount)
        pp.info["Invert amount"] = amount
        pp.nametags.append("inverted")
        pp.caption = "an inverted picture"


class Mark(scripts_postprocessing.ScriptPostprocessing):
    """Records the calls (and what the first pass saw), adds a copy when asked."""

    name = "Mark"
    order = 100
    calls: list = []

    def ui(self):
        return {"copy": gr.Checkbox(False)}

    def process_firstpass(self, pp, copy=False):
        Mark.calls.append(("firstpass", pp.image.size))
        pp.shared.target_width = 99

    def process(self, pp, copy=False):
        Mark.calls.append(("process", pp.image.size, pp.shared.target_width))
        pp.info["Mark"] = "yes"
        if copy:
            pp.extra_images.append(pp.image.rotate(90, expand=True))


class Broken(scripts_postprocessing.ScriptPostprocessing):
    name = "Broken"
    order = 200

    def ui(self):
        return {}

    def process(self, pp):
        raise ValueError("this extension is broken")


# -- the runner --------------------------------------------------------------------------------------------

def test_builtin_steps_order_setting_and_disabled_in_extras(options):
    runner = scripts_postprocessing.ScriptPostprocessingRunner()
    assert [s.name for s in runner.scripts_in_preferred_order()] == BUILTIN_ORDER
    assert "Simple Upscale" not in [s.name for s in runner.scripts]  # A1111: txt2img/img2img only
    options("postprocessing_operation_order", ["Create flipped copies", "CodeFormer"])
    assert [s.name for s in runner.scripts_in_preferred_order()] == [
        "Create flipped copies", "CodeFormer", "Upscale", "GFPGAN", "Caption", "Split oversized images"]
    options("postprocessing_disable_in_extras", ["Upscale", "GFPGAN"])
    assert [s.name for s in runner.scripts_in_preferred_order()] == [
        "Create flipped copies", "CodeFormer", "Caption", "Split oversized images"]
    assert "Upscale" in [s.name for s in runner.scripts]  # listed, only not run in Extras


def test_order_setting_decides_what_runs_first(options):
    runner = runner_of(Invert, Mark)
    Mark.calls = []
    args = runner.create_args_for_run({"Invert": {"enable": True, "amount": 1.0}, "Mark": {"copy": True}})
    pp = scripts_postprocessing.PostprocessedImage(picture(16, 8))
    runner.run(pp, args)
    # Mark (order 100) first: the first passes, then Mark's process, its copy, then Invert on both
    assert Mark.calls == [("firstpass", (16, 8)), ("process", (16, 8), 99)]
    assert len(pp.extra_images) == 1 and pp.extra_images[0].image.size == (8, 16)
    assert list(pp.info) == list(pp.extra_images[0].info) == ["Mark", "Invert amount"]  # the copy inverted too
    options("postprocessing_operation_order", ["Invert"])
    Mark.calls = []
    pp = scripts_postprocessing.PostprocessedImage(picture(16, 8))
    runner.run(pp, runner.create_args_for_run({"Invert": {"enable": True, "amount": 1.0}, "Mark": {"copy": True}}))
    assert list(pp.info) == list(pp.extra_images[0].info) == ["Invert amount", "Mark"]  # copied once inverted
    assert np.array_equal(px(pp.extra_images[0].image), px(pp.image.rotate(90, expand=True)))
    used: dict = {}
    assert pp.get_suffix(used) == "-inverted" and pp.extra_images[0].get_suffix(used) == "-inverted-1"


def test_an_extensions_failure_is_reported_and_the_next_step_runs(monkeypatch):
    reported = []
    monkeypatch.setattr(scripts_postprocessing.errors, "owner_of", lambda filename: "broken-extension")
    monkeypatch.setattr(scripts_postprocessing.errors, "report_for", lambda filename, what: reported.append(what))
    runner = runner_of(Broken, Invert)
    pp = scripts_postprocessing.PostprocessedImage(picture(8, 8))
    runner.run(pp, runner.create_args_for_run({"Invert": {"enable": True, "amount": 1.0}}))
    assert pp.info == {"Invert amount": 1.0} and "Broken" in reported[0]
    monkeypatch.setattr(scripts_postprocessing.errors, "owner_of", lambda filename: None)
    with pytest.raises(ValueError, match="broken"):  # Easel's own scripts' failures fail the job
        runner.run(scripts_postprocessing.PostprocessedImage(picture(8, 8)), runner.create_args_for_run({}))


def test_enabled_in_main_ui_a_script_runs_on_generated_pictures(options, monkeypatch):
    monkeypatch.setattr(scripts, "scripts_data", [])  # only the postprocessing ones, whatever was loaded
    options("postprocessing_enable_in_main_ui", ["Simple Upscale"])
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(is_img2img=False)
    [script] = runner.alwayson_scripts
    assert script.title() == "Simple Upscale"
    runner.ensure_layout()
    args = runner.default_args()
    args[script.args_from:script.args_to] = [2.0, "Nearest"]  # upscale_by, upscaler_name
    p = SimpleNamespace(script_args=args, extra_generation_params={})
    pp = scripts.PostprocessImageArgs(picture(8, 6))
    runner.postprocess_image(p, pp)
    assert pp.image.size == (16, 8)  # 12 rounded down to a multiple of 8 (A1111's upscaler)
    assert p.extra_generation_params == {"Postprocess upscale by": 2.0, "Postprocess upscaler": "Nearest"}


# -- the Extras job -------------------------------------------------------------------------------------

def test_an_extension_script_changes_the_pixels_and_its_info_is_the_png_postprocessing_text(tmp_path):
    runner = runner_of(Invert)
    engine = stand_in_engine(tmp_path)
    source = picture(12, 10)
    source.info["parameters"] = "a cat\nSteps: 3, Seed: 1"
    postprocessor = postprocessing.ScriptsPostprocessor(
        runner.create_args_for_run({"Invert": {"enable": True, "amount": 1.0}}), runner)
    [result] = extras.submit(engine, [("a.png", source)], postprocessor).result()
    assert np.array_equal(px(result.image), 255 - px(source))
    with Image.open(io.BytesIO(extras.png_bytes(result))) as png:
        assert png.info["postprocessing"] == "Invert amount: 1.0"
        assert png.info["parameters"] == "a cat\nSteps: 3, Seed: 1"
    [path] = extras.save(engine, [result], tmp_path / "out")
    assert path.name == "00000-inverted.png"  # the nametag
    caption = path.with_suffix(".txt")
    assert caption.read_text(encoding="utf8") == "an inverted picture"
    extras.write_caption(caption, "new words", "Prepend")  # postprocessing_existing_caption_action
    assert caption.read_text(encoding="utf8") == "an inverted picture new words"
    extras.write_caption(caption, "newer", "Keep")
    assert caption.read_text(encoding="utf8") == "an inverted picture new words"


def test_upscale_then_gfpgan_as_before(tmp_path, monkeypatch):
    seen = []

    class FakeRestorers:
        def check(self, name, field):
            pass

        def restore(self, image, name, weight=None):
            seen.append((name, image.size, weight))
            return Image.eval(image, lambda v: 255 - v)

    monkeypatch.setattr(face_restorers, "_current", FakeRestorers())
    engine = stand_in_engine(tmp_path)
    given = postprocessing.extras_args(upscaling_resize=2, extras_upscaler_1="Nearest", gfpgan_visibility=1.0,
                                       codeformer_visibility=0.5, codeformer_weight=0.25)
    [result] = extras.submit(engine, [("", picture(16, 8))], postprocessing.postprocessor_for(given)).result()
    assert seen == [("GFPGAN", (32, 16), None), ("CodeFormer", (32, 16), 0.25)]
    assert result.infotext == ("Postprocess upscale by: 2.0, Postprocess upscaler: Nearest, GFPGAN visibility: 1.0, "
                               "CodeFormer visibility: 0.5, CodeFormer weight: 0.25")


def test_the_extras_tab_is_built_from_the_scripts_and_runs_them(tmp_path):
    from modules.ui.extras_tab import ExtrasTab

    tab = ExtrasTab(stand_in_engine(tmp_path))
    with gr.Blocks() as demo:
        tab.build()
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"extras_upscaler_1", "extras_upscaler_2", "extras_upscaler_2_visibility", "extras_upscaling_resize",
            "extras_upscaling_resize_w", "extras_upscaling_resize_h", "extras_upscaling_crop", "extras_resize_mode",
            "extras_gfpgan_visibility", "extras_codeformer_visibility", "extras_codeformer_weight",
            "postprocess_split_threshold", "extras_generate", "extras_image"} <= ids
    assert [name for name, _ in tab.script_layout] == BUILTIN_ORDER
    source = tmp_path / "in.png"
    picture(24, 16).save(source)
    values = {"Upscale": {"upscale_enabled": True, "upscale_mode": 0, "upscale_by": 2, "max_side_length": 0,
                          "upscale_to_width": 64, "upscale_to_height": 64, "upscale_crop": True,
                          "upscaler_1_name": "Nearest", "upscaler_2_name": "None", "upscaler_2_visibility": 0},
              "Create flipped copies": {"enable": True, "option": ["Vertical"]}}
    flat = [values.get(name, {}).get(arg) for name, args in tab.script_layout for arg in args]
    shown, info = tab.run_scripts(0, {"path": str(source), "orig_name": "in.png"}, None, "", "", True, *flat)
    assert [im.size for im in shown] == [(48, 32), (48, 32)], info
    assert np.array_equal(px(shown[1]), px(shown[0])[::-1])
    saved = sorted(p.name for p in (tmp_path / "outputs" / "extras-images").glob("*.png"))
    assert saved == ["00000.png", "00001-1.png"]


# -- the built-in steps through the API ---------------------------------------------------------------

def test_api_flipped_copies_come_back_mirrored(server):
    source = picture(24, 16)
    body = {"upscaler_1": "None",
            "postprocessing_scripts": {"Create flipped copies": {"enable": True, "option": ["Horizontal", "Both"]}}}
    r = server.post("/sdapi/v1/extra-batch-images", json={**body, "imageList": [{"data": b64(source), "name": "a.png"}]})
    assert r.status_code == 200, r.text
    original, mirrored, both = [px(decode(s)) for s in r.json()["images"]]
    assert np.array_equal(original, px(source))
    assert np.array_equal(mirrored, original[:, ::-1]) and np.array_equal(both, original[::-1, ::-1])
    r = server.post("/sdapi/v1/extra-single-image", json={**body, "image": b64(source)})
    assert np.array_equal(px(decode(r.json()["image"])), px(source))  # the picture itself, as A1111


def test_api_split_oversized_images_gives_the_parts(server):
    source = picture(32, 128)
    body = {"resize_mode": 1, "upscaling_resize_w": 32, "upscaling_resize_h": 32, "upscaler_1": "None",
            "postprocessing_scripts": {"Split oversized images": {"enable": True, "split_threshold": 0.5,
                                                                  "overlap_ratio": 0.2}},
            "imageList": [{"data": b64(source), "name": "tall.png"}]}
    r = server.post("/sdapi/v1/extra-batch-images", json=body)
    assert r.status_code == 200, r.text
    parts = [decode(s) for s in r.json()["images"]]
    assert [p.size for p in parts] == [(32, 32)] * 5  # 128 high, 32 a part, 20 % overlap: 5 parts, 24 apart
    for i, part in enumerate(parts):
        assert np.array_equal(px(part), px(source)[24 * i:24 * i + 32]), i


def test_api_unknown_script_or_argument_is_a_422(server):
    body = {"image": b64(picture(8, 8)), "postprocessing_scripts": {"Sharpen": {"enable": True}}}
    message = assert_error(server.post("/sdapi/v1/extra-single-image", json=body), "postprocessing_scripts", (422,))
    assert "Create flipped copies" in message
    body["postprocessing_scripts"] = {"Create flipped copies": {"flip": True}}
    message = assert_error(server.post("/sdapi/v1/extra-single-image", json=body), "Create flipped copies", (422,))
    assert "'option'" in message
    body["postprocessing_scripts"] = {"Split oversized images": {"enable": True, "split_threshold": "half"}}
    assert_error(server.post("/sdapi/v1/extra-single-image", json=body), "Split oversized images", (422,))
