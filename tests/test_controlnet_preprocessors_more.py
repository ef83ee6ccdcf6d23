"""sd-webui-controlnet's remaining unit contract: the preprocessors that need annotator weights (listed,
refused with the files and folder named; HED run from a tiny random ControlNetHED.pth in the real
layout), tile_colorfix(+sharp), ``inpaint_only``'s paste-back outside the mask, and the units'
``hr_option`` (which passes of a hires job a unit steers). Tiny random ControlNets in the real
layout, over the shared server."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch

from modules.core import controlnet, controlnet_model, controlnet_preprocessors
from modules.core.types import RequestError
from modules.services import controlnets
from tests.api_common import assert_error
from tests.pictures import b64, picture, square_mask
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures

HIRES = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.6)


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


# --------------------------------------------------------------------- annotator preprocessors

def test_module_list_has_the_annotator_preprocessors(server):
    listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()
    names = set(listed["module_list"])
    assert {"depth", "depth_leres", "depth_zoe", "openpose", "openpose_full", "dw_openpose_full", "hed",
            "pidinet", "lineart", "lineart_anime", "lineart_coarse", "normal_bae", "segmentation",
            "oneformer_ade20k", "mlsd", "inpaint_only+lama"} <= names
    assert listed["module_detail"]["mlsd"]["sliders"][1:] == [
        {"name": "MLSD Value Threshold", "value": 0.1, "min": 0.01, "max": 2.0, "step": 0.01},
        {"name": "MLSD Distance Threshold", "value": 0.1, "min": 0.01, "max": 20.0, "step": 0.01}]
    assert [s["name"] for s in listed["module_detail"]["lineart"]["sliders"]] == []  # no resolution, as the extension
    aliases = set(requests.get(server.url + "/controlnet/module_list?alias_names=true", timeout=30).json()["module_list"])
    assert {"depth_midas", "lineart_realistic", "softedge_hed", "softedge_pidinet", "seg_ofade20k", "normal_midas",
            "t2ia_sketch_pidi", "inpaint_only+lama"} <= aliases
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["Depth"]["default_option"] == "depth_midas"  # priority 100 first, as the extension
    assert {"softedge_hed", "softedge_pidinet"} <= set(types["SoftEdge"]["module_list"])


def test_a_unit_asking_for_annotator_weights_is_refused_naming_file_and_folder(server, api_models):
    image = b64(picture(64, 64))
    r = _txt2img(server, [{"enabled": True, "module": "depth", "model": api_models["ldm"], "image": image}])
    message = assert_error(r, "alwayson_scripts")
    assert r.status_code == 422 and "module(depth)" in message
    assert "dpt_hybrid-midas-501f0c75.pt" in message and str(_annotators(server) / "midas") in message
    # by its label too, and with the unit's model not even looked at
    r = _txt2img(server, [{"enabled": True, "module": "lineart_realistic", "model": "whatever", "image": image}])
    message = assert_error(r, "alwayson_scripts")
    assert "sk_model.pth" in message and str(_annotators(server) / "lineart") in message


def test_detect_with_annotator_weights_is_refused_naming_file_and_folder(server):
    body = {"controlnet_module": "openpose_full", "controlnet_input_images": [b64(picture(64, 64))]}
    r = requests.post(server.url + "/controlnet/detect", json=body, timeout=60)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("controlnet_module: ")
    for name in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"):
        assert name in detail
    assert str(_annotators(server) / "openpose") in detail
    # the files in place: still refused, saying the network is what is missing (no option that only looks present)
    folder = _annotators(server) / "oneformer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "150_16_swin_l_oneformer_coco_100ep.pth").write_bytes(b"\0" * 16)
    try:
        r = requests.post(server.url + "/controlnet/detect", timeout=60, json={
            "controlnet_module": "oneformer_coco", "controlnet_input_images": [b64(picture(64, 64))]})
        assert r.status_code == 422 and "no built-in" in r.json()["detail"]
    finally:
        (folder / "150_16_swin_l_oneformer_coco_100ep.pth").unlink()


def test_annotator_folder_follows_the_extension_flag(tmp_path):
    from argparse import Namespace

    assert controlnets.annotator_dir_for(Namespace(), tmp_path) == tmp_path / "ControlNetPreprocessor"
    chosen = tmp_path / "annotators"
    assert controlnets.annotator_dir_for(Namespace(controlnet_annotator_models_path=str(chosen)), tmp_path) == chosen
    registry = controlnets.ControlNets([tmp_path / "ControlNet"], annotator_dir=chosen)
    problem = controlnets.weights_problem(controlnet_preprocessors.find("mlsd"), registry)
    assert f"put mlsd_large_512_fp32.pth in {chosen / 'mlsd'}" in problem
    assert controlnets.weights_problem(controlnet_preprocessors.find("canny"), registry) is None


# ---------------------------------------------------------------------------------- inpaint_only

def test_inpaint_only_keeps_the_pixels_outside_the_mask(server, api_models):
    image, mask = picture(64, 64), square_mask((64, 64), (24, 24, 40, 40))
    unit = {"enabled": True, "module": "inpaint_only", "model": api_models["ldm"],
            "image": {"image": b64(image), "mask": b64(mask)}, "resize_mode": "Just Resize"}
    out = _pixels(_txt2img(server, [unit]))
    source = np.asarray(image.convert("RGB"))
    # the mask grown by the extension's dilate + blur (sigma 7: 3 + 3 pixels); beyond it, the picture itself
    far = np.ones((64, 64), dtype=bool)
    far[24 - 7:40 + 7, 24 - 7:40 + 7] = False
    assert np.array_equal(out[far], source[far])
    assert np.abs(out[26:38, 26:38].astype(int) - source[26:38, 26:38]).max() > 8  # the masked part is generated
    plain_unit = dict(unit, module="none", image=b64(image))  # no inpaint map: nothing pasted back
    assert not np.array_equal(_pixels(_txt2img(server, [plain_unit]))[far], source[far])


def test_inpaint_keeps_are_the_unit_picture_and_the_grown_mask():
    image, mask = picture(64, 64), square_mask((64, 64), (24, 24, 40, 40))
    unit = controlnets.parse_unit({"enabled": True, "module": "inpaint_only", "image": image, "mask": mask}, 0)
    [(raw, keep)] = controlnets.inpaint_keeps([unit], width=64, height=64)
    assert np.array_equal(np.round(raw * 255).astype(np.uint8), np.asarray(image.convert("RGB")))
    assert keep.shape == (64, 64, 1) and keep[32, 32, 0] == 1.0 and keep[0, 0, 0] == 0.0
    assert keep[20, 32, 0] > 0  # grown past the mask's edge (24)
    other = controlnets.parse_unit({"enabled": True, "module": "canny", "image": image, "mask": mask}, 0)
    assert controlnets.inpaint_keeps([other], width=64, height=64) == []


# ------------------------------------------------------------------------------------- hr_option

def test_hr_option_value_forms():
    for value, name in (("Both", "Both"), ("Low res only", "Low res only"), ("HIGH_RES_ONLY", "High res only"),
                        ("HiResFixOption.LOW_RES_ONLY", "Low res only")):
        assert controlnets.parse_unit({"hr_option": value}, 0).hr_option == name
    with pytest.raises(RequestError) as info:
        controlnets.parse_unit({"hr_option": "sometimes"}, 2)
    assert info.value.field == "alwayson_scripts" and "ControlNet 2" in info.value.message


def test_hr_option_picks_the_passes(sd1, cn_files):
    built = controlnet_model.load(cn_files["ldm"], sd1.policy.unet_dtype)
    detected = np.asarray(picture(64, 64))
    units = {o: controlnet.ControlUnit(built, detected, hr_option=o) for o in controlnet.HR_OPTIONS}
    first, hires = (1, 4, 8, 8), (1, 4, 16, 16)  # 64 px, then 128 px
    for option, unit in units.items():
        job = controlnet.ControlJob([unit], first_height=64, hires_height=128)
        acts = [job.for_pass(sd1, first) is not None, job.for_pass(sd1, hires) is not None]
        assert acts == {"Both": [True, True], "Low res only": [True, False], "High res only": [False, True]}[option]
        assert controlnet.ControlJob([unit]).for_pass(sd1, first) is not None  # no hires pass: every unit acts
    job = controlnet.ControlJob(list(units.values()), first_height=64, hires_height=128)
    assert [u.hr_option for u in job.for_pass(sd1, hires).units] == ["Both", "High res only"]


def test_hr_option_over_the_api(server, api_models):
    unit = {"enabled": True, "module": "invert", "model": api_models["ldm"], "image": b64(picture(64, 64))}
    runs = {o: _pixels(_txt2img(server, [dict(unit, hr_option=o)], **HIRES)) for o in controlnet.HR_OPTIONS}
    plain = _pixels(_txt2img(server, **HIRES))
    assert all(r.shape == (128, 128, 3) for r in runs.values())
    pictures = [plain, *runs.values()]
    for i in range(len(pictures)):  # each option steers a different set of passes: four different pictures
        for j in range(i + 1, len(pictures)):
            assert not np.array_equal(pictures[i], pictures[j]), (i, j)
    # without hires fix the option does nothing (the extension forces "Both")
    assert np.array_equal(_pixels(_txt2img(server, [dict(unit, hr_option="High res only")])),
                          _pixels(_txt2img(server, [unit])))
    assert_error(_txt2img(server, [dict(unit, hr_option="never")]), "alwayson_scripts")


def test_ui_has_the_hires_fix_option(server):
    ids = {c["props"].get("elem_id") for c in server.get("/config").json()["components"]}
    assert "txt2img_controlnet_ControlNet-0_controlnet_hr_option_radio" in ids


# ------------------------------------------------------------------------------------ tile_colorfix

def test_colorfix_moves_the_implied_x0_by_the_picture_colour():
    from modules.core.controlnet_colorfix import ColorFix, apply
    from modules.core.sigma_schedules import TrainingSigmas

    g = torch.Generator().manual_seed(0)
    alphas = TrainingSigmas.from_config().alphas_cumprod
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500.0, 500.0])
    a = alphas[500]
    for kind in ("epsilon", "v_prediction"):
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt() if kind == "epsilon" else a.sqrt() * x - (1 - a).sqrt() * out
        shift = torch.tensor([0.5, -0.25, 0.0, 1.0]).view(1, 4, 1, 1)
        fixed = apply(ColorFix(3), out, x, t, alphas, kind, x0[:1] + shift, 1.0, False, None)
        implied = (x - (1 - a).sqrt() * fixed) / a.sqrt() if kind == "epsilon" else a.sqrt() * x - (1 - a).sqrt() * fixed
        assert torch.allclose(implied[0], x0[0] + shift[0], atol=1e-4)  # low frequencies taken from the picture
        assert torch.equal(apply(ColorFix(3), out, x, t, alphas, kind, x0, 0.0, False, None), out)  # weight 0
        assert torch.allclose(apply(ColorFix(3), out[:1], x[:1], t[:1], alphas, kind, x0[:1], 1.0, False, None),
                              out[:1], atol=1e-4)  # the picture's own x0: nothing to fix
    sharp = apply(ColorFix(3, 1.0), out, x, t, alphas, "epsilon", x0, 1.0, False, torch.tensor([1.0, 0.0]))
    plain = apply(ColorFix(3), out, x, t, alphas, "epsilon", x0, 1.0, False, torch.tensor([1.0, 0.0]))
    assert torch.equal(sharp[0], plain[0]) and not torch.equal(sharp[1], plain[1])  # +sharp: unconditional rows


def test_colorfix_pulls_the_latents_towards_the_picture(sd1, tmp_path, cn_files):
    from modules.core import model_ops
    from modules.core.controlnet_colorfix import ColorFix, blur
    from modules.core.job_settings import GenerationSettings, JobObserver
    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest

    built = controlnet_model.load(cn_files["zero"], sd1.policy.unet_dtype)  # no residuals: the fix alone
    built.module.to(sd1.device)
    source = np.zeros((64, 64, 3), dtype=np.uint8)
    source[:] = (230, 40, 40)
    target = model_ops.encode_pixels(sd1, torch.from_numpy(source).permute(2, 0, 1)[None].float() / 127.5 - 1)

    def final_latents(colorfix):
        units = [controlnet.ControlUnit(built, source, colorfix=colorfix)] if colorfix else []
        seen = []

        class Steps(JobObserver):
            def on_step(self, step, total, latents, denoised):
                seen.append(latents.clone())

        settings = GenerationSettings(outdir_samples=tmp_path, outdir_grids=tmp_path,
                                      control=controlnet.ControlJob(units) if units else None)
        generate(GenerationRequest(prompt="a cube", width=64, height=64, steps=3, cfg_scale=7.0, sampler_name="Euler",
                                   seed=5, save_images=False), sd1, settings, Steps())
        return seen[-1]

    distance = {}
    for name, fix in (("plain", None), ("colorfix", ColorFix(3))):
        latents = final_latents(fix).to(target.device, target.dtype)
        distance[name] = float((blur(latents, 3) - blur(target, 3)).abs().mean())
    assert distance["colorfix"] < 0.5 * distance["plain"], distance


def test_tile_colorfix_over_the_api(server, api_models):
    listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()["module_detail"]
    assert listed["tile_colorfix"]["sliders"] == [{"name": "Variation", "value": 8.0, "min": 3.0, "max": 32.0, "step": 1.0}]
    assert listed["tile_colorfix+sharp"]["sliders"][1] == {"name": "Sharpness", "value": 1.0, "min": 0.0, "max": 2.0,
                                                           "step": 0.01}
    unit = {"enabled": True, "module": "tile_resample", "model": api_models["ldm"], "image": b64(picture(64, 64))}
    resample = _pixels(_txt2img(server, [unit]))
    r = _txt2img(server, [dict(unit, module="tile_colorfix", threshold_a=4)])
    fixed = _pixels(r)
    assert 'Module: tile_colorfix, ' in r.json()["info"] and "Threshold A: 4.0" in r.json()["info"]
    wider = _pixels(_txt2img(server, [dict(unit, module="tile_colorfix", threshold_a=16)]))
    sharp = _pixels(_txt2img(server, [dict(unit, module="tile_colorfix+sharp", threshold_a=4, threshold_b=2)]))
    for a, b in ((resample, fixed), (fixed, wider), (fixed, sharp)):
        assert not np.array_equal(a, b)


# ------------------------------------------------------------------------- HED from the user's file

def write_tiny_hed(path, widths=(4, 8, 8, 8, 8), depths=(2, 2, 3, 3, 3), seed=0) -> dict:
    """A random ControlNetHED state dict in the real layout (norm, blockN.convs.M, blockN.projection),
    narrower than the real one (64..512); saved as the extension's .pth. Returns the tensors."""
    g = torch.Generator().manual_seed(seed)
    state, channels = {"norm": torch.rand(1, 3, 1, 1, generator=g) * 255}, 3
    for block, (width, depth) in enumerate(zip(widths, depths), start=1):
        for conv in range(depth):
            state[f"block{block}.convs.{conv}.weight"] = torch.randn(width, channels if conv == 0 else width, 3, 3,
                                                                     generator=g) * 0.05
            state[f"block{block}.convs.{conv}.bias"] = torch.randn(width, generator=g) * 0.1
        state[f"block{block}.projection.weight"] = torch.randn(1, width, 1, 1, generator=g)
        state[f"block{block}.projection.bias"] = torch.randn(1, generator=g)
        channels = width
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_hed(state: dict, image: np.ndarray) -> np.ndarray:
    """The HED edge map written out with plain functional ops (the extension's apply_hed)."""
    import cv2
    import torch.nn.functional as F

    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None] - state["norm"]
    maps = []
    for block in range(1, 6):
        if block > 1:
            x = F.max_pool2d(x, 2, 2)
        conv = 0
        while f"block{block}.convs.{conv}.weight" in state:
            x = F.relu(F.conv2d(x, state[f"block{block}.convs.{conv}.weight"], state[f"block{block}.convs.{conv}.bias"],
                                padding=1))
            conv += 1
        p = F.conv2d(x, state[f"block{block}.projection.weight"], state[f"block{block}.projection.bias"])
        maps.append(cv2.resize(p[0, 0].numpy(), (w, h), interpolation=cv2.INTER_LINEAR))
    edge = 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def test_softedge_hed_runs_from_the_users_file(server, api_models):
    from tests.api_common import decode

    path = _annotators(server) / "hed" / "ControlNetHED.pth"
    state = write_tiny_hed(path)
    image = picture(64, 64)
    try:
        def detect(module, **extra):
            return requests.post(server.url + "/controlnet/detect", timeout=60, json={
                "controlnet_module": module, "controlnet_input_images": [b64(image)], "controlnet_processor_res": 64,
                **extra})

        r = detect("softedge_hed")
        assert r.status_code == 200, r.text
        edges = np.asarray(decode(r.json()["images"][0]).convert("L"))
        assert np.array_equal(edges, reference_hed(state, np.asarray(image.convert("RGB"))))
        safe = np.asarray(decode(detect("hed_safe").json()["images"][0]).convert("L"))
        assert set(np.unique(safe)) <= {0, 127, 255}  # the extension's safe_step: three levels
        scribble = np.asarray(decode(detect("scribble_hed").json()["images"][0]).convert("L"))
        assert set(np.unique(scribble)) <= {0, 255}
        unit = {"enabled": True, "module": "softedge_hed", "model": api_models["ldm"], "image": b64(image),
                "processor_res": 64}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert "Module: hed, " in r.json()["info"]
        path.write_bytes(b"PK\x03\x04 not a state dict")  # a broken file: a 422 naming the module
        assert "softedge_hed" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        path.unlink()
