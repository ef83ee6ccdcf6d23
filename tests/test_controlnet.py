"""Built-in ControlNet with sd-webui-controlnet's contract: tiny random ControlNets in the real file
layouts (A1111/LDM, with and without ``control_model.``, and diffusers; SD1 and SDXL), applied in the
core pipeline and through the API (``alwayson_scripts.controlnet``, ``/controlnet/*``, webuiapi)."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import requests
import torch

from modules.core import controlnet, controlnet_model, controlnet_preprocessors
from modules.core.job_settings import GenerationSettings, JobObserver
from modules.core.pipeline import generate
from modules.core.types import GenerationRequest, RequestError
from modules.services import controlnets
from tests.api_common import BASE, assert_error, decode
from tests.fixtures.tiny_controlnets import build_controlnet, write_controlnet
from tests.pictures import b64, picture

SMALL = dict(width=64, height=64, steps=3, cfg_scale=7.0, sampler_name="Euler", seed=77, save_images=False)


@pytest.fixture(scope="module")
def cn_files(tmp_path_factory):
    """{name: path} of tiny ControlNets for the tiny SD1 (and SDXL) checkpoints."""
    root = tmp_path_factory.mktemp("controlnets")
    sd1, sd1_other, zero, sdxl = build_controlnet("sd1", seed=1), build_controlnet("sd1", seed=2), \
        build_controlnet("sd1", zero=True), build_controlnet("sdxl", seed=3)
    return {
        "ldm": write_controlnet(root / "tiny-cn-ldm.safetensors", sd1, "ldm"),
        "ldm_prefixed": write_controlnet(root / "tiny-cn-prefixed.pth", sd1, "ldm", prefix="control_model."),
        "diffusers": write_controlnet(root / "tiny-cn-diffusers.safetensors", sd1, "diffusers"),
        "other": write_controlnet(root / "tiny-cn-other.safetensors", sd1_other, "ldm"),
        "zero": write_controlnet(root / "tiny-cn-zero.safetensors", zero, "ldm"),
        "sdxl_ldm": write_controlnet(root / "tiny-cn-xl-ldm.safetensors", sdxl, "ldm"),
        "sdxl_diffusers": write_controlnet(root / "tiny-cn-xl-diffusers.safetensors", sdxl, "diffusers"),
    }


# ------------------------------------------------------------------------------------ loading

def test_every_layout_builds_the_same_controlnet(cn_files):
    reference = controlnet_model.load(cn_files["diffusers"]).module.state_dict()
    for name in ("ldm", "ldm_prefixed"):
        built = controlnet_model.load(cn_files[name])
        assert (built.family, built.layout) == ("sd1", "ldm")
        state = built.module.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference), name
    xl_ldm, xl_diffusers = controlnet_model.load(cn_files["sdxl_ldm"]), controlnet_model.load(cn_files["sdxl_diffusers"])
    assert xl_ldm.family == xl_diffusers.family == "sdxl"
    assert xl_ldm.config["addition_embed_type"] == "text_time"
    a, b = xl_ldm.module.state_dict(), xl_diffusers.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_files_that_are_not_controlnets_are_refused_with_what_they_are(tmp_path, tiny_checkpoints):
    from modules.core.checkpoint_shapes import UnsupportedCheckpoint
    from modules.core.ldm_export import save_single_file

    adapter = save_single_file(tmp_path / "t2i.safetensors", {"adapter.body.0.resnets.0.block1.weight": torch.zeros(2, 2)})
    with pytest.raises(UnsupportedCheckpoint, match="T2I-Adapter"):
        controlnet_model.load(adapter)
    with pytest.raises(UnsupportedCheckpoint, match="not a ControlNet"):
        controlnet_model.load(tiny_checkpoints.sd1)


def test_registry_lists_both_folders_with_the_extension_titles(tmp_path, cn_files):
    import argparse
    import shutil

    models, extra = tmp_path / "models", tmp_path / "elsewhere"
    (models / "ControlNet" / "sub").mkdir(parents=True)
    extra.mkdir()
    shutil.copy(cn_files["ldm"], models / "ControlNet" / "sub" / "Control_A.safetensors")
    shutil.copy(cn_files["diffusers"], extra / "control_b.safetensors")
    (extra / "notes.txt").write_text("not a model")
    folders = controlnets.folders_for(argparse.Namespace(controlnet_dir=str(extra)), models)
    registry = controlnets.ControlNets(folders)
    titles = registry.titles()
    hash_a = controlnets.short_hash(models / "ControlNet" / "sub" / "Control_A.safetensors")
    assert titles == [f"Control_A [{hash_a}]", f"control_b [{controlnets.short_hash(extra / 'control_b.safetensors')}]"]
    assert registry.find("control_a")[0] == registry.find(f"Control_A [{hash_a}]")[0] == titles[0]
    assert registry.find("Control_A [00000000]")[0] == titles[0]  # the stem decides, as the extension
    assert registry.find("None") is None and registry.find("missing") is None
    assert registry.load(registry.find("control_b")[1]) is registry.load(extra / "control_b.safetensors")


# ------------------------------------------------------------------------------- preprocessors

def test_canny_is_opencv_canny_with_the_extension_thresholds():
    image = np.asarray(picture(64, 64))
    out = controlnet_preprocessors.find("canny")(image, 64, 10, 20)
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:, :, 0], cv2.Canny(image, 10, 20))
    default = controlnet_preprocessors.find("canny")(image, 64, -1, -1)  # -1: the sliders' 100 / 200
    assert np.array_equal(default[:, :, 0], cv2.Canny(image, 100, 200))
    assert out.any() and not np.array_equal(out, default)


def test_offline_preprocessors_give_maps():
    image = np.asarray(picture(48, 32))
    for name in ("none", "invert", "threshold", "scribble_xdog", "lineart_standard", "tile_resample",
                 "blur_gaussian", "shuffle", "color"):
        out = controlnet_preprocessors.find(name)(image)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
    assert np.array_equal(controlnet_preprocessors.find("invert (from white bg & black line)")(image), 255 - image)
    with_mask = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    hint = controlnet.hint_tensor(controlnet_preprocessors.find("inpaint_only")(with_mask))
    assert torch.all(hint == -1)  # all masked: the inpaint protocol's -1


def test_resize_modes_fit_the_map_to_the_pass():
    tall = np.zeros((80, 40, 3), np.uint8)
    tall[:, :, 0] = 200
    for mode in controlnet.RESIZE_MODES:
        assert controlnet.fit_map(tall, 64, 32, mode).shape == (32, 64, 3)
    filled = controlnet.fit_map(tall, 64, 32, "Resize and Fill")
    assert (filled[:, :, 0] == 200).all()  # the border's median colour fills the sides


# ---------------------------------------------------------------------------- in the pipeline

class _Steps(JobObserver):
    def __init__(self):
        self.latents = []

    def on_step(self, step, total, latents, denoised):
        self.latents.append(latents.clone())


def _run(model, tmp_path, units=(), base=SMALL, **overrides):
    """A job on ``model`` with these units: (its picture, the latents after each step)."""
    observer = _Steps()
    settings = GenerationSettings(outdir_samples=tmp_path, outdir_grids=tmp_path,
                                  control=controlnet.ControlJob(list(units)) if units else None)
    result = generate(GenerationRequest(prompt="a red cube", **{**base, **overrides}), model, settings, observer)
    return np.asarray(result.images[0]), observer.latents


def _unit(sd1, path, **kw):
    built = controlnet_model.load(path, sd1.policy.unet_dtype)
    built.module.to(sd1.device)
    detected = controlnet_preprocessors.find("canny")(np.asarray(picture(64, 64)), 64, 50, 120)
    return controlnet.ControlUnit(built, detected, **kw)


def test_zero_controlnet_and_zero_weight_leave_the_picture_bit_identical(sd1, tmp_path, cn_files):
    plain, _ = _run(sd1, tmp_path)
    zero, _ = _run(sd1, tmp_path, [_unit(sd1, cn_files["zero"])])
    unweighted, _ = _run(sd1, tmp_path, [_unit(sd1, cn_files["ldm"], weight=0.0)])
    controlled, _ = _run(sd1, tmp_path, [_unit(sd1, cn_files["ldm"])])
    assert np.array_equal(zero, plain) and np.array_equal(unweighted, plain)
    assert np.abs(controlled.astype(int) - plain).max() > 8


def test_control_acts_only_inside_its_guidance_range(sd1, tmp_path, cn_files):
    _, plain = _run(sd1, tmp_path, steps=4)
    unit = _unit(sd1, cn_files["ldm"], guidance_start=0.5)
    calls = []
    unit.controlnet.module.register_forward_hook(lambda *a: calls.append(1))
    _, late = _run(sd1, tmp_path, [unit], steps=4)
    # 4 steps: fractions 0, .25, .5, .75 -> the ControlNet runs at the last two (cond and uncond in one call)
    assert len(calls) == 2
    assert torch.equal(late[0], plain[0]) and torch.equal(late[1], plain[1])
    assert not torch.equal(late[2], plain[2]) and not torch.equal(late[3], plain[3])


def test_two_units_add_their_residuals(sd1, cn_files):
    a, b = _unit(sd1, cn_files["ldm"], weight=0.7), _unit(sd1, cn_files["other"], weight=1.3)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(sd1.device)
    t = torch.tensor([500, 500], device=sd1.device)
    cond = {"context": torch.randn(2, 77, sd1.spec.unet_config["cross_attention_dim"]).to(sd1.device)}
    both = controlnet.ControlJob([a, b]).for_pass(sd1, (4, 8, 8))(x, t, cond)
    only_a = controlnet.ControlJob([a]).for_pass(sd1, (4, 8, 8))(x, t, cond)
    only_b = controlnet.ControlJob([b]).for_pass(sd1, (4, 8, 8))(x, t, cond)
    for s, p, q in zip(both["down_block_additional_residuals"], only_a["down_block_additional_residuals"],
                       only_b["down_block_additional_residuals"]):
        torch.testing.assert_close(s, p + q)
    torch.testing.assert_close(both["mid_block_additional_residual"],
                               only_a["mid_block_additional_residual"] + only_b["mid_block_additional_residual"])


def test_control_modes_scale_and_pick_rows_as_the_extension(sd1, cn_files):
    balanced = _unit(sd1, cn_files["ldm"], weight=0.5)
    prompt = _unit(sd1, cn_files["ldm"], weight=0.5, control_mode="My prompt is more important")
    assert balanced.scales(13) == [0.5] * 13
    assert prompt.scales(13) == pytest.approx([0.5 * 0.825 ** (12 - i) for i in range(13)])
    control = _unit(sd1, cn_files["ldm"], control_mode="ControlNet is more important")
    residuals = controlnet.ControlJob([control]).for_pass(sd1, (4, 8, 8))
    context = torch.randn(1, 77, sd1.spec.unet_config["cross_attention_dim"]).to(sd1.device)
    cond, uncond = residuals.mark({"context": context}, {"context": context})
    batched = {"context": torch.cat([context, context]), "control_mark": torch.cat([cond["control_mark"],
                                                                                    uncond["control_mark"]])}
    x = torch.randn(1, 4, 8, 8).to(sd1.device).repeat(2, 1, 1, 1)
    out = residuals(x, torch.tensor([500, 500], device=sd1.device), batched)
    mid = out["mid_block_additional_residual"]
    assert mid[0].abs().sum() > 0 and torch.all(mid[1] == 0)  # the unconditional row gets no control


def test_a_controlnet_for_another_family_is_refused(sd1, cn_files):
    xl = controlnet_model.load(cn_files["sdxl_ldm"])
    unit = controlnet.ControlUnit(xl, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(RequestError, match="SDXL"):
        controlnet.ControlJob([unit]).for_pass(sd1, (4, 8, 8))


def sdxl_inputs(sdxl):
    """(generator, cond, latents, timestep) for one call of the tiny SDXL UNet at 64 px."""
    g = torch.Generator().manual_seed(0)
    config = sdxl.spec.unet_config
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    cond = {"context": torch.randn(1, 77, config["cross_attention_dim"], generator=g),
            "text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    cond = {k: v.to(sdxl.device) for k, v in cond.items()}
    x, t = torch.randn(1, 4, 8, 8, generator=g).to(sdxl.device), torch.tensor([500], device=sdxl.device)
    return g, cond, x, t


def test_sdxl_controlnet_steers_the_sdxl_unet(sdxl, cn_files):
    from modules.core import model_ops

    built = controlnet_model.load(cn_files["sdxl_diffusers"], sdxl.policy.unet_dtype)
    built.module.to(sdxl.device)
    residuals = controlnet.ControlJob([controlnet.ControlUnit(built, np.asarray(picture(64, 64)))]).for_pass(
        sdxl, (4, 8, 8))
    g, cond, x, t = sdxl_inputs(sdxl)
    plain = model_ops.denoiser(sdxl)(x, t, cond)
    steered = model_ops.denoiser(sdxl, residuals)(x, t, residuals.mark(cond, None)[0])
    assert (steered - plain).abs().max() > 1e-3


# -------------------------------------------------------------------------------- units, infotext

def test_units_take_the_extension_value_forms():
    units = controlnets.units_from_args([
        {"enabled": True, "module": "canny", "model": "x", "resize_mode": 0, "control_mode": 2},
        {"enabled": True, "input_image": "abc", "resize_mode": "Inner Fit (Scale to Fit)",
         "control_mode": "My prompt is more important", "guidance": 0.6},
        {},
    ])
    assert (units[0].resize_mode, units[0].control_mode) == ("Just Resize", "ControlNet is more important")
    assert (units[1].resize_mode, units[1].image, units[1].guidance_end) == ("Crop and Resize", "abc", 0.6)
    assert units[2].enabled is False
    for bad in ({"module": "no-such"}, {"weight": 3}, {"guidance_start": 0.8, "guidance_end": 0.2},
                {"control_mode": "Loud"}):
        with pytest.raises(RequestError):
            controlnets.parse_unit(bad, 0)


def test_infotext_value_round_trips():
    unit = controlnets.parse_unit({"enabled": True, "module": "canny", "model": "m [0123abcd]", "weight": 0.5}, 0)
    unit.settle()
    text = unit.serialize()
    assert text == ("Module: canny, Model: m [0123abcd], Weight: 0.5, Resize Mode: Crop and Resize, Processor Res: 512, "
                    "Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
                    "Pixel Perfect: False, Control Mode: Balanced")
    parsed = controlnets.parse_infotext_value(text)
    assert parsed["module"] == "canny" and parsed["weight"] == 0.5 and parsed["processor_res"] == 512
    assert parsed["pixel_perfect"] is False and parsed["control_mode"] == "Balanced"


# ------------------------------------------------------------------------------------------ API

def install_models(server, files: dict) -> dict:
    """Copy {key: file} into the server's models/ControlNet; {key: title as the extension lists it}."""
    folder = server.data_dir / "models" / "ControlNet"
    folder.mkdir(parents=True, exist_ok=True)
    titles = {}
    for key, source in files.items():
        target = folder / source.name
        target.write_bytes(source.read_bytes())
        titles[key] = f"{target.stem} [{controlnets.short_hash(target)}]"
    return titles


