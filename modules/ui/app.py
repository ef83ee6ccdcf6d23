"""The Gradio page: checkpoint picker on top, then the tabs."""

from __future__ import annotations

import gradio as gr

from modules.services.engine import Engine

from .txt2img import Txt2ImgTab


def _checkpoint_row(engine: Engine, tab: Txt2ImgTab) -> gr.Dropdown:
    def current() -> str | None:
        info = engine.models.info
        return info.title if info else None

    def choose(title: str):
        if not title:
            return gr.update(), gr.update(), gr.update()
        try:
            engine.select_checkpoint(title)
        except ValueError as exc:
            gr.Warning(f"Could not load {title}: {exc}")
            return gr.update(value=current()), gr.update(), gr.update()
        w, h = engine.native_size()
        return gr.update(choices=engine.checkpoints.titles(), value=current()), w, h

    def refresh():
        engine.checkpoints.refresh()
        return gr.update(choices=engine.checkpoints.titles(), value=current())

    with gr.Row(elem_id="quicksettings"):
        dropdown = gr.Dropdown(engine.checkpoints.titles(), value=current(), label="Stable Diffusion checkpoint",
                               elem_id="setting_sd_model_checkpoint", scale=4, allow_custom_value=False)
        refresh_button = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", min_width=40, scale=0)
    dropdown.input(choose, inputs=dropdown, outputs=[dropdown, tab.width, tab.height])
    refresh_button.click(refresh, outputs=dropdown)
    return dropdown


def create_ui(engine: Engine) -> gr.Blocks:
    tab = Txt2ImgTab(engine)
    with gr.Blocks(title="Easel", analytics_enabled=False) as demo:
        placeholder = gr.Column()
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                tab.build()
        with placeholder:
            dropdown = _checkpoint_row(engine, tab)

        def on_load():
            info = engine.models.info
            w, h = engine.native_size()
            return gr.update(choices=engine.checkpoints.titles(), value=info.title if info else None), w, h

        demo.load(on_load, outputs=[dropdown, tab.width, tab.height], queue=False)
    return demo

