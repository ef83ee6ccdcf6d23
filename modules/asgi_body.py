"""One ASGI `send` wrapper that buffers a response body and passes it on rewritten (the login page's
API description removed, modules/auth.py; the extensions' script tags added to the page head,
modules/page_head.py)."""

from __future__ import annotations

from typing import Awaitable, Callable

Rewrite = Callable[[dict, bytes], tuple[int, bytes]]


def body_rewriter(send: Callable[[dict], Awaitable[None]], rewrite: Rewrite):
    """A `send` that holds the response until its last body chunk, then sends it once as
    `rewrite(start message, whole body)` -> (status, body), with the Content-Length to match."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def buffered(message):
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status, body = rewrite(start, b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return buffered
