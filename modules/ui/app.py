"""The Gradio page: checkpoint picker on top, then the tabs."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import gradio as gr

from modules.services.engine import Engine

from .txt2img import RANDOM_SEED_HINT, REUSE_SEED_HINT, Txt2ImgTab

HERE = Path(__file__).resolve().parent
STARTUP_LOAD_WAIT = 120  # seconds a page load waits for the start-up checkpoint load

HINTS = {
    "refresh_sd_model_checkpoint": "Refresh the list of checkpoints",
    "txt2img_random_seed": RANDOM_SEED_HINT,
    "txt2img_reuse_seed": REUSE_SEED_HINT,
    "txt2img_generate": "Generate (Ctrl+Enter)",
    "txt2img_skip": "Stop the current batch and go on with the next (Alt+Enter)",
    "txt2img_interrupt": "Stop the job; what was made so far is shown, not saved",
}


def page_script() -> str:
    """The JS of the page's load event: stylesheet, tooltips, keyboard shortcuts.

    It goes through a load event because `gr.mount_gradio_app` (webui.py) replaces a
    Blocks' own `css`/`js`/`head` with its arguments."""
    css = (HERE / "style.css").read_text(encoding="utf-8")
    script = (HERE / "page.js").read_text(encoding="utf-8").strip()
    return f"() => ({script})({json.dumps(css)}, {json.dumps(HINTS)})"


def _checkpoint_row(engine: Engine, tab: Txt2ImgTab) -> gr.Dropdown:
    def choose(evt: gr.SelectData):
        title = evt.value
        if not title:
            return gr.update(), gr.update(), gr.update()
        try:
            engine.select_checkpoint(title)
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's message; the old model stays
            gr.Warning(html.escape(f"Could not load {title}: {exc}"), title="Error")
            return gr.update(choices=engine.checkpoints.titles(), value=_current(engine)), gr.update(), gr.update()
        w, h = engine.native_size()  # the size defaults follow the model
        return gr.update(choices=engine.checkpoints.titles(), value=_current(engine)), w, h

    def refresh():
        engine.checkpoints.refresh()
        return gr.update(choices=engine.checkpoints.titles(), value=_current(engine))

    with gr.Row(elem_id="quicksettings"):
        dropdown = gr.Dropdown(engine.checkpoints.titles(), value=_current(engine), label="Stable Diffusion checkpoint",
                               elem_id="setting_sd_model_checkpoint", scale=4, allow_custom_value=False,
                               interactive=True)
        refresh_button = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", min_width=40, scale=0)
    # `select`, not `input`: Gradio 6's dropdown sends `input` twice per pick (on the pick and
    # again on blur), which would load a checkpoint twice and report a failure twice
    # `always_last`: a pick made while a load is still pending runs after it (the default,
    # "once", drops it silently while the picker already shows it)
    dropdown.select(choose, outputs=[dropdown, tab.width, tab.height], show_progress_on=[dropdown],
                    concurrency_limit=None, trigger_mode="always_last")
    refresh_button.click(refresh, outputs=dropdown, queue=False)
    return dropdown


def _current(engine: Engine) -> str | None:
    info = engine.models.info
    return info.title if info else None


def create_ui(engine: Engine) -> gr.Blocks:
    tab = Txt2ImgTab(engine)
    with gr.Blocks(title="Easel", analytics_enabled=False) as demo:
        placeholder = gr.Column()
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                tab.build()
        with placeholder:
            dropdown = _checkpoint_row(engine, tab)

        built_size = (tab.width.value, tab.height.value)

        def on_load():
            # the start-up load runs on the worker; a page opened meanwhile waits for it, so the
            # picker and the size defaults show the model that is really there
            deadline = time.time() + STARTUP_LOAD_WAIT
            while engine.state.job == "load checkpoint" and engine.models.info is None and time.time() < deadline:
                time.sleep(0.2)
            # sizes only when the model differs from the one the page was built with: a load
            # event may land after the user has already typed a size
            w, h = engine.native_size()
            sizes = (gr.update(), gr.update()) if (w, h) == built_size else (w, h)
            return gr.update(choices=engine.checkpoints.titles(), value=_current(engine)), *sizes

        demo.load(on_load, outputs=[dropdown, tab.width, tab.height], show_progress_on=[dropdown])
        demo.load(None, js=page_script())
    return demo
