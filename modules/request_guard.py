"""Who may reach the server at all: one ASGI middleware in front of everything (before the logins).

Browsers let any web page send requests to a server on this computer or the LAN. Three rules keep
other sites' pages out while the server's own page, scripts and non-browser clients work as before:

1. **Host allow-list** (against DNS rebinding, where an attacker's name is made to resolve to
   127.0.0.1 so that its page becomes "same-origin" with this server). A request's Host must be an
   IP address (a page can only be served from an address by the server at that address), a loopback
   name (`localhost`, `*.localhost`), the name given to `--server-name`, under `--listen` this
   machine's own names (hostname, fully qualified name, `<hostname>.local`), or a name given to
   `--allowed-hosts` (`name`, `*.domain` or `*` for any). Anything else: 403.
2. **Origin check**. A browser names the page that makes a request in `Origin` (always on POST and on
   script requests to another origin). A request that carries one must come from this server's own
   origin (the same host and port as its Host) or from an origin that `--cors-allow-origins` /
   `--cors-allow-origins-regex` allow; otherwise 403, whatever the method or route (UI, Gradio's
   queue, the API, extensions' routes, websockets). Clients that are not browsers send no Origin.
3. **Bodies**: at most `--max-request-size` MiB (413), and the API's routes (`/sdapi/`, `/internal/`)
   read JSON only: a body sent as `text/plain` or a form (what a page can send without asking) is
   refused with 415.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)
JSON_ONLY_PREFIXES = ("/sdapi/", "/internal/", "/easel/")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MIB = 1024 * 1024


def split_host(value: str) -> tuple[str, int | None]:
    """('name', port) from a Host header value (`[::1]:7860`, `example.com`, `127.0.0.1:80`); the name
    lowercased without a trailing dot. A value that cannot be parsed gives ('', None)."""
    value = value.strip()
    try:
        parts = urlsplit("//" + value)
        name, port = parts.hostname or "", parts.port
    except ValueError:  # a bad port, brackets that do not close
        return "", None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        return "", None  # "a@b", "a/b": not a host
    return name.lower().rstrip("."), port


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names() -> set[str]:
    """This computer's own names, as LAN clients may type them."""
    names = set()
    for lookup in (socket.gethostname, socket.getfqdn):
        try:
            name = lookup().lower().rstrip(".")
        except OSError:
            continue
        if name:
            names.update({name, name.split(".")[0] + ".local"})
    return names


@dataclass
class HostAllowList:
    """Which Host names this server answers (IP addresses and loopback names always)."""

    names: set[str] = field(default_factory=set)
    suffixes: tuple[str, ...] = ()  # from "*.example.com": ".example.com"
    any_host: bool = False  # --allowed-hosts '*'

    @classmethod
    def from_flags(cls, server_name: str | None, listen: bool, extra: Iterable[str] = ()) -> "HostAllowList":
        names: set[str] = set()
        name = (server_name or "").strip().lower().rstrip(".")
        if name and not is_ip_address(name.strip("[]")):
            names.add(name)
        if listen or (name and name not in ("127.0.0.1", "::1", "localhost")):
            names |= machine_names()  # reachable from the LAN: LAN clients use the machine's names
        suffixes, any_host = [], False
        for entry in extra:
            entry = entry.strip().lower().rstrip(".")
            if entry == "*":
                any_host = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            elif entry:
                names.add(split_host(entry)[0] or entry)
        return cls(names, tuple(suffixes), any_host)

    def allows(self, name: str) -> bool:
        if self.any_host or is_ip_address(name):
            return True
        if name in LOOPBACK_NAMES or name.endswith(".localhost") or name in self.names:
            return True
        return any(name.endswith(suffix) for suffix in self.suffixes)


@dataclass
class CorsOrigins:
    """The origins --cors-allow-origins / --cors-allow-origins-regex let in (besides the server's own)."""

    origins: tuple[str, ...] = ()
    regex: re.Pattern | None = None

    @classmethod
    def from_flags(cls, origins: str | None, regex: str | None) -> "CorsOrigins":
        listed = tuple(o.strip().rstrip("/") for o in (origins or "").split(",") if o.strip())
        return cls(listed, re.compile(regex) if regex else None)

    @property
    def configured(self) -> bool:
        return bool(self.origins or self.regex)

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins or bool(self.regex and self.regex.fullmatch(origin))


