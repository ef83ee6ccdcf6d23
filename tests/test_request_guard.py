"""Other sites' pages get nothing from a local server: the Host allow-list (DNS rebinding), the Origin
check (cross-site requests, Gradio's queue included), JSON-only API bodies, the body size limit, the
CORS flags, and a login page that reveals nothing.

Each finding is reproduced through real HTTP against a real server, the way a page in a browser
(or the attacker's curl) sends it, with the request that must still work beside it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from modules import request_guard as guard
from tests.server import run_server
from tests.test_auth import hello_websocket_app, login, serve_in_process

EVIL = "http://evil.example"


def ui_config(url: str, session=requests) -> dict:
    r = session.get(url + "/config", timeout=60)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def fn_index(config: dict, elem_id: str) -> int:
    """The Gradio event (fn_index) that a click on the component `elem_id` runs."""
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
    assert ids, f"no component {elem_id}"
    for dep in config["dependencies"]:
        if any(target[0] == ids[0] for target in dep["targets"]):
            return dep["id"]
    raise AssertionError(f"no event on {elem_id}")


def queue_run(url: str, fn: int, data: list, headers: dict, timeout: float = 120) -> tuple[int, list | None]:
    """Gradio's queue as its page uses it: join, then read the event stream until the job completes.
    Returns (join status, output data or None)."""
    session = f"s{time.time_ns()}"
    join = requests.post(url + "/gradio_api/queue/join", timeout=60, headers={**headers, "Content-Type": "application/json"},
                         data=json.dumps({"data": data, "fn_index": fn, "session_hash": session, "event_data": None,
                                          "trigger_id": None}))
    if join.status_code != 200:
        return join.status_code, None
    with requests.get(url + f"/gradio_api/queue/data?session_hash={session}", headers=headers, stream=True,
                      timeout=timeout) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return 200, (message.get("output") or {}).get("data")
    return 200, None


def extension_repo(root: Path) -> Path:
    """A local git repository of an extension whose install.py leaves a marker file."""
    repo = root / "payload-ext"
    repo.mkdir(parents=True)
    marker = root / "install-ran"
    (repo / "install.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    return repo


# ------------------------------------------------------------------------------ rules, no server

@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:7860", ("127.0.0.1", 7860)), ("[::1]:7860", ("::1", 7860)), ("LocalHost.", ("localhost", None)),
    ("evil.example:80", ("evil.example", 80)), ("a@b", ("", None)), ("a/b", ("", None)), ("x:notaport", ("", None)),
])
def test_host_header_parsing(value, expected):
    assert guard.split_host(value) == expected


def test_host_allow_list():
    local = guard.HostAllowList.from_flags(None, listen=False)
    for name in ("127.0.0.1", "::1", "192.168.1.20", "localhost", "app.localhost"):
        assert local.allows(name), name
    for name in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io"):
        assert not local.allows(name), name
    listening = guard.HostAllowList.from_flags("0.0.0.0", listen=True, extra=["sd.example.org", "*.lan.example"])
    assert listening.allows(guard.machine_names().pop())
    assert listening.allows("sd.example.org") and listening.allows("pc.lan.example")
    assert not listening.allows("lan.example.evil") and not listening.allows("evil.example")
    assert guard.HostAllowList.from_flags(None, False, ["*"]).allows("anything.example")


def test_same_origin_compares_host_and_port():
    assert guard.same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert guard.same_origin("https://sd.example.org", "sd.example.org")  # TLS proxy: default ports
    assert not guard.same_origin("http://127.0.0.1:8000", "127.0.0.1:7860")  # another local server's page
    assert not guard.same_origin("http://evil.example:7860", "127.0.0.1:7860")
    assert not guard.same_origin("null", "127.0.0.1:7860")
    assert not guard.same_origin("file://", "127.0.0.1:7860")


# ------------------------------------------------------------------- one real server (subprocess)

@pytest.fixture(scope="module")
def guarded(tiny_checkpoints, tmp_path_factory):
    """A default local server (UI + API), in its own process so that its extensions folder is its
    data dir's. No checkpoint is loaded: nothing here generates."""
    data = tmp_path_factory.mktemp("guarded")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--skip-load-model-at-start") as srv:
        yield srv


