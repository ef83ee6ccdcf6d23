"""The HTTP API (/sdapi/v1) over real HTTP, against started servers with tiny checkpoints.

Two servers: the session's shared `server` (UI + API, tiny SD1 loaded) and a module-scoped
API-only server behind HTTP Basic auth (`--nowebui --api-auth`) with its own checkpoints folder,
where the tests that add files (a native-size model, a corrupt file) do their damage.
Every request is tiny (64x64, 1-2 steps) except the progress/interrupt one, which is cut short.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.api_common import BASE, PROCESSED_KEYS, assert_error, decode

STATE_KEYS = {"skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
              "sampling_step", "sampling_steps"}
SAMPLERS = {"Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
            "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
            "PLMS", "UniPC", "LCM"}
AUTH = ("user", "secret")


# ------------------------------------------------------------------------------------ helpers

def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def txt2img(srv, body: dict, **kw) -> tuple[list[Image.Image], dict, dict]:
    """POST txt2img, expect success; returns (images, info, whole response)."""
    r = srv.post("/sdapi/v1/txt2img", json=body, **kw)
    assert r.status_code == 200, r.text
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"]), data


def first_image(srv, body: dict, **kw) -> np.ndarray:
    images, info, _ = txt2img(srv, body, **kw)
    return pixels(images[info["index_of_first_image"]])


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def checkpoint_title(srv, stem: str, **kw) -> str:
    models = srv.get("/sdapi/v1/sd-models", **kw).json()
    return next(m["title"] for m in models if m["model_name"] == stem and m["filename"].endswith(".safetensors"))


def select(srv, title: str, **kw) -> None:
    r = srv.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}, **kw)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def sd1_title(server, tiny_checkpoints):
    return f"tiny-sd1.safetensors [{sha256(tiny_checkpoints.sd1)[:10]}]"


@pytest.fixture(scope="module")
def api_only(tiny_checkpoints, tmp_path_factory):
    """`--nowebui --api-auth user:secret` over its own folder: the tiny SD1 and a copy of it that
    declares a native size of 128x64 in its safetensors metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tests.server import run_server

    ckpts = tmp_path_factory.mktemp("api-ckpts")
    sd1 = ckpts / "tiny-sd1.safetensors"
    os.link(tiny_checkpoints.sd1, sd1)
    with safe_open(str(tiny_checkpoints.sd1), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata() or {})
    save_file(tensors, str(ckpts / "tiny-native.safetensors"), metadata={**meta, "modelspec.resolution": "128x64"})
    data = tmp_path_factory.mktemp("api-data")
    with run_server(data, ckpts, "--nowebui", "--api-auth", "user:secret", "--ckpt", str(sd1), auth=AUTH) as srv:
        srv.ckpt_dir = ckpts
        yield srv


# ------------------------------------------------------------------------------------ txt2img

def test_txt2img_response_shape_and_info(server, tiny_checkpoints):
    images, info, data = txt2img(server, BASE)

    assert len(images) == 1 and images[0].size == (64, 64) and images[0].mode == "RGB"
    for key, value in BASE.items():
        assert data["parameters"][key] == value, key
    assert isinstance(data["info"], str)
    assert PROCESSED_KEYS <= set(info), PROCESSED_KEYS - set(info)

    assert info["prompt"] == BASE["prompt"] and info["all_prompts"] == [BASE["prompt"]]
    assert info["negative_prompt"] == "blurry" and info["all_negative_prompts"] == ["blurry"]
    assert info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["subseed"] == info["all_subseeds"][0] and info["subseed_strength"] == 0
    assert (info["width"], info["height"], info["steps"], info["batch_size"]) == (64, 64, 2, 1)
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 7.0
    assert info["sd_model_name"] == "tiny-sd1"
    assert info["sd_model_hash"] == sha256(tiny_checkpoints.sd1)[:10]
    assert info["index_of_first_image"] == 0 and info["clip_skip"] == 1
    assert info["restore_faces"] is False and info["is_using_inpainting_conditioning"] is False
    assert re.fullmatch(r"\d{14}", info["job_timestamp"])
    assert isinstance(info["version"], str) and info["version"]
    assert len(info["infotexts"]) == 1
    text = info["infotexts"][0]
    assert text.startswith("a red cube on a table\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, ")
    for part in ("CFG scale: 7,", "Seed: 1234", "Size: 64x64", f"Model hash: {info['sd_model_hash']}",
                 "Model: tiny-sd1"):
        assert part in text
    assert images[0].info["parameters"] == text


