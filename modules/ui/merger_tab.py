"""The Checkpoint Merger tab (A1111's ui_checkpoint_merger.py): models A/B/C, custom name,
multiplier, interpolation method, format, float16, config source, VAE to bake in, weights to
discard, metadata; A1111's element ids. The merge runs on the worker queue (modules.services.merger);
while it waits or runs, the result box shows its progress; then the saved file or the error."""

from __future__ import annotations

import html
import time

import gradio as gr

from modules.core.merge import ADD_DIFFERENCE, METHODS, NO_INTERPOLATION, WEIGHTED_SUM
from modules.services.merger import CONFIG_SOURCES, JOB_NAME, MergeRequest, Merger

from .generation_tab import error_html

POLL_SECONDS = 0.25
DESCRIPTIONS = {
    NO_INTERPOLATION: "No interpolation will be used. Requires one model; A. Allows for format conversion and VAE baking.",
    WEIGHTED_SUM: "A weighted sum will be used for interpolation. Requires two models; A and B. "
                  "The result is calculated as A * (1 - M) + B * M",
    ADD_DIFFERENCE: "The difference between the last two models will be added to the first. Requires three models; "
                    "A, B and C. The result is calculated as A + (B - C) * M",
}


def describe(method: str) -> str:
    return f"<p style='margin-bottom: 2.5em'>{html.escape(DESCRIPTIONS.get(method, ''))}</p>"


