"""A real Easel server in a subprocess, on a free loopback port, for HTTP and browser tests."""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def run_server(data_dir: Path, ckpt_dir: Path, *flags: str, ready_path: str = "/sdapi/v1/sd-models",
               auth: tuple[str, str] | None = None, timeout: float = 120) -> Iterator[RunningServer]:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"server-{port}.log"
    cmd = [sys.executable, str(REPO_ROOT / "webui.py"), "--port", str(port), "--data-dir", str(data_dir),
           "--ckpt-dir", str(ckpt_dir), *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", data_dir, log, proc)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
            try:
                if requests.get(server.url + ready_path, timeout=2, auth=auth).status_code < 500:
                    break
            except requests.ConnectionError:
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