def test_batch_seeds_and_grid(server):
    images, info, _ = txt2img(server, {**BASE, "seed": 77, "batch_size": 2})

    assert info["all_seeds"] == [77, 78] and info["seed"] == 77
    assert info["all_subseeds"][1] == info["all_subseeds"][0] + 1
    assert info["all_prompts"] == [BASE["prompt"]] * 2
    first = info["index_of_first_image"]
    singles = images[first:]
    assert len(singles) == 2 and all(im.size == (64, 64) for im in singles)
    if first == 1:  # return_grid: A1111 puts the grid first
        assert images[0].size == (128, 64)
    assert ["Seed: 77," in t for t in info["infotexts"]] == [True, False]
    assert "Seed: 78," in info["infotexts"][1]
    assert not np.array_equal(pixels(singles[0]), pixels(singles[1]))


def test_same_request_same_pixels_other_seed_other_pixels(server):
    a = first_image(server, BASE)
    b = first_image(server, BASE)
    c = first_image(server, {**BASE, "seed": BASE["seed"] + 1})
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0


def test_size_left_out_is_the_models_native_size(api_only):
    body = {k: v for k, v in BASE.items() if k not in ("width", "height")}
    body = {**body, "steps": 1, "override_settings": {"sd_model_checkpoint": "tiny-native.safetensors"}}
    images, info, _ = txt2img(api_only, body, auth=AUTH)
    assert images[0].size == (128, 64)
    assert (info["width"], info["height"]) == (128, 64)
    assert "Size: 128x64" in info["infotexts"][0]
    assert info["sd_model_name"] == "tiny-native"


def test_png_infotext_reads_back_with_sd_parsers(server):
    from sd_parsers import ParserManager

    images, info, _ = txt2img(server, {**BASE, "seed": 4242})
    assert images[0].info["parameters"] == info["infotexts"][0]
    parsed = ParserManager().parse(images[0])
    assert parsed is not None and parsed.generator.name == "AUTOMATIC1111"
    sampler = parsed.samplers[0]
    assert sampler.name == "Euler a"
    assert [str(p.value) for p in sampler.prompts] == [BASE["prompt"]]
    assert [str(p.value) for p in sampler.negative_prompts] == ["blurry"]
    assert sampler.parameters["seed"] == "4242" and sampler.parameters["steps"] == "2"
    assert sampler.model.name == "tiny-sd1"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_save_images_writes_numbered_files_and_default_writes_none(server):
    samples = server.data_dir / "outputs" / "txt2img-images"
    grids = server.data_dir / "outputs" / "txt2img-grids"
    before = _files(samples) | _files(grids)

    txt2img(server, BASE)  # save_images defaults to false
    txt2img(server, {**BASE, "save_images": False, "batch_size": 2})
    assert _files(samples) | _files(grids) == before

    today = datetime.date.today().strftime("%Y-%m-%d")
    day = samples / today
    start = max([int(p.name[:5]) for p in _files(day) if p.name[:5].isdigit()], default=-1) + 1
    _, info, _ = txt2img(server, {**BASE, "seed": 900, "batch_size": 2, "save_images": True})

    new = sorted(_files(samples) - before)
    assert [p.relative_to(samples).as_posix() for p in new] == [
        f"{today}/{start:05d}-900.png", f"{today}/{start + 1:05d}-901.png"]
    saved = Image.open(new[1])
    # save_images with the return_grid option: the grid and its infotext come first (A1111)
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3
    assert saved.size == (64, 64) and saved.info["parameters"] == info["infotexts"][2]
    new_grids = sorted(_files(grids) - before)
    assert len(new_grids) == 1 and re.fullmatch(rf"{today}/grid-\d{{4}}\.png", new_grids[0].relative_to(grids).as_posix())


