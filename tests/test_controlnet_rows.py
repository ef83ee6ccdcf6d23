"""sd-webui-controlnet's model-free rows Easel lacked and its resolution rule for hidden sliders:
``recolor_luminance`` / ``recolor_intensity`` (their gray maps and the finish that writes them into the
decoded picture), ``inpaint`` (inpaint_global_harmonious: inpaint_only's RGBA map without its
paste-back), and rows without a resolution slider getting the unit's processor_res (64..2048, -1: 512,
pixel perfect's as computed) as the extension's legacy rows do. The expected numbers are worked out
here from the extension's formulas (processor.py's recolor_*, its cvtColor of the RGB picture as BGR,
the CIE L* of sRGB primaries); the lists and /controlnet/detect go through the shared server, a hidden
row with a tiny random PiDiNet file in the real layout, units through ``prepare_job``."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from modules.core import controlnet, controlnet_preprocessors
from modules.services import controlnets
from tests.api_common import decode
from tests.fixtures.tiny_controlnets import build_controlnet, write_controlnet
from tests.pictures import b64, picture, square_mask
from tests.test_annotators_pidinet_mlsd import reference_pidinet, write_tiny_pidinet, _resized
from tests.test_controlnet import api_models, cn_files  # noqa: F401 - fixtures

# RGB pixels and their L* (sRGB, D65) on OpenCV's 8-bit scale (L * 255 / 100, rounded). The extension
# converts the RGB picture with COLOR_BGR2LAB, so an RGB red is read as blue: L 32.30 -> 82, not 136.
COLOURS = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                    [[0, 0, 0], [255, 255, 255], [10, 200, 30]]], np.uint8)
LUMA = np.array([[82, 224, 136], [0, 255, None]], dtype=object)  # BGR-read L: blue, green, red; black, white
VALUE = np.array([[255, 255, 255], [0, 255, 200]])  # HSV V: the largest channel


def _gamma(v: int, g: float) -> int:
    """The extension's (v / 255) ** g * 255, clipped, truncated to uint8."""
    return int(np.clip((np.float32(v) / np.float32(255.0)) ** np.float32(g) * np.float32(255.0), 0, 255))


def test_recolor_maps_are_the_extensions_formulas():
    luminance = controlnet_preprocessors.find("recolor_luminance")
    intensity = controlnet_preprocessors.find("recolor_intensity")
    out = luminance(COLOURS)  # -1: the Gamma Correction slider's 1.0
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # gray RGB
    for (y, x), want in np.ndenumerate(LUMA):
        if want is not None:
            assert out[y, x, 0] == want, (y, x)
    assert intensity(COLOURS)[..., 0].tolist() == VALUE.tolist()
    # the gamma slider: (v / 255) ** g * 255, truncated; out of range (3.0): the default 1.0
    squared = luminance(COLOURS, -1, 2.0)[..., 0]
    assert squared[0, 0] == _gamma(82, 2.0) == 26 and squared[0, 1] == _gamma(224, 2.0) == 196
    assert intensity(COLOURS, -1, 0.5)[1, 2, 0] == _gamma(200, 0.5) == 225
    assert np.array_equal(intensity(COLOURS, -1, 3.0), intensity(COLOURS))
    # no resolution slider, and no resizing: the map keeps the picture's size whatever processor_res
    big = np.asarray(picture(40, 24))
    assert luminance(big, 64).shape == intensity(big, 2048).shape == (24, 40, 3)


