"""Easel started the way A1111 1.10 installs and tools start A1111: its CI command line, every
A1111 switch at once, HTTPS, --subpath, the server-stop routes, and the console lines launchers
wait for. Real processes on free loopback ports (see tests/server.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from modules import cmd_args, cmd_args_compat
from tests.server import REPO_ROOT, free_port

A1111_CI = ("--skip-prepare-environment --skip-torch-cuda-test --test-server --do-not-download-clip --no-half "
            "--disable-opt-split-attention --use-cpu all --api-server-stop").split()
LOCAL_URL = re.compile(r"^Running on local URL:  (\S+)$", re.M)
# A1111 switches left out of the all-switches start, and why
LEFT_OUT = {"-h": "prints the help and exits", "--help": "prints the help and exits",
            "--exit": "stops after the set-up, before serving"}


def a1111_switches() -> list[str]:
    """Every A1111 1.10 flag that takes no value, as Easel's parser knows it."""
    return sorted(flag for action in cmd_args.build_parser(())._actions if action.nargs == 0
                  for flag in action.option_strings if flag in cmd_args_compat.A1111_FLAGS and flag not in LEFT_OUT)


def port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Started:
    """A server process started with `argv`, output in `log`. A watcher notes whether the port
    already answers at the moment 'Running on local URL:' shows up; `ready()` waits for it."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.log, self.port = log, int(argv[argv.index("--port") + 1])
        self.answered_when_printed: bool | None = None
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT,
                                            cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self.process.poll() is None:
            if LOCAL_URL.search(self.output()):
                self.answered_when_printed = port_answers(self.port)
                return
            time.sleep(0.02)

    def ready(self, timeout: float = 150) -> "Started":
        self._watcher.join(timeout)
        found = LOCAL_URL.search(self.output())
        assert found and self.answered_when_printed is not None, \
            f"no 'Running on local URL:' (exit status {self.process.poll()}):\n{self.output()}"
        self.url = found.group(1)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return key, cert


@pytest.fixture(scope="module")
def servers(tiny_checkpoints, tmp_path_factory):
    """The three servers of the tests below, started together (their start-ups overlap)."""
    ckpts = str(tiny_checkpoints.checkpoints_dir)
    ci, switches, tls = (tmp_path_factory.mktemp(name) for name in ("ci", "switches", "tls"))
    key, cert = self_signed_certificate(tls)
    started = {
        "ci": Started(["launch.py", *A1111_CI, "--data-dir", str(ci), "--ckpt-dir", ckpts,
                       "--ckpt", str(tiny_checkpoints.sd1), "--port", str(free_port())], ci / "log"),
        # BROWSER: what --autolaunch would open, a command that does nothing here
        "switches": Started(["launch.py", "--data-dir", str(switches), "--ckpt-dir", ckpts, "--port", str(free_port())],
                            switches / "log", env={"COMMANDLINE_ARGS": shlex.join(a1111_switches()), "BROWSER": "true"}),
        "tls": Started(["webui.py", "--data-dir", str(tls), "--ckpt-dir", ckpts, "--port", str(free_port()), "--api",
                        "--api-server-stop", "--skip-load-model-at-start", "--tls-keyfile", str(key),
                        "--tls-certfile", str(cert), "--subpath", "sd"], tls / "log"),
    }
    started["tls"].cert = cert
    yield started
    for server in started.values():
        server.stop()


def txt2img(url: str, steps: int, **kw) -> requests.Response:
    return requests.post(url + "/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": steps, "width": 64,
                                                          "height": 64, "seed": 1}, timeout=120, **kw)


def test_a1111_ci_command_line_starts_announces_and_stops(servers, tiny_checkpoints):
    server = servers["ci"].ready()
    port = server.port
    assert server.answered_when_printed
    assert server.url == f"http://127.0.0.1:{port}"
    # --test-server implies the API, as A1111's configure_for_tests
    models = requests.get(server.url + "/sdapi/v1/sd-models", timeout=30)
    assert models.status_code == 200 and tiny_checkpoints.sd1.name in {m["filename"].split("/")[-1] for m in models.json()}
    # console progress bars, as A1111's (no --disable-console-progressbars here)
    assert txt2img(server.url, 3).status_code == 200
    out = server.output()
    assert "Total progress" in out and "3/3" in out
    assert len(LOCAL_URL.findall(out)) == 1
    assert re.search(r"^Running on local URL:  .*\nStartup time: \d+\.\ds \(.*\)\.$", out, re.M)
    assert out.count("--do-not-download-clip: ignored") == 1  # one line per flag Easel cannot honour

    answer = requests.post(server.url + "/sdapi/v1/server-stop", timeout=30)
    assert answer.status_code == 200 and answer.text == "Stopping."
    assert server.wait() == 0
    assert not port_answers(port)


def test_every_a1111_switch_through_commandline_args(servers):
    switches = a1111_switches()
    assert {"--test-server", "--api-server-stop", "--nowebui", "-f", "--deepdanbooru", "--no-gradio-queue",
            "--use-textbox-seed", "--opt-split-attention-v1", "--skip-version-check"} <= set(switches)
    server = servers["switches"].ready()
    port = server.port
    assert server.answered_when_printed
    assert server.url == f"http://0.0.0.0:{port}"  # --listen, printed as Gradio prints it
    url = f"http://127.0.0.1:{port}"
    assert requests.get(url + "/sdapi/v1/sd-models", timeout=30).status_code == 200
    assert txt2img(url, 2).status_code == 200
    out = server.output()
    assert "Total progress" not in out  # --disable-console-progressbars
    for flag in switches:
        if cmd_args_compat.note_for(flag) and flag != "--gradio-queue":  # --gradio-queue is on by default
            assert len(re.findall(rf"^{re.escape(flag)}: ", out, re.M)) == 1, flag  # one line, printed by launch.py
    # server-restart: the same process (pid) starts again with the same flags and announces itself again
    assert requests.post(url + "/sdapi/v1/server-restart", timeout=30).text == "Restarting."
    deadline = time.time() + 120
    while len(LOCAL_URL.findall(server.output())) < 2:
        assert server.process.poll() is None and time.time() < deadline, server.output()
        time.sleep(0.1)
    assert requests.get(url + "/sdapi/v1/sd-models", timeout=30).status_code == 200
    # server-kill ends the process at once, status 0
    assert requests.post(url + "/sdapi/v1/server-kill", timeout=30).text == "Killing."
    assert server.wait() == 0


def test_https_and_subpath(servers):
    server = servers["tls"].ready()
    port, cert = server.port, server.cert
    assert server.answered_when_printed
    assert server.url == f"https://127.0.0.1:{port}/sd"
    page = requests.get(server.url + "/", verify=str(cert), timeout=30)  # verified against the test's certificate
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert requests.get(f"https://127.0.0.1:{port}/sdapi/v1/sd-models", verify=str(cert), timeout=30).status_code == 200
    with socket.create_connection(("127.0.0.1", port)) as raw:  # a certificate no public CA signed
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # no plain HTTP on that port
        raw.sendall(b"GET /sd/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert not raw.recv(100).startswith(b"HTTP/")
    assert requests.post(f"https://127.0.0.1:{port}/sdapi/v1/server-stop", verify=str(cert), timeout=30).ok
    assert server.wait() == 0


def test_server_stop_routes_only_with_the_flag(tiny_checkpoints, tmp_path):
    from fastapi.testclient import TestClient

    import webui

    for flag, expected in (([], 404), (["--api-server-stop"], 501)):  # 501: a test's app owns no process
        opts = cmd_args.parse_args(["--nowebui", "--data-dir", str(tmp_path), "--ckpt-dir",
                                    str(tiny_checkpoints.checkpoints_dir), *flag], extra_preloads=[])
        client = TestClient(webui.create_app(opts, webui.build_engine(opts)), base_url="http://127.0.0.1")
        for route in ("server-stop", "server-restart"):
            assert client.post(f"/sdapi/v1/{route}").status_code == expected, (flag, route)


@pytest.mark.parametrize("argv, port", [([], 7860), (["--nowebui"], 7861), (["--nowebui", "--port", "9000"], 9000),
                                        (["--port", "9001"], 9001)])
def test_port_default_is_7861_for_the_api_only_server(argv, port):
    assert cmd_args.parse_args(argv, extra_preloads=[]).port == port


@pytest.mark.parametrize("given, path", [("sd", "/sd"), ("/sd", "/sd"), ("/sd/", "/sd"), ("a/b", "/a/b"), ("/", None)])
def test_subpath_with_or_without_leading_slash(given, path):
    assert cmd_args.parse_args(["--subpath", given], extra_preloads=[]).subpath == path


def test_test_server_sets_up_as_a1111(tmp_path):
    opts = cmd_args.parse_args(["--test-server"], extra_preloads=[])
    assert opts.api and opts.disable_nan_check
    assert cmd_args.parse_args(["--ui-debug-mode"], extra_preloads=[]).skip_load_model_at_start


def test_ckpt_takes_any_existing_file(tiny_checkpoints, tmp_path):
    import webui

    elsewhere = tmp_path / "elsewhere" / "some.pt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(tiny_checkpoints.sd1.read_bytes())
    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(elsewhere)], extra_preloads=[])
    engine = webui.build_engine(opts)
    assert engine.options.data["sd_model_checkpoint"] == "some.pt"
    assert engine.checkpoints.find("some.pt").filename == elsewhere.resolve()
    assert engine.checkpoints.default().filename == elsewhere.resolve()
    with pytest.raises(SystemExit, match="no such checkpoint"):
        webui.build_engine(cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt", str(tmp_path / "nope.pt")],
                                               extra_preloads=[]))


def test_unknown_flags_still_exit_2(capsys):
    for argv in (["--no-such-a1111-flag"], ["--cuda-malloc"]):  # --cuda-malloc: Forge's, not A1111's
        with pytest.raises(SystemExit) as exited:
            cmd_args.parse_args(argv, extra_preloads=[])
        assert exited.value.code == 2


def test_readme_flags_table_is_generated():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf8")
    assert readme == cmd_args.readme_with_table(readme), \
        "README.md's flags table is stale: run python -m modules.cmd_args --markdown --write README.md"
    table = readme[readme.index(cmd_args.README_BEGIN):readme.index(cmd_args.README_END)]
    for flag in cmd_args_compat.A1111_FLAGS - {"-h", "--help"}:
        assert f"`{flag}`" in table, flag


def test_ui_config_file_sets_defaults_and_limits(tiny_checkpoints, tmp_path):
    """A1111's ui-config.json: a key sets that field of the tab's component; missing keys are written."""
    from fastapi.testclient import TestClient

    import webui

    ui_config = tmp_path / "elsewhere" / "my-ui-config.json"
    ui_config.parent.mkdir()
    ui_config.write_text(json.dumps({"txt2img/Sampling steps/value": 33, "txt2img/Sampling steps/maximum": 77,
                                     "txt2img/Batch size/visible": False, "txt2img/Sampling method/value": "No such",
                                     "modelmerger/Multiplier (M) - set to 0 to get model A/value": 0.55}))
    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ui-config-file", str(ui_config), "--skip-load-model-at-start"], extra_preloads=[])
    engine = webui.build_engine(opts)
    webui.start_scripts(engine, opts)  # the page's scripts, whose controls have keys of their own
    client = TestClient(webui.create_app(opts, engine), base_url="http://127.0.0.1")
    steps = [c["props"] for c in client.get("/config").json()["components"] if c["props"].get("label") == "Sampling steps"]
    assert [(p["value"], p["maximum"]) for p in steps] == [(33, 77), (20, 150)]  # txt2img's, then img2img's as it was
    saved = json.loads(ui_config.read_text())
    assert saved["txt2img/Sampling steps/value"] == 33 and saved["img2img/Sampling steps/maximum"] == 150
    assert saved["txt2img/Width/value"] == 512
    # "visible" (A1111's, for shown controls and buttons): false hides the control, which stays in the page
    props = {c["props"].get("elem_id"): c["props"] for c in client.get("/config").json()["components"]}
    assert props["txt2img_batch_size"]["visible"] == "hidden" and props["img2img_batch_size"]["visible"] is True
    assert saved["txt2img/Generate/visible"] is True and saved["txt2img/Batch size/visible"] is False
    assert "txt2img/Distilled CFG Scale/visible" not in saved  # hidden until a model shows it
    assert props["txt2img_sampling"]["value"] != "No such"  # a choice the dropdown lacks is left out
    # a script's control has a key of its own (A1111's customscript/...): the outpainting script's
    # "Masked content" keeps its default instead of taking the inpaint panel's (a regression)
    assert saved["customscript/poor_mans_outpainting.py/img2img/Masked content/value"] == "fill"
    masked = {c["props"].get("elem_id"): c["props"]["value"] for c in client.get("/config").json()["components"]
              if c["props"].get("label") == "Masked content"}
    assert masked["script_poor_mans_outpainting_inpainting_fill"] == "fill"
    assert saved["img2img/Masked content/value"] == masked["img2img_inpainting_fill"] != "fill"
    # the Checkpoint Merger's controls have keys too, under A1111's prefix for that tab
    assert props["modelmerger_interp_amount"]["value"] == 0.55
    assert saved["modelmerger/Interpolation Method/value"] == props["modelmerger_interp_method"]["value"]
    assert saved["modelmerger/Save as float16/value"] is False
    assert not (tmp_path / "ui-config.json").exists()


def test_styles_files_and_settings_file_are_honoured(tiny_checkpoints, tmp_path):
    import webui

    first, second, settings = tmp_path / "a" / "styles.csv", tmp_path / "b" / "more.csv", tmp_path / "c" / "cfg.json"
    for path, name in ((first, "Cinematic"), (second, "Watercolour")):
        path.parent.mkdir()
        path.write_text(f"name,prompt,negative_prompt\n{name},{name.lower()} {{prompt}},blurry\n")
    settings.parent.mkdir()
    settings.write_text(json.dumps({"samples_format": "jpg"}))
    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--styles-file", str(first), "--styles-file", str(second),
                                "--ui-settings-file", str(settings)], extra_preloads=[])
    engine = webui.build_engine(opts)
    assert [s.name for s in engine.styles.items()] == ["Cinematic", "Watercolour"]
    assert engine.options.data["samples_format"] == "jpg"
    engine.options.set("samples_format", "webp")
    engine.options.save()
    assert json.loads(settings.read_text())["samples_format"] == "webp"
    assert not (tmp_path / "config.json").exists()


def test_no_hashing_leaves_checkpoints_unhashed(tiny_checkpoints, tmp_path):
    import webui

    for flags, hashed in (([], True), (["--no-hashing"], False)):
        data = tmp_path / str(hashed)
        opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                    *flags], extra_preloads=[])
        engine = webui.build_engine(opts)
        info = engine.checkpoints.find(tiny_checkpoints.sd1.name)
        title = engine.short_title(info)
        assert (info.sha256 is not None) == hashed and ("[" in title) == hashed, (flags, title)