def test_old_combined_sampler_names_and_sampler_index(server):
    explicit = first_image(server, {**BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
    for body in ({**BASE, "sampler_name": "DPM++ 2M Karras"},
                 {**{k: v for k, v in BASE.items() if k != "sampler_name"}, "sampler_index": "DPM++ 2M Karras"}):
        images, info, _ = txt2img(server, body)
        assert info["sampler_name"] == "DPM++ 2M"
        assert "Sampler: DPM++ 2M, Schedule type: Karras," in info["infotexts"][0]
        assert np.array_equal(pixels(images[0]), explicit)


def test_unknown_fields_ignored_and_null_means_default(server):
    # no sampler_name and no sampler_index: A1111's API default, sampler_index "Euler"
    reference = first_image(server, {**BASE, "negative_prompt": "", "n_iter": 1, "batch_size": 1, "sampler_name": "Euler"})
    body = {**BASE, "negative_prompt": None, "sampler_name": None, "cfg_scale": None, "n_iter": None,
            "batch_size": None, "scheduler": None, "subseed_strength": None, "styles": None, "send_images": None,
            "save_images": None, "override_settings": None, "sampler_index": None,
            "not_an_a1111_field": 3, "firstphase_width": 0, "some_extension": {"nested": [1, 2]}}
    images, info, data = txt2img(server, body)
    assert len(images) == 1, "send_images: null must mean the default (true)"
    assert np.array_equal(pixels(images[0]), reference)
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 7.0 and info["negative_prompt"] == ""
    assert "not_an_a1111_field" not in data["parameters"]


# ------------------------------------------------------------------------------------ bad input

BAD_INPUTS = [
    ("width-65", {"width": 65}, "width", "8"),
    ("height-0", {"height": 0}, "height", "64"),
    ("steps-0", {"steps": 0}, "steps", "1"),
    ("batch_size-0", {"batch_size": 0}, "batch_size", "1"),
    ("unknown-sampler", {"sampler_name": "Nope Sampler"}, "sampler_name", "DPM++ 2M"),
    ("prompt-number", {"prompt": 5}, "prompt", "string"),
    ("prompt-list", {"prompt": ["a", "b"]}, "prompt", "string"),
    ("cfg-abc", {"cfg_scale": "abc"}, "cfg_scale", "number"),
    ("unknown-checkpoint", {"override_settings": {"sd_model_checkpoint": "no-such-model.safetensors"}},
     "sd_model_checkpoint", "tiny-sd1.safetensors"),
]


@pytest.mark.parametrize("change,field,hint", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_goes_on(server, change, field, hint):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, **change})
    message = assert_error(r, field)
    assert hint in message, message
    images, info, _ = txt2img(server, {**BASE, "steps": 1})
    assert images[0].size == (64, 64) and info["sd_model_name"] == "tiny-sd1"


def test_wrong_method_is_405(server):
    r = server.get("/sdapi/v1/txt2img")
    assert r.status_code == 405 and "POST" in r.headers.get("allow", "")
    for path in ("/sdapi/v1/interrupt", "/sdapi/v1/refresh-checkpoints"):
        assert server.get(path).status_code == 405
    r = server.post("/sdapi/v1/samplers", json={})
    assert r.status_code == 405 and "GET" in r.headers.get("allow", "")
    assert server.get("/sdapi/v1/samplers").status_code == 200  # the catch-all does not shadow real routes


# ------------------------------------------------------------------------------------ listings

def test_sd_models_lists_the_checkpoints_with_a1111_fields(server, tiny_checkpoints, sd1_title):
    models = server.get("/sdapi/v1/sd-models").json()
    by_file = {Path(m["filename"]).name: m for m in models}
    for name in ("sd1", "sd1_ckpt", "sd2_v", "sdxl", "sd1_inpainting"):
        assert Path(tiny_checkpoints[name]).name in by_file, name
    for m in models:
        assert set(m) >= {"title", "model_name", "hash", "sha256", "filename", "config"}
    sd1 = by_file["tiny-sd1.safetensors"]
    assert sd1["title"] == sd1_title  # the loaded one is hashed: "name [shorthash]"
    assert sd1["model_name"] == "tiny-sd1"
    assert sd1["sha256"] == sha256(tiny_checkpoints.sd1) and sd1["hash"] == sd1["sha256"][:10]
    assert Path(sd1["filename"]).resolve() == Path(tiny_checkpoints.sd1).resolve()
    for m in models:
        if m["hash"] is None:
            assert m["title"] == Path(m["filename"]).name and m["sha256"] is None
        else:
            assert m["title"].endswith(f" [{m['hash']}]")


def test_samplers_and_schedulers(server):
    samplers = server.get("/sdapi/v1/samplers").json()
    assert {s["name"] for s in samplers} == SAMPLERS and len(samplers) == len(SAMPLERS)
    assert all(isinstance(s["aliases"], list) and isinstance(s["options"], dict) for s in samplers)
    schedulers = server.get("/sdapi/v1/schedulers").json()
    labels = {s["label"]: s["name"] for s in schedulers}
    assert {"Automatic", "Uniform", "Karras", "Exponential"} <= set(labels)
    assert labels["Karras"] == "karras" and labels["Automatic"] == "automatic"


def test_options_get(server, sd1_title):
    opts = server.get("/sdapi/v1/options").json()
    assert opts["sd_model_checkpoint"] == sd1_title
    assert opts["samples_format"] == "png"
    assert opts["CLIP_stop_at_last_layers"] == 1


# ------------------------------------------------------------------------------------ checkpoints

def test_options_switch_model_and_back(server, tiny_checkpoints, sd1_title):
    sdxl_hash = sha256(tiny_checkpoints.sdxl)[:10]
    try:
        select(server, checkpoint_title(server, "tiny-sdxl"))
        assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == f"tiny-sdxl.safetensors [{sdxl_hash}]"
        _, info, _ = txt2img(server, BASE)
        assert info["sd_model_name"] == "tiny-sdxl" and info["sd_model_hash"] == sdxl_hash
        assert f"Model hash: {sdxl_hash}, Model: tiny-sdxl" in info["infotexts"][0]
    finally:
        select(server, sd1_title)
    _, info, _ = txt2img(server, BASE)
    assert info["sd_model_name"] == "tiny-sd1" and "Model: tiny-sd1" in info["infotexts"][0]


def test_options_unknown_checkpoint_is_4xx_listing_known_ones(server, sd1_title):
    r = server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
    message = assert_error(r, "sd_model_checkpoint")
    assert "nope.safetensors" in message and sd1_title in message and "tiny-sdxl.safetensors" in message
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == sd1_title


def test_options_bad_values_are_refused(server):
    assert_error(server.post("/sdapi/v1/options", json={"samples_format": "bmp"}), "samples_format")
    assert_error(server.post("/sdapi/v1/options", json={"sd_model_checkpoint": 5}), "sd_model_checkpoint")
    assert_error(server.post("/sdapi/v1/options", json={"no_such_option_x": 1}), "no_such_option_x")
    opts = server.get("/sdapi/v1/options").json()
    assert opts["samples_format"] == "png" and "no_such_option_x" not in opts


def test_override_checkpoint_applies_to_that_request_only(server, sd1_title):
    try:
        _, info, _ = txt2img(server, {**BASE, "override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"}})
        assert info["sd_model_name"] == "tiny-sdxl"
        _, info, _ = txt2img(server, BASE)
        assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == sd1_title
        assert info["sd_model_name"] == "tiny-sd1"
    finally:
        select(server, sd1_title)


