"""`--ray-address`: Easel's workers on a Ray cluster of its own, started with Ray's own command.

One real local cluster (`ray start --head --block`, two CPUs, its own temp folder) serves the module:
a server started with `--ray-address HOST:PORT` (the cluster's GCS address) runs a job on its actor
`ray-0`; an engine started with Ray Client's `--ray-address ray://HOST:PORT` (grpcio, pinned in
requirements-ray.txt) runs a page's job with its logged-in user, whose "User:" infotext and [user]
file name are those of one worker (the user bound to the job travels to the actor).

Ray 2.60 uses token authentication when a token exists (~/.ray/auth_token): the cluster and every
process that connects get RAY_AUTH_MODE=token here (docs/scale-out.md). The cluster is stopped by
ending its `ray start --block` process, which ends the processes it started; not with `ray stop`,
which would stop every Ray process of this user on the machine (other tests' clusters too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="requirements-ray.txt is not installed")
pytest.importorskip("grpc", reason="requirements-ray.txt is not installed (grpcio, for ray:// addresses)")

from tests.server import free_port, run_server  # noqa: E402

JOBS = "/easel/v1/jobs"


def _refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its cached config once, when imported: read it again (as Ray's own
    token set-up does), for this process's Ray Client."""
    from ray._raylet import Config

    Config.initialize("")


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, Ray Client address) of a local two-CPU cluster."""
    # a short folder: Ray's socket paths under it must stay under the 107 characters of a Unix socket
    temp = tempfile.mkdtemp(prefix="easel-ray-")
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # for this process's clients and the servers it starts
    _refresh_ray_config()
    port, client_port = free_port(), free_port()
    log = Path(temp) / "ray-start.log"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
           "--ray-client-server-port", str(client_port), "--num-cpus", "2", "--num-gpus", "0",
           "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{log.read_text()}"
            assert time.time() < deadline, f"the cluster did not start:\n{log.read_text()}"
            time.sleep(0.3)
        yield f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}"
    finally:
        proc.terminate()  # `ray start --block` stops the cluster's processes as it ends
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before
        _refresh_ray_config()
        shutil.rmtree(temp, ignore_errors=True)


HOOK = """
import os

from modules import scripts


class RayHook(scripts.Script):
    def title(self):
        return "Ray hook"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        p.extra_generation_params["Hook pid"] = os.getpid()

    def postprocess_image(self, p, pp, *args):
        pp.image = pp.image.copy()
        pp.image.putpixel((0, 0), (255, 0, 1))
"""


def test_a_server_with_the_clusters_address_runs_its_job_there(cluster, tiny_checkpoints, tmp_path):
    """... with an extension's always-on script, whose generation hooks run on the worker."""
    import base64
    import io

    from PIL import Image

    address, _ = cluster
    extension = tmp_path / "data" / "extensions" / "ray-hook" / "scripts"
    extension.mkdir(parents=True)
    (extension / "ray_hook.py").write_text(HOOK)
    with run_server(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--nowebui", "--ckpt",
                    str(tiny_checkpoints.sd1), "--ray-address", address, timeout=180) as srv:
        answer = srv.post(f"{JOBS}/txt2img", json={"prompt": "on the cluster", "steps": 2, "width": 64, "height": 64,
                                                   "seed": 5, "sampler_name": "Euler"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        deadline = time.time() + 120
        while (job := srv.get(f"{JOBS}/{job_id}").json())["status"] not in ("done", "failed", "cancelled"):
            assert time.time() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "done" and job["worker"] == "ray-0" and job["attempts"] == 1, job
        assert "Seed: 5" in job["result"]["info"]
        workers = srv.get("/easel/v1/workers").json()["workers"]
        assert [w["name"] for w in workers] == ["ray-0"] and workers[0]["jobs_done"] == 1
        assert workers[0]["pid"] not in (None, srv.process.pid)
        # the extension's process() and postprocess_image() ran in the worker's process
        infotext = json.loads(job["result"]["info"])["infotexts"][0]
        assert f"Hook pid: {workers[0]['pid']}" in infotext, (infotext, srv.output()[-3000:])
        picture = Image.open(io.BytesIO(base64.b64decode(job["result"]["images"][0])))
        assert picture.convert("RGB").getpixel((0, 0)) == (255, 0, 1)
        assert f"Hook pid: {workers[0]['pid']}" in picture.info["parameters"]
        # the cluster's (no GPU: one worker, one CPU), not a local cluster of the server's own
        assert f"1 Ray worker(s), one CPU each (cluster {address})" in srv.output()


def test_ray_client_address_and_the_pages_user_reach_the_worker(cluster, tiny_checkpoints, tmp_path):
    """A page's job (Engine.submit_txt2img with the logged-in user) on a worker reached through
    Ray Client: "User: alice" closes the infotext and [user] names the file, as on one worker."""
    import ray

    import webui
    from modules import cmd_args
    from modules.core.types import GenerationRequest

    _, client_address = cluster
    # fp32 named: the Ray worker's process decides its precision from these flags, not from this process's
    # fp32 pin (tests/conftest.py), and the pictures are compared bit for bit
    common = ["--ckpt-dir", str(tiny_checkpoints.checkpoints_dir), "--ckpt", str(tiny_checkpoints.sd1),
              "--precision", "full"]
    request = GenerationRequest(prompt="a cup", steps=1, width=64, height=64, seed=4, sampler_name="Euler",
                                save_images=True)

    def run(engine, out: Path, task_id: str, **kw):
        saving = {"outdir_samples": str(out), "save_to_dirs": False, "samples_filename_pattern": "[user]-[seed]",
                  "add_user_name_to_info": True}
        return engine.submit_txt2img(request, task_id=task_id, overrides=saving, **kw).result()

    local = webui.build_engine(cmd_args.parse_args(["--data-dir", str(tmp_path / "local"), *common], extra_preloads=[]))
    one_worker = run(local, tmp_path / "local-out", "task(local)", user="alice")
    local_nobody = run(local, tmp_path / "local-out", "task(local-nobody)")
    engine = webui.build_engine(cmd_args.parse_args(
        ["--data-dir", str(tmp_path / "ray"), *common, "--ray-address", client_address], extra_preloads=[]))
    try:
        assert ray.util.client.ray.is_connected()  # through Ray Client
        got = run(engine, tmp_path / "ray-out", "task(alice)", user="alice", console_prompt=True)
        nobody = run(engine, tmp_path / "ray-out", "task(nobody)")
        assert engine.queue.jobs.get("task(alice)").worker == "ray-0"
    finally:
        engine.queue.close()
        ray.shutdown()
    assert got.infotexts[0].endswith(", User: alice") and got.infotexts == one_worker.infotexts
    assert [Path(p).name for p in got.paths] == ["00000-alice-4.png"]
    assert [Path(p).name for p in one_worker.paths] == ["00000-alice-4.png"]
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(one_worker.images[0]))
    assert "User:" not in nobody.infotexts[0] and nobody.infotexts == local_nobody.infotexts
    assert [Path(p).name for p in nobody.paths] == [Path(p).name for p in local_nobody.paths]
