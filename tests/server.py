"""A real Easel server in a subprocess, on a free loopback port, for HTTP and browser tests."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 300), **kw)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt_and_wait_idle(self, timeout: float = 180) -> None:
        """Interrupts whatever runs and waits until the server has no job (a test that fails
        mid-job leaves the next test a free server)."""
        deadline = time.monotonic() + timeout
        while True:
            self.post("/sdapi/v1/interrupt")
            if self.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]["job_count"] == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the server still runs a job")
            time.sleep(0.5)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """An ASGI app (webui.create_app's) served by uvicorn in a thread of this process on a free port;
    yields its URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def serve_webui(data: Path, ckpt_dir: Path, config: dict) -> Iterator[str]:
    """webui's app (page and API) in this process on a free port, with `config` as its config.json
    (the page is built with those options); yields its URL."""
    import json

    import webui
    from modules import cmd_args

    data.mkdir(parents=True, exist_ok=True)
    (data / "config.json").write_text(json.dumps(config))
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ui-settings-file", str(data / "config.json"),
                                "--ckpt-dir", str(ckpt_dir), "--skip-load-model-at-start"], extra_preloads=[])
    engine = webui.build_engine(opts)
    with serve_app(webui.create_app(opts, engine)) as url:
        yield url


@contextlib.contextmanager
def run_server(data_dir: Path, ckpt_dir: Path, *flags: str, ready_path: str = "/sdapi/v1/sd-models",
               auth: tuple[str, str] | None = None, timeout: float = 120) -> Iterator[RunningServer]:
    """The port is free when picked, but another process may bind it before the server does (Ray's
    local cluster starts dozens): a server that could not bind is started again on a new port."""
    for attempt in range(3):
        try:
            context = _run_server(data_dir, ckpt_dir, flags, ready_path, auth, timeout)
            server = context.__enter__()
        except _PortTaken:
            if attempt == 2:
                raise
            continue
        try:
            yield server
        finally:
            context.__exit__(None, None, None)
        return


class _PortTaken(RuntimeError):
    pass


@contextlib.contextmanager
def _run_server(data_dir: Path, ckpt_dir: Path, flags, ready_path: str, auth, timeout: float) -> Iterator[RunningServer]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"server-{port}.log"
    # fp32 as the suite's references are, unless the test asks for a precision (tests/conftest.py)
    precision = [] if any(str(f).startswith("--precision") for f in flags) else ["--precision", "full"]
    cmd = [sys.executable, str(REPO_ROOT / "webui.py"), "--port", str(port), "--data-dir", str(data_dir),
           "--ckpt-dir", str(ckpt_dir), *precision, *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", data_dir, log, proc)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                if "address already in use" in server.output():
                    raise _PortTaken(f"port {port} was taken before the server bound it")
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
            try:
                # the log's line too: an answer on the port could come from whoever took it first
                if requests.get(server.url + ready_path, timeout=2, auth=auth).status_code < 500 \
                        and re.search(rf"^Running on local URL:  \S*:{port}\b", server.output(), re.M):
                    break
            except (requests.ConnectionError, requests.Timeout):  # (a busy machine: an answer after 2 s)
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not start in {timeout}s:\n{server.output()}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
