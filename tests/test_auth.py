"""Logins: one gate (modules/auth.py) in front of every route, over real HTTP.

Route families checked in every configuration: the API (/sdapi, /internal), the docs (/docs,
/openapi.json), a route an extension adds to the app after the server is up, the UI's own routes
(/config, /gradio_api/... including ones Gradio itself leaves open), its file route and uploads, and
the login page. Configurations: no logins; --gradio-auth alone with --api (the API takes the UI's
logins); --api-auth and --gradio-auth with different users; --nowebui --api-auth-path (logins in a file).

The late-route servers run in this process (uvicorn on a thread) so that a test can add a route to
the running app, as an extension's on_app_started does; the others are subprocesses (tests/server.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from fastapi import WebSocket
from PIL import Image

from tests.server import REPO_ROOT, run_server, serve_app

UI_LOGIN = ("anna", "s3cret:x")  # the password may contain ':'
API_LOGIN = ("bob", "pässwört-api")  # non-ASCII, sent as UTF-8
LATE = "/late-extension/ping"


def utf8(login: tuple[str, str]) -> tuple[bytes, bytes]:
    """requests encodes str logins as latin-1; send them as UTF-8 bytes like browsers and curl do."""
    return login[0].encode(), login[1].encode()


@dataclass
class Served:
    url: str
    app: object
    output_png: Path  # a file under outputs/, which the UI may serve

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kw)


@contextlib.contextmanager
def serve_in_process(data: Path, ckpt_dir: Path, *flags: str) -> Iterator[Served]:
    """webui's app on a free port in this process; an extension-style route is added once it serves."""
    import webui
    from modules import cmd_args

    data.mkdir(parents=True, exist_ok=True)
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ui-settings-file", str(data / "config.json"),
                                "--embeddings-dir", str(data / "embeddings"), "--lora-dir", str(data / "Lora"),
                                "--ckpt-dir", str(ckpt_dir), "--skip-load-model-at-start", *flags])
    engine = webui.build_engine(opts)
    app = webui.create_app(opts, engine)
    with serve_app(app) as url:
        # added after start-up, the way A1111 extensions add routes (app.add_api_route in on_app_started)
        app.add_api_route(LATE, lambda: {"pong": True}, methods=["GET"])
        png = data / "outputs" / "txt2img-images" / "probe.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 40)).save(png)
        yield Served(url, app, png)


def assert_a1111_file_route(srv: Served, get) -> None:
    """A1111's /file=: outputs (absolute or relative to the data folder) are served; any other path,
    a way out with `..`, a symlink out of an allowed folder or a hidden file is refused."""
    data = srv.output_png.parents[2]
    for path in (f"/file={srv.output_png}", "/file=outputs/txt2img-images/probe.png",
                 f"/file={srv.output_png}?1234"):
        r = get(path)
        assert r.status_code == 200 and r.content == srv.output_png.read_bytes(), path
    secret = data / "config-secret.txt"
    secret.write_text("secret")
    link = srv.output_png.parent / "link.txt"
    if not link.exists():
        link.symlink_to(secret)
    hidden = srv.output_png.parent / ".hidden" / "x.txt"
    hidden.parent.mkdir(exist_ok=True)
    hidden.write_text("hidden")
    for path in (f"/file={secret}", "/file=config-secret.txt", "/file=outputs/%2E%2E/config-secret.txt",  # (clients fold a plain ../)
                 "/file=outputs/txt2img-images/%2e%2e/%2e%2e/config-secret.txt", "/file=/etc/passwd",
                 "/file=outputs/txt2img-images/link.txt", f"/file={hidden}", f"/file={REPO_ROOT / 'webui.py'}"):
        r = get(path)
        assert r.status_code == 403 and b"secret" not in r.content, (path, r.status_code)
    assert get("/file=outputs/txt2img-images/missing.png").status_code == 404
    assert get(f"/file={srv.output_png.parent}").status_code == 404  # a folder is no file


