"""Input pictures given to the API as http(s) URLs (A1111's api_enable_requests,
api_forbid_local_requests, api_useragent; modules.api.url_pictures), against a real picture host
(`http.server` on 127.0.0.1, in a thread, that records every request it gets):

- the defaults refuse a URL to a local address before anything is sent, a 400 naming the field
  (init_images, mask, png-info, extras, ControlNet units);
- a server whose config.json turns api_forbid_local_requests off fetches the picture with the
  api_useragent, follows a redirect, and runs img2img on it; a redirect to file:// is refused;
- api_enable_requests turned off in the Settings tab refuses every URL;
- a redirect from a public host to a local one is refused, and the address that was checked is the
  one connected to (a stand-in for the public host: the machine has no internet);
- POST /sdapi/v1/options leaves the three settings alone, as A1111's restrict_api does;
- file:// and ftp:// are no URLs to fetch: a base64 error naming the field.
"""

from __future__ import annotations

import html
import http.server
import io
import json
import threading

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.pictures import b64, picture
from tests.server import run_server

USER_AGENT = "EaselUrlTest/1.0"
INFOTEXT = "a picture from a URL\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x64"


def _png() -> bytes:
    info = PngInfo()
    info.add_text("parameters", INFOTEXT)
    buffer = io.BytesIO()
    picture(64, 64).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class PictureHost:
    """A local web server for pictures; `requests` holds (path, User-Agent) of every request."""

    def __init__(self):
        png, self.requests = _png(), []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append((self.path, self.headers.get("User-Agent")))
                redirects = {"/redirect": "/pic.png", "/to-file": "file:///etc/passwd"}
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str = "/pic.png") -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def host():
    h = PictureHost()
    yield h
    h.close()


@pytest.fixture
def pictures(host):
    host.requests.clear()
    return host


@pytest.fixture(scope="module")
def url_server(tiny_checkpoints, tmp_path_factory):
    """A server whose Settings (config.json) allow local URLs and set the user agent: the API
    cannot change these (restrict_api)."""
    data = tmp_path_factory.mktemp("url-pictures")
    (data / "config.json").write_text(json.dumps({"api_forbid_local_requests": False, "api_useragent": USER_AGENT}),
                                      encoding="utf-8")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1),
                    "--skip-load-model-at-start") as srv:
        yield srv


def _refused(r, field: str, words: str) -> None:
    assert 400 <= r.status_code < 500, r.text[:1000]
    body = r.json()
    assert body["errors"].startswith(f"{field}: ") and words in body["errors"], body
    assert body["detail"][0]["loc"][1:] == field.split("."), body


IMG2IMG = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "denoising_strength": 0.5, "seed": 1}


# ------------------------------------------------------------------------ defaults: local refused

def test_defaults_refuse_a_local_url_in_every_picture_field_and_fetch_nothing(server, pictures):
    local = "Request to local resource not allowed"
    _refused(server.post("/sdapi/v1/img2img", json={**IMG2IMG, "init_images": [pictures.url()]}), "init_images", local)
    _refused(server.post("/sdapi/v1/img2img", json={**IMG2IMG, "init_images": [b64(picture())],
                                                    "mask": pictures.url("/redirect")}), "mask", local)
    _refused(server.post("/sdapi/v1/png-info", json={"image": pictures.url()}), "image", local)
    _refused(server.post("/sdapi/v1/extra-single-image", json={"image": pictures.url(), "upscaling_resize": 1}),
             "image", local)
    _refused(server.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": pictures.url(), "name": "a"}]}),
             "imageList.0.data", local)
    _refused(server.post("/sdapi/v1/interrogate", json={"image": pictures.url(), "model": "clip"}), "image", local)
    # localhost by name, and 127.0.0.1 written otherwise, resolve to loopback too
    port = pictures.httpd.server_address[1]
    for url in (f"http://localhost:{port}/pic.png", f"http://0x7f.0.0.1:{port}/pic.png", f"HTTP://127.1:{port}/pic.png"):
        _refused(server.post("/sdapi/v1/png-info", json={"image": url}), "image", local)
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64, "alwayson_scripts": {
        "controlnet": {"args": [{"enabled": True, "module": "none", "model": "None", "image": pictures.url()}]}}})
    _refused(r, "alwayson_scripts.controlnet.args[0].image", local)
    assert pictures.requests == []  # nothing ever reached the local server