def same_origin(origin: str, host_header: str) -> bool:
    """The Origin names the host and port that the request was sent to (the scheme may differ behind a
    TLS proxy; the host and port cannot)."""
    try:
        parts = urlsplit(origin)
        origin_name, origin_port = (parts.hostname or "").lower().rstrip("."), parts.port
    except ValueError:
        return False
    if not origin_name or parts.scheme not in DEFAULT_PORTS:
        return False
    host_name, host_port = split_host(host_header)
    origin_port = origin_port or DEFAULT_PORTS[parts.scheme]
    host_port = host_port or DEFAULT_PORTS[parts.scheme]  # a Host without a port: the scheme's default
    return bool(host_name) and origin_name == host_name and origin_port == host_port


@dataclass
class GuardPolicy:
    hosts: HostAllowList = field(default_factory=HostAllowList)
    cors: CorsOrigins = field(default_factory=CorsOrigins)
    max_body_bytes: int | None = 64 * MIB  # None: no limit

    @classmethod
    def from_flags(cls, opts) -> "GuardPolicy":
        extra = [h for value in (getattr(opts, "allowed_hosts", None) or []) for h in value.split(",")]
        hosts = HostAllowList.from_flags(getattr(opts, "server_name", None), getattr(opts, "listen", False), extra)
        cors = CorsOrigins.from_flags(getattr(opts, "cors_allow_origins", None),
                                      getattr(opts, "cors_allow_origins_regex", None))
        size = getattr(opts, "max_request_size", 64)
        return cls(hosts, cors, int(size * MIB) if size and size > 0 else None)

    def refusal(self, scope) -> tuple[int, str] | None:
        """(status, reason) when the request must not reach the app; None when it may."""
        headers = _headers(scope)
        host = headers.get("host")
        if host is not None:
            name, _port = split_host(host)
            if not name or not self.hosts.allows(name):
                return 403, (f"Host '{host}' is not a name of this server; start it with --allowed-hosts "
                             f"{name or host} to answer it")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return 403, (f"cross-origin request refused: the page at {origin} is not this server's; "
                         "allow it with --cors-allow-origins")
        method = scope.get("method", "GET")
        if scope["type"] == "http" and method in BODY_METHODS:
            length = headers.get("content-length")
            if self.max_body_bytes is not None and length and length.strip().isdigit() \
                    and int(length) > self.max_body_bytes:
                return 413, (f"request body of {int(length)} bytes is over the limit of {self.max_body_bytes} "
                             "bytes (--max-request-size)")
            if scope.get("path", "").startswith(JSON_ONLY_PREFIXES) and not _json_or_absent(headers.get("content-type")):
                return 415, f"Content-Type must be application/json, got '{headers.get('content-type')}'"
        return None

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().rstrip("/")
        if self.cors.allows(origin):
            return True
        if origin == "null" or host is None:
            return False
        return same_origin(origin, host)


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _json_or_absent(content_type: str | None) -> bool:
    if content_type is None or not content_type.strip():
        return True  # scripts that post json.dumps(...) without a type; a browser cannot send that cross-site
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _BodyTooLarge(Exception):
    pass


class RequestGuard:
    """Pure ASGI middleware enforcing a `GuardPolicy` (http and websocket)."""

    def __init__(self, app, policy: GuardPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.policy.refusal(scope)
        if refused is not None:
            status, reason = refused
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
            else:
                await _send_json(send, status, reason)
            return
        limit = self.policy.max_body_bytes
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        await self._with_body_limit(scope, receive, send, limit)

    async def _with_body_limit(self, scope, receive, send, limit: int):
        """A body without Content-Length (chunked) is counted as it arrives; past the limit the app's
        answer is dropped and a 413 sent instead."""
        received, over, started = 0, False, False

        async def counting_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if over:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            await _send_json(send, 413, f"request body is over the limit of {limit} bytes (--max-request-size)")


async def _send_json(send, status: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