def test_corrupt_checkpoint_is_refused_and_the_previous_model_goes_on(api_only):
    sd1 = checkpoint_title(api_only, "tiny-sd1", auth=AUTH)
    select(api_only, sd1, auth=AUTH)
    (api_only.ckpt_dir / "corrupt.safetensors").write_bytes(b"\x00\xffnot a safetensors file" * 64)
    r = api_only.post("/sdapi/v1/refresh-checkpoints", auth=AUTH)
    assert r.status_code == 200 and r.json() == {}
    titles = [m["title"] for m in api_only.get("/sdapi/v1/sd-models", auth=AUTH).json()]
    assert "corrupt.safetensors" in titles

    r = api_only.post("/sdapi/v1/options", json={"sd_model_checkpoint": "corrupt.safetensors"}, auth=AUTH)
    message = assert_error(r, "sd_model_checkpoint")
    assert "corrupt.safetensors" in message and "safetensors" in message.replace("corrupt.safetensors", "")
    r = api_only.post("/sdapi/v1/txt2img", auth=AUTH,
                      json={**BASE, "override_settings": {"sd_model_checkpoint": "corrupt.safetensors"}})
    assert "corrupt.safetensors" in assert_error(r, "sd_model_checkpoint")

    assert api_only.get("/sdapi/v1/options", auth=AUTH).json()["sd_model_checkpoint"] == sd1
    images, info, _ = txt2img(api_only, BASE, auth=AUTH)
    assert images[0].size == (64, 64) and info["sd_model_name"] == "tiny-sd1"


# ------------------------------------------------------------------------------------ progress