def test_non_http_schemes_stay_base64_errors(server, pictures):
    for value in ("file:///etc/passwd", f"ftp://127.0.0.1:{pictures.httpd.server_address[1]}/pic.png"):
        r = server.post("/sdapi/v1/img2img", json={**IMG2IMG, "init_images": [value]})
        _refused(r, "init_images", "base64")
        assert "local resource" not in r.text
    assert pictures.requests == []


def test_the_api_cannot_change_restricted_options(server, pictures):
    """A1111's restrict_api: POST /sdapi/v1/options skips them without a word (200), the others set."""
    before = server.get("/sdapi/v1/options").json()
    assert (before["api_enable_requests"], before["api_forbid_local_requests"], before["api_useragent"]) == (True, True, "")
    quality = before["jpeg_quality"]
    r = server.post("/sdapi/v1/options", json={"api_forbid_local_requests": False, "api_enable_requests": False,
                                               "api_useragent": "changed", "jpeg_quality": quality - 1})
    try:
        assert r.status_code == 200, r.text
        after = server.get("/sdapi/v1/options").json()
        assert (after["api_enable_requests"], after["api_forbid_local_requests"], after["api_useragent"]) == (True, True, "")
        assert after["jpeg_quality"] == quality - 1  # the rest of the body still applies
        stored = json.loads((server.data_dir / "config.json").read_text())
        assert stored.get("api_forbid_local_requests", True) is True
    finally:
        server.post("/sdapi/v1/options", json={"jpeg_quality": quality})
    _refused(server.post("/sdapi/v1/png-info", json={"image": pictures.url()}), "image", "local resource")
    assert pictures.requests == []


# ---------------------------------------------------------------- Settings allow local URLs

def test_settings_allow_local_urls_fetched_with_the_user_agent(url_server, pictures):
    options = url_server.get("/sdapi/v1/options").json()
    assert options["api_forbid_local_requests"] is False and options["api_useragent"] == USER_AGENT
    r = url_server.post("/sdapi/v1/img2img", json={**IMG2IMG, "init_images": [pictures.url()]})
    assert r.status_code == 200, r.text[:2000]
    data = r.json()
    assert len(data["images"]) == 1 and Image.open(io.BytesIO(__import__("base64").b64decode(data["images"][0]))).size == (64, 64)
    assert data["parameters"]["init_images"] is None  # not echoed, as base64 ones
    assert pictures.requests == [("/pic.png", USER_AGENT)]

    # png-info reads the fetched file itself (its infotext), through a redirect
    pictures.requests.clear()
    r = url_server.post("/sdapi/v1/png-info", json={"image": pictures.url("/redirect")})
    assert r.status_code == 200, r.text
    assert r.json()["info"] == INFOTEXT and str(r.json()["parameters"]["Seed"]) == "42"
    assert pictures.requests == [("/redirect", USER_AGENT), ("/pic.png", USER_AGENT)]

    # a redirect to another scheme is refused; a picture that is not there is a 400 too
    _refused(url_server.post("/sdapi/v1/png-info", json={"image": pictures.url("/to-file")}), "image", "only http")
    r = url_server.post("/sdapi/v1/png-info", json={"image": "http://127.0.0.1:1/pic.png"})
    _refused(r, "image", "cannot fetch")


# ------------------------------------------------------------- the Settings tab turns URLs off