def test_recolor_finish_writes_the_map_into_the_decoded_picture():
    gray = np.full((1, 2, 3), 0.5, np.float32)
    assert np.allclose(controlnet.recolor(gray, np.array([[0, 255]], np.uint8), "luminance"),
                       [[[0, 0, 0], [1, 1, 1]]])
    red = np.array([[[0.5, 0.0, 0.0], [0.2, 0.2, 0.2]]], np.float32)
    done = controlnet.recolor(red, np.array([[200, 30]], np.uint8), "intensity")  # HSV V replaced
    assert np.allclose(done, [[[200 / 255, 0, 0], [30 / 255] * 3]])
    assert controlnet.recolor(red, np.zeros((3, 3), np.uint8), "intensity") is red  # a size mismatch: skipped
    # the feed: the fitted map's first channel through the control tensor's float round trip
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    feed = controlnet.recolor_feed(ramp)[0]
    assert feed.dtype == np.uint8 and (feed.astype(int) - np.arange(256) <= 0).all()
    assert (np.arange(256) - feed.astype(int) <= 1).all()
    # a unit's feed: its map fitted to the picture; other modules give none
    units = controlnets.units_from_args([
        {"enabled": True, "module": "recolor_intensity", "image": b64(Image.fromarray(COLOURS)),
         "resize_mode": "Just Resize", "threshold_a": 0.5},
        {"enabled": True, "module": "canny", "image": b64(picture(8, 8))},
        {"enabled": False, "module": "recolor_luminance", "image": b64(picture(8, 8))}])
    [(kind, fed)] = controlnets.recolor_feeds(units, width=3, height=2)
    assert kind == "intensity" and fed[1, 2] == 225 and fed[0, 0] == 255 and fed[1, 0] == 0
    no_picture = controlnets.parse_unit({"enabled": True, "module": "recolor_luminance"}, 0)  # img2img's
    [(kind, fed)] = controlnets.recolor_feeds([no_picture], width=6, height=4, init_image=Image.fromarray(COLOURS))
    assert kind == "luminance" and fed.shape == (4, 6)


def test_the_rows_are_listed_as_the_extension_lists_them(server):
    listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()
    names = listed["module_list"]
    assert {"recolor_luminance", "recolor_intensity", "inpaint"} <= set(names)
    gamma = [{"name": "Gamma Correction", "value": 1.0, "min": 0.1, "max": 2.0, "step": 0.001}]
    detail = listed["module_detail"]
    assert detail["recolor_luminance"] == detail["recolor_intensity"] == {"model_free": False, "sliders": gamma}
    assert detail["inpaint"] == {"model_free": False, "sliders": []}
    assert detail["shuffle"]["sliders"] == []  # the extension fixes shuffle at 512, its slider hidden
    aliases = requests.get(server.url + "/controlnet/module_list?alias_names=true", timeout=30).json()["module_list"]
    assert "inpaint_global_harmonious" in aliases and "inpaint" not in aliases
    # priority first (100), then the label, descending
    assert aliases.index("recolor_luminance") < aliases.index("recolor_intensity")
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["Recolor"]["module_list"] == ["none", "recolor_luminance", "recolor_intensity"]
    assert types["Recolor"]["default_option"] == "recolor_luminance"
    assert types["Inpaint"]["module_list"] == ["none", "inpaint_only", "inpaint_only+lama", "inpaint_global_harmonious"]
    assert types["Inpaint"]["default_option"] == "inpaint_only"
    assert "Recolor" in types and "inpaint_global_harmonious" in types["All"]["module_list"]


def test_detect_runs_the_new_rows(server):
    def detect(module, image, **extra):
        return requests.post(server.url + "/controlnet/detect", timeout=60, json={
            "controlnet_module": module, "controlnet_input_images": [b64(image)], **extra})

    colours = Image.fromarray(COLOURS)
    r = detect("recolor_luminance", colours, controlnet_threshold_a=2.0)
    assert r.status_code == 200, r.text
    got = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
    assert got[0, 0].tolist() == [26] * 3 and got[0, 1].tolist() == [196] * 3 and got[1, 1].tolist() == [255] * 3
    got = np.asarray(decode(detect("recolor_intensity", colours).json()["images"][0]).convert("L"))
    assert got.tolist() == VALUE.tolist()
    image, mask = picture(32, 32), square_mask((32, 32), (8, 8, 24, 24))
    r = detect("inpaint_global_harmonious", image)
    assert r.status_code == 422 and "controlnet_masks" in r.json()["detail"]
    r = detect("inpaint", image, controlnet_masks=[b64(mask)])
    assert r.status_code == 200, r.text
    assert np.array_equal(np.asarray(decode(r.json()["images"][0]).convert("RGB")), np.asarray(image))


