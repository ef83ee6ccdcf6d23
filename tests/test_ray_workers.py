"""`--workers ray`: a local Ray cluster with two CPU workers behind one server, over real HTTP.

Twenty jobs (the job API and A1111's blocking route) complete on both workers with the pictures of
the single-worker server for the same seeds; a worker killed in the middle of a two-batch job is
replaced, the job runs again elsewhere, and every job ends done exactly once, with its pictures on
disk exactly once (the killed attempt's first picture is removed, the re-run's kept).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="requirements-ray.txt is not installed")

from tests.server import run_server  # noqa: E402

JOBS = "/easel/v1/jobs"
BODY = {"prompt": "ray worker", "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "cfg_scale": 5}


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def wait_all(srv, ids, timeout=180) -> dict[str, dict]:
    deadline, jobs = time.time() + timeout, {}
    while len(jobs) < len(ids):
        for job_id in ids:
            if job_id not in jobs:
                job = srv.get(f"{JOBS}/{job_id}").json()
                if job["status"] in ("done", "failed", "cancelled"):
                    jobs[job_id] = job
        assert time.time() < deadline, f"unfinished: {set(ids) - set(jobs)}"
        time.sleep(0.1)
    return jobs


@pytest.fixture(scope="module")
def ray_server(tiny_checkpoints, tmp_path_factory):
    data = tmp_path_factory.mktemp("ray-data")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1),
                    "--workers", "ray", "--ray-workers", "2", timeout=240) as srv:
        yield srv


def saved_with(srv, marker: str) -> list[str]:
    found = []
    for root, _, files in os.walk(srv.data_dir / "outputs"):
        for name in files:
            if name.endswith(".png"):
                with Image.open(os.path.join(root, name)) as im:
                    if marker in (im.info.get("parameters") or ""):
                        found.append(os.path.join(root, name))
    return found


def test_twenty_jobs_on_two_workers_equal_the_single_worker_pictures(ray_server, server):
    seeds = list(range(500, 520))
    ids = []
    for seed in seeds[:16]:  # through the job API
        answer = ray_server.post(f"{JOBS}/txt2img", json={**BODY, "seed": seed, "save_images": True})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # and through A1111's blocking route, at once
        sync = list(pool.map(lambda s: ray_server.post("/sdapi/v1/txt2img", json={
            **BODY, "seed": s, "save_images": True, "force_task_id": f"task(sync-{s})"}), seeds[16:]))
    assert all(r.status_code == 200 for r in sync), [r.text[:200] for r in sync]
    jobs = wait_all(ray_server, ids + [f"task(sync-{s})" for s in seeds[16:]])
    assert all(job["status"] == "done" and job["attempts"] == 1 for job in jobs.values()), jobs
    workers = {job["worker"] for job in jobs.values()}
    assert workers == {"ray-0", "ray-1"}  # both did work
    listing = ray_server.get("/easel/v1/workers").json()["workers"]
    assert sorted(w["name"] for w in listing) == ["ray-0", "ray-1"] and all(w["jobs_done"] > 0 for w in listing)
    assert all(w["checkpoint"].endswith("tiny-sd1.safetensors") for w in listing)
    # the pictures the single worker makes for the same seeds (the session's server, no Ray)
    for seed, job_id in zip(seeds, ids + [f"task(sync-{s})" for s in seeds[16:]]):
        reference = server.post("/sdapi/v1/txt2img", json={**BODY, "seed": seed}).json()["images"][0]
        got = jobs[job_id]["result"]["images"][0]
        assert np.array_equal(pixels(got), pixels(reference)), f"seed {seed}"
    for r, seed in zip(sync, seeds[16:]):
        assert r.json()["images"][0] == jobs[f"task(sync-{seed})"]["result"]["images"][0]
    # each saved once, by the worker that ran it
    assert len(saved_with(ray_server, "ray worker")) == 20


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(ray_server):
    marker = "killed worker job"
    slow = {**BODY, "prompt": marker, "steps": 30, "width": 128, "height": 128, "n_iter": 2, "seed": 42,
            "save_images": True}
    victim = ray_server.post(f"{JOBS}/txt2img", json=slow).json()["id"]
    others = [ray_server.post(f"{JOBS}/txt2img", json={**BODY, "prompt": "bystander", "seed": 900 + n,
                                                       "save_images": True}).json()["id"] for n in range(4)]
    deadline = time.time() + 120
    while True:  # in its second batch: the first picture is saved already
        job = ray_server.get(f"{JOBS}/{victim}").json()
        if job["status"] == "running" and (job.get("textinfo") or "").startswith("Batch 2") and job["step"]:
            break
        assert job["status"] in ("queued", "running") and time.time() < deadline, job
        time.sleep(0.02)
    assert len(saved_with(ray_server, marker)) == 1
    worker = next(w for w in ray_server.get("/easel/v1/workers").json()["workers"] if w["job"] == victim)
    os.kill(worker["pid"], signal.SIGKILL)
    jobs = wait_all(ray_server, [victim, *others], timeout=240)
    assert all(job["status"] == "done" for job in jobs.values()), jobs
    assert jobs[victim]["attempts"] == 2 and all(jobs[o]["attempts"] == 1 for o in others)
    result = jobs[victim]["result"]
    assert len(result["images"]) == 3 and len(result["paths"]) == 3  # the grid, then the two pictures
    assert json.loads(result["info"])["all_seeds"] == [42, 43]
    # on disk exactly once: the dead attempt's first picture removed, the re-run's two and grid kept
    saved = sorted(saved_with(ray_server, marker))
    assert sorted(result["paths"]) == saved, (saved, result["paths"])
    assert len(saved_with(ray_server, "bystander")) == 4
    listing = ray_server.get("/easel/v1/workers").json()["workers"]
    assert sum(w["replaced"] for w in listing) == 1 and worker["pid"] not in [w["pid"] for w in listing]
    # the replacement works
    again = ray_server.post(f"{JOBS}/txt2img", json={**BODY, "seed": 7}).json()["id"]
    assert wait_all(ray_server, [again])[again]["status"] == "done"


def test_progress_preview_skip_and_cancel_of_a_job_running_on_a_worker(ray_server):
    """The job API's preview and cancel, and A1111's /progress, /internal/progress and /skip, reach
    the actor that runs the job."""
    job_id = ray_server.post(f"{JOBS}/txt2img", json={**BODY, "prompt": "cancel me", "steps": 150, "n_iter": 2,
                                                      "width": 128, "height": 128, "seed": 3}).json()["id"]
    deadline = time.time() + 120
    while True:  # the preview comes from the actor that runs the job
        preview = ray_server.get(f"{JOBS}/{job_id}/preview")
        if preview.status_code == 200:
            break
        assert preview.status_code == 404 and time.time() < deadline
        time.sleep(0.05)
    assert preview.headers["content-type"] == "image/png" and Image.open(io.BytesIO(preview.content)).size[0] > 0
    running = ray_server.get(f"{JOBS}/{job_id}").json()
    assert running["status"] == "running" and running["worker"].startswith("ray-") and running["steps"] == 150
    # A1111's progress routes see it although the server's own worker thread is idle; the current
    # image once the actor made its first live preview (every show_progress_every_n_steps steps)
    while (progress := ray_server.get("/sdapi/v1/progress").json())["current_image"] is None:
        assert time.time() < deadline, progress
        time.sleep(0.1)
    assert progress["current_task"] == job_id and 0 < progress["progress"] < 1, progress
    assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job_count"] == 2
    assert progress["textinfo"] == "Batch 1 out of 2" and progress["eta_relative"] > 0
    # (Approx cheap, the fallback without the Approx NN file: one pixel per latent cell)
    assert Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))).size == (16, 16)
    internal = ray_server.post("/internal/progress", json={"id_task": job_id, "id_live_preview": -1,
                                                          "live_preview": True}).json()
    assert internal["active"] is True and internal["progress"] > 0 and internal["id_live_preview"] >= 0
    assert internal["live_preview"].startswith("data:image/png;base64,")
    # Skip ends the first batch only: the second one starts
    assert ray_server.post("/sdapi/v1/skip").status_code == 200
    while (ray_server.get(f"{JOBS}/{job_id}").json().get("textinfo") or "") != "Batch 2 out of 2":
        assert time.time() < deadline
        time.sleep(0.05)
    assert ray_server.post(f"{JOBS}/{job_id}/cancel").json()["cancelled"] is True
    job = wait_all(ray_server, [job_id], timeout=60)[job_id]
    assert job["status"] == "cancelled" and job["attempts"] == 1
    assert "Steps: 150" in Image.open(io.BytesIO(base64.b64decode(job["result"]["images"][0]))).info["parameters"]
    idle = ray_server.get("/sdapi/v1/progress").json()
    assert idle["current_task"] is None and idle["progress"] == 0


def test_the_page_on_ray_workers_progress_preview_interrupt_and_a_picture(ray_server, server):
    """A job from the UI runs on a Ray worker: its progress and live preview come from the actor,
    /sdapi/v1/interrupt stops it there (the page says so), and the picture saved equals the single
    worker's."""
    pytest.importorskip("playwright")
    from playwright.sync_api import expect

    from tests.browser import launch_browser

    saved = ray_server.data_dir / "outputs" / "txt2img-images"
    with launch_browser() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(ray_server.url)
        expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(
            re.compile(r"^tiny-sd1\.safetensors \["), timeout=120_000)

        def fill(prompt: str, steps: int, seed: int) -> None:
            page.locator("#txt2img_prompt textarea").fill(prompt)
            for elem_id, value in (("txt2img_steps", steps), ("txt2img_width", 64), ("txt2img_height", 64)):
                field = page.locator(f"#{elem_id} input[type=number]")
                field.fill(str(value))
                field.press("Enter")
            page.locator("#txt2img_seed input").fill(str(seed))

        fill("ui on ray, interrupted", 150, 11)
        batch_count = page.locator("#txt2img_batch_count input[type=number]")  # a long job: 10 x 150 steps
        batch_count.fill("10")
        batch_count.press("Enter")
        expect(page.locator("#txt2img_batch_count input[type=range]")).to_have_value("10")
        page.locator("#txt2img_generate").click()
        # the page's job runs on an actor: A1111's progress route follows it there (its step and preview)
        deadline = time.time() + 120
        while True:
            progress = ray_server.get("/sdapi/v1/progress").json()
            if (progress["current_task"] or "").startswith("ui-txt2img-") and progress["state"]["sampling_step"] > 0 \
                    and progress["current_image"]:
                break
            assert time.time() < deadline, progress
            time.sleep(0.1)
        assert progress["state"]["sampling_steps"] == 150
        # A1111's /sdapi/v1/interrupt reaches the actor: the page's job stops there (and its batch)
        assert ray_server.post("/sdapi/v1/interrupt").status_code == 200
        expect(page.locator("#txt2img_generate")).to_be_visible(timeout=120_000)
        info = page.locator("#html_info_txt2img").inner_text()
        assert "Interrupted" in info and "Steps: 150" in info
        ui_jobs = [j for j in ray_server.get(JOBS).json()["jobs"] if j["id"].startswith("ui-txt2img-")]
        assert ui_jobs and all(j["worker"].startswith("ray-") for j in ui_jobs), ui_jobs
        assert all(j["status"] in ("done", "cancelled") for j in ui_jobs)  # Interrupt: stopped, its picture kept

        before = set(saved.glob("*/*.png"))
        batch_count.fill("1")
        batch_count.press("Enter")
        expect(page.locator("#txt2img_batch_count input[type=range]")).to_have_value("1")
        fill("ui on ray", 3, 520)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_generate")).to_be_visible(timeout=120_000)
        expect(page.locator("#txt2img_gallery img").first).to_be_visible()
        new = sorted(set(saved.glob("*/*.png")) - before)
        assert len(new) == 1, new
    with Image.open(new[0]) as picture:
        parameters, got = picture.info["parameters"], np.asarray(picture.convert("RGB"))
    assert "Seed: 520" in parameters and "Steps: 3" in parameters
    # the single worker, given the saved picture's own infotext, makes the same picture
    reference = server.post("/sdapi/v1/txt2img", json={"infotext": parameters})
    assert reference.status_code == 200, reference.text
    assert np.array_equal(got, pixels(reference.json()["images"][0]))
