"""The asynchronous job API (/easel/v1/jobs) over real HTTP, against the session's server: submit and
poll to completion, cancel a queued and a running job, read the live preview, and see the jobs of
A1111's synchronous route in the same list."""

from __future__ import annotations

import base64
import io
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from modules.services.job_registry import JobRegistry

JOBS = "/easel/v1/jobs"
SMALL = {"prompt": "a red square", "steps": 3, "width": 64, "height": 64, "seed": 1234,
         "sampler_name": "Euler", "cfg_scale": 5}
# long enough on the tiny model to be seen running (each step re-checks interrupt)
SLOW = {"prompt": "slow", "steps": 150, "width": 256, "height": 256, "seed": 7, "sampler_name": "Euler"}


def picture(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))


def wait_for(server, job_id: str, statuses=("done", "failed", "cancelled"), timeout=120, **params) -> dict:
    deadline = time.time() + timeout
    while True:
        job = server.get(f"{JOBS}/{job_id}", params=params).json()
        if job["status"] in statuses:
            return job
        assert time.time() < deadline, f"job {job_id} still {job['status']} after {timeout}s"
        time.sleep(0.05)


def submit(server, body: dict, kind: str = "txt2img") -> str:
    response = server.post(f"{JOBS}/{kind}", json=body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] in ("queued", "running", "done")
    assert response.headers["Location"] == f"{JOBS}/{answer['id']}"
    return answer["id"]


def test_a_job_is_polled_to_completion_and_equals_the_synchronous_answer(server):
    job_id = submit(server, {**SMALL, "save_images": True})
    job = wait_for(server, job_id)
    assert job["status"] == "done", job
    assert job["kind"] == "txt2img" and job["progress"] == 1.0 and job["worker"] == "local"
    assert job["started"] >= job["created"] and job["finished"] >= job["started"]
    result = job["result"]
    assert len(result["images"]) == 1
    image = picture(result["images"][0])
    assert image.size == (64, 64)
    assert "Seed: 1234" in image.info["parameters"]
    # saved as any job is (A1111's save_images), and the path given
    assert result["paths"] and all(Path(p).is_file() for p in result["paths"])
    assert Path(result["paths"][0]).resolve().is_relative_to(server.data_dir.resolve())
    # the same request through A1111's blocking route: the same pixels and info
    sync = server.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert np.array_equal(np.asarray(picture(sync["images"][0])), np.asarray(image))
    assert sync["parameters"] == {**result["parameters"], "save_images": False}
    # without images, for light polling
    light = server.get(f"{JOBS}/{job_id}", params={"images": "false"}).json()
    assert light["result"]["images"] == [] and light["result"]["info"] == result["info"]


def test_img2img_job(server):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    body = {**SMALL, "init_images": [base64.b64encode(buffer.getvalue()).decode()], "denoising_strength": 0.5}
    job = wait_for(server, submit(server, body, "img2img"))
    assert job["status"] == "done" and job["kind"] == "img2img"
    assert picture(job["result"]["images"][0]).size == (64, 64)


def test_preview_while_running_then_cancel_running_and_queued(server):
    running_id = submit(server, SLOW)
    queued_id = submit(server, {**SMALL, "seed": 99})
    # the second waits behind the first
    job = wait_for(server, running_id, statuses=("running",), timeout=60)
    deadline = time.time() + 60
    while True:  # the first steps' picture appears while it runs
        preview = server.get(f"{JOBS}/{running_id}/preview")
        if preview.status_code == 200:
            break
        assert preview.status_code == 404 and time.time() < deadline
        time.sleep(0.05)
    assert preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size[0] > 0
    job = server.get(f"{JOBS}/{running_id}").json()
    assert job["status"] == "running" and 0 < job["step"] <= 150 and job["steps"] == 150
    queued = server.get(f"{JOBS}/{queued_id}").json()
    assert queued["status"] == "queued" and queued["position"] >= 1
    # cancel the queued one: it never runs
    answer = requests.delete(server.url + f"{JOBS}/{queued_id}", timeout=30)
    assert answer.status_code == 200 and answer.json() == {"id": queued_id, "status": "cancelled", "cancelled": True}
    # cancel the running one (POST form): it stops well before its 150 steps
    stopped = server.post(f"{JOBS}/{running_id}/cancel").json()
    assert stopped["cancelled"] is True
    done = wait_for(server, running_id, timeout=60)
    assert done["status"] == "cancelled"
    queued = wait_for(server, queued_id, timeout=5)
    assert queued["status"] == "cancelled" and queued["started"] is None and queued.get("result") is None
    # cancelling again: already ended
    again = server.post(f"{JOBS}/{running_id}/cancel").json()
    assert again == {"id": running_id, "status": "cancelled", "cancelled": False}
    # and the queue goes on
    assert wait_for(server, submit(server, SMALL))["status"] == "done"


