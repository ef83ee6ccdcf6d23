"""Every /sdapi/v1 endpoint (and A1111's /internal/progress) over real HTTP against the session's
shared `server` (tiny SD1 loaded): each answers A1111's shape with the values it should hold.

txt2img/img2img requests are tiny (64x64, 1-2 steps); see test_api_requests.py for the request
fields and test_api.py / test_api_img2img.py for generation in depth.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from modules.core import image_io, postprocess
from modules.core.postprocess import UpscaleSettings

from tests.api_common import BASE, PROCESSED_KEYS, assert_error, decode
from tests.pictures import picture

STATE_KEYS = {"skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
              "sampling_step", "sampling_steps"}


def b64(image: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def ok_json(r) -> object:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


@pytest.fixture
def option(server):
    """Set options for one test; the old values come back afterwards."""
    saved: dict = {}

    def set_(**values):
        current = server.get("/sdapi/v1/options").json()
        for key in values:
            saved.setdefault(key, current[key])
        assert ok_json(server.post("/sdapi/v1/options", json=values)) == {}

    yield set_
    if saved:
        server.post("/sdapi/v1/options", json=saved)


# ------------------------------------------------------------------------------------ generation

def test_txt2img_and_img2img(server):
    data = ok_json(server.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1}))
    info = json.loads(data["info"])
    assert PROCESSED_KEYS <= set(info) and decode(data["images"][0]).size == (64, 64)
    body = {**BASE, "steps": 1, "init_images": [b64(picture())], "denoising_strength": 0.5}
    data = ok_json(server.post("/sdapi/v1/img2img", json=body))
    info = json.loads(data["info"])
    assert decode(data["images"][0]).size == (64, 64) and info["denoising_strength"] == 0.5
    assert data["parameters"]["init_images"] is None  # not echoed without include_init_images


# ------------------------------------------------------------------------------------ extras

def test_extra_single_image_scale_by(server):
    source = picture(40, 24)
    data = ok_json(server.post("/sdapi/v1/extra-single-image", json={
        "image": "data:image/png;base64," + b64(source), "upscaling_resize": 2, "upscaler_1": "Lanczos",
        "gfpgan_visibility": 0, "codeformer_visibility": 0, "codeformer_weight": 0.5}))
    assert set(data) == {"image", "html_info"}
    result = decode(data["image"])
    assert result.size == (80, 48)
    expected, _ = postprocess.upscale(source, UpscaleSettings(upscale_by=2, upscaler_1="Lanczos"))
    assert np.array_equal(px(result), px(expected))
    assert data["html_info"] == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    assert result.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"


def test_extra_single_image_scale_to_with_crop_keeps_the_infotext(server):
    source = picture(40, 20)
    source_info = PngImagePlugin.PngInfo()
    source_info.add_text("parameters", "a cube\nSteps: 3, Sampler: Euler, Seed: 5")
    buffer = io.BytesIO()
    source.save(buffer, format="PNG", pnginfo=source_info)
    data = ok_json(server.post("/sdapi/v1/extra-single-image", json={
        "image": base64.b64encode(buffer.getvalue()).decode(), "resize_mode": 1, "upscaling_resize_w": 64,
        "upscaling_resize_h": 64, "upscaling_crop": True, "upscaler_1": "Nearest"}))
    result = decode(data["image"])
    assert result.size == (64, 64)
    assert result.info["parameters"] == "a cube\nSteps: 3, Sampler: Euler, Seed: 5"
    assert result.info["postprocessing"] == ("Postprocess upscale to: 64x64, Postprocess crop to: 64x64, "
                                             "Postprocess upscaler: Nearest")
    colours = {tuple(c) for c in px(source).reshape(-1, 3)}
    assert all(tuple(c) in colours for c in px(result).reshape(-1, 3))  # Nearest: only source colours


def test_extra_single_image_without_upscaler_returns_the_picture(server):
    source = picture(24, 16)
    data = ok_json(server.post("/sdapi/v1/extra-single-image", json={"image": b64(source)}))  # upscaler_1 "None"
    assert np.array_equal(px(decode(data["image"])), px(source)) and data["html_info"] == "<p></p>"


def test_extra_batch_images(server):
    images = [picture(16, 16), picture(8, 24)]
    data = ok_json(server.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": b64(im), "name": f"image{i}.png"} for i, im in enumerate(images)],
        "upscaling_resize": 4, "upscaler_1": "Nearest", "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5}))
    assert set(data) == {"images", "html_info"}
    results = [decode(s) for s in data["images"]]
    assert [r.size for r in results] == [(64, 64), (32, 96)]
    for source, result in zip(images, results):
        expected, _ = postprocess.upscale(source, UpscaleSettings(upscale_by=4, upscaler_1="Nearest",
                                                                  upscaler_2="Lanczos", upscaler_2_visibility=0.5))
        assert np.array_equal(px(result), px(expected))
    assert "Postprocess upscaler 2: Lanczos" in data["html_info"]


@pytest.mark.parametrize("change,field,status,hint", [
    # no model file in the server's models/GFPGAN, models/Codeformer: the message names the file to put there
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility", 422, "GFPGANv1.4.pth"),
    ({"codeformer_visibility": 1}, "codeformer_visibility", 422, "codeformer-v0.1.0.pth"),
    ({"upscaler_1": "ESRGAN_4x"}, "upscaler_1", 422, "Lanczos"),
    ({"resize_mode": 2}, "resize_mode", 422, "1"),
    ({"upscaling_resize": 0}, "upscaling_resize", 422, "0"),
    ({"upscaling_resize": 500, "upscaler_1": "Nearest", "image": b64(picture(64, 64))}, "upscaling_resize", 422,
     "limit"),  # 32000x32000: over img_max_size_mp (200 MP)
    ({"image": "not base64 at all !!!"}, "image", 400, "base64"),
    ({"image": base64.b64encode(b"plain text, no picture here").decode()}, "image", 400, "image"),
    ({"image": ""}, "image", 400, "image"),
], ids=["gfpgan", "codeformer", "unknown-upscaler", "resize-mode-2", "resize-0", "too-large", "not-base64",
        "not-an-image", "empty"])
def test_extra_single_image_refusals(server, change, field, status, hint):
    body = {"image": b64(picture(16, 16)), "upscaler_1": "Lanczos", **change}
    message = assert_error(server.post("/sdapi/v1/extra-single-image", json=body), field, (status,))
    assert hint in message, message


def test_extra_batch_images_names_the_bad_item(server):
    body = {"imageList": [{"data": b64(picture(8, 8)), "name": "a"}, {"data": "%%%", "name": "b"}], "upscaler_1": "Lanczos"}
    r = server.post("/sdapi/v1/extra-batch-images", json=body)
    assert_error(r, "imageList", (400,))
    assert r.json()["detail"][0]["loc"] == ["body", "imageList", "1", "data"]


# ------------------------------------------------------------------------------------ png-info

def test_png_info_of_a_generated_image(server):
    data = ok_json(server.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1, "seed": 31}))
    text = json.loads(data["info"])["infotexts"][0]
    info = ok_json(server.post("/sdapi/v1/png-info", json={"image": data["images"][0]}))
    assert set(info) == {"info", "items", "parameters"}
    assert info["info"] == text and info["items"] == {}
    p = info["parameters"]
    assert p["Prompt"] == BASE["prompt"] and p["Negative prompt"] == BASE["negative_prompt"]
    assert (p["Steps"], p["Seed"], p["Size-1"], p["Size-2"]) == ("1", "31", "64", "64")
    assert p["Sampler"] == "Euler a" and p["Clip skip"] == "1"  # a filled-in A1111 default
    assert p["Hires sampler"] == "Use same sampler"


def test_png_info_items_and_jpeg_exif(server):
    image = picture(16, 16)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "x\nSteps: 5, Sampler: Euler, Seed: 2")
    meta.add_text("postprocessing", "Postprocess upscaler: Lanczos")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    info = ok_json(server.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}))
    assert info["items"] == {"postprocessing": "Postprocess upscaler: Lanczos"}
    assert info["parameters"]["Steps"] == "5"
    jpeg = image_io.encode_image(image, "jpg", "y, photo\nSteps: 7, Sampler: Heun, Seed: 9")
    info = ok_json(server.post("/sdapi/v1/png-info", json={"image": base64.b64encode(jpeg).decode()}))
    assert info["info"] == "y, photo\nSteps: 7, Sampler: Heun, Seed: 9" and info["parameters"]["Sampler"] == "Heun"
    plain = ok_json(server.post("/sdapi/v1/png-info", json={"image": b64(image)}))
    assert plain["info"] == "" and plain["parameters"]["Prompt"] == ""
    assert_error(server.post("/sdapi/v1/png-info", json={"image": "definitely not an image"}), "image", (400,))


# ------------------------------------------------------------------------------------ progress

def test_progress_when_idle(server):
    p = ok_json(server.get("/sdapi/v1/progress"))
    assert set(p["state"]) == STATE_KEYS
    assert p["progress"] == 0 and p["eta_relative"] == 0 and p["current_image"] is None
    assert p["state"]["job"] == "" and p["state"]["job_count"] == 0


def test_progress_preview_and_internal_progress_by_task_id(server, option):
    option(live_previews_enable=True, show_progress_every_n_steps=1)
    body = {**BASE, "width": 256, "height": 256, "steps": 150, "force_task_id": "task(endpoints-1)"}
    second = {**BASE, "steps": 1, "force_task_id": "task(endpoints-2)"}
    out: dict = {}
    first_run = threading.Thread(target=lambda: out.update(a=server.post("/sdapi/v1/txt2img", json=body)))
    first_run.start()
    seen = internal = queued = pending = second_run = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first_run.is_alive():
        p = server.get("/sdapi/v1/progress").json()
        if p["current_task"] == "task(endpoints-1)" and p["state"]["sampling_step"] >= 3 and p["current_image"]:
            seen = p
            internal = server.post("/internal/progress", json={"id_task": "task(endpoints-1)"}).json()
            second_run = threading.Thread(target=lambda: out.update(b=server.post("/sdapi/v1/txt2img", json=second)))
            second_run.start()
            while not queued and time.monotonic() < deadline:
                candidate = server.post("/internal/progress", json={"id_task": "task(endpoints-2)"}).json()
                if candidate["queued"]:
                    queued = candidate
                    pending = server.get("/internal/pending-tasks").json()
            break
        time.sleep(0.05)
    server.post("/sdapi/v1/interrupt")
    first_run.join(120)
    if second_run is not None:
        second_run.join(120)
    assert seen is not None, "never saw the job with a preview"
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] > 0 and seen["textinfo"] == "Batch 1 out of 1"
    preview = decode(seen["current_image"])
    assert preview.size == (32, 32)  # the latent's size: a cheap approximation, no VAE decode

    assert internal["active"] is True and internal["queued"] is False and internal["completed"] is False
    assert 0 < internal["progress"] < 1 and internal["eta"] > 0
    assert internal["live_preview"].startswith("data:image/png;base64,") and internal["id_live_preview"] >= 0
    assert queued == {"active": False, "queued": True, "completed": False, "progress": None, "eta": None,
                      "live_preview": None, "id_live_preview": -1, "textinfo": "In queue: 1/1"}
    assert pending == {"size": 1, "tasks": ["task(endpoints-2)"]}

    assert out["a"].status_code == 200 and out["b"].status_code == 200
    done = server.post("/internal/progress", json={"id_task": "task(endpoints-1)"}).json()
    assert done["completed"] is True and done["active"] is False and done["textinfo"] == "Waiting..."
    assert server.post("/internal/progress", json={"id_task": "task(endpoints-2)"}).json()["completed"] is True
    assert server.post("/internal/progress", json={"id_task": "task(unknown)"}).json()["completed"] is False


def test_full_live_preview_is_the_models_own_vae_decode(server, option):
    """A1111's "Full" live preview method: the job's VAE decodes the preview (the picture's own
    size, where the cheap ones are latent-sized), every show_progress_every_n_steps."""
    option(live_previews_enable=True, show_progress_every_n_steps=2, show_progress_type="Full",
           live_preview_content="Combined", show_progress_grid=True, live_previews_image_format="jpeg")
    body = {**BASE, "width": 64, "height": 64, "steps": 150, "batch_size": 2, "force_task_id": "task(endpoints-full)"}
    out: dict = {}
    run = threading.Thread(target=lambda: out.update(r=server.post("/sdapi/v1/txt2img", json=body)))
    run.start()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.is_alive():
        p = server.get("/sdapi/v1/progress").json()
        if p["current_task"] == "task(endpoints-full)" and p["current_image"]:
            seen = p
            internal = server.post("/internal/progress", json={"id_task": "task(endpoints-full)",
                                                               "live_preview": True, "id_live_preview": -1}).json()
            break
        time.sleep(0.05)
    server.post("/sdapi/v1/interrupt")
    run.join(120)
    assert seen is not None, "never saw a Full preview"
    assert seen["state"]["sampling_step"] >= 2
    # decoded by the VAE (not a latent-sized map), the batch's two pictures side by side (show_progress_grid)
    assert decode(seen["current_image"]).size == (128, 64)
    assert internal["live_preview"].startswith("data:image/jpeg;base64,")  # live_previews_image_format
    assert out["r"].status_code == 200


def test_interrupt_and_skip_answer_json(server):
    assert ok_json(server.post("/sdapi/v1/interrupt")) == {}
    assert ok_json(server.post("/sdapi/v1/skip")) == {}


# ------------------------------------------------------------------------------------ options, flags

def test_options_get_and_post(server, option):
    opts = ok_json(server.get("/sdapi/v1/options"))
    for key in ("sd_model_checkpoint", "sd_vae", "samples_format", "CLIP_stop_at_last_layers", "send_seed",
                "randn_source", "eta_noise_seed_delta", "live_previews_enable", "show_progress_every_n_steps"):
        assert key in opts, key
    option(jpeg_quality=55, send_seed=False)
    after = server.get("/sdapi/v1/options").json()
    assert after["jpeg_quality"] == 55 and after["send_seed"] is False
    assert_error(server.post("/sdapi/v1/options", json={"jpeg_quality": 500}), "jpeg_quality")


def test_cmd_flags(server):
    flags = ok_json(server.get("/sdapi/v1/cmd-flags"))
    assert flags["api"] is True and flags["nowebui"] is False
    assert Path(flags["data_dir"]) == server.data_dir and flags["port"] == int(server.url.rsplit(":", 1)[1])
    for name in ("ckpt_dir", "lora_dir", "embeddings_dir", "skip_load_model_at_start", "api_auth", "gradio_auth"):
        assert name in flags, name
    assert flags["api_auth"] is None


# ------------------------------------------------------------------------------------ listings

def test_samplers_and_schedulers_in_a1111_shape(server):
    samplers = {s["name"]: s for s in ok_json(server.get("/sdapi/v1/samplers"))}
    assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert samplers["DPM++ 2M"]["aliases"] == ["k_dpmpp_2m"]
    assert samplers["Euler a"]["options"] == {"uses_ensd": "True"}
    assert samplers["DPM++ 2M SDE"]["options"] == {"scheduler": "exponential", "brownian_noise": "True"}
    assert samplers["Euler"]["options"] == {}
    schedulers = {s["name"]: s for s in ok_json(server.get("/sdapi/v1/schedulers"))}
    assert list(schedulers) == ["automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform",
                                "kl_optimal", "align_your_steps", "simple", "normal", "ddim", "beta"]
    assert schedulers["karras"] == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                                    "need_inner_model": False}
    assert schedulers["uniform"]["need_inner_model"] is True and schedulers["uniform"]["default_rho"] == -1
    assert schedulers["sgm_uniform"]["aliases"] == ["SGMUniform"] and schedulers["sgm_uniform"]["label"] == "SGM Uniform"


def test_upscaler_listings(server):
    names = [u["name"] for u in ok_json(server.get("/sdapi/v1/upscalers"))]
    assert names == ["None", "Lanczos", "Nearest"]
    modes = [m["name"] for m in ok_json(server.get("/sdapi/v1/latent-upscale-modes"))]
    assert modes[0] == "Latent" and len(modes) == 6


def test_sd_models_with_configs(server, tiny_checkpoints):
    models = {Path(m["filename"]).name: m for m in ok_json(server.get("/sdapi/v1/sd-models"))}
    sd2 = models[Path(tiny_checkpoints.sd2_v).name]
    assert sd2["config"] is not None and Path(sd2["config"]).name == "tiny-sd2-v.yaml" and Path(sd2["config"]).is_file()
    assert models["tiny-sd1.safetensors"]["config"] is None
    assert ok_json(server.post("/sdapi/v1/refresh-checkpoints")) == {}


def test_sd_vae_and_refresh_vae(server):
    folder = server.data_dir / "models" / "VAE"
    folder.mkdir(parents=True, exist_ok=True)
    vae = folder / "sub" / "test-vae.safetensors"
    vae.parent.mkdir(exist_ok=True)
    vae.write_bytes(b"not loaded, only listed")
    (folder / "notes.txt").write_text("not a VAE")
    try:
        assert ok_json(server.post("/sdapi/v1/refresh-vae")) == {}
        listed = ok_json(server.get("/sdapi/v1/sd-vae"))
        assert {"model_name": "test-vae.safetensors", "filename": str(vae)} in listed
        assert all(set(v) == {"model_name", "filename"} for v in listed)
        assert "notes.txt" not in [v["model_name"] for v in listed]
    finally:
        vae.unlink()
        server.post("/sdapi/v1/refresh-vae")
    assert "test-vae.safetensors" not in [v["model_name"] for v in server.get("/sdapi/v1/sd-vae").json()]


def test_empty_feature_listings(server):
    for path in ("hypernetworks", "realesrgan-models"):
        assert ok_json(server.get(f"/sdapi/v1/{path}")) == []
    # A1111 lists its two face restorers whether or not their files are there
    assert [r["name"] for r in ok_json(server.get("/sdapi/v1/face-restorers"))] == ["CodeFormer", "GFPGAN"]


def test_styles_embeddings_loras_listings(server):
    assert isinstance(ok_json(server.get("/sdapi/v1/prompt-styles")), list)
    embeddings = ok_json(server.get("/sdapi/v1/embeddings"))
    assert set(embeddings) == {"loaded", "skipped"}
    assert isinstance(ok_json(server.get("/sdapi/v1/loras")), list)
    assert ok_json(server.post("/sdapi/v1/refresh-loras")) == {}
    assert ok_json(server.post("/sdapi/v1/refresh-embeddings")) == {}


def test_memory(server):
    memory = ok_json(server.get("/sdapi/v1/memory"))
    ram = memory["ram"]
    assert set(ram) == {"free", "used", "total"} and 0 < ram["used"] < ram["total"]
    assert ram["free"] == ram["total"] - ram["used"]
    import torch

    if torch.cuda.is_available():
        assert set(memory["cuda"]) == {"system", "active", "allocated", "reserved", "inactive", "events"}
    else:
        assert memory["cuda"] == {"error": "unavailable"}


# ------------------------------------------------------------------------------------ checkpoints

def _loads(server) -> int:
    return len(re.findall(r"^Model loaded: ", server.output(), re.M))


def test_unload_and_reload_checkpoint(server):
    ok_json(server.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1}))  # the selected model is loaded
    selected = server.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    before = _loads(server)
    assert ok_json(server.post("/sdapi/v1/reload-checkpoint")) == {}
    assert _loads(server) == before  # already loaded: nothing to do
    assert ok_json(server.post("/sdapi/v1/unload-checkpoint")) == {}
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == selected  # still selected
    assert ok_json(server.post("/sdapi/v1/reload-checkpoint")) == {}
    assert _loads(server) == before + 1
    assert ok_json(server.post("/sdapi/v1/unload-checkpoint")) == {}
    data = ok_json(server.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1}))  # loads it again by itself
    assert json.loads(data["info"])["sd_model_name"] == "tiny-sd1" and _loads(server) == before + 2


# ------------------------------------------------------------------------------------ methods

@pytest.mark.parametrize("path", ["txt2img", "img2img", "extra-single-image", "extra-batch-images", "png-info",
                                  "interrupt", "skip", "refresh-checkpoints", "refresh-vae", "refresh-loras",
                                  "reload-checkpoint", "unload-checkpoint"])
def test_get_on_a_post_route_is_405(server, path):
    r = server.get(f"/sdapi/v1/{path}")
    assert r.status_code == 405 and "POST" in r.headers["allow"] and r.json()["detail"] == "Method Not Allowed"


def test_absent_features_are_a_json_404(server):
    for method, path in (("post", "create/embedding"),
                         ("get", "no-such-endpoint"), ("post", "train/hypernetwork")):
        r = getattr(server, method)(f"/sdapi/v1/{path}")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}, (method, path, r.status_code)


def test_openapi_lists_the_endpoints(server):
    schema = ok_json(server.get("/openapi.json"))
    for path in ("/sdapi/v1/extra-single-image", "/sdapi/v1/png-info", "/sdapi/v1/memory", "/sdapi/v1/sd-vae",
                 "/sdapi/v1/cmd-flags", "/internal/progress", "/sdapi/v1/unload-checkpoint"):
        assert path in schema["paths"], path
    assert server.get("/docs").status_code == 200