def test_settings_tab_turns_urls_off(tmp_path, pictures):
    pytest.importorskip("gradio")
    from fastapi import APIRouter, FastAPI
    from fastapi.testclient import TestClient

    from modules.api import routes_extras
    from modules.services.options import Options
    from modules.ui.settings import SettingsTab

    options = Options(tmp_path / "config.json")
    tab = SettingsTab(options)
    changes = {"api_enable_requests": False, "api_forbid_local_requests": False, "api_useragent": USER_AGENT}
    report = html.unescape(tab.apply(*[changes.get(k, v) for k, v in zip(tab.keys, tab.values())])[0])
    assert "3 settings changed" in report, report
    assert json.loads((tmp_path / "config.json").read_text())["api_enable_requests"] is False

    class EngineOptions:  # what the route reads of the engine: its options
        pass

    engine = EngineOptions()
    engine.options = options
    router = APIRouter(prefix="/sdapi/v1")
    routes_extras.add_routes(router, engine)
    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    _refused(client.post("/sdapi/v1/png-info", json={"image": pictures.url()}), "image", "Requests not allowed")
    assert pictures.requests == []
    # turned back on (local still allowed): the same route fetches it
    options.set("api_enable_requests", True)
    r = client.post("/sdapi/v1/png-info", json={"image": pictures.url()})
    assert r.status_code == 200 and r.json()["info"] == INFOTEXT, r.text
    assert pictures.requests == [("/pic.png", USER_AGENT)]


# ------------------------------------------------- redirects and DNS: checked at every hop

PUBLIC = "93.184.216.34"  # a global address; no connection is ever made to it here


def test_a_redirect_from_a_public_host_to_a_local_one_is_refused(pictures):
    from modules.api import url_pictures
    from modules.core.types import RequestError

    asked, hops = [], []

    def resolver(host, port):
        asked.append(host)
        return {"pictures.example": [PUBLIC]}.get(host) or url_pictures.resolve(host, port)

    def public_host(target, field, policy, deadline):  # stands in for the public server: redirects home
        hops.append((target.host, target.addresses))
        return 302, pictures.url(), b""

    policy = url_pictures.UrlPolicy()
    with pytest.raises(RequestError) as refused:
        url_pictures.fetch("https://pictures.example/cat.png", "init_images", policy, resolver, get=public_host)
    assert refused.value.field == "init_images" and "Request to local resource not allowed" in refused.value.message
    assert hops == [("pictures.example", (PUBLIC,))] and asked == ["pictures.example", "127.0.0.1"]
    assert pictures.requests == []


def test_the_checked_address_is_the_one_connected_and_any_local_answer_refuses(pictures):
    """DNS rebinding: the host is resolved once per hop, and the fetch goes to what was checked;
    a name with any local address among its answers is refused."""
    from modules.api import url_pictures
    from modules.core.types import RequestError

    answers = iter([[PUBLIC], ["127.0.0.1"]])
    hops = []

    def rebinding(host, port):
        return next(answers)

    def public_host(target, field, policy, deadline):
        hops.append(target.addresses)
        return 200, None, b"picture bytes"

    policy = url_pictures.UrlPolicy()
    assert url_pictures.fetch("http://rebind.example/p.png", "mask", policy, rebinding, get=public_host) == b"picture bytes"
    assert hops == [(PUBLIC,)]
    with pytest.raises(RequestError, match="local resource"):
        url_pictures.fetch("http://mixed.example/p.png", "mask", policy, lambda h, p: [PUBLIC, "10.0.0.7"], get=public_host)
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                    "100.64.0.1", "0.0.0.0", "224.0.0.1", "fe80::1", "fc00::1", "64:ff9b::a00:1", "2002:7f00:1::"):
        assert not url_pictures.is_public(address), address
    assert url_pictures.is_public(PUBLIC) and url_pictures.is_public("2606:4700:4700::1111")
    assert hops == [(PUBLIC,)] and pictures.requests == []