def test_jobs_of_the_a1111_route_are_listed(server):
    task_id = f"task(a1111-{uuid.uuid4().hex[:8]})"
    sync = server.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 5, "force_task_id": task_id})
    assert sync.status_code == 200
    listed = {job["id"]: job for job in server.get(JOBS).json()["jobs"]}
    assert task_id in listed and listed[task_id]["status"] == "done"
    assert "result" not in listed[task_id] or listed[task_id]["result"]["images"] == []  # the list has no images
    job = server.get(f"{JOBS}/{task_id}").json()
    assert np.array_equal(np.asarray(picture(job["result"]["images"][0])), np.asarray(picture(sync.json()["images"][0])))
    assert server.get(JOBS, params={"status": "done"}).json()["jobs"]
    assert all(j["status"] == "queued" for j in server.get(JOBS, params={"status": "queued"}).json()["jobs"])


def test_bad_requests_are_refused_before_a_job_exists(server):
    before = len(server.get(JOBS).json()["jobs"])
    bad = server.post(f"{JOBS}/txt2img", json={**SMALL, "sampler_name": "No such sampler"})
    assert bad.status_code == 422 and "sampler_name" in bad.text
    bad = server.post(f"{JOBS}/txt2img", json={**SMALL, "steps": "many"})
    assert bad.status_code == 422
    assert len(server.get(JOBS).json()["jobs"]) == before
    assert server.get(f"{JOBS}/task(nope)").status_code == 404
    assert server.post(f"{JOBS}/task(nope)/cancel").status_code == 404
    assert server.get(f"{JOBS}/txt2img").status_code == 404  # not a job id
    assert server.get(f"{JOBS}/img2img").status_code == 404
    wrong = server.get(f"{JOBS}/task(nope)/cancel")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    # the API's JSON-only rule holds here too
    form = server.post(f"{JOBS}/txt2img", data="prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415


def test_a_job_refused_on_the_worker_fails_naming_the_field(server):
    # the checkpoint is looked up on the worker: the job is accepted, then fails as /sdapi answers it
    body = {**SMALL, "override_settings": {"sd_model_checkpoint": "nope.safetensors"}}
    job = wait_for(server, submit(server, body))
    assert job["status"] == "failed" and job.get("result") is None
    assert job["error"]["field"] == "override_settings.sd_model_checkpoint"
    assert "unknown checkpoint 'nope.safetensors'" in job["error"]["message"]
    sync = server.post("/sdapi/v1/txt2img", json=body)
    assert sync.status_code == job["error"]["status_code"] == 422
    assert wait_for(server, submit(server, SMALL))["status"] == "done"  # the queue goes on


def test_the_routes_are_in_the_openapi_schema(server):
    schema = server.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths[f"{JOBS}/txt2img"]) == {"post"} and set(paths[f"{JOBS}/img2img"]) == {"post"}
    assert {"get", "delete"} <= set(paths[JOBS + "/{job_id}"])
    assert "post" in paths[JOBS + "/{job_id}/cancel"] and "get" in paths[JOBS + "/{job_id}/preview"]
    body = paths[f"{JOBS}/txt2img"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("StableDiffusionTxt2ImgProcessingAPI")  # A1111's request model, reused
    job = schema["components"]["schemas"]["JobInfo"]["properties"]
    assert job["status"]["enum"] == ["queued", "running", "done", "failed", "cancelled"]
    assert {"position", "progress", "result", "error"} <= set(job)


def test_a_normal_start_has_one_local_worker_and_no_ray(server):
    listing = server.get("/easel/v1/workers").json()["workers"]
    assert [w["name"] for w in listing] == ["local"] and listing[0]["pid"] == server.process.pid
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.is_file():
        pytest.skip("needs Linux's /proc to see the server's loaded libraries")
    # `import ray` always loads its compiled core, ray/_raylet.so: not in a server without --workers ray
    assert "_raylet" not in maps.read_text()


def test_the_job_api_needs_the_api_login_even_with_a_ui_session():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import auth

    app = FastAPI()

    @app.get(JOBS)
    def jobs():
        return {"jobs": []}

    policy = auth.AuthPolicy(api_users=[("api", "pw")], ui_users=[("ui", "pw")], ui_path="/",
                             session_user=lambda cookie: "ui" if cookie else None)
    app.add_middleware(auth.AuthMiddleware, owner=app, policy=policy)
    client = TestClient(app)
    refused = client.get(JOBS)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get(JOBS, headers={"Cookie": "session=1"}).status_code == 401  # as /sdapi: Basic only
    assert client.get(JOBS, auth=("api", "pw")).json() == {"jobs": []}


def test_finished_records_expire():
    registry = JobRegistry(keep_s=10, keep_max=2)
    for n in range(4):
        record = registry.add(f"task({n})", "txt2img", None)
        future: Future = Future()
        registry.bind(record, future)
        if n < 3:
            future.set_running_or_notify_cancel()
            future.set_exception(ValueError("x"))
    # at most 2 finished ones are kept, the oldest go first
    assert [(r.id, r.status) for r in registry.list()] == [("task(1)", "failed"), ("task(2)", "failed"),
                                                           ("task(3)", "queued")]
    registry.expire(time.time() + 11)
    assert [r.id for r in registry.list()] == ["task(3)"]  # a queued job never expires


def test_finished_jobs_survive_a_restart_and_expire_with_their_files(tiny_checkpoints, tmp_path):
    """A finished job's record is written to DATA/jobs/<id>.json (with PNG copies of the pictures the
    job did not save); a second server on the same data folder answers it with the same pictures, and
    deletes the records that expired (the JSON and the copies)."""
    import json

    from tests.server import run_server

    data = tmp_path / "data"
    flags = ("--nowebui", "--ckpt", str(tiny_checkpoints.sd1), "--job-retention", "600")
    with run_server(data, tiny_checkpoints.checkpoints_dir, *flags) as first:
        kept = wait_for(first, submit(first, {**SMALL, "seed": 31}))  # not saved: copies are kept
        saved = wait_for(first, submit(first, {**SMALL, "seed": 32, "save_images": True}))  # its own files
        old = wait_for(first, submit(first, {**SMALL, "seed": 33}))
        failed = wait_for(first, submit(first, {**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}}))
    assert [j["status"] for j in (kept, saved, old, failed)] == ["done", "done", "done", "failed"]
    jobs = data / "jobs"
    on_disk = {job["id"]: json.loads((jobs / f"{job['id']}.json").read_text()) for job in (kept, saved, old, failed)}
    assert on_disk[kept["id"]]["status"] == "done" and on_disk[failed["id"]]["error"] == failed["error"]
    copies = on_disk[kept["id"]]["result"]["files"]
    assert [Path(f).parent for f in copies] == [jobs / kept["id"]]  # a copy under jobs/<id>/
    assert on_disk[saved["id"]]["result"]["files"] == [str(Path(p).resolve()) for p in saved["result"]["paths"]]
    # one finished an hour ago: over the retention
    aged = {**on_disk[old["id"]], "finished": time.time() - 3600}
    (jobs / f"{old['id']}.json").write_text(json.dumps(aged))
    assert (jobs / old["id"]).is_dir()

    with run_server(data, tiny_checkpoints.checkpoints_dir, *flags) as second:
        for before in (kept, saved, failed):
            after = second.get(f"{JOBS}/{before['id']}").json()
            assert {k: after.get(k) for k in ("status", "kind", "created", "started", "finished", "worker", "error")} \
                == {k: before.get(k) for k in ("status", "kind", "created", "started", "finished", "worker", "error")}
            if before["status"] == "done":
                assert after["result"]["info"] == before["result"]["info"]
                assert after["result"]["parameters"] == before["result"]["parameters"]
                assert after["result"]["paths"] == before["result"]["paths"]
                assert len(after["result"]["images"]) == len(before["result"]["images"]) == 1
                assert np.array_equal(np.asarray(picture(after["result"]["images"][0])),
                                      np.asarray(picture(before["result"]["images"][0])))
                assert picture(after["result"]["images"][0]).info["parameters"] \
                    == picture(before["result"]["images"][0]).info["parameters"]
        # the copy is exactly the picture answered
        assert second.get(f"{JOBS}/{kept['id']}").json()["result"]["images"] == kept["result"]["images"]
        listed = [j["id"] for j in second.get(JOBS).json()["jobs"]]
        assert listed == [kept["id"], saved["id"], failed["id"]]  # in submission order; the aged one gone
        assert second.get(f"{JOBS}/{old['id']}").status_code == 404
        assert not (jobs / f"{old['id']}.json").exists() and not (jobs / old["id"]).exists()
        assert second.post(f"{JOBS}/{kept['id']}/cancel").json()["cancelled"] is False
        assert second.get(f"{JOBS}/{kept['id']}/preview").status_code == 404
        # a new job of this run is written beside them
        new = wait_for(second, submit(second, {**SMALL, "seed": 34}))
        assert new["status"] == "done" and (jobs / f"{new['id']}.json").is_file()
    # the saved pictures themselves stay where the job saved them
    assert all(Path(p).is_file() for p in saved["result"]["paths"])


def test_persisted_records_expire_from_disk(tmp_path):
    """JobRegistry.persist: what ends is written, loaded by the next registry, deleted at expiry."""
    def encode(record, pictures):
        pictures.mkdir(parents=True)
        (pictures / "00000.png").write_bytes(b"png")
        return {"id": record.id, "kind": record.kind, "status": record.status, "created": record.created,
                "finished": record.finished, "error": str(record.error)}

    registry = JobRegistry(keep_s=10)
    registry.persist(tmp_path, encode)
    record = registry.add("task(x/1)", "txt2img", None)  # an id that is no file name
    future: Future = Future()
    registry.bind(record, future)
    future.set_running_or_notify_cancel()
    future.set_exception(ValueError("bad"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[1] == files[0] + ".json"  # the JSON and its pictures' folder
    again = JobRegistry(keep_s=10)
    again.persist(tmp_path, encode)
    loaded = again.get("task(x/1)")
    assert loaded.status == "failed" and loaded.stored["error"] == "bad" and loaded.finished == record.finished
    again.expire(time.time() + 11)
    assert again.get("task(x/1)") is None and list(tmp_path.iterdir()) == []
