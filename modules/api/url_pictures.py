"""Input pictures given to the API as http:// or https:// URLs (A1111's `decode_base64_to_image`).

With the setting api_enable_requests on (A1111's default), a picture field may hold a URL instead
of base64: the server fetches it, with api_useragent as User-Agent and a 30-second limit, and the
picture goes through the same decoder (and pixel limit) as a base64 one. With
api_forbid_local_requests on (the default) a URL whose host is, or resolves to, any address that is
not globally reachable (loopback, private, link-local, shared, reserved, multicast, unspecified,
and those embedded in IPv4-mapped, NAT64, 6to4 and Teredo addresses) is refused before anything is
sent.

Safer than A1111's check-then-`requests.get`: the host is resolved once and the connection goes to
the address that was checked (a DNS answer that changes between the check and the connect cannot
reach a local address), TLS still verifies the certificate against the host's name, every redirect
hop is checked the same way (at most MAX_REDIRECTS, http and https only), the body is capped at
`--max-request-size` (what a base64 picture in the request may weigh), and nothing is decompressed
on the way. Every refusal or failure is a RequestError naming the field, as a bad base64 picture.

The three settings are `restrict_api`: only the Settings tab (or config.json) changes them, never
POST /sdapi/v1/options (modules.api.routes_options).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urljoin, urlsplit

from modules.core.types import RequestError
from modules.core.version import VERSION

SCHEMES = ("http://", "https://")
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
TIMEOUT_S = 30.0  # A1111's requests.get(timeout=30); here for the whole fetch, redirects included
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # --max-request-size's default
CHUNK = 64 * 1024
# sd-webui-controlnet's unit fields that hold pictures (the old names too)
CONTROLNET_PICTURE_KEYS = ("image", "input_image", "mask", "mask_image")

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
Resolver = Callable[[str, int], list[str]]  # (host, port) -> its addresses, as text

_max_bytes = DEFAULT_MAX_BYTES


def set_max_bytes(mib: float | None) -> None:
    """The composition root's --max-request-size (MiB; 0 or None: the 64 MiB default, since a
    fetched picture always needs some limit)."""
    global _max_bytes
    _max_bytes = int(mib * 1024 * 1024) if mib and mib > 0 else DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class UrlPolicy:
    enabled: bool = True           # api_enable_requests
    forbid_local: bool = True      # api_forbid_local_requests
    user_agent: str = ""           # api_useragent ("" = Easel's own)
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = TIMEOUT_S

    @classmethod
    def from_options(cls, options: Any) -> "UrlPolicy":
        def get(key: str, default: Any) -> Any:
            value = options.get(key) if options is not None else None
            return default if value is None else value

        return cls(enabled=bool(get("api_enable_requests", True)),
                   forbid_local=bool(get("api_forbid_local_requests", True)),
                   user_agent=str(get("api_useragent", "")).strip(), max_bytes=_max_bytes)


def is_url(value: Any) -> bool:
    """A picture field holding an http:// or https:// URL (anything else is base64's business)."""
    return isinstance(value, str) and value.lstrip()[:8].lower().startswith(SCHEMES)


