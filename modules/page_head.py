"""The extensions' JavaScript where A1111 loads it: `<script src="file=...">` tags in the page's
`<head>`, so their top-level code runs before `DOMContentLoaded` (aspect-ratio-helper and others
wait for that event), with A1111's page globals (modules/ui/webui_globals.js) before them.

Gradio 6 adds a Blocks' `head=` with script after the page has loaded, so the tags are written into
the served index page instead (an ASGI middleware around the UI, as A1111 wraps Gradio's template
response). modules/ui/page.js then skips the files listed in `window.easelHeadScripts`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from modules.asgi_body import body_rewriter

_LOGIN_PAGE = re.compile(rb'"auth_required":\s*true')  # Gradio's config on its login page

GLOBALS_NAME = "easel/webui_globals.js"
_UI_DIR = Path(__file__).resolve().parent / "ui"


def script_name(path: str) -> str:
    """The name page.js knows a file by: `<extension>/javascript/<file>`."""
    return "/".join(Path(path).parts[-3:])


def head_html(prefix: str) -> str:
    """The tags to put before `</head>`: the globals inline, then each active extension's file."""
    from modules import extensions

    globals_js = (_UI_DIR / "webui_globals.js").read_text(encoding="utf-8")
    files = extensions.javascript_files()
    names = [GLOBALS_NAME, *(script_name(p) for p in files)]
    tags = [f"<script>window.easelHeadScripts = {json.dumps(names)};</script>",
            f"<script data-source=\"{GLOBALS_NAME}\">{globals_js}\n//# sourceURL={GLOBALS_NAME}</script>"]
    for path in files:
        try:
            version = os.path.getmtime(path)
        except OSError:
            continue
        kind = "module" if path.endswith(".mjs") else "text/javascript"
        url = f"{prefix}/file={quote(os.path.abspath(path), safe='/:')}?{version}"
        tags.append(f'<script type="{kind}" src="{url}" data-source="{script_name(path)}"></script>')
    return "\n".join(tags) + "\n"


class HeadScripts:
    """ASGI middleware: the UI's index page (GET `<ui_path>/`, HTML) gets `head_html` before `</head>`."""

    def __init__(self, app, ui_path: str = "/"):
        self.app = app
        self.prefix = "" if ui_path.strip("/") == "" else "/" + ui_path.strip("/")

    def _is_index(self, scope) -> bool:
        return (scope["type"] == "http" and scope.get("method") == "GET"
                and scope.get("path", "") in (self.prefix + "/", self.prefix or "/"))

    async def __call__(self, scope, receive, send):
        if not self._is_index(scope):
            await self.app(scope, receive, send)
            return

        def add_head(start: dict, body: bytes) -> tuple[int, bytes]:
            headers = dict((k.lower(), v) for k, v in start.get("headers", []))
            is_html = headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers
            # Gradio's login page (--gradio-auth, not logged in) gets nothing: no page details before login
            if is_html and b"</head>" in body and not _LOGIN_PAGE.search(body):
                try:
                    extra = head_html(self.prefix).encode("utf-8")
                except Exception as exc:  # noqa: BLE001 - the page is served without them, and says why
                    print(f"[easel] extension scripts not added to the page head: {exc}")
                    extra = b""
                body = body.replace(b"</head>", extra + b"</head>", 1)
            return start["status"], body

        await self.app(scope, receive, body_rewriter(send, add_head))
