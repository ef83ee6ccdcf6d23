"""The Gradio page (app.py builds it). For A1111 extensions this package also stands where A1111's
`modules/ui.py` stood: `from modules.ui import create_refresh_button` and the like (see
modules/ui_common.py) still work."""

_A1111_NAMES = ("ToolButton", "create_refresh_button", "gr_show", "plaintext_to_html", "refresh_symbol")


def __getattr__(name: str):
    if name in _A1111_NAMES:
        from modules import ui_common

        return getattr(ui_common, name)
    raise AttributeError(f"module 'modules.ui' has no attribute '{name}'")
