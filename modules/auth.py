"""Who may call what: one ASGI middleware in front of every route, and what of the flags may be shown.

Two kinds of route share the server:
- the UI (Gradio, mounted at `ui_path`): its pages, `/gradio_api/...` (queue, uploads, `file=`),
  `/file=...`. With UI logins (`--gradio-auth`, `--gradio-auth-path`) a request needs the cookie of a
  session logged in through Gradio's login form (POST /login, as the page does; Gradio checks that same
  cookie on its own routes); only what the login page itself loads stays open.
- everything else: `/sdapi`, `/internal`, `/docs`, `/openapi.json`, routes that extensions add to the
  app (in `on_app_started` or later), and paths nothing serves. With API logins (`--api-auth`,
  `--api-auth-path`, or the UI's logins when none are given) a request needs HTTP Basic; a 401 carries
  `WWW-Authenticate: Basic`. A logged-in UI session also opens the non-`/sdapi` ones, because the page's
  own scripts (extensions' included) call them from the browser.

The decision is made per request from the app's current routes, so routes added after start-up are
covered as soon as they exist. Passwords are compared in constant time and never written anywhere.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import re
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Callable, Iterable

from starlette.routing import Match, Mount

from modules.asgi_body import body_rewriter

Credentials = list[tuple[str, str]]

# What Gradio's login page loads before anyone is logged in (checked with a browser): the page, its
# scripts, styles and fonts, and the login form's target.
UI_OPEN_EXACT = frozenset({"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico", "/robots.txt",
                           "/manifest.json", "/pwa_icon"})
UI_OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")

API_PREFIXES = ("/sdapi/", "/internal/", "/easel/")  # /easel/: the job API (modules.api.routes_jobs)
UI_FILE_PREFIX = "/file="  # Gradio 3's file route, which A1111 pages and extensions link to


def _users(creds: Iterable[tuple[str, str]] | None) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((u.encode("utf-8"), p.encode("utf-8")) for u, p in (creds or ()))


def basic_login_matches(header: str | None, users: tuple[tuple[bytes, bytes], ...]) -> bool:
    """True when an `Authorization: Basic ...` header names one of `users`.

    Every user is compared, in constant time, so the answer's timing tells nothing about which part
    was wrong (`hmac.compare_digest` on bytes also accepts non-ASCII passwords)."""
    if not header or not users:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    if not sep:
        return False
    found = False
    for known_user, known_password in users:
        found |= hmac.compare_digest(user, known_user) & hmac.compare_digest(password, known_password)
    return found


def gradio_session_lookup(gradio_app: Any) -> Callable[[str | None], str | None]:
    """The user logged in through Gradio's login form, from the request's Cookie header.

    Gradio keeps its sessions in `App.tokens` (token -> user) under the cookies
    `access-token-<cookie_id>` and `access-token-unsecure-<cookie_id>`; when those names are missing
    nobody counts as logged in (the check fails closed)."""

    def user(cookie_header: str | None) -> str | None:
        cookie_id = getattr(gradio_app, "cookie_id", None)
        tokens = getattr(gradio_app, "tokens", None)
        if not cookie_header or cookie_id is None or not isinstance(tokens, dict):
            return None
        try:
            cookies = SimpleCookie()
            cookies.load(cookie_header)
        except CookieError:
            return None
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            morsel = cookies.get(name)
            if morsel is not None and morsel.value in tokens:
                return tokens[morsel.value]
        return None

    return user


@dataclass
class AuthPolicy:
    """The logins of each kind of route; an empty list leaves that kind open."""

    api_users: Credentials = field(default_factory=list)
    ui_users: Credentials = field(default_factory=list)
    ui_path: str | None = None  # where the UI is mounted ("/" or --subpath); None: no UI
    session_user: Callable[[str | None], str | None] = lambda cookie_header: None

    @property
    def active(self) -> bool:
        return bool(self.api_users or self.ui_users)


class AuthMiddleware:
    """Pure ASGI middleware (http and websocket) enforcing an `AuthPolicy` on every route of `owner`.

    `owner` is the FastAPI/Starlette app whose routes tell UI requests from the others; it is read on
    every request, so the policy follows routes added later."""

    def __init__(self, app, owner, policy: AuthPolicy):
        self.app = app
        self.owner = owner
        self.policy = policy
        self._api_users = _users(policy.api_users)
        self._ui_users = _users(policy.ui_users)

    # ----------------------------------------------------------------- classification

    def _under_ui(self, path: str) -> str | None:
        """The path inside the UI mount, or None when the UI does not serve it."""
        ui = self.policy.ui_path
        if ui is None:
            return None
        prefix = "/" + ui.strip("/")
        if prefix == "/":
            return path
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix):] or "/"
        return None

    def _served_by_app_route(self, scope) -> bool:
        """A route of the app itself (API, docs, an extension's) matches this path."""
        probe = {**scope, "method": scope.get("method", "GET")}  # websocket scopes have no method
        for route in list(getattr(self.owner, "routes", ())):
            if isinstance(route, Mount) and self._is_ui_mount(route):
                continue
            try:
                match, _ = route.matches(probe)
            except Exception:  # a malformed custom route must not open or close the door
                continue
            if match != Match.NONE:
                return True
        return False

    def _is_ui_mount(self, route: Mount) -> bool:
        ui = self.policy.ui_path
        return ui is not None and route.path.rstrip("/") == ("/" + ui.strip("/")).rstrip("/")

    def kind(self, scope) -> str:
        """'ui' or 'api' for this request."""
        path = scope.get("path", "")
        if path.startswith(API_PREFIXES):
            return "api"
        inner = self._under_ui(path)
        if inner is not None and inner.startswith(UI_FILE_PREFIX):
            return "ui"  # the page's file links, whoever serves them
        if self._served_by_app_route(scope):
            return "api"
        return "ui" if inner is not None else "api"

    # ----------------------------------------------------------------- decision

    def allowed(self, scope) -> tuple[bool, str]:
        """(allowed, kind) for a request scope."""
        kind = self.kind(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        authorization, cookie = headers.get("authorization"), headers.get("cookie")
        if kind == "ui":
            if not self._ui_users:
                return True, kind
            inner = self._under_ui(scope.get("path", "")) or "/"
            if inner in UI_OPEN_EXACT or inner.startswith(UI_OPEN_PREFIXES):
                return True, kind
            return self.policy.session_user(cookie) is not None, kind
        if not self._api_users:
            return True, kind
        if basic_login_matches(authorization, self._api_users):
            return True, kind
        path = scope.get("path", "")
        if self._ui_users and not path.startswith(("/sdapi/", "/easel/")) and self.policy.session_user(cookie) is not None:
            return True, kind
        return False, kind

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or not self.policy.active:
            await self.app(scope, receive, send)
            return
        if _is_cors_preflight(scope):  # carries no credentials by design; the CORS layer answers it
            await self.app(scope, receive, send)
            return
        ok, kind = self.allowed(scope)
        if ok and self._login_page(scope, kind):
            await self.app(scope, receive, _api_info_removed(send))
        elif ok:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
        else:
            await _send_401(send, basic=(kind == "api"))


    def _login_page(self, scope, kind: str) -> bool:
        """The UI's index page asked for by someone not logged in: Gradio shows its login form there,
        but also writes the whole API description of the page into it (every endpoint with its
        defaults and choices: checkpoint titles and hashes, style names, output folders)."""
        if kind != "ui" or not self._ui_users or scope["type"] != "http" or scope.get("method") != "GET":
            return False
        if (self._under_ui(scope.get("path", "")) or "/") not in ("/", ""):
            return False
        cookie = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}.get("cookie")
        return self.policy.session_user(cookie) is None


# Gradio's page template: `<script>window.gradio_api_info = {...};</script>`, the JSON written with `<`
# escaped, so the first `;</script>` ends it
_API_INFO = re.compile(rb"(window\.gradio_api_info\s*=\s*).*?(;\s*</script>)", re.DOTALL)


def _api_info_removed(send):
    """A `send` that buffers the page and empties its `gradio_api_info` before passing it on; a page in
    which the description is present but cannot be cut out is not sent at all (fail closed)."""

    def scrub(start: dict, body: bytes) -> tuple[int, bytes]:
        body, count = _API_INFO.subn(rb"\1{}\2", body)
        if count == 0 and b"gradio_api_info" in body:
            return 500, b"login page withheld: its API description could not be removed"
        return start["status"], body

    return body_rewriter(send, scrub)


def _is_cors_preflight(scope) -> bool:
    return scope.get("method") == "OPTIONS" and any(k.lower() == b"access-control-request-method"
                                                    for k, _ in scope.get("headers", ()))


async def _send_401(send, basic: bool) -> None:
    body = json.dumps({"detail": "Not authenticated"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if basic:  # the UI answers without it, so a browser shows Gradio's login page, not its own dialog
        headers.append((b"www-authenticate", b'Basic realm="Easel", charset="UTF-8"'))
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- secrets in responses

HIDDEN = "<hidden>"
# Parts of flag names (argparse dests) whose values are or contain secrets: logins, tokens, keys.
_SECRET_PARTS = ("auth", "token", "secret", "password", "passwd", "ngrok", "keyfile", "api_key", "apikey")


def is_secret_flag(name: str) -> bool:
    """True for flags whose value must never be shown: --gradio-auth(-path), --api-auth(-path), any
    *_auth*, --ngrok (an authtoken) and --ngrok-options, --tls-keyfile, anything named like a
    token, secret, password or key."""
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PARTS) or lowered.endswith("_key")


def public_flags(opts: argparse.Namespace | dict) -> dict:
    """The command-line flags as /sdapi/v1/cmd-flags shows them: every secret's value replaced by
    "<hidden>" when set (None stays None, so clients still see whether it is on)."""
    values = dict(vars(opts)) if isinstance(opts, argparse.Namespace) else dict(opts)
    return {name: (HIDDEN if is_secret_flag(name) and value not in (None, "", [], False) else value)
            for name, value in values.items()}


def credentials_for(opts: argparse.Namespace) -> tuple[Credentials, Credentials]:
    """(api_users, ui_users) from the flags. The API takes the UI's logins when it has none of its own,
    so `--api --gradio-auth` never leaves the API open."""
    from modules import cmd_args

    def read(text: str | None, path: str | None) -> Credentials:
        creds = cmd_args.parse_credentials(text) if text else []
        if path:
            creds += cmd_args.read_credentials_file(path)
        return creds

    ui = read(getattr(opts, "gradio_auth", None), getattr(opts, "gradio_auth_path", None))
    api = read(getattr(opts, "api_auth", None), getattr(opts, "api_auth_path", None)) or ui
    return api, ui