def test_inpaint_is_inpaint_only_without_the_paste_back(tmp_path):
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    write_controlnet(folder / "tiny-inpaint.safetensors", build_controlnet("sd1", seed=5), "ldm")
    registry = controlnets.ControlNets([folder], annotator_dir=tmp_path / "annotators")
    image, mask = picture(32, 32), square_mask((32, 32), (8, 8, 24, 24))

    def unit(module):
        return controlnets.parse_unit({"enabled": True, "module": module, "model": "tiny-inpaint",
                                       "image": {"image": b64(image), "mask": b64(mask)}}, 0)

    harmonious, only = unit("inpaint_global_harmonious"), unit("inpaint_only")
    job, info = controlnets.prepare_job([harmonious], width=32, height=32, registry=registry)
    detected = job.units[0].detected_map
    assert detected.shape == (32, 32, 4) and np.array_equal(detected[..., 3], np.asarray(mask))
    hint = controlnet.hint_tensor(detected)
    assert (hint[0, :, 12, 12] == -1).all() and (hint[0, :, 0, 0] >= 0).all()  # the ControlNet inpaint protocol
    assert info["ControlNet 0"].startswith("Module: inpaint, ")
    # the same map as inpaint_only; only inpaint_only pastes the picture back outside the mask
    only_job, _ = controlnets.prepare_job([only], width=32, height=32, registry=registry)
    assert np.array_equal(only_job.units[0].detected_map, detected)
    assert controlnets.inpaint_keeps([harmonious], width=32, height=32) == []
    assert len(controlnets.inpaint_keeps([only], width=32, height=32)) == 1
    # a mask is needed: img2img's when the unit has none
    bare = controlnets.parse_unit({"enabled": True, "module": "inpaint", "model": "tiny-inpaint"}, 0)
    job, _ = controlnets.prepare_job([bare], width=32, height=32, registry=registry, init_image=image, init_mask=mask)
    assert np.array_equal(job.units[0].detected_map, detected)


@pytest.fixture
def pidinet_file(server):
    path = server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER / "pidinet" / "table5_pidinet.pth"
    state = write_tiny_pidinet(path)
    yield path, state
    path.unlink()


def test_a_hidden_slider_row_gets_the_units_processor_res(server, pidinet_file, tmp_path):
    path, state = pidinet_file
    pre = controlnet_preprocessors.find("softedge_pidinet")
    assert pre.resolution is None and pre.resolution_range == controlnet_preprocessors.RESOLUTION
    image = picture(64, 48)
    r = requests.post(server.url + "/controlnet/detect", timeout=60, json={
        "controlnet_module": "softedge_pidinet", "controlnet_input_images": [b64(image)],
        "controlnet_processor_res": 64})
    assert r.status_code == 200, r.text
    edges = np.asarray(decode(r.json()["images"][0]).convert("L"))
    padded, th, tw = _resized(np.asarray(image), 64)  # the extension: resize_image_with_pad(img, 64)
    expected = (reference_pidinet(state, padded)[:th, :tw] * 255.0).clip(0, 255).astype(np.uint8)
    assert edges.shape == (64, 85) and np.abs(edges.astype(int) - expected).max() <= 1

    # units: processor_res settled in 64..2048 (-1 or out of range: 512), pixel perfect's passed as computed
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    write_controlnet(folder / "tiny-soft.safetensors", build_controlnet("sd1", seed=6), "ldm")
    registry = controlnets.ControlNets([folder], annotator_dir=path.parent.parent)

    def detected(**fields):
        unit = controlnets.parse_unit({"enabled": True, "module": "softedge_pidinet", "model": "tiny-soft",
                                       "image": b64(image), **fields}, 0)
        job, info = controlnets.prepare_job([unit], width=128, height=96, registry=registry)
        return job.units[0].detected_map.shape[:2], controlnets.parse_infotext_value(info["ControlNet 0"])

    shape, info = detected(processor_res=64)
    assert shape == (64, 85) and info["processor_res"] == 64
    shape, info = detected(processor_res=128)
    assert shape == (128, 171) and info["processor_res"] == 128
    # pixel perfect, 48 x 64 into 96 x 128 (Crop and Resize): max(96/48, 128/64) * 48 = 96
    shape, info = detected(processor_res=64, pixel_perfect=True)
    assert shape == (96, 128) and info["pixel_perfect"] is True and info["processor_res"] == 64