@pytest.fixture(scope="module")
def api_models(server, cn_files):
    """The ControlNet files in the server's models/ControlNet; {key: title}."""
    return install_models(server, {key: cn_files[key] for key in ("ldm", "diffusers", "zero", "other")})


def _txt2img(server, units=None, **fields):
    body = {**BASE, "steps": 2, **fields}
    if units is not None:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=300)


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.json()["images"][0]).convert("RGB"))


def test_api_lists_and_settings(server, api_models):
    assert requests.get(server.url + "/controlnet/version", timeout=30).json() == {"version": 3}
    models = requests.get(server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert set(api_models.values()) <= set(models)
    modules = requests.get(server.url + "/controlnet/module_list", timeout=30).json()
    assert modules["module_list"][0] == "none" and "canny" in modules["module_list"]
    assert modules["module_detail"]["canny"]["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1,
                                                                "max": 255, "step": 1.0}
    aliases = requests.get(server.url + "/controlnet/module_list?alias_names=true", timeout=30).json()["module_list"]
    assert "invert (from white bg & black line)" in aliases
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["Canny"]["default_option"] == "canny" and types["All"]["default_model"] == "None"
    assert requests.get(server.url + "/controlnet/settings", timeout=30).json() == {"control_net_unit_count": 3}
    options = requests.get(server.url + "/sdapi/v1/options", timeout=30).json()  # the extension's settings
    assert options["control_net_unit_count"] == 3 and options["control_net_inpaint_blur_sigma"] == 7


def test_api_detect_canny_is_opencv_canny(server):
    image = picture(64, 64)
    r = requests.post(server.url + "/controlnet/detect", timeout=60, json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(image)], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 60, "controlnet_threshold_b": 150})
    assert r.status_code == 200, r.text
    assert r.json()["info"] == "Success"
    edges = np.asarray(decode(r.json()["images"][0]).convert("L"))
    assert np.array_equal(edges, cv2.Canny(np.asarray(image), 60, 150))
    missing = requests.post(server.url + "/controlnet/detect", json={"controlnet_module": "nope",
                                                                      "controlnet_input_images": [b64(image)]}, timeout=30)
    assert missing.status_code == 422 and missing.json()["detail"] == "Module not available"


