"""The txt2img tab: layout and event wiring only. Values -> GenerationRequest -> queue.

Element ids are A1111's, since community extensions find the page by them.
"""

from __future__ import annotations

import html
import time

import gradio as gr

from modules.core import samplers
from modules.core.types import GenerationRequest, RequestError
from modules.services.engine import Engine

SPECS = GenerationRequest.field_specs()


def _slider(name: str, label: str, value, elem_id: str, **overrides) -> gr.Slider:
    fs = SPECS[name]
    args = {"minimum": fs.minimum, "maximum": fs.maximum, "step": fs.ui_step, "value": value}
    args.update(overrides)
    return gr.Slider(label=label, elem_id=elem_id, **args)


def info_html(infotexts: list[str]) -> str:
    if not infotexts:
        return ""
    return "<div class='infotext'>" + html.escape(infotexts[0]).replace("\n", "<br>") + "</div>"


class Txt2ImgTab:
    def __init__(self, engine: Engine):
        self.engine = engine

    def build(self) -> None:
        e = self.engine
        width, height = e.native_size()
        with gr.Row(elem_id="txt2img_toprow"):
            with gr.Column(scale=6):
                self.prompt = gr.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3,
                                         placeholder="Prompt (press Ctrl+Enter to generate)")
                self.negative = gr.Textbox(label="Negative prompt", elem_id="txt2img_neg_prompt", lines=2,
                                           placeholder="Negative prompt")
            with gr.Column(scale=1, min_width=180, elem_id="txt2img_actions_column"):
                self.generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                with gr.Row():
                    self.interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", visible=False)
                    self.skip = gr.Button("Skip", elem_id="txt2img_skip", visible=False)
        with gr.Row(equal_height=False):
            with gr.Column(elem_id="txt2img_settings"):
                with gr.Row():
                    self.sampler = gr.Dropdown(samplers.SAMPLER_NAMES, value="Euler a", label="Sampling method",
                                               elem_id="txt2img_sampling")
                    self.scheduler = gr.Dropdown([label for label, _ in samplers.SCHEDULE_TYPES], value="Automatic",
                                                 label="Schedule type", elem_id="txt2img_scheduler")
                self.steps = _slider("steps", "Sampling steps", 20, "txt2img_steps")
                with gr.Row():
                    self.width = _slider("width", "Width", width, "txt2img_width")
                    self.height = _slider("height", "Height", height, "txt2img_height")
                with gr.Row():
                    self.batch_count = _slider("n_iter", "Batch count", 1, "txt2img_batch_count")
                    self.batch_size = _slider("batch_size", "Batch size", 1, "txt2img_batch_size")
                self.cfg = _slider("cfg_scale", "CFG Scale", 7.0, "txt2img_cfg_scale")
                with gr.Row(elem_id="txt2img_seed_row"):
                    self.seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed")
                    self.random_seed = gr.Button("🎲", elem_id="txt2img_random_seed", min_width=40, scale=0)
                    self.reuse_seed = gr.Button("♻️", elem_id="txt2img_reuse_seed", min_width=40, scale=0)
                    self.show_extra = gr.Checkbox(label="Extra", value=False, elem_id="txt2img_subseed_show")
                with gr.Group(visible=False) as self.extra_group:
                    with gr.Row():
                        self.subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id="txt2img_subseed")
                        self.subseed_strength = _slider("subseed_strength", "Variation strength", 0.0,
                                                        "txt2img_subseed_strength")
                    with gr.Row():
                        self.resize_w = gr.Slider(0, 2048, step=8, value=0, label="Resize seed from width",
                                                  elem_id="txt2img_seed_resize_from_w")
                        self.resize_h = gr.Slider(0, 2048, step=8, value=0, label="Resize seed from height",
                                                  elem_id="txt2img_seed_resize_from_h")
            with gr.Column(elem_id="txt2img_results"):
                self.gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=4, format="png",
                                          show_label=False)
                self.info = gr.HTML(elem_id="html_info_txt2img")
                self.last_seed = gr.State(-1)
        self._wire()

    def _wire(self) -> None:
        inputs = [self.prompt, self.negative, self.sampler, self.scheduler, self.steps, self.cfg, self.width,
                  self.height, self.batch_count, self.batch_size, self.seed, self.subseed, self.subseed_strength,
                  self.resize_w, self.resize_h]
        buttons = [self.generate, self.interrupt, self.skip]
        busy = lambda: (gr.update(visible=False), gr.update(visible=True), gr.update(visible=True))  # noqa: E731
        idle = lambda: (gr.update(visible=True), gr.update(visible=False), gr.update(visible=False))  # noqa: E731
        for trigger in (self.generate.click, self.prompt.submit):
            trigger(busy, outputs=buttons, queue=False).then(
                self.run, inputs=inputs, outputs=[self.gallery, self.info, self.last_seed], concurrency_limit=None,
            ).then(idle, outputs=buttons, queue=False)
        self.interrupt.click(lambda: self.engine.state.interrupt(), queue=False)
        self.skip.click(lambda: self.engine.state.skip(), queue=False)
        self.random_seed.click(lambda: -1, outputs=self.seed, queue=False)
        self.reuse_seed.click(lambda s: s, inputs=self.last_seed, outputs=self.seed, queue=False)
        self.show_extra.change(lambda v: gr.update(visible=v), inputs=self.show_extra, outputs=self.extra_group,
                               queue=False)

    def run(self, prompt, negative, sampler, scheduler, steps, cfg, width, height, n_iter, batch_size, seed, subseed,
            subseed_strength, resize_w, resize_h, progress=gr.Progress()):
        try:
            request = GenerationRequest(
                prompt=prompt, negative_prompt=negative, sampler_name=sampler, scheduler=scheduler,
                steps=_int(steps), cfg_scale=float(cfg), width=_int(width), height=_int(height),
                n_iter=_int(n_iter), batch_size=_int(batch_size), seed=_int(seed, -1), subseed=_int(subseed, -1),
                subseed_strength=float(subseed_strength), seed_resize_from_w=_int(resize_w),
                seed_resize_from_h=_int(resize_h),
            )
        except RequestError as exc:
            raise gr.Error(str(exc))
        future = self.engine.submit_txt2img(request)
        state = self.engine.state
        while not future.done():
            if state.job == "txt2img":
                frac, eta = state.progress()
                desc = f"Step {state.sampling_step}/{state.sampling_steps}"
                if eta is not None:
                    desc += f", ETA {eta:.0f}s"
                progress(frac, desc=desc)
            else:
                progress(0.0, desc="Waiting in queue")
            time.sleep(0.2)
        try:
            result = future.result()
        except ValueError as exc:
            raise gr.Error(str(exc))
        images = ([result.grid] if result.grid is not None else []) + result.images
        seed_out = result.seeds[0] if result.seeds else -1
        return images, info_html(result.infotexts), seed_out


def _int(value, default: int = 0) -> int:
    if value is None or value == "":
        return default
    return int(value)