def test_dns_rebinding_cannot_install_an_extension_through_the_queue(guarded, tmp_path):
    """The finding: a page on evil.example, its name re-resolved to 127.0.0.1, joined Gradio's queue and
    ran the Extensions tab's install (a clone and its install.py). The same request with the server's
    own Host and Origin, as the page sends it, still installs: the test shows the path is real."""
    repo = extension_repo(tmp_path)
    port = guarded.url.rsplit(":", 1)[1]
    fn = fn_index(ui_config(guarded.url), "extension_install_button")
    forged = {"Host": f"evil.example:{port}", "Origin": f"{EVIL}:{port}"}
    status, _ = queue_run(guarded.url, fn, [str(repo), "", "forged"], forged)
    assert status == 403
    data_stream = requests.get(guarded.url + "/gradio_api/queue/data?session_hash=s1", headers=forged, timeout=30)
    assert data_stream.status_code == 403
    time.sleep(1)
    assert not (tmp_path / "install-ran").exists()
    assert not (guarded.data_dir / "extensions" / "forged").exists()

    # a cross-site page without rebinding (the real Host, its own Origin) is refused the same way
    status, _ = queue_run(guarded.url, fn, [str(repo), "", "crosssite"], {"Origin": EVIL})
    assert status == 403 and not (guarded.data_dir / "extensions" / "crosssite").exists()

    own = {"Origin": guarded.url}
    status, output = queue_run(guarded.url, fn, [str(repo), "", "legit"], own)
    assert status == 200 and "Installed into" in json.dumps(output), output
    assert (guarded.data_dir / "extensions" / "legit" / "install.py").is_file()
    assert (tmp_path / "install-ran").read_text() == "ran"


def test_forged_host_gets_nothing_from_the_api_or_the_page(guarded):
    port = guarded.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}"):
        for path in ("/sdapi/v1/options", "/sdapi/v1/sd-models", "/", "/config", "/openapi.json"):
            r = guarded.get(path, headers={"Host": host, "Origin": f"http://{host}"})
            assert r.status_code == 403, (host, path, r.status_code)
            assert "access-control-allow-origin" not in r.headers
            assert "not a name of this server" in r.json()["detail"]
        r = guarded.post("/sdapi/v1/options", headers={"Host": host}, json={"jpeg_quality": 11})
        assert r.status_code == 403
    assert guarded.get("/sdapi/v1/options").json()["jpeg_quality"] != 11
    # the server's own names still work
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert guarded.get("/sdapi/v1/samplers", headers={"Host": host}).status_code == 200