def login(srv: Served, user: str, password: str) -> requests.Session:
    """A browser-like session logged in through Gradio's login form."""
    session = requests.Session()
    r = session.post(srv.url + "/login", data={"username": user, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return session


def asset_path(srv: Served) -> str:
    """One of the scripts the login page loads."""
    html = srv.get("/").text
    found = re.search(r'(?:src|href)="[^"]*?(/assets/[^"]+\.(?:js|css))"', html)
    assert found, html[:2000]
    return found.group(1)


def upload(get_or_session, url: str, **kw) -> requests.Response:
    files = {"files": ("probe.txt", b"hello easel", "text/plain")}
    return get_or_session.post(url + "/gradio_api/upload", files=files, timeout=60, **kw)


# The UI routes that need a login. The last two Gradio leaves open itself: only the gate closes them.
UI_GUARDED_GET = ["/config", "/gradio_api/info", "/gradio_api/startup-events"]


def assert_api_refused(r: requests.Response) -> None:
    assert r.status_code == 401, (r.request.url, r.status_code, r.text[:300])
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.json() == {"detail": "Not authenticated"}


def assert_ui_refused(r: requests.Response) -> None:
    assert r.status_code == 401, (r.request.url, r.status_code, r.text[:300])
    assert "WWW-Authenticate" not in r.headers  # the browser shows Gradio's login page, not a dialog


# ------------------------------------------------------------------------------------ no logins

def test_without_logins_every_route_family_is_open(tiny_checkpoints, tmp_path):
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api") as srv:
        r = srv.get("/sdapi/v1/samplers")
        assert r.status_code == 200 and "Euler a" in [s["name"] for s in r.json()]
        assert srv.get("/docs").status_code == 200
        assert srv.get("/openapi.json").json()["info"]["title"] == "Easel"
        assert srv.get(LATE).json() == {"pong": True}  # reachable although added after the UI's mount
        assert "txt2img_prompt" in srv.get("/config").text
        assert srv.get("/gradio_api/startup-events").status_code == 200
        file = srv.get(f"/gradio_api/file={srv.output_png}")
        assert file.status_code == 200 and file.content == srv.output_png.read_bytes()
        assert_a1111_file_route(srv, srv.get)
        up = upload(requests, srv.url)
        assert up.status_code == 200 and Path(up.json()[0]).read_bytes() == b"hello easel"
        assert srv.get("/").status_code == 200


# --------------------------------------------------------------- --api --gradio-auth (shared logins)

def test_ui_login_guards_every_route_and_the_api_takes_it(tiny_checkpoints, tmp_path):
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api",
                          "--gradio-auth", ":".join(UI_LOGIN)) as srv:
        # nobody logged in: the API, the docs and the late route ask for HTTP Basic ...
        for path in ("/sdapi/v1/samplers", "/sdapi/v1/no-such-route", "/internal/ping", "/docs",
                     "/openapi.json", LATE):
            assert_api_refused(srv.get(path))
        assert_api_refused(srv.post("/sdapi/v1/interrupt"))
        assert_api_refused(srv.get("/sdapi/v1/samplers", auth=(UI_LOGIN[0], "wrong")))
        assert_api_refused(srv.get("/sdapi/v1/samplers", headers={"Authorization": "Basic !!not-base64!!"}))
        assert_api_refused(srv.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer abc"}))
        # ... the UI's routes, its file route and uploads are closed ...
        for path in UI_GUARDED_GET:
            assert_ui_refused(srv.get(path))
        assert_ui_refused(srv.post("/gradio_api/cancel", json={"session_hash": "x", "fn_index": 0, "event_id": "y"}))
        assert_ui_refused(srv.get(f"/gradio_api/file={srv.output_png}"))
        assert_ui_refused(srv.get(f"/file={srv.output_png}"))  # A1111's file route too
        assert_ui_refused(upload(requests, srv.url))
        # ... and only the login page with what it loads stays open
        assert srv.get("/").status_code == 200
        assert srv.get("/theme.css").status_code == 200
        assert srv.get(asset_path(srv)).status_code == 200

        # HTTP Basic with the UI's login opens the API, the docs and the late route
        r = srv.get("/sdapi/v1/samplers", auth=UI_LOGIN)
        assert r.status_code == 200 and "Euler a" in [s["name"] for s in r.json()]
        assert srv.get("/openapi.json", auth=UI_LOGIN).json()["info"]["title"] == "Easel"
        assert srv.get(LATE, auth=UI_LOGIN).json() == {"pong": True}

        # a wrong login on the form is refused; the right one opens the UI, files and uploads
        assert requests.post(srv.url + "/login", data={"username": UI_LOGIN[0], "password": "nope"},
                             timeout=30).status_code == 400
        session = login(srv, *UI_LOGIN)
        assert "txt2img_prompt" in session.get(srv.url + "/config", timeout=30).text
        assert session.get(srv.url + "/gradio_api/startup-events", timeout=30).status_code == 200
        file = session.get(srv.url + f"/gradio_api/file={srv.output_png}", timeout=30)
        assert file.status_code == 200 and file.content == srv.output_png.read_bytes()
        assert_a1111_file_route(srv, lambda path: session.get(srv.url + path, timeout=30))
        up = upload(session, srv.url)
        assert up.status_code == 200 and Path(up.json()[0]).read_bytes() == b"hello easel"
        # the page's session also opens routes its scripts call (extensions'), but not /sdapi
        assert session.get(srv.url + LATE, timeout=30).json() == {"pong": True}
        assert_api_refused(session.get(srv.url + "/sdapi/v1/samplers", timeout=30))
        # after logging out the session is worth nothing
        session.get(srv.url + "/logout", timeout=30)
        assert_ui_refused(session.get(srv.url + "/config", timeout=30))


# ------------------------------------------------------- --api-auth and --gradio-auth, different users

def test_api_and_ui_logins_are_kept_apart(tiny_checkpoints, tmp_path):
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api",
                          "--api-auth", ":".join(API_LOGIN), "--gradio-auth", ":".join(UI_LOGIN)) as srv:
        assert srv.get("/sdapi/v1/samplers", auth=utf8(API_LOGIN)).status_code == 200
        assert srv.get(LATE, auth=utf8(API_LOGIN)).json() == {"pong": True}
        assert_api_refused(srv.get("/sdapi/v1/samplers", auth=UI_LOGIN))  # the UI's login is not the API's
        assert_api_refused(srv.get("/sdapi/v1/samplers", auth=(API_LOGIN[0], API_LOGIN[1][:-1])))
        assert_ui_refused(srv.get("/config", auth=utf8(API_LOGIN)))  # nor the other way round
        assert_ui_refused(srv.get(f"/gradio_api/file={srv.output_png}", auth=utf8(API_LOGIN)))
        assert_ui_refused(srv.get("/config", auth=UI_LOGIN))  # the UI wants its login form's session
        session = login(srv, *UI_LOGIN)
        assert "txt2img_prompt" in session.get(srv.url + "/config", timeout=30).text
        file = session.get(srv.url + f"/gradio_api/file={srv.output_png}", timeout=30)
        assert file.status_code == 200 and file.content == srv.output_png.read_bytes()
        assert_api_refused(session.get(srv.url + "/sdapi/v1/samplers", timeout=30))


def test_api_auth_alone_leaves_the_ui_open(tiny_checkpoints, tmp_path):
    """As A1111: --api-auth guards the API; the UI needs --gradio-auth for a login."""
    with serve_in_process(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api",
                          "--api-auth", ":".join(API_LOGIN)) as srv:
        assert_api_refused(srv.get("/sdapi/v1/samplers"))
        assert_api_refused(srv.get(LATE))
        assert_api_refused(srv.get("/docs"))
        assert srv.get("/sdapi/v1/samplers", auth=utf8(API_LOGIN)).status_code == 200
        assert "txt2img_prompt" in srv.get("/config").text


# ----------------------------------------------------------- --nowebui --api-auth-path (subprocess)

def test_api_logins_from_a_file(tiny_checkpoints, tmp_path):
    logins = tmp_path / "api-logins.txt"
    logins.write_text("carol:first-pw\ndave:second:pw\n", encoding="utf8")
    with run_server(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--nowebui", "--api-auth-path",
                    str(logins), "--skip-load-model-at-start", ready_path="/sdapi/v1/samplers",
                    auth=("carol", "first-pw")) as srv:
        assert_api_refused(srv.get("/sdapi/v1/samplers"))
        assert_api_refused(srv.get("/"))  # nothing is served there, and nobody learns that unasked
        assert srv.get("/sdapi/v1/samplers", auth=("carol", "first-pw")).status_code == 200
        assert srv.get("/sdapi/v1/samplers", auth=("dave", "second:pw")).status_code == 200
        assert srv.get("/", auth=("dave", "second:pw")).status_code == 404
        assert_api_refused(srv.get("/sdapi/v1/samplers", auth=("carol", "second:pw")))
        assert "first-pw" not in srv.output() and "second:pw" not in srv.output()


# ------------------------------------------------------------------------ no secret in any answer

def test_secrets_never_leave_the_server(tiny_checkpoints, tmp_path):
    """cmd-flags hides every credential (A1111 #17411 shows them); options and error answers hold none."""
    ui_pw, api_pw = "ui-pw-7f3a9", "api-pw-c41d2"
    with run_server(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api", "--gradio-auth",
                    f"anna:{ui_pw}", "--api-auth", f"bob:{api_pw}", "--skip-load-model-at-start",
                    ready_path="/sdapi/v1/samplers", auth=("bob", api_pw)) as srv:
        refused = srv.get("/sdapi/v1/cmd-flags", auth=("bob", api_pw + "x"))
        assert refused.status_code == 401 and api_pw not in refused.text  # a wrong try is not echoed
        r = srv.get("/sdapi/v1/cmd-flags", auth=("bob", api_pw))
        assert r.status_code == 200, r.text
        flags = r.json()
        assert flags["gradio_auth"] == "<hidden>" and flags["api_auth"] == "<hidden>"
        assert flags["api"] is True and flags["port"] == int(srv.url.rsplit(":", 1)[1])  # the rest is shown
        assert flags.get("gradio_auth_path") is None  # unset stays None
        options = srv.get("/sdapi/v1/options", auth=("bob", api_pw))
        assert options.status_code == 200
        bad = srv.post("/sdapi/v1/txt2img", json={"steps": "many"}, auth=("bob", api_pw))
        assert bad.status_code == 422
        for text in (r.text, options.text, bad.text, srv.output()):
            assert ui_pw not in text and api_pw not in text
            assert base64.b64encode(f"bob:{api_pw}".encode()).decode() not in text


def test_public_flags_hides_every_secret_kind():
    from modules import auth, cmd_args

    opts = cmd_args.parse_args(["--gradio-auth", "a:b", "--api-auth", "c:d", "--api-auth-path", "/x/api.txt"])
    extra = {"ngrok": "tok-123", "ngrok_options": '{"authtoken": "tok"}', "tls_keyfile": "/k.pem",
             "hf_token": "hf_abc", "some_api_key": "k", "share_password": "pw"}
    shown = auth.public_flags({**vars(opts), **extra})
    for name in ("gradio_auth", "api_auth", "api_auth_path", *extra):
        assert shown[name] == "<hidden>", name
    assert shown["gradio_auth_path"] is None and shown["port"] == 7860 and shown["api"] is False
    assert json.dumps(shown).count("<hidden>") == 3 + len(extra)


def hello_websocket_app():
    """An app with one websocket route, /ws, that says "hello" (as extensions may add)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.websocket("/ws")
    async def ws(socket: WebSocket):
        await socket.accept()
        await socket.send_text("hello")
        await socket.close()

    return app


def test_websocket_without_login_is_closed(tmp_path):
    """The gate covers websocket routes too (extensions may add them)."""
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from modules import auth

    app = hello_websocket_app()
    app.add_middleware(auth.AuthMiddleware, owner=app, policy=auth.AuthPolicy(api_users=[API_LOGIN]))
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("/ws"):
            pass
    assert closed.value.code == 1008
    header = "Basic " + base64.b64encode(":".join(API_LOGIN).encode()).decode()
    with client.websocket_connect("/ws", headers={"Authorization": header}) as socket:
        assert socket.receive_text() == "hello"
