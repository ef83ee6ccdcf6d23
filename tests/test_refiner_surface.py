"""The SDXL refiner's surface, as A1111 1.10 has it: its options (names, defaults, sections) and how
they reach the job, the API fields `refiner_checkpoint` / `refiner_switch_at` on txt2img and img2img
over real HTTP (tiny SDXL base + refiner), the infotext keys read back (API `infotext`, the UI's
paste), A1111's `p.refiner_checkpoint` for scripts, and the UI accordion's request fields. The
browser drives the accordion in test_ui_browser.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.core.types import GenerationRequest, Img2ImgRequest, RequestError
from tests.api_common import BASE, assert_error, decode

SWITCH = 0.5


def short_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


def refiner_path(tiny_checkpoints) -> Path:
    """The tiny SDXL refiner; the SDXL base where the fixture set has no refiner (the switch works
    between any two checkpoints with the same latent channels)."""
    return Path(getattr(tiny_checkpoints, "sdxl_refiner", None) or tiny_checkpoints.sdxl)


def sdxl_body(**extra) -> dict:
    return {**BASE, "override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"}, **extra}


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode(b64).convert("RGB"), dtype=np.int16)


def infotext(answer: dict) -> str:
    return json.loads(answer["info"])["infotexts"][0]


# -------------------------------------------------------------------------------------- options

def test_option_rows_have_a1111_names_defaults_and_sections():
    from modules.services.options import Options

    defs = Options(None).defs
    expected = {  # name: (default, section id)
        "sdxl_crop_top": (0, "sdxl"), "sdxl_crop_left": (0, "sdxl"),
        "sdxl_refiner_low_aesthetic_score": (2.5, "sdxl"), "sdxl_refiner_high_aesthetic_score": (6.0, "sdxl"),
        "hires_fix_refiner_pass": ("second pass", "sd"), "refiner_switch_by_sample_steps": (False, "compatibility"),
    }
    for name, (default, section_id) in expected.items():
        assert defs[name].default == default and type(defs[name].default) is type(default), name
        assert defs[name].section_id == section_id, (name, defs[name].section_id)
    assert defs["sdxl_crop_top"].section == "Stable Diffusion XL"
    assert defs["hires_fix_refiner_pass"].choice_list() == ("first pass", "second pass", "both passes")
    assert defs["hires_fix_refiner_pass"].label == "Hires fix: which pass to enable refiner for"
    assert defs["sdxl_refiner_low_aesthetic_score"].label == "SDXL low aesthetic score"


def test_the_options_fill_the_job_settings(tmp_path, tiny_checkpoints):
    from modules.core.devices import choose_policy
    from modules.services.checkpoints import CheckpointRegistry, HashCache
    from modules.services.engine import Engine
    from modules.services.jobs import JobState, WorkQueue
    from modules.services.model_cache import ModelCache
    from modules.services.options import Options

    options = Options(None)
    state = JobState()
    registry = CheckpointRegistry([Path(tiny_checkpoints.checkpoints_dir)], HashCache(None))
    engine = Engine(options, registry, ModelCache(choose_policy()[0]), state, WorkQueue(state), tmp_path)
    info = registry.find("tiny-sdxl.safetensors")

    default = engine.settings_for(info)
    assert (default.conditioning.crop_top, default.conditioning.crop_left) == (0, 0)
    assert (default.conditioning.high_aesthetic_score, default.conditioning.low_aesthetic_score) == (6.0, 2.5)
    assert default.hires_fix_refiner_pass == "second pass" and default.refiner_switch_by_sample_steps is False

    changed = engine.settings_for(info, overrides=engine.check_overrides({
        "sdxl_crop_top": 16, "sdxl_crop_left": 8, "sdxl_refiner_high_aesthetic_score": 7.5,
        "sdxl_refiner_low_aesthetic_score": 1.5, "hires_fix_refiner_pass": "both passes",
        "refiner_switch_by_sample_steps": True}))
    assert (changed.conditioning.crop_top, changed.conditioning.crop_left) == (16, 8)
    assert (changed.conditioning.high_aesthetic_score, changed.conditioning.low_aesthetic_score) == (7.5, 1.5)
    assert changed.hires_fix_refiner_pass == "both passes" and changed.refiner_switch_by_sample_steps is True
    with pytest.raises(RequestError) as err:
        engine.check_overrides({"hires_fix_refiner_pass": "third pass"})
    assert err.value.field == "override_settings.hires_fix_refiner_pass"


# ------------------------------------------------------------------------------------------ API

def test_txt2img_with_a_refiner_switches_and_says_so(server, tiny_checkpoints):
    path = refiner_path(tiny_checkpoints)
    r = server.post("/sdapi/v1/txt2img", json=sdxl_body(refiner_checkpoint=path.stem, refiner_switch_at=SWITCH))
    assert r.status_code == 200, r.text
    refined = r.json()
    text = infotext(refined)
    assert f"Refiner: {path.stem} [{short_hash(path)}]" in text, text
    assert f"Refiner switch at: {SWITCH}" in text, text
    assert "Hires refiner" not in text  # only with hires fix and another pass than "second pass"

    plain = server.post("/sdapi/v1/txt2img", json=sdxl_body())
    assert plain.status_code == 200, plain.text
    assert "Refiner" not in infotext(plain.json())
    assert np.abs(pixels(refined["images"][0]) - pixels(plain.json()["images"][0])).mean() > 0.5

    for none in ("", "None"):  # A1111's spellings of "no refiner"
        r = server.post("/sdapi/v1/txt2img", json=sdxl_body(refiner_checkpoint=none, refiner_switch_at=SWITCH))
        assert r.status_code == 200, r.text
        assert "Refiner" not in infotext(r.json())
        assert np.array_equal(pixels(r.json()["images"][0]), pixels(plain.json()["images"][0]))

    # the infotext of the refined picture, sent back as the request's `infotext`, gives it again
    again = server.post("/sdapi/v1/txt2img", json={"infotext": text, "override_settings": {
        "sd_model_checkpoint": "tiny-sdxl.safetensors"}})
    assert again.status_code == 200, again.text
    assert f"Refiner: {path.stem} [{short_hash(path)}]" in infotext(again.json())
    assert np.array_equal(pixels(again.json()["images"][0]), pixels(refined["images"][0]))


def test_unknown_refiner_is_a_422_naming_the_field(server):
    r = server.post("/sdapi/v1/txt2img", json=sdxl_body(refiner_checkpoint="no-such-refiner", refiner_switch_at=SWITCH))
    message = assert_error(r, "refiner_checkpoint", status=(422,))
    assert "no-such-refiner" in message
    r = server.post("/sdapi/v1/txt2img", json=sdxl_body(refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=1.5))
    assert_error(r, "refiner_switch_at", status=(422,))


def test_a_script_job_carries_the_refiner_on_p(server, tiny_checkpoints):
    """A selectable script runs process_images(p): the fields go request -> p -> request."""
    path = refiner_path(tiny_checkpoints)
    script = dict(script_name="prompt matrix", script_args=[])
    r = server.post("/sdapi/v1/txt2img", json=sdxl_body(refiner_checkpoint=path.stem, refiner_switch_at=SWITCH, **script))
    assert r.status_code == 200, r.text
    assert f"Refiner: {path.stem} [{short_hash(path)}], Refiner switch at: {SWITCH}" in infotext(r.json())
    r = server.post("/sdapi/v1/txt2img", json=sdxl_body(refiner_checkpoint="no-such-refiner", **script))
    assert "no-such-refiner" in assert_error(r, "refiner_checkpoint", status=(422,))


def test_img2img_takes_the_refiner_too(server, tiny_checkpoints):
    path = refiner_path(tiny_checkpoints)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    body = sdxl_body(init_images=[picture], denoising_strength=0.8, steps=4)
    refined = server.post("/sdapi/v1/img2img", json={**body, "refiner_checkpoint": path.stem, "refiner_switch_at": SWITCH})
    assert refined.status_code == 200, refined.text
    assert f"Refiner: {path.stem} [{short_hash(path)}]" in infotext(refined.json())
    r = server.post("/sdapi/v1/img2img", json={**body, "refiner_checkpoint": "no-such-refiner"})
    assert_error(r, "refiner_checkpoint", status=(422,))


def test_infotext_keys_become_request_fields_and_option_overrides():
    from modules.api import models, request_fields
    from modules.services.options import Options

    text = ("a cube\nSteps: 2, Sampler: Euler, Seed: 5, Size: 64x64, Refiner: tiny-sdxl-refiner [0123456789], "
            "Refiner switch at: 0.6, Hires refiner: both passes, Refiner switch by sampling steps: True")
    titles = {"tiny-sdxl-refiner [0123456789]": "tiny-sdxl-refiner.safetensors [0123456789]"}
    options = Options(None).data
    for model, img2img in ((models.StableDiffusionTxt2ImgProcessingAPI, False),
                           (models.StableDiffusionImg2ImgProcessingAPI, True)):
        body = model(infotext=text)
        request_fields.apply_infotext(body, img2img, options, find_checkpoint=titles.get)
        assert body.refiner_checkpoint == "tiny-sdxl-refiner.safetensors [0123456789]"
        assert body.refiner_switch_at == 0.6
        assert body.override_settings == {"hires_fix_refiner_pass": "both passes",
                                          "refiner_switch_by_sample_steps": True}
    # the request's own fields win; a refiner that is not here is left out, as A1111's lookup does
    body = models.StableDiffusionTxt2ImgProcessingAPI(infotext=text, refiner_switch_at=0.9)
    request_fields.apply_infotext(body, False, options, find_checkpoint=lambda t: None)
    assert body.refiner_checkpoint is None and body.refiner_switch_at == 0.9


def test_the_paste_mapping_names_the_refiner_options():
    from modules import infotext_utils

    mapping = dict(infotext_utils.infotext_to_setting_name_mapping)
    assert mapping["Hires refiner"] == "hires_fix_refiner_pass"
    assert mapping["Refiner switch by sampling steps"] == "refiner_switch_by_sample_steps"


# ------------------------------------------------------------------------------- A1111's p

def test_p_carries_the_refiner_both_ways():
    from modules import processing_run
    from modules.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img

    request = GenerationRequest(prompt="a", refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.3)
    p = processing_run.from_request(request)
    assert isinstance(p, StableDiffusionProcessingTxt2Img)
    assert (p.refiner_checkpoint, p.refiner_switch_at, p.refiner_checkpoint_info) == ("tiny-sdxl-refiner", 0.3, None)
    back = processing_run.to_request(p)
    assert (back.refiner_checkpoint, back.refiner_switch_at) == ("tiny-sdxl-refiner", 0.3)

    # a script sets them on p (A1111's Refiner script does it in setup()); "None" is no refiner
    p.refiner_checkpoint, p.refiner_switch_at = "None", None
    assert processing_run.to_request(p).refiner_checkpoint is None

    img = Img2ImgRequest(prompt="a", init_images=[Image.new("RGB", (64, 64))], refiner_checkpoint="r",
                         refiner_switch_at=0.7)
    p = processing_run.from_request(img)
    assert isinstance(p, StableDiffusionProcessingImg2Img) and (p.refiner_checkpoint, p.refiner_switch_at) == ("r", 0.7)
    assert processing_run.to_request(p).refiner_switch_at == 0.7


def test_an_unknown_refiner_on_p_stops_the_job_naming_the_field():
    from modules import processing_run
    from modules.processing import StableDiffusionProcessingTxt2Img

    engine = SimpleNamespace(checkpoints=SimpleNamespace(titles=lambda: ["tiny-sdxl.safetensors"]))
    p = StableDiffusionProcessingTxt2Img(prompt="a", refiner_checkpoint="no-such-refiner-anywhere")
    with pytest.raises(RequestError) as err:
        processing_run._refiner_info(p, engine)
    assert err.value.field == "refiner_checkpoint" and "no-such-refiner-anywhere" in err.value.message
    p.refiner_checkpoint = ""
    assert processing_run._refiner_info(p, engine) is None


# ------------------------------------------------------------------------------------------ UI

class _Registry:
    """The checkpoint registry as the accordion uses it (titles, refresh, find)."""

    def __init__(self, titles):
        self._titles = titles

    def titles(self):
        return list(self._titles)

    def refresh(self):
        pass

    def find(self, text):
        bare = text.split(" [")[0]
        for title in self._titles:
            if title == text or title.split(" [")[0] in (bare, bare + ".safetensors"):
                return SimpleNamespace(title=title)
        return None


def _controls(tabname="txt2img"):
    from modules.ui.refiner import RefinerControls

    engine = SimpleNamespace(checkpoints=_Registry(["tiny-sdxl.safetensors [ce020bcf07]",
                                                    "tiny-sdxl-refiner.safetensors [72c90910bf]"]))
    controls = RefinerControls(engine, tabname)
    with gr.Blocks():
        controls.build()
        controls.wire()
    return controls


def test_the_accordion_has_a1111_ids_defaults_and_choices():
    controls = _controls("img2img")
    assert controls.accordion.elem_id == "img2img_enable" and controls.accordion.open is False
    assert controls.enable.elem_id == "img2img_enable-checkbox" and controls.enable.value is False
    assert controls.checkpoint.elem_id == "img2img_checkpoint" and controls.checkpoint.value == ""
    assert [value for _, value in controls.checkpoint.choices] == [
        "", "tiny-sdxl.safetensors [ce020bcf07]", "tiny-sdxl-refiner.safetensors [72c90910bf]"]
    assert controls.refresh.elem_id == "img2img_checkpoint_refresh"
    s = controls.switch_at
    assert (s.elem_id, s.value, s.minimum, s.maximum, s.step) == ("img2img_switch_at", 0.8, 0.01, 1.0, 0.01)


def test_the_accordion_gives_the_request_fields_only_when_on_with_a_checkpoint():
    c = _controls()
    title = "tiny-sdxl-refiner.safetensors [72c90910bf]"
    assert c.request_fields({c.enable: True, c.checkpoint: title, c.switch_at: 0.5}) == {
        "refiner_checkpoint": title, "refiner_switch_at": 0.5}
    assert c.request_fields({c.enable: False, c.checkpoint: title, c.switch_at: 0.5}) == {}
    assert c.request_fields({c.enable: True, c.checkpoint: "", c.switch_at: 0.5}) == {}
    assert c.request_fields({c.enable: True, c.checkpoint: "None", c.switch_at: 0.5}) == {}
    fields = {**c.request_fields({c.enable: True, c.checkpoint: title, c.switch_at: 0.25}), "prompt": "a"}
    assert GenerationRequest(**fields).refiner_switch_at == 0.25


def test_paste_fills_the_accordion_from_an_infotext():
    from modules.ui import paste_params

    c = _controls()
    fields = c.paste_fields()
    text = "a cube\nSteps: 2, Seed: 5, Size: 64x64, Refiner: tiny-sdxl-refiner [72c90910bf], Refiner switch at: 0.5"
    accordion, enable, checkpoint, switch_at = paste_params.updates(fields, text)
    assert accordion["open"] is True and enable["value"] is True
    assert checkpoint["value"] == "tiny-sdxl-refiner.safetensors [72c90910bf]"
    assert "tiny-sdxl-refiner.safetensors [72c90910bf]" in checkpoint["choices"]
    assert switch_at["value"] == 0.5

    accordion, enable, checkpoint, switch_at = paste_params.updates(fields, "a cube\nSteps: 2, Seed: 5, Size: 64x64")
    assert accordion["open"] is False and enable["value"] is False  # no Refiner key: off, as A1111's paste does
    assert checkpoint == gr.update() and switch_at == gr.update()
    # a refiner that is not here: the checkpoint is left as it is
    _, _, checkpoint, _ = paste_params.updates(fields, "a\nSteps: 2, Refiner: elsewhere [0000000000], Refiner switch at: 0.4")
    assert checkpoint == gr.update()