def test_cross_site_simple_posts_change_no_setting(guarded):
    """The finding: POST /sdapi/v1/options read a `text/plain` body (a request any page may send without
    a preflight) and saved it: output folders, the checkpoint, disable_all_extensions."""
    config = guarded.data_dir / "config.json"
    before = guarded.get("/sdapi/v1/options").json()
    stored = config.read_bytes() if config.exists() else None
    payload = json.dumps({"outdir_txt2img_samples": "/tmp/pwned", "disable_all_extensions": "all"})
    attempts = [
        ({"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"}, 403),  # fetch(..., {mode: "no-cors"})
        ({"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"}, 403),  # a <form> post
        ({"Origin": "null", "Content-Type": "text/plain"}, 403),  # a sandboxed frame
        ({"Origin": EVIL, "Content-Type": "application/json"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # no Origin (not a browser): still JSON only
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ]
    for headers, status in attempts:
        r = guarded.post("/sdapi/v1/options", data=payload, headers=headers)
        assert r.status_code == status, (headers, r.status_code, r.text)
        assert "access-control-allow-origin" not in r.headers
    assert guarded.get("/sdapi/v1/options").json() == before
    assert (config.read_bytes() if config.exists() else None) == stored

    # the page's own origin and clients without one still set options
    for headers in ({"Origin": guarded.url, "Content-Type": "application/json"}, {}):
        r = guarded.post("/sdapi/v1/options", data=json.dumps({"jpeg_quality": 77}), headers=headers)
        assert r.status_code == 200, r.text
        assert guarded.get("/sdapi/v1/options").json()["jpeg_quality"] == 77
        guarded.post("/sdapi/v1/options", json={"jpeg_quality": before["jpeg_quality"]})


def test_request_bodies_over_the_limit_are_refused_unread(tiny_checkpoints, tmp_path):
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api", "--max-request-size", "1") as srv:
        big = b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        r = srv.post("/sdapi/v1/txt2img", data=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "--max-request-size" in r.json()["detail"]
        chunked = srv.post("/sdapi/v1/txt2img", data=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                           headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413, chunked.text[:200]
        assert srv.post("/sdapi/v1/options", json={"jpeg_quality": 70}).status_code == 200
        assert srv.get("/sdapi/v1/options").json()["jpeg_quality"] == 70


def test_cors_flags_allow_exactly_the_named_origins(tiny_checkpoints, tmp_path):
    """A1111's --cors-allow-origins / --cors-allow-origins-regex: browser-based clients on those origins
    may call the API (with credentials); no other origin gets an Access-Control-Allow-Origin."""
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api",
                          "--cors-allow-origins", "http://tool.example,http://other.example",
                          "--cors-allow-origins-regex", r"https://.*\.tools\.example") as srv:
        for origin in ("http://tool.example", "https://a.tools.example"):
            pre = requests.options(srv.url + "/sdapi/v1/options", timeout=30, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"})
            assert pre.status_code == 200, pre.text
            assert pre.headers["access-control-allow-origin"] == origin
            assert pre.headers["access-control-allow-credentials"] == "true"
            r = srv.post("/sdapi/v1/options", json={"jpeg_quality": 61}, headers={"Origin": origin})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        for origin in (EVIL, "https://tools.example.evil", "http://a.tools.example"):
            pre = requests.options(srv.url + "/sdapi/v1/options", timeout=30, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"})
            assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
            r = srv.get("/sdapi/v1/options", headers={"Origin": origin})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_without_cors_flags_gradio_reflects_no_foreign_origin(tiny_checkpoints, tmp_path):
    """The finding: Gradio answered a foreign Origin with Access-Control-Allow-Origin and credentials."""
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--listen") as srv:
        for path in ("/config", "/gradio_api/info", "/"):
            r = srv.get(path, headers={"Origin": EVIL})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers, path
            assert srv.get(path, headers={"Origin": srv.url}).status_code == 200


def test_the_login_page_reveals_nothing_before_login(tiny_checkpoints, tmp_path):
    """The finding: with --gradio-auth, GET / wrote Gradio's API description of the whole page into the
    login page (110 endpoints, checkpoint titles and hashes, style names, output folders)."""
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--gradio-auth", "u:pw") as srv:
        page = srv.get("/")
        assert page.status_code == 200 and "window.gradio_api_info = {};" in page.text
        secrets = ("txt2img_prompt", "sd1", "outputs", "DPM++ 2M", "named_endpoints")
        for secret in secrets:
            assert secret not in page.text, secret
        assert '"auth_required": true' in page.text or '"auth_required":true' in page.text
        # logged in, the same page carries the description the page needs
        session = login(srv, "u", "pw")
        full = session.get(srv.url + "/", timeout=60)
        assert full.status_code == 200
        for secret in secrets:
            assert secret in full.text, secret


def test_invalid_cors_regex_is_a_flag_error():
    r = subprocess.run([sys.executable, "-c", "from modules import cmd_args; "
                        "cmd_args.parse_args(['--cors-allow-origins-regex', '(unclosed'])"],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert r.returncode == 2 and "not a regular expression" in r.stderr


def test_websockets_from_other_sites_are_closed():
    """Extensions may add websocket routes; a browser always sends Origin on a websocket."""
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = hello_websocket_app()
    app.add_middleware(guard.RequestGuard, policy=guard.GuardPolicy(hosts=guard.HostAllowList({"testserver"})))
    client = TestClient(app)  # Host: testserver
    for headers in ({"Origin": EVIL}, {"Origin": "http://testserver:8080"}, {"Origin": "null"}):
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect("/ws", headers=headers):
                pass
        assert closed.value.code == 1008
    for headers in ({"Origin": "http://testserver"}, {}):
        with client.websocket_connect("/ws", headers=headers) as socket:
            assert socket.receive_text() == "hello"


def test_the_guard_follows_the_command_line():
    from modules import cmd_args

    def policy(*argv):
        return guard.GuardPolicy.from_flags(cmd_args.parse_args(list(argv), extra_preloads=[]))

    custom = policy("--allowed-hosts", "sd.example.org,*.lan.example", "--allowed-hosts", "other.example",
                    "--max-request-size", "0.5", "--cors-allow-origins", "http://tool.example")
    for name in ("sd.example.org", "pc.lan.example", "other.example", "localhost", "10.0.0.7"):
        assert custom.hosts.allows(name), name
    assert not custom.hosts.allows("evil.example")
    assert custom.max_body_bytes == 512 * 1024 and custom.cors.allows("http://tool.example")
    default = policy()
    assert default.max_body_bytes == 64 * 1024 * 1024 and not default.cors.configured
    lan_names = [n for n in guard.machine_names() if not (n == "localhost" or n.endswith(".localhost"))]
    for name in lan_names:  # this machine's names: answered under --listen only
        assert not default.hosts.allows(name) and policy("--listen").hosts.allows(name), name
    assert policy("--max-request-size", "0").max_body_bytes is None
