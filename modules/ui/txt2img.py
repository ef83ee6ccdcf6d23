"""The txt2img tab: the shared generation controls plus Hires. fix, Tiling and the scripts.

Values -> GenerationRequest -> queue; element ids are A1111's.
"""

from __future__ import annotations

from concurrent.futures import Future

import gradio as gr

from modules.core import hires, samplers, upscaling
from modules.core.types import GenerationRequest

from .generation_tab import GenerationTab, slider

__all__ = ["Txt2ImgTab"]

HR_DENOISING_DEFAULT = 0.7  # A1111's UI default for the hires pass (its API's is 0.75)


class Txt2ImgTab(GenerationTab):
    tabname = "txt2img"

    def sampler_lists(self):
        return [self.sampler, self.hr_sampler]

    def sampler_choices(self):
        names = self._sampler_names()
        return gr.update(choices=names), gr.update(choices=[hires.SAME_SAMPLER, *names])

    # -- layout ----------------------------------------------------------------------
    def build(self) -> None:
        width, height = self.engine.native_size()
        self.build_toprow()
        with gr.Row(equal_height=False):
            with gr.Column(elem_id="txt2img_settings"):
                self.build_sections({
                    "sampler": self.build_sampling,
                    "accordions": lambda: (self._build_hires(), self.build_refiner()),
                    "checkboxes": self._build_checkboxes,
                    "dimensions": lambda: self.build_size(
                        width, height, beside=self.build_batch_beside if self.batch_together() else None),
                    "cfg": self.build_cfg,
                    "seed": self.build_seed,
                    "batch": self.build_batch,  # (dimensions_and_batch_together off)
                    "scripts": self.build_scripts,
                })
            with gr.Column(elem_id="txt2img_results"):
                self.build_results()
        self.wire()
        self._wire_hires()

    def _build_checkboxes(self) -> None:
        with gr.Row(elem_id="txt2img_checkboxes"):
            self.tiling = gr.Checkbox(label="Tiling", value=False, elem_id="txt2img_tiling")

    def _build_hires(self) -> None:
        """A1111's "Hires. fix" accordion: open means on (its InputAccordion), mirrored in a hidden
        checkbox because a layout block cannot be an event's input."""
        self.enable_hr = gr.Checkbox(value=False, visible=False, elem_id="txt2img_hr-checkbox")
        with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr") as self.hr_accordion:
            with gr.Row(elem_id="txt2img_hires_fix_row1"):
                self.hr_upscaler = gr.Dropdown(upscaling.names(), value="Latent", label="Upscaler",
                                               elem_id="txt2img_hr_upscaler")
                self.hr_steps = slider("hr_second_pass_steps", "Hires steps", 0, "txt2img_hires_steps")
                self.hr_denoising = slider("denoising_strength", "Denoising strength", HR_DENOISING_DEFAULT,
                                           "txt2img_denoising_strength")
            with gr.Row(elem_id="txt2img_hires_fix_row2"):
                self.hr_scale = slider("hr_scale", "Upscale by", 2.0, "txt2img_hr_scale")
                self.hr_resize_x = slider("hr_resize_x", "Resize width to", 0, "txt2img_hr_resize_x")
                self.hr_resize_y = slider("hr_resize_y", "Resize height to", 0, "txt2img_hr_resize_y")
            self.hr_final = gr.HTML(elem_id="txtimg_hr_finalres", elem_classes=["hr-final"])
            # A1111's hires_fix_show_sampler / hires_fix_show_prompts: hidden rows still carry pasted values
            with gr.Row(elem_id="txt2img_hires_fix_row3", visible=self._shown("hires_fix_show_sampler")):
                self.hr_checkpoint = gr.Dropdown(self._hr_checkpoints(), value=hires.SAME_CHECKPOINT,
                                                 label="Hires checkpoint", elem_id="hr_checkpoint")
                self.hr_sampler = gr.Dropdown([hires.SAME_SAMPLER, *samplers.visible_sampler_names(self.hidden_samplers())],
                                              value=hires.SAME_SAMPLER, label="Hires sampling method",
                                              elem_id="hr_sampler")
                schedules = [label for label, _ in samplers.SCHEDULE_TYPES]
                self.hr_scheduler = gr.Dropdown([hires.SAME_SCHEDULER, *schedules], value=hires.SAME_SCHEDULER,
                                                label="Hires schedule type", elem_id="hr_scheduler")
            with gr.Row(elem_id="txt2img_hires_fix_row4", visible=self._shown("hires_fix_show_prompts")):
                self.hr_prompt = gr.Textbox(
                    label="Hires prompt", elem_id="hires_prompt", lines=3,
                    placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt as in first pass.")
                self.hr_negative = gr.Textbox(
                    label="Hires negative prompt", elem_id="hires_neg_prompt", lines=3,
                    placeholder="Negative prompt for hires fix pass.\n"
                                "Leave empty to use the same negative prompt as in first pass.")

    def _shown(self, key: str) -> bool:
        """An option read when the page is built (A1111: needs Reload UI)."""
        options = getattr(self.engine, "options", None)
        return bool(options.get(key)) if options is not None else False

    def _hr_checkpoints(self) -> list[str]:
        return [hires.SAME_CHECKPOINT, *self.engine.checkpoints.titles()]

    # -- request ---------------------------------------------------------------------
    def fields(self) -> dict[str, gr.components.Component]:
        """GenerationRequest field -> the component that holds its value."""
        return {
            **self.common_fields(), "width": self.width, "height": self.height, "tiling": self.tiling,
            "enable_hr": self.enable_hr, "hr_upscaler": self.hr_upscaler, "hr_second_pass_steps": self.hr_steps,
            "denoising_strength": self.hr_denoising, "hr_scale": self.hr_scale, "hr_resize_x": self.hr_resize_x,
            "hr_resize_y": self.hr_resize_y, "hr_checkpoint_name": self.hr_checkpoint,
            "hr_sampler_name": self.hr_sampler, "hr_scheduler": self.hr_scheduler, "hr_prompt": self.hr_prompt,
            "hr_negative_prompt": self.hr_negative,
        }

    def inputs(self) -> set[gr.components.Component]:
        return set(self.fields().values())

    def paste_fields(self):
        def hires_on(d: dict) -> bool:  # A1111: a hires infotext has its denoising and one hires size key
            return "Denoising strength" in d and any(k in d for k in ("Hires upscale", "Hires upscaler", "Hires steps"))

        return super().paste_fields() + [
            (self.hr_accordion, hires_on), (self.enable_hr, hires_on), (self.tiling, "Tiling"),
            (self.hr_scale, "Hires upscale"), (self.hr_upscaler, "Hires upscaler"), (self.hr_steps, "Hires steps"),
            (self.hr_resize_x, "Hires resize-1"), (self.hr_resize_y, "Hires resize-2"),
            (self.hr_denoising, "Denoising strength"), (self.hr_checkpoint, "Hires checkpoint"),
            (self.hr_sampler, "Hires sampler"), (self.hr_scheduler, "Hires schedule type"),
            (self.hr_prompt, "Hires prompt"), (self.hr_negative, "Hires negative prompt"),
        ]

    def make_request(self, values: dict) -> GenerationRequest:
        fields = {**self.field_values(values, self.fields()), **self.refiner.request_fields(values)}
        return GenerationRequest(**self.styled(values, fields))

    def submit(self, request: GenerationRequest, task_id: str, scripts=None) -> Future:
        if scripts is None:
            return self.engine.submit_txt2img(request, task_id=task_id, console_prompt=True, **self.user_kw())
        return self.engine.submit_txt2img(request, task_id=task_id, scripts=scripts, console_prompt=True,
                                          **self.user_kw())

    # -- hires events ----------------------------------------------------------------
    def _wire_hires(self) -> None:
        # open = on, instantly in the browser (no round trip a quick Generate could overtake)
        self.hr_accordion.expand(None, js="() => true", outputs=self.enable_hr, queue=False)
        self.hr_accordion.collapse(None, js="() => false", outputs=self.enable_hr, queue=False)
        size_inputs = [self.enable_hr, self.width, self.height, self.hr_scale, self.hr_resize_x, self.hr_resize_y]
        for component in size_inputs:
            component.change(_final_size, inputs=size_inputs, outputs=self.hr_final, queue=False,
                             show_progress="hidden")
        self.hr_checkpoint.focus(lambda value: gr.update(choices=self._hr_checkpoints(), value=value),
                                 inputs=self.hr_checkpoint, outputs=self.hr_checkpoint, queue=False)


def _final_size(enabled, width, height, scale, resize_x, resize_y) -> str:
    """A1111's "from WxH to WxH" line under the hires sizes."""
    if not enabled:
        return ""
    try:
        size = hires.target_size(int(width), int(height), float(scale), int(resize_x or 0), int(resize_y or 0))
    except (TypeError, ValueError, ZeroDivisionError):
        return ""
    return (f"<span class='resolution'>from <b>{int(width)}x{int(height)}</b> "
            f"to <b>{size.width}x{size.height}</b></span>")