def test_api_units_steer_the_picture_and_write_the_infotext(server, api_models):
    image = "data:image/png;base64," + b64(picture(64, 64))  # a data URL, as browsers' clients send
    plain = _pixels(_txt2img(server))
    zero = _pixels(_txt2img(server, [{"enabled": True, "module": "canny", "model": api_models["zero"], "image": image}]))
    assert np.array_equal(zero, plain)
    disabled = _pixels(_txt2img(server, [{"enabled": False, "module": "canny", "model": api_models["ldm"],
                                          "image": image}]))
    assert np.array_equal(disabled, plain)
    r = _txt2img(server, [{"enabled": True, "module": "canny", "model": "tiny-cn-ldm", "image": image,
                           "control_mode": 1, "resize_mode": "Just Resize"}])
    steered = _pixels(r)
    assert np.abs(steered.astype(int) - plain).max() > 8
    info = r.json()["info"]
    line = re.search(r'ControlNet 0: \\?"([^"\\]*)', info).group(1)
    assert line.startswith(f"Module: canny, Model: {api_models['ldm']}, Weight: 1.0, Resize Mode: Just Resize")
    assert line.endswith("Control Mode: My prompt is more important")
    # pasting it back (png-info runs the on_infotext_pasted callbacks): the unit's fields, as the UI fills them
    pasted = requests.post(server.url + "/sdapi/v1/png-info", json={"image": r.json()["images"][0]},
                           timeout=60).json()["parameters"]
    assert pasted["ControlNet 0 module"] == "canny" and pasted["ControlNet 0 model"] == api_models["ldm"]
    assert pasted["ControlNet 0 weight"] == 1.0 and pasted["ControlNet 0 resize_mode"] == "Just Resize"
    both = _pixels(_txt2img(server, [
        {"enabled": True, "module": "canny", "model": "tiny-cn-ldm", "image": image, "control_mode": 1,
         "resize_mode": "Just Resize"},
        {"enabled": True, "module": "invert", "model": api_models["other"], "image": image}]))
    assert not np.array_equal(both, steered)  # the second unit adds its own


