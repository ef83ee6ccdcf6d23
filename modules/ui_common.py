"""A1111's `modules.ui_common`: the few page helpers extensions import from it (also reachable as
`modules.ui.<name>`, where A1111 had them first)."""

from __future__ import annotations

import html

from modules.ui_components import ToolButton, create_refresh_button

__all__ = ["ToolButton", "create_refresh_button", "gr_show", "plaintext_to_html", "refresh_symbol"]

refresh_symbol = "\U0001f504"  # 🔄


def plaintext_to_html(text: str, classname: str | None = None) -> str:
    """Text as a paragraph of HTML, one line per line (A1111's)."""
    content = "<br>\n".join(html.escape(line) for line in (text or "").split("\n"))
    return f"<p class='{classname}'>{content}</p>" if classname else f"<p>{content}</p>"


def gr_show(visible: bool = True) -> dict:
    return {"visible": visible, "__type__": "update"}