class MergerTab:
    def __init__(self, engine):
        self.engine = engine
        self.merger = Merger(engine)

    def build(self) -> None:
        titles = self.merger.checkpoint_titles()
        with gr.Row(equal_height=False):
            with gr.Column(variant="compact"):
                self.description = gr.HTML(describe(WEIGHTED_SUM), elem_id="modelmerger_interp_description")
                with gr.Row(elem_id="modelmerger_models"):
                    self.models = []
                    for role, label in (("primary", "Primary model (A)"), ("secondary", "Secondary model (B)"),
                                        ("tertiary", "Tertiary model (C)")):
                        dropdown = gr.Dropdown(titles, value=None, label=label, elem_id=f"modelmerger_{role}_model_name",
                                               interactive=True)
                        refresh = gr.Button("\U0001f504", elem_id=f"refresh_checkpoint_{role[0].upper()}",
                                            min_width=40, scale=0, elem_classes=["tool"])
                        refresh.click(self._refresh_checkpoints, outputs=dropdown, queue=False)
                        self.models.append(dropdown)
                self.custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
                self.amount = gr.Slider(minimum=0.0, maximum=1.0, step=0.05, value=0.3,
                                        label="Multiplier (M) - set to 0 to get model A", elem_id="modelmerger_interp_amount")
                self.method = gr.Radio(list(METHODS), value=WEIGHTED_SUM, label="Interpolation Method",
                                       elem_id="modelmerger_interp_method")
                with gr.Row():
                    self.format = gr.Radio(["ckpt", "safetensors"], value="safetensors", label="Checkpoint format",
                                           elem_id="modelmerger_checkpoint_format")
                    self.half = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
                with gr.Row():
                    self.config_source = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0], label="Copy config from",
                                                  type="index", elem_id="modelmerger_config_method")
                    with gr.Row():
                        self.vae = gr.Dropdown(self.merger.vae_choices(), value="None", label="Bake in VAE",
                                               elem_id="modelmerger_bake_in_vae", interactive=True)
                        vae_refresh = gr.Button("\U0001f504", elem_id="modelmerger_refresh_bake_in_vae", min_width=40,
                                                scale=0, elem_classes=["tool"])
                self.discard = gr.Textbox("", label="Discard weights with matching name", elem_id="modelmerger_discard_weights")
                with gr.Accordion("Metadata", open=False) as self.metadata_editor:
                    with gr.Row():
                        self.save_metadata = gr.Checkbox(True, label="Save metadata", elem_id="modelmerger_save_metadata")
                        self.add_recipe = gr.Checkbox(True, label="Add merge recipe metadata", elem_id="modelmerger_add_recipe")
                        self.copy_metadata = gr.Checkbox(True, label="Copy metadata from merged models",
                                                         elem_id="modelmerger_copy_metadata")
                    self.metadata_json = gr.TextArea("{}", label="Metadata in JSON format")
                    read_metadata = gr.Button("Read metadata from selected checkpoints")
                self.merge_button = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
            with gr.Column(variant="compact", elem_id="modelmerger_results_container"):
                with gr.Group(elem_id="modelmerger_results_panel"):
                    self.result = gr.HTML(elem_id="modelmerger_result")

        self.method.change(describe, inputs=self.method, outputs=self.description, queue=False)
        self.format.change(lambda fmt: gr.update(visible=fmt == "safetensors"), inputs=self.format,
                           outputs=self.metadata_editor, queue=False)
        vae_refresh.click(self._refresh_vaes, outputs=self.vae, queue=False)
        read_metadata.click(self.merger.read_metadata, inputs=self.models, outputs=self.metadata_json, queue=False)

    def wire(self, checkpoint_picker: gr.Dropdown | None = None) -> None:
        """The Merge button; after a merge the pickers (and the page's checkpoint picker) list the new file."""
        pickers = self.models + ([checkpoint_picker] if checkpoint_picker is not None else [])
        self._picker_count = len(pickers)
        inputs = [*self.models, self.method, self.amount, self.half, self.custom_name, self.format, self.config_source,
                  self.vae, self.discard, self.save_metadata, self.add_recipe, self.copy_metadata, self.metadata_json]
        self.merge_button.click(self.run, inputs=inputs, outputs=[*pickers, self.result], concurrency_limit=None)

    def _refresh_checkpoints(self):
        self.merger.refresh()
        return gr.update(choices=self.merger.checkpoint_titles())

    def _refresh_vaes(self):
        self.merger.refresh()
        return gr.update(choices=self.merger.vae_choices())

    def _progress_html(self, waiting: bool) -> str:
        state = self.engine.state
        if waiting:
            return "<div class='merge-progress'>Waiting for the running job to finish…</div>"
        step, steps = state.sampling_step, state.sampling_steps
        detail = f" {step}/{steps} tensors" if steps else ""
        return f"<div class='merge-progress'>{html.escape(state.textinfo or 'Merging')}{detail}</div>"

    def run(self, primary, secondary, tertiary, method, amount, half, custom_name, fmt, config_source, vae, discard,
            save_metadata, add_recipe, copy_metadata, metadata_json):
        """A generator: progress while the job waits or runs, then the pickers' new lists and the result."""
        keep = [gr.update()] * getattr(self, "_picker_count", 3)
        request = MergeRequest(
            primary_model_name=primary or "", secondary_model_name=secondary or "", tertiary_model_name=tertiary or "",
            interp_method=method, multiplier=float(amount or 0), save_as_half=bool(half), custom_name=custom_name or "",
            checkpoint_format=fmt or "safetensors", config_source=0 if config_source is None else config_source,
            bake_in_vae=vae or "None", discard_weights=discard or "", save_metadata=bool(save_metadata),
            add_merge_recipe=bool(add_recipe), copy_metadata_fields=bool(copy_metadata), metadata_json=metadata_json or "{}")
        future = self.merger.submit(request)
        while not future.done():
            yield *keep, self._progress_html(waiting=self.engine.state.job != JOB_NAME)
            time.sleep(POLL_SECONDS)
        titles = self.merger.checkpoint_titles()
        refreshed = [gr.update(choices=titles)] * len(keep)
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - every failure is the user's message; the page keeps working
            self.engine.checkpoints.refresh()
            yield *refreshed, error_html(f"Error merging checkpoints: {exc}")
            return
        yield *refreshed, f"<div class='merge-result'>{html.escape(outcome.message)}</div>"