def _embedded(address: ipaddress._BaseAddress) -> Iterable[ipaddress._BaseAddress]:
    yield address
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            yield address.ipv4_mapped
        if address.sixtofour is not None:
            yield address.sixtofour
        if address.teredo is not None:
            yield from address.teredo
        if any(address in network for network in _NAT64):
            yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def is_public(address: str) -> bool:
    """True when the address, and every IPv4 address it carries, is globally reachable."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return all(a.is_global and not a.is_multicast and not a.is_unspecified for a in _embedded(parsed))


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (an IP literal: itself), in the system's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return seen


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address; the Host header keeps the URL's name."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As _PinnedHTTP, with TLS verified against the URL's host name (SNI too)."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def check_url(url: str, field: str, policy: UrlPolicy, resolver: Resolver = resolve) -> Target:
    """Where `url` may be fetched from: its scheme, host and the resolved addresses, all checked
    (RequestError naming the field otherwise). The fetch connects only to these addresses."""
    if not policy.enabled:
        raise RequestError(field, "Requests not allowed: URLs for input pictures are turned off "
                                  "(setting api_enable_requests)")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise RequestError(field, f"Invalid image url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise RequestError(field, f"Invalid image url: only http:// and https:// URLs are fetched, not {scheme or 'this'}://")
    host = parts.hostname
    if not host:
        raise RequestError(field, "Invalid image url: it names no host")
    port = port or DEFAULT_PORTS[scheme]
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise RequestError(field, f"Invalid image url: cannot resolve {host} ({exc})") from None
    if not addresses:
        raise RequestError(field, f"Invalid image url: cannot resolve {host}")
    if policy.forbid_local and not all(is_public(a) for a in addresses):
        raise RequestError(field, f"Request to local resource not allowed: {host} is or resolves to a local, "
                                  "private or reserved address (setting api_forbid_local_requests)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, tuple(addresses))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _read_capped(response: http.client.HTTPResponse, sock: socket.socket | None, field: str,
                 limit: int, deadline: float) -> bytes:
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > limit:
        raise RequestError(field, f"Invalid image url: the picture is {int(length)} bytes, over the limit of "
                                  f"{limit} bytes (--max-request-size)")
    chunks, total = [], 0
    while not response.isclosed():  # (closed once the whole body is read)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        if sock is not None:
            sock.settimeout(remaining)
        chunk = response.read1(CHUNK)  # what has arrived: the deadline is checked between reads
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise RequestError(field, f"Invalid image url: the picture is over the limit of {limit} bytes "
                                      "(--max-request-size)")
        chunks.append(chunk)
    if time.monotonic() >= deadline:  # cut short by the watchdog
        raise TimeoutError("timed out")
    return b"".join(chunks)


def _get(target: Target, field: str, policy: UrlPolicy, deadline: float) -> tuple[int, str | None, bytes]:
    """(status, Location, body) from the first of the target's addresses that answers; the body
    is read only for a 200."""
    headers = {"User-Agent": policy.user_agent or f"Easel/{VERSION}", "Accept": "image/*,*/*;q=0.5",
               "Accept-Encoding": "identity", "Connection": "close"}
    connection_class = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    failure: Exception | None = None
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection = connection_class(address, target.host, target.port, remaining)
        watchdog = None
        try:
            connection.connect()
            sock = connection.sock  # (getresponse hands it to the response: Connection: close)
            # the deadline holds for the whole answer, however slowly a server drips it
            watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _shut, (sock,))
            watchdog.daemon = True
            watchdog.start()
            connection.request("GET", target.path, headers=headers)
            response = connection.getresponse()
            try:
                if response.status != 200:
                    return response.status, response.getheader("Location"), b""
                return 200, None, _read_capped(response, sock, field, policy.max_bytes, deadline)
            finally:
                response.close()
        except ConnectionError as exc:  # this address does not answer: the next one
            if time.monotonic() >= deadline:
                raise TimeoutError("timed out") from None
            failure = exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
            connection.close()
    raise failure or TimeoutError("timed out")


def fetch(url: str, field: str, policy: UrlPolicy, resolver: Resolver = resolve, get=_get) -> bytes:
    """The bytes at `url`, every hop checked by `check_url`; RequestError naming the field when
    it is refused or cannot be fetched. `get(target, field, policy, deadline)` -> (status,
    Location, body) makes one request to the checked target (tests stand in for a public host)."""
    deadline = time.monotonic() + policy.timeout_s
    current = url.strip()
    for _hop in range(MAX_REDIRECTS + 1):
        target = check_url(current, field, policy, resolver)
        try:
            status, location, body = get(target, field, policy, deadline)
        except RequestError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timed out, TLS, bad answer
            reason = str(exc) or type(exc).__name__
            raise RequestError(field, f"Invalid image url: cannot fetch it ({reason})") from None
        if status == 200:
            return body
        if status in REDIRECTS and location:
            current = urljoin(current, location.strip())
            continue
        raise RequestError(field, f"Invalid image url: the server answered HTTP {status}")
    raise RequestError(field, f"Invalid image url: more than {MAX_REDIRECTS} redirects")


def picture_data(value: Any, field: str, options: Any, resolver: Resolver = resolve) -> Any:
    """A picture field's value ready for image_io.decode_image: a URL becomes the base64 of the
    file it names (refusals and failures: RequestError naming the field); anything else is
    returned as it is."""
    if not is_url(value):
        return value
    return base64.b64encode(fetch(value, field, UrlPolicy.from_options(options), resolver)).decode("ascii")


def decode(value: Any, field: str, options: Any, max_pixels: int | None) -> Any:
    """image_io.decode_image with URL support: the one way the API reads an input picture."""
    from modules.core import image_io

    return image_io.decode_image(picture_data(value, field, options), field, max_pixels)


def script_pictures(alwayson_scripts: Any, options: Any) -> Any:
    """alwayson_scripts with the URLs in ControlNet units' picture fields fetched (as base64), a
    copy; anything else is left as it is (a script argument that happens to be a URL is not a
    picture). The units' checks stay modules.services.controlnets'."""
    if not isinstance(alwayson_scripts, dict):
        return alwayson_scripts
    result = dict(alwayson_scripts)
    for title, value in alwayson_scripts.items():
        if str(title).strip().lower() != "controlnet":
            continue
        args = value.get("args") if isinstance(value, dict) else value
        if not isinstance(args, list):
            continue
        units = [_unit_pictures(unit, f"alwayson_scripts.{title}.args[{i}]", options) for i, unit in enumerate(args)]
        result[title] = {**value, "args": units} if isinstance(value, dict) else units
    return result


def _unit_pictures(unit: Any, where: str, options: Any) -> Any:
    if not isinstance(unit, dict):
        return unit
    unit = dict(unit)
    for key in CONTROLNET_PICTURE_KEYS:
        if key in unit:
            unit[key] = _nested_pictures(unit[key], f"{where}.{key}", options)
    return unit


def _nested_pictures(value: Any, field: str, options: Any) -> Any:
    """A unit's picture: a URL, ``{"image": ..., "mask": ...}`` or a list of those."""
    if isinstance(value, dict):
        return {k: _nested_pictures(v, f"{field}.{k}", options) if k in ("image", "mask") else v
                for k, v in value.items()}
    if isinstance(value, list) and any(is_url(v) or isinstance(v, dict) for v in value):
        return [_nested_pictures(v, f"{field}[{i}]", options) for i, v in enumerate(value)]
    return picture_data(value, field, options)