def test_hires_pass_gets_the_map_at_its_size(server, api_models):
    unit = {"enabled": True, "module": "invert", "model": api_models["ldm"], "image": b64(picture(64, 64))}
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.6,
                 steps=2)
    plain, steered = _txt2img(server, **hires), _txt2img(server, [unit], **hires)
    assert _pixels(steered).shape == (128, 128, 3)
    assert not np.array_equal(_pixels(steered), _pixels(plain))


def test_xyz_plot_weight_axis_sets_every_unit(server, api_models):
    info = [s for s in server.get("/sdapi/v1/script-info").json() if s["name"] == "x/y/z plot" and not s["is_img2img"]]
    axes = info[0]["args"][0]["choices"]
    assert {"[ControlNet] Weight", "[ControlNet] Guidance Start", "[ControlNet] Model"} <= set(axes)
    unit = {"enabled": True, "module": "canny", "model": api_models["ldm"], "image": b64(picture(64, 64))}
    args = [axes.index("[ControlNet] Weight"), "0, 1", [], 0, "", [], 0, "", [], True, True, False, False,
            False, False, False, 0, False]
    r = _txt2img(server, [unit], script_name="X/Y/Z plot", script_args=args)
    assert r.status_code == 200, r.text
    cells = [np.asarray(decode(i).convert("RGB")) for i in r.json()["images"][1:]]
    texts = json.loads(r.json()["info"])["infotexts"][1:]
    assert ["Weight: 0.0," in t for t in texts] == [True, False] and "Weight: 1.0," in texts[1]
    assert np.array_equal(cells[0], _pixels(_txt2img(server)))  # weight 0: no control
    assert not np.array_equal(cells[1], cells[0])