def test_settling_keeps_each_rows_resolution_range():
    def settled(module, res):
        unit = controlnets.parse_unit({"enabled": True, "module": module, "processor_res": res}, 0)
        unit.settle()
        return unit.processor_res

    assert settled("lineart_realistic", 768) == 768 and settled("lineart_realistic", -1) == 512
    assert settled("recolor_luminance", 100) == 100 and settled("tile_resample", 4000) == 512
    assert settled("canny", 64) == 64
    # the extension's newer rows hide a 0..1 parameter instead: their default whatever was sent
    assert settled("inpaint", 512) == settled("inpaint_only", -1) == settled("invert", 768) == 0.5
    assert settled("shuffle", 768) == 512


# ------------------------------------------------------------------------------------ SDXL Revision

def _tiny_clip_g(path, seed=9):
    """A tiny random CLIPVisionModelWithProjection whose projection has the tiny SDXL's pooled width,
    saved as the extension's clip_g.pth (a torch state dict, transformers' names)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from tests.fixtures.tiny_models import TEXT_HIDDEN, randomize_

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
                              image_size=224, patch_size=32, projection_dim=TEXT_HIDDEN, hidden_act="gelu",
                              layer_norm_eps=1e-5)
    model = randomize_(CLIPVisionModelWithProjection(config), torch.Generator().manual_seed(seed)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model


def test_revision_rows_are_listed_and_refused_by_detect(server):
    listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()["module_detail"]
    noise = [{"name": "Noise Augmentation", "value": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}]
    assert listed["revision_clipvision"] == listed["revision_ignore_prompt"] == {"model_free": True, "sliders": noise}
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["Revision"]["module_list"] == ["none", "revision_clipvision", "revision_ignore_prompt"]
    assert types["Revision"]["default_option"] == "revision_clipvision"
    r = requests.post(server.url + "/controlnet/detect", timeout=60, json={
        "controlnet_module": "revision_clipvision", "controlnet_input_images": [b64(picture(32, 32))]})
    assert r.status_code == 422 and r.json()["detail"].endswith("Module not supported")


def test_revision_embedding_is_the_noise_augmented_clip_image_embedding(tmp_path):
    from modules.core import ip_adapter

    model = _tiny_clip_g(tmp_path / "clip_g.pth")
    clip = ip_adapter.load_clip_vision(tmp_path / "clip_g.pth")
    flat = np.zeros((30, 50, 3), np.uint8)
    flat[:] = (200, 100, 50)  # one colour: the squeeze to 224 x 224 leaves it, then CLIP's mean and std
    pixels = controlnet.revision_pixels(flat, 224)
    want = [(c / 255 - m) / s for c, m, s in zip((200, 100, 50), ip_adapter.CLIP_MEAN, ip_adapter.CLIP_STD)]
    assert pixels.shape == (1, 3, 224, 224) and torch.allclose(pixels[0, :, 7, 9], torch.tensor(want), atol=1e-6)
    with torch.no_grad():
        embeds = model(pixel_values=pixels).image_embeds
    noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(1))
    # the extension's q_sample: linear betas sqrt-spaced 1e-4 .. 2e-2; k = int(level * 1000) within 0..999
    betas = np.linspace(0.01, 0.02 ** 0.5, 1000) ** 2
    for level, k in ((0.0, 0), (0.5, 500), (1.0, 999)):
        a = np.prod(1 - betas[:k + 1])
        got = controlnet.revision_embedding(clip, flat, level, noise)
        assert torch.allclose(got, a ** 0.5 * embeds + (1 - a) ** 0.5 * noise, atol=1e-5), level
    assert np.isclose(controlnet.revision_alphas_cumprod()[0], 0.9999)


def test_revision_units_set_the_pooled_embedding_and_blank_the_prompt(sdxl, sd1, tmp_path):
    from modules.core.job_settings import GenerationSettings
    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest, RequestError

    annotators = tmp_path / "annotators"
    registry = controlnets.ControlNets([tmp_path / "ControlNet"], annotator_dir=annotators)
    image = b64(picture(48, 32))

    def units(module="revision_clipvision", **fields):
        return [controlnets.parse_unit({"enabled": True, "module": module, "model": "None", "image": image,
                                        **fields}, 0)]

    with pytest.raises(RequestError, match="clip_g.pth"):  # the encoder's file missing: named with its folder
        controlnets.prepare_job(units(), width=64, height=64, registry=registry)
    _tiny_clip_g(annotators / controlnet_preprocessors.CLIP_VISION_G)
    job, info = controlnets.prepare_job(units(weight=0.5), width=64, height=64, registry=registry)
    revision = job.units[0].controlnet
    assert isinstance(revision, controlnet.Revision) and revision.embedding.shape == (1, 64)
    assert info["ControlNet 0"].startswith("Module: revision_clipvision, Model: None, Weight: 0.5")

    # the marked conds: conditional rows the weighted embedding, unconditional rows zero, context kept
    residuals = job.for_pass(sdxl, (1, 4, 8, 8))
    cond = {"context": torch.ones(1, 5, 8), "text_embeds": torch.ones(1, 64), "time_ids": torch.ones(1, 6)}
    uncond = {k: v * 2 for k, v in cond.items()}
    residuals.at_step(0, 4)
    c, u = residuals.mark(cond, uncond)
    assert torch.allclose(c["text_embeds"], 0.5 * revision.embedding)
    assert torch.equal(u["text_embeds"], torch.zeros(1, 64))
    assert torch.equal(c["context"], cond["context"]) and torch.equal(c["time_ids"], cond["time_ids"])
    job.units[0].guidance_end = 0.5  # outside its range: the prompt's own
    residuals.at_step(3, 4)
    c, u = residuals.mark(cond, uncond)
    assert torch.equal(c["text_embeds"], cond["text_embeds"]) and torch.equal(u["text_embeds"], uncond["text_embeds"])
    ignore, _ = controlnets.prepare_job(units("revision_ignore_prompt"), width=64, height=64, registry=registry)
    blank = ignore.for_pass(sdxl, (1, 4, 8, 8))
    blank.at_step(0, 4)
    c, u = blank.mark(cond, uncond)
    assert not c["context"].any() and not u["context"].any() and c["text_embeds"].abs().sum() > 0
    empty, _ = controlnets.prepare_job(units(), width=64, height=64, registry=registry, empty_prompts=True)
    residuals = empty.for_pass(sdxl, (1, 4, 8, 8))
    residuals.at_step(0, 4)
    assert not residuals.mark(cond, uncond)[0]["context"].any()  # both prompts empty: blank too
    with pytest.raises(RequestError, match="only supports SDXL"):
        job.for_pass(sd1, (1, 4, 8, 8))

    # in the pipeline: the picture steers the SDXL UNet; ignoring the prompt steers it otherwise
    def run(control=None):
        settings = GenerationSettings(outdir_samples=tmp_path, outdir_grids=tmp_path, control=control)
        request = GenerationRequest(prompt="a red cube", width=64, height=64, steps=2, cfg_scale=5.0,
                                    sampler_name="Euler", seed=3, save_images=False)
        return np.asarray(generate(request, sdxl, settings).images[0]).astype(int)

    plain, steered = run(), run(controlnets.prepare_job(units(), width=64, height=64, registry=registry)[0])
    ignored = run(ignore)
    assert np.abs(steered - plain).max() > 4 and np.abs(ignored - steered).max() > 4


def test_recolor_unit_writes_its_map_into_the_finished_picture(server, api_models):
    """Through the API (scripts/controlnet.py's postprocess_batch): the picture's HSV V is the unit's gray
    map (saved PNG, so up to the colour round trip's rounding), and without the unit it is not."""
    from tests.test_controlnet import _pixels, _txt2img

    ramp = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    unit = {"enabled": True, "module": "recolor_intensity", "model": api_models["ldm"],
            "image": b64(Image.fromarray(ramp)), "resize_mode": "Just Resize"}
    done = _pixels(_txt2img(server, [unit], width=64, height=64))
    value = done.max(axis=2).astype(int)  # HSV V
    assert np.abs(value - ramp[:, :, 0].astype(int)).max() <= 2
    plain = _pixels(_txt2img(server, width=64, height=64)).max(axis=2).astype(int)
    assert np.abs(plain - ramp[:, :, 0].astype(int)).max() > 20