def test_progress_while_running_and_interrupt(server):
    steps = 40
    body = {**BASE, "width": 256, "height": 256, "steps": steps, "seed": 5, "force_task_id": "task(api-test)"}
    outcome: dict = {}

    def run():
        outcome["response"] = server.post("/sdapi/v1/txt2img", json=body)
        outcome["done"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    seen = []  # (time, progress json) with sampling started
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.is_alive():
        p = server.get("/sdapi/v1/progress").json()
        if p["state"]["job"] == "txt2img" and p["state"]["sampling_step"] > 0:
            seen.append((time.monotonic(), p))
            if p["state"]["sampling_step"] >= 3:
                break
        time.sleep(0.05)
    assert seen, "never saw the job sampling"
    stopped_at = time.monotonic()
    assert server.post("/sdapi/v1/interrupt").json() == {}
    worker.join(120)
    assert not worker.is_alive()

    t0, first = seen[0]
    t1, last = seen[-1]
    assert set(last["state"]) == STATE_KEYS
    assert last["state"]["sampling_steps"] == steps and last["state"]["job_count"] == 1
    assert 0 < last["progress"] < 1 and last["eta_relative"] > 0
    assert last["current_task"] == "task(api-test)"
    previews = [p["current_image"] for _, p in seen if p["current_image"]]
    for preview in previews[-1:]:  # live previews: a bare base64 PNG of the latent
        assert decode(preview).size[0] > 0
    step = last["state"]["sampling_step"]
    assert step < steps, "the job ended before the test could interrupt it"

    r = outcome["response"]
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1
    # stopped early: far less than the remaining steps would have taken
    per_step = (t1 - t0) / max(1, last["state"]["sampling_step"] - first["state"]["sampling_step"]) if len(seen) > 1 \
        else (t1 - t0 + 0.05)
    remaining = (steps - step) * per_step
    assert outcome["done"] - stopped_at < max(0.5 * remaining, 1.0), (outcome["done"] - stopped_at, remaining)

    idle = server.get("/sdapi/v1/progress").json()
    assert idle["state"]["job"] == "" and idle["progress"] == 0 and idle["current_task"] is None
    assert idle["state"]["interrupted"] is True


def test_skip_and_interrupt_when_idle_do_not_leak_into_the_next_job(server):
    reference = first_image(server, BASE)
    assert server.post("/sdapi/v1/skip").json() == {}
    assert server.post("/sdapi/v1/interrupt").json() == {}
    assert np.array_equal(first_image(server, BASE), reference)


# ------------------------------------------------------------------------------------ concurrency

def test_concurrent_requests_each_get_their_own_seed(server):
    bodies = [{**BASE, "seed": s} for s in (11, 22, 33)]
    sequential = [first_image(server, b) for b in bodies]
    results: dict[int, tuple] = {}
    errors = []

    def run(i):
        try:
            r = server.post("/sdapi/v1/txt2img", json=bodies[i])
            results[i] = (r.status_code, r.json())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 3
    for i, body in enumerate(bodies):
        status, data = results[i]
        assert status == 200
        info = json.loads(data["info"])
        assert info["all_seeds"] == [body["seed"]] and f"Seed: {body['seed']}," in info["infotexts"][0]
        assert np.array_equal(pixels(decode(data["images"][0])), sequential[i])
    assert not np.array_equal(sequential[0], sequential[1]) and not np.array_equal(sequential[1], sequential[2])


# ------------------------------------------------------------------------------------ auth / --nowebui

def test_api_auth(api_only):
    r = requests.get(api_only.url + "/sdapi/v1/sd-models", timeout=30)
    assert r.status_code == 401 and r.headers.get("www-authenticate", "").lower().startswith("basic")
    assert r.json()["detail"]
    assert api_only.get("/sdapi/v1/options", auth=("user", "wrong")).status_code == 401
    assert api_only.get("/sdapi/v1/options", auth=("other", "secret")).status_code == 401
    assert api_only.post("/sdapi/v1/txt2img", json=BASE).status_code == 401

    models = api_only.get("/sdapi/v1/sd-models", auth=AUTH).json()
    assert {m["model_name"] for m in models} >= {"tiny-sd1", "tiny-native"}
    images, info, _ = txt2img(api_only, BASE, auth=AUTH)
    assert images[0].size == (64, 64) and info["all_seeds"] == [BASE["seed"]]


def test_nowebui_serves_no_ui_and_keeps_405(api_only):
    assert requests.get(api_only.url + "/", timeout=30).status_code == 401  # the one auth gate covers "/" too
    assert requests.get(api_only.url + "/", timeout=30, auth=AUTH).status_code == 404  # and there is no UI
    r = api_only.get("/sdapi/v1/txt2img", auth=AUTH)
    assert r.status_code == 405


def test_override_settings_apply_to_one_request(server):
    """Other options in override_settings hold for that job only: here the eta noise seed
    delta, which changes an ancestral sampler's image and the infotext's ENSD."""
    body = {**BASE, "seed": 5, "sampler_name": "Euler a"}
    plain = txt2img(server, body)
    changed = txt2img(server, {**body, "override_settings": {"eta_noise_seed_delta": 31337}})
    again = txt2img(server, body)
    assert "ENSD: 31337" in changed[1]["infotexts"][0] and "ENSD" not in again[1]["infotexts"][0]
    assert not np.array_equal(pixels(plain[0][0]), pixels(changed[0][0]))
    assert np.array_equal(pixels(plain[0][0]), pixels(again[0][0]))
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"no_such_option": 1}})
    assert_error(r, "no_such_option")