def test_axis_values_reach_the_units():
    from types import SimpleNamespace

    from modules.controlnet_processing import with_axis_values

    p = SimpleNamespace(control_net_weight=0.25, control_net_enabled="True", control_net_guidance_end=[None, 0.5])
    units = with_axis_values(p, [{"enabled": False}, {"enabled": False, "weight": 1.0}])
    assert units == [{"enabled": True, "weight": 0.25}, {"enabled": False, "weight": 0.25, "guidance_end": 0.5}]


def test_api_refuses_units_that_cannot_run(server, api_models):
    image = b64(picture(64, 64))
    assert_error(_txt2img(server, [{"enabled": True, "module": "canny", "model": "no-such-model", "image": image}]),
                 "alwayson_scripts")
    assert_error(_txt2img(server, [{"enabled": True, "module": "canny", "model": api_models["ldm"]}]),
                 "alwayson_scripts")  # txt2img without a picture


def test_img2img_units_use_the_init_picture(server, api_models):
    body = {**BASE, "steps": 3, "init_images": [b64(picture(64, 64))], "denoising_strength": 0.8}
    plain = requests.post(server.url + "/sdapi/v1/img2img", json=body, timeout=300)
    steered = requests.post(server.url + "/sdapi/v1/img2img", timeout=300, json={
        **body, "alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "module": "none",
                                                              "model": api_models["ldm"]}]}}})
    assert not np.array_equal(_pixels(steered), _pixels(plain))


