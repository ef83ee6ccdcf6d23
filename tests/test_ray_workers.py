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
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--nowebui", "--ckpt", str(tiny_checkpoints.sd1),
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


def test_the_preview_and_cancel_of_a_job_running_on_a_worker(ray_server):
    job_id = ray_server.post(f"{JOBS}/txt2img", json={**BODY, "prompt": "cancel me", "steps": 150,
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
    assert ray_server.post(f"{JOBS}/{job_id}/cancel").json()["cancelled"] is True
    job = wait_all(ray_server, [job_id], timeout=60)[job_id]
    assert job["status"] == "cancelled" and job["attempts"] == 1
    assert "Steps: 150" in Image.open(io.BytesIO(base64.b64decode(job["result"]["images"][0]))).info["parameters"]
