"""The `webuiapi` package from PyPI (the common A1111 Python client) driven against a real Easel server,
unchanged: txt2img, img2img, inpainting, options, models, samplers, png-info, progress, interrupt, and
four clients at once.

One module server (`--api --api-auth`, tiny SD1 loaded, the tiny checkpoints folder), so every call
also goes through HTTP Basic the way the client sends it. Requests are tiny (64-128 px, 2-11 steps)
except the progress/interrupt one, which is cut short.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from modules.core import masks
from tests.api_common import PROCESSED_KEYS, decode
from tests.pictures import picture, square_mask

webuiapi = pytest.importorskip("webuiapi")

LOGIN = ("client", "client-pw")
SMALL = dict(width=64, height=64, steps=2, cfg_scale=7.0)


def px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def srv(tiny_checkpoints, tmp_path_factory):
    from tests.server import run_server

    with run_server(tmp_path_factory.mktemp("clients-data"), tiny_checkpoints.checkpoints_dir, "--api",
                    "--api-auth", ":".join(LOGIN), "--ckpt", str(tiny_checkpoints.sd1),
                    ready_path="/sdapi/v1/samplers", auth=LOGIN) as server:
        yield server


def client(srv) -> "webuiapi.WebUIApi":
    return webuiapi.WebUIApi(baseurl=srv.url + "/sdapi/v1", username=LOGIN[0], password=LOGIN[1],
                             sampler="Euler a", steps=2)


@pytest.fixture(scope="module")
def api(srv):
    return client(srv)


def title_of(api, path: Path) -> str:
    return next(m["title"] for m in api.get_sd_models() if Path(m["filename"]).name == Path(path).name)


# ------------------------------------------------------------------------------------ generation

def test_txt2img(api, srv):
    result = api.txt2img(prompt="a red cube", negative_prompt="blurry", seed=1234, **SMALL)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    info = result.info
    assert PROCESSED_KEYS <= set(info)
    assert info["prompt"] == "a red cube" and info["negative_prompt"] == "blurry"
    assert info["seed"] == 1234 and info["all_seeds"] == [1234] and info["steps"] == 2
    assert info["sampler_name"] == "Euler a" and info["sd_model_name"] == "tiny-sd1"
    text = info["infotexts"][0]
    assert text.startswith("a red cube\nNegative prompt: blurry\n") and "Seed: 1234," in text
    assert result.parameters["prompt"] == "a red cube" and result.parameters["seed"] == 1234

    # the ~47 fields the client sends change nothing against a plain request with the same values
    plain = srv.post("/sdapi/v1/txt2img", auth=LOGIN, json={"prompt": "a red cube", "negative_prompt": "blurry",
                                                            "seed": 1234, "sampler_name": "Euler a", **SMALL})
    assert plain.status_code == 200, plain.text
    assert np.array_equal(px(decode(plain.json()["images"][0])), px(result.image))
    other = api.txt2img(prompt="a red cube", negative_prompt="blurry", seed=1235, **SMALL)
    assert not np.array_equal(px(other.image), px(result.image))


def test_img2img(api):
    init = picture()
    result = api.img2img(images=[init], prompt="a painting", denoising_strength=0.6, seed=7, **SMALL)
    assert result.image.size == (64, 64)
    assert result.info["denoising_strength"] == 0.6 and result.info["all_seeds"] == [7]
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert np.abs(px(result.image) - px(init)).mean() > 1  # it was repainted
    again = api.img2img(images=[init], prompt="a painting", denoising_strength=0.6, seed=7, **SMALL)
    assert np.array_equal(px(again.image), px(result.image))


def test_inpainting_keeps_the_rest_of_the_picture(api, tiny_checkpoints):
    init, mask = picture(96, 64), square_mask((96, 64), (8, 12, 40, 44))
    # the client's defaults: mask_blur 4, fill, "only masked" with padding 0
    result = api.img2img(images=[init], mask_image=mask, prompt="a hole", denoising_strength=0.9, seed=3,
                         width=96, height=64, steps=2)
    out = px(result.image)
    keep = np.asarray(masks.blur(mask, 4, 4)) == 0
    assert result.image.size == (96, 64) and keep.sum() > 2500
    assert np.array_equal(out[keep], px(init)[keep])
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside] - px(init)[inside]).mean() > 5
    assert "Mask blur: 4" in result.info["infotexts"][0]

    # the same through the inpainting checkpoint, chosen for this request only (override_settings)
    inpainting = title_of(api, tiny_checkpoints.sd1_inpainting)
    special = api.img2img(images=[init], mask_image=mask, prompt="a hole", denoising_strength=0.9, seed=3,
                          width=96, height=64, steps=2, override_settings={"sd_model_checkpoint": inpainting})
    assert special.info["sd_model_name"] == "tiny-sd1-inpainting"
    assert special.info["is_using_inpainting_conditioning"] is True
    assert np.array_equal(px(special.image)[keep], px(init)[keep])
    assert api.util_get_current_model().startswith("tiny-sd1.safetensors")  # restored afterwards


def test_progress_and_interrupt(api, srv):
    steps, outcome = 40, {}

    def run():
        outcome["result"] = client(srv).txt2img(prompt="slow", seed=5, width=256, height=256, steps=steps)

    worker = threading.Thread(target=run)
    worker.start()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.is_alive():
        p = api.get_progress()
        if p["state"]["job_count"] > 0 and p["state"]["sampling_step"] >= 2:
            seen = p
            break
        time.sleep(0.05)
    assert seen is not None, "never saw the job sampling"
    assert api.interrupt() == {}
    worker.join(120)
    assert not worker.is_alive()

    assert seen["state"]["sampling_steps"] == steps and 0 < seen["progress"] < 1
    assert seen["state"]["sampling_step"] < steps
    result = outcome["result"]
    assert len(result.images) == 1 and result.image.size == (256, 256) and result.info["all_seeds"] == [5]
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["state"]["interrupted"] is True
    api.util_wait_for_ready(check_interval=0.1)  # returns at once: nothing is running
    assert api.skip() == {}


# ------------------------------------------------------------------------------------ listings, settings

def test_samplers_and_schedulers(api):
    samplers = api.util_get_sampler_names()
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DDIM", "UniPC"} <= set(samplers)
    schedulers = api.util_get_scheduler_names()
    assert {"automatic", "karras", "exponential"} <= set(schedulers)
    result = api.txt2img(prompt="x", seed=1, sampler_name="DPM++ 2M", scheduler="Karras", **SMALL)
    assert result.info["sampler_name"] == "DPM++ 2M"
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in result.info["infotexts"][0]


def test_options(api):
    options = api.get_options()
    assert options["sd_model_checkpoint"].startswith("tiny-sd1.safetensors")
    for key in ("samples_format", "CLIP_stop_at_last_layers", "eta_noise_seed_delta", "live_previews_enable"):
        assert key in options
    assert api.set_options({"samples_format": "jpg", "CLIP_stop_at_last_layers": 2}) == {}
    changed = api.get_options()
    assert changed["samples_format"] == "jpg" and changed["CLIP_stop_at_last_layers"] == 2
    result = api.txt2img(prompt="x", seed=1, **SMALL)
    assert "Clip skip: 2" in result.info["infotexts"][0] and result.info["clip_skip"] == 2
    api.set_options({"samples_format": options["samples_format"],
                     "CLIP_stop_at_last_layers": options["CLIP_stop_at_last_layers"]})
    assert api.get_options()["CLIP_stop_at_last_layers"] == options["CLIP_stop_at_last_layers"]


def test_models_and_switching(api, tiny_checkpoints):
    names = api.util_get_model_names()
    sd1, inpainting = title_of(api, tiny_checkpoints.sd1), title_of(api, tiny_checkpoints.sd1_inpainting)
    assert sd1 in names and inpainting in names
    assert api.util_get_current_model() == sd1
    try:
        api.util_set_model(inpainting, find_closest=False)
        assert api.util_get_current_model() == inpainting
        assert api.txt2img(prompt="x", seed=1, **SMALL).info["sd_model_name"] == "tiny-sd1-inpainting"
    finally:
        api.util_set_model(sd1, find_closest=False)
    assert api.util_get_current_model() == sd1
    api.refresh_checkpoints()  # the client decodes the answer as JSON
    assert api.util_get_model_names() == names


def test_png_info_reads_back_the_parameters(api):
    made = api.txt2img(prompt="a blue ball", negative_prompt="dark", seed=4321, **SMALL)
    read = api.png_info(made.image)  # the client re-sends the PNG with its text chunks
    assert read.info == made.info["infotexts"][0]
    assert "Seed: 4321," in read.info and read.info.startswith("a blue ball\n")


def test_a_client_without_the_login_is_refused(srv):
    anonymous = webuiapi.WebUIApi(baseurl=srv.url + "/sdapi/v1")
    with pytest.raises(RuntimeError) as refused:
        anonymous.txt2img(prompt="x", **SMALL)
    assert refused.value.args[0] == 401


# ------------------------------------------------------------------------------------ concurrency

def test_four_clients_at_once(srv):
    """Four clients submit together: all complete, each gets its own result (seeds and prompts in the
    infotext, pixels equal to the same request run alone), and /progress polled meanwhile reports the
    running job."""
    jobs = [dict(prompt=f"subject number {i}", seed=100 + i, steps=8 + i, width=128, height=128) for i in range(4)]
    results, errors, snapshots = {}, [], []
    start = threading.Barrier(len(jobs) + 1)

    def run(i):
        try:
            c = client(srv)
            start.wait()
            results[i] = c.txt2img(**jobs[i])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    poller = client(srv)
    start.wait()
    while any(t.is_alive() for t in threads):
        p = poller.get_progress()
        if p["state"]["job_count"] > 0 and p["state"]["sampling_step"] > 0:
            snapshots.append(p)
        time.sleep(0.02)
    for t in threads:
        t.join(120)
    assert not errors and len(results) == len(jobs)

    for i, job in enumerate(jobs):
        info = results[i].info
        assert info["prompt"] == job["prompt"] and info["all_seeds"] == [job["seed"]]
        text = info["infotexts"][0]
        assert text.startswith(job["prompt"] + "\n") and f"Steps: {job['steps']}," in text
        assert f"Seed: {job['seed']}," in text
    images = [px(results[i].image) for i in range(len(jobs))]
    assert all(not np.array_equal(images[a], images[b]) for a in range(4) for b in range(a + 1, 4))
    solo = client(srv)
    for i, job in enumerate(jobs):  # no interleaving on the model: each equals the same request run alone
        assert np.array_equal(px(solo.txt2img(**job).image), images[i])

    assert snapshots, "no /progress poll saw a running job"
    for p in snapshots:  # every poll describes one of the submitted jobs, mid-run
        assert p["state"]["sampling_steps"] in {job["steps"] for job in jobs}
        assert 0 < p["state"]["sampling_step"] <= p["state"]["sampling_steps"] and 0 < p["progress"] <= 1