def test_ui_has_the_extension_accordion_and_unit_controls(server):
    components = server.get("/config").json()["components"]
    ids = {c["props"].get("elem_id") for c in components}
    for tab in ("txt2img", "img2img"):
        assert f"{tab}_controlnet" in ids
        for unit in range(3):  # control_net_unit_count
            for control in ("controlnet_enable_checkbox", "input_image", "controlnet_preprocessor_dropdown",
                            "controlnet_model_dropdown", "controlnet_control_weight_slider",
                            "controlnet_start_control_step_slider", "controlnet_ending_control_step_slider",
                            "controlnet_control_mode_radio", "controlnet_resize_mode_radio",
                            "controlnet_pixel_perfect_checkbox"):
                assert f"{tab}_controlnet_ControlNet-{unit}_{control}" in ids
    modes = [c["props"] for c in components
             if c["props"].get("elem_id") == "txt2img_controlnet_ControlNet-0_controlnet_control_mode_radio"][0]
    assert [choice[0] for choice in modes["choices"]] == list(controlnet.CONTROL_MODES)


def test_webuiapi_client(server, api_models):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(baseurl=server.url + "/sdapi/v1", sampler="Euler a", steps=3)
    assert api.controlnet_version() == 3
    assert api_models["ldm"] in api.controlnet_model_list()
    assert "canny" in api.controlnet_module_list()
    detected = api.controlnet_detect([picture(64, 64)], module="canny", processor_res=64, threshold_a=60,
                                     threshold_b=150)
    edges = np.asarray(detected.images[0].convert("L"))  # webuiapi decodes the answer's images
    assert np.array_equal(edges, cv2.Canny(np.asarray(picture(64, 64)), 60, 150))
    kwargs = dict(prompt="a red cube", seed=1234, width=64, height=64, cfg_scale=7.0)
    plain = api.txt2img(**kwargs).image
    unit = webuiapi.ControlNetUnit(image=picture(64, 64), module="canny", model=api_models["ldm"], weight=1.0,
                                   processor_res=64, threshold_a=60, threshold_b=150)
    # webuiapi writes the units into its `alwayson_scripts={}` default, which would send them with
    # every later call of this process: a dict of the call's own
    result = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **kwargs)
    assert not np.array_equal(np.asarray(result.image), np.asarray(plain))
    assert "ControlNet 0" in result.info["extra_generation_params"] or "ControlNet 0" in result.info["infotexts"][0]
