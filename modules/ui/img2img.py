"""The img2img tab: A1111's sub-tabs (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint upload,
Batch), resize mode and size, denoising strength, the inpainting controls, the scripts (the Script
dropdown and the AlwaysVisible scripts' controls, scripts_ui.py), and the shared generation
controls. Values -> Img2ImgRequest -> queue (Batch: one job per file, see
modules/services/img2img_batch.py, the page's scripts running with each file's job).

Where the pictures come from, per sub-tab:

- img2img: the uploaded picture;
- Sketch: the picture with the strokes drawn over it (the editor's composite);
- Inpaint: the uploaded picture; the strokes (any colour, any opacity) are the mask;
- Inpaint sketch: the picture with the coloured strokes; the strokes are also the mask;
- Inpaint upload: a picture and a mask file (white = repaint, or the opaque part of a
  transparent one).
"""

from __future__ import annotations

import html
import sys
from concurrent.futures import Future
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from modules.core.img2img import MASKED_CONTENT
from modules.core.masks import RESIZE_MODES
from modules.core.types import Img2ImgRequest, RequestError
from modules.services import img2img_batch

from .generation_tab import GenerationTab, Shown, RunningJob, error_html, slider

__all__ = ["Img2ImgTab", "MODES", "strokes_mask"]

# the sub-tabs, in A1111's order: (label, tab element id)
MODES = (
    ("img2img", "img2img_img2img_tab"),
    ("Sketch", "img2img_img2img_sketch_tab"),
    ("Inpaint", "img2img_inpaint_tab"),
    ("Inpaint sketch", "img2img_inpaint_sketch_tab"),
    ("Inpaint upload", "img2img_inpaint_upload_tab"),
    ("Batch", "img2img_batch_tab"),
)
IMG2IMG, SKETCH, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH = range(len(MODES))
# the selected sub-tab as an attribute of the page (style.css shows #inpaint_controls for the
# inpainting sub-tabs and Batch: INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD, BATCH = 2, 3, 4, 5)
MODE_ATTRIBUTE_JS = "(mode) => { document.body.dataset.img2imgMode = String(mode); }"
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
SKETCH_COLOURS = ["#000000", "#ffffff", "#cc3232", "#32cc70", "#3270cc", "#e0c020"]


def _editor(label: str, elem_id: str, brush: gr.Brush, height: int) -> gr.ImageEditor:
    # no crop/resize tools: the canvas must stay the picture's size so the strokes line up with it
    return gr.ImageEditor(label=label, elem_id=elem_id, type="pil", image_mode="RGBA", sources=("upload", "clipboard"),
                          brush=brush, transforms=(), layers=False, format="png", height=height)


def _upload(label: str, elem_id: str, height: int) -> gr.Image:
    return gr.Image(label=label, elem_id=elem_id, type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                    format="png", height=height)


def strokes_mask(layers: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """The editor's drawing layers -> an L mask of ``size``: white wherever anything was drawn
    (a semi-transparent brush counts fully; erased parts are transparent again)."""
    alpha = np.zeros((size[1], size[0]), dtype=np.uint8)
    for layer in layers:
        if layer is None:
            continue
        layer = layer.convert("RGBA")
        if layer.size != size:
            layer = layer.resize(size, Image.Resampling.NEAREST)
        alpha = np.maximum(alpha, np.asarray(layer.getchannel("A")))
    return Image.fromarray(np.where(alpha > 0, 255, 0).astype(np.uint8), "L")


def _with_first(colour: str) -> list[str]:
    """The sketch palette with `colour` (a brush's default) first."""
    return [colour, *(c for c in SKETCH_COLOURS if c.lower() != colour.lower())]


def _editor_value(value) -> tuple[Image.Image | None, list[Image.Image], Image.Image | None]:
    if not value:
        return None, [], None
    return value.get("background"), list(value.get("layers") or []), value.get("composite")


class Img2ImgTab(GenerationTab):
    tabname = "img2img"

    def __init__(self, engine, *, allow_folders: bool = True):
        super().__init__(engine)
        self.allow_folders = allow_folders  # False under --hide-ui-dir-config: no batch from server folders

    # -- layout ----------------------------------------------------------------------
    def build(self) -> None:
        width, height = self.engine.native_size()
        self.build_toprow()
        with gr.Row(equal_height=False):
            with gr.Column(elem_id="img2img_settings"):
                self.build_sections({
                    "image": self._build_image,
                    "inpaint": self._build_inpaint_controls,
                    "sampler": self.build_sampling,
                    "accordions": self.build_refiner,
                    "dimensions": lambda: self._build_dimensions(width, height),
                    "cfg": self.build_cfg,
                    "denoising": self._build_denoising,
                    "seed": self.build_seed,
                    "batch": self.build_batch,  # (dimensions_and_batch_together off)
                    "scripts": self.build_scripts,
                })
            with gr.Column(elem_id="img2img_results"):
                self.build_results()
        self.wire()
        self._wire_img2img()

    def _build_image(self) -> None:
        self._build_sources()
        self.resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index",
                                    label="Resize mode", elem_id="resize_mode")

    def _build_denoising(self) -> None:
        self.denoising = slider("denoising_strength", "Denoising strength", 0.75, "img2img_denoising_strength")

    def _build_sources(self) -> None:
        """The sub-tabs' pictures, as A1111's settings say when the page is built: their height
        (img2img_editor_height) and the brushes' first colours (img2img_*_brush_color)."""
        option = self.engine.options.get
        height = int(option("img2img_editor_height", 720))
        sketch_colour = option("img2img_sketch_default_brush_color", "#ffffff")
        inpaint_sketch_colour = option("img2img_inpaint_sketch_default_brush_color", "#ffffff")
        # the selected sub-tab, kept in the page (set by the tabs' own clicks, in order, with no round
        # trip: the page may click through the sub-tabs at load, modules/ui/webui_globals.js); the
        # inpainting controls follow it (style.css, from the page's data-img2img-mode)
        self.mode = gr.Number(IMG2IMG, precision=0, visible=False, elem_id="img2img_selected_mode")
        with gr.Tabs(elem_id="mode_img2img") as self.mode_tabs:
            self.mode_tab_list = []
            for index, (label, elem_id) in enumerate(MODES):
                with gr.Tab(label, id=index, elem_id=elem_id) as tab:
                    self.mode_tab_list.append(tab)
                    if index == IMG2IMG:
                        self.init_img = _upload("Image for img2img", "img2img_image", height)
                    elif index == SKETCH:
                        self.sketch = _editor("Image for img2img", "img2img_sketch", gr.Brush(
                            default_color=sketch_colour, colors=_with_first(sketch_colour), color_mode="defaults"),
                            height)
                    elif index == INPAINT:
                        # a see-through brush: the picture stays visible under the mask
                        self.inpaint = _editor("Image for inpainting with mask", "img2maskimg", gr.Brush(
                            colors=[(option("img2img_inpaint_mask_brush_color", "#ffffff"), 0.75)],
                            color_mode="fixed"), height)
                    elif index == INPAINT_SKETCH:
                        self.inpaint_sketch = _editor("Color sketch inpainting", "inpaint_sketch", gr.Brush(
                            default_color=inpaint_sketch_colour, colors=_with_first(inpaint_sketch_colour),
                            color_mode="defaults"), height)
                    elif index == INPAINT_UPLOAD:
                        self.inpaint_base = _upload("Image for img2img", "img_inpaint_base", height)
                        self.inpaint_mask = _upload("Mask", "img_inpaint_mask", height)
                    else:
                        self._build_batch_folders()

    def _build_batch_folders(self) -> None:
        if not self.allow_folders:
            gr.Markdown("Batch processing from server folders is disabled (--hide-ui-dir-config).")
        else:
            gr.Markdown("Process the pictures of a folder on the machine the server runs on: every file of "
                        "the input folder goes through img2img and the results are written to the output "
                        "folder under the input's name. With a mask folder, each picture is inpainted with "
                        "the mask of the same name (or the only mask there is).", elem_id="img2img_batch_hint")
        self.batch_input = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir",
                                      visible=self.allow_folders)
        self.batch_output = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir",
                                       visible=self.allow_folders)
        self.batch_masks = gr.Textbox(label="Inpaint batch mask directory (required for inpaint batch processing only)",
                                      elem_id="img2img_batch_inpaint_mask_dir", visible=self.allow_folders)

    def _build_dimensions(self, width: int, height: int) -> None:
        """A1111's img2img "dimensions" section: the resize tabs, with dimensions_and_batch_together
        (its default) the batch sliders in a column beside them."""
        if not self.batch_together():
            self._build_resize(width, height)
            return
        with gr.Row():
            with gr.Column(scale=4, min_width=200):
                self._build_resize(width, height)
            self.build_batch_beside()

    def _build_resize(self, width: int, height: int) -> None:
        self.resize_by = gr.Checkbox(False, visible=False)  # which of the two size tabs is selected (in the page)
        with gr.Tabs(elem_id="img2img_tabs_resize"):
            with gr.Tab("Resize to", elem_id="img2img_tab_resize_to") as self.resize_to_tab:
                with gr.Row(elem_id="img2img_column_size"):
                    self.build_size(width, height)
                    self.detect_size = gr.Button("📐", elem_id="img2img_detect_image_size_btn", min_width=40,
                                                 scale=0, elem_classes=["tool"])
            with gr.Tab("Resize by", elem_id="img2img_tab_resize_by") as self.resize_by_tab:
                self.scale = gr.Slider(0.05, 4.0, step=0.05, value=1.0, label="Scale", elem_id="img2img_scale")

    def _build_inpaint_controls(self) -> None:
        with gr.Group(elem_id="inpaint_controls") as self.inpaint_controls:  # (shown: style.css)
            self.mask_blur = slider("mask_blur", "Mask blur", 4, "img2img_mask_blur")
            self.mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index", label="Mask mode",
                                      elem_id="img2img_mask_mode")
            self.inpainting_fill = gr.Radio(list(MASKED_CONTENT), value="original", type="index",
                                            label="Masked content", elem_id="img2img_inpainting_fill")
            with gr.Row():
                self.inpaint_area = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], type="index",
                                             label="Inpaint area", elem_id="img2img_inpaint_full_res")
                self.padding = slider("inpaint_full_res_padding", "Only masked padding, pixels", 32,
                                      "img2img_inpaint_full_res_padding")

    # -- request ---------------------------------------------------------------------
    def fields(self) -> dict[str, gr.components.Component]:
        """Img2ImgRequest field -> component, for the fields that are plain values."""
        return {**self.common_fields(), "width": self.width, "height": self.height,
                "denoising_strength": self.denoising, "resize_mode": self.resize_mode}

    def inpaint_fields(self) -> dict[str, gr.components.Component]:
        return {"mask_blur": self.mask_blur, "inpainting_mask_invert": self.mask_mode,
                "inpainting_fill": self.inpainting_fill, "inpaint_full_res": self.inpaint_area,
                "inpaint_full_res_padding": self.padding}

    def paste_fields(self):
        return super().paste_fields() + [
            (self.denoising, "Denoising strength"), (self.mask_blur, "Mask blur"), (self.mask_mode, "Mask mode"),
            (self.inpainting_fill, "Masked content"), (self.inpaint_area, "Inpaint area"),
            (self.padding, "Masked area padding"),
        ]

    def inputs(self) -> set[gr.components.Component]:
        return {*self.fields().values(), *self.inpaint_fields().values(), self.mode, self.resize_by, self.scale,
                self.init_img, self.sketch, self.inpaint, self.inpaint_sketch, self.inpaint_base, self.inpaint_mask,
                self.batch_input, self.batch_output, self.batch_masks}

    def _job_fields(self, values: dict, *, inpaint: bool) -> dict:
        fields = self.styled(values, {**self.field_values(values, self.fields()), **self.refiner.request_fields(values)})
        if inpaint:
            fields.update(self.field_values(values, self.inpaint_fields()))
            if "inpaint_full_res" in fields:  # the radio gives the index of "Whole picture"/"Only masked"
                fields["inpaint_full_res"] = bool(fields["inpaint_full_res"])
        return fields

    def pictures(self, values: dict, mode: int) -> tuple[Image.Image, Image.Image | None]:
        """(init image, mask or None) of the selected sub-tab, or RequestError saying what is missing."""
        if mode == IMG2IMG:
            return self._need(values[self.init_img], "img2img"), None
        if mode == INPAINT_UPLOAD:
            image = self._need(values[self.inpaint_base], "Inpaint upload")
            mask = values[self.inpaint_mask]
            if mask is None:
                raise RequestError("mask", "no mask: upload one in the Inpaint upload tab")
            return image, mask
        editor = {SKETCH: self.sketch, INPAINT: self.inpaint, INPAINT_SKETCH: self.inpaint_sketch}[mode]
        background, layers, composite = _editor_value(values[editor])
        tab = MODES[mode][0]
        if mode == SKETCH:
            return self._need(composite if background is not None else None, tab), None
        background = self._need(background, tab)
        image = background if mode == INPAINT or composite is None else composite
        return image, strokes_mask(layers, background.size)

    @staticmethod
    def _need(image: Image.Image | None, tab: str) -> Image.Image:
        if image is None:
            raise RequestError("init_images", f"no image: upload one in the {tab} tab")
        return image

    def make_request(self, values: dict) -> Img2ImgRequest:
        mode = values[self.mode]
        image, mask = self.pictures(values, mode)
        fields = self._job_fields(values, inpaint=mask is not None)
        if values[self.resize_by]:
            fields["width"], fields["height"] = img2img_batch.scaled_size(image, float(values[self.scale]))
        return Img2ImgRequest(init_images=[image], mask=mask, **fields)

    def submit(self, request: Img2ImgRequest, task_id: str, scripts=None) -> Future:
        if scripts is None:
            return self.engine.submit_img2img(request, task_id=task_id, console_prompt=True, **self.user_kw())
        return self.engine.submit_img2img(request, task_id=task_id, scripts=scripts, console_prompt=True,
                                          **self.user_kw())

    # -- batch -----------------------------------------------------------------------
    def execute(self, values: dict, session: str, progress: gr.Progress) -> Shown:
        if values[self.mode] != BATCH:
            return super().execute(values, session, progress)
        if not self.allow_folders:
            raise RequestError("input_dir", "batch img2img from server folders is disabled (--hide-ui-dir-config)")
        fields = self._job_fields(values, inpaint=bool((values[self.batch_masks] or "").strip()))
        scale = float(values[self.scale]) if values[self.resize_by] else None
        if scale is not None:
            fields.pop("width", None)
            fields.pop("height", None)
        # one entry for the whole batch: Interrupt between two files still stops it
        running = RunningJob("", Future())
        with self._jobs_lock:
            self._jobs[session] = running

        def follow(number: int, total: int, path: Path, task_id: str, future: Future) -> None:
            self.follow(session, task_id, future, progress, describe=f"File {number}/{total}", running=running)

        limit = int(self.engine.options.get("img2img_batch_show_results_limit", 32))  # -1: all of them
        try:
            report = img2img_batch.run_batch(self.engine, fields, values[self.batch_input], values[self.batch_output],
                                             values[self.batch_masks], scale=scale, follow=follow,
                                             should_stop=running.stop.is_set,
                                             keep_results=sys.maxsize if limit < 0 else limit,
                                             scripts=self.scripts.call(values))
        finally:
            with self._jobs_lock:
                if self._jobs.get(session) is running:
                    del self._jobs[session]
        if report.skipped:
            gr.Warning(html.escape(f"{len(report.skipped)} of {report.total} files skipped; see the list under "
                                   "the gallery"), title="Batch")
        return Shown.of_batch(report.results, report.summary(), limit)

    # -- events ----------------------------------------------------------------------
    def _wire_img2img(self) -> None:
        for index, tab in enumerate(self.mode_tab_list):
            tab.select(None, js=f"() => {index}", outputs=self.mode, queue=False)
        # the page's attribute the inpainting controls' visibility follows (whoever sets the mode)
        self.mode.change(None, inputs=self.mode, js=MODE_ATTRIBUTE_JS, queue=False)
        self.resize_to_tab.select(None, js="() => false", outputs=self.resize_by, queue=False)
        self.resize_by_tab.select(None, js="() => true", outputs=self.resize_by, queue=False)
        for image in (self.init_img, self.inpaint_base, self.inpaint_mask):
            # checked on arrival, unprocessed: a file Gradio cannot decode would otherwise only
            # fail inside Gradio when Generate is pressed
            # (queued: a warning toast only reaches the page through the queue's stream)
            image.upload(self.check_upload, inputs=image, outputs=[image, self.info], preprocess=False,
                         concurrency_limit=None, show_progress="hidden")
        self.detect_size.click(self.picture_size, inputs={self.mode, self.init_img, self.sketch, self.inpaint,
                                                          self.inpaint_sketch, self.inpaint_base},
                               outputs=[self.width, self.height], queue=False)

    def check_upload(self, payload):
        """An upload that is not a readable picture (or is over img2img_max_input_pixels) is
        removed again, with the reason in the info box."""
        # unprocessed, the payload is Gradio's file record of the upload, already in its cache
        if not isinstance(payload, dict) or not payload.get("path"):
            return gr.skip(), gr.skip()
        path = payload["path"]
        name = payload.get("orig_name") or Path(path).name
        limit = self.engine.options.get("img2img_max_input_pixels")
        try:
            with Image.open(path) as picture:
                width, height = picture.size
                too_large = bool(limit) and width * height > limit
                if not too_large:
                    picture.load()  # decodes it all: a truncated or corrupt file fails here
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            message = f"{name} is not an image Easel can read ({exc})"
        else:
            if not too_large:
                return gr.skip(), gr.skip()
            message = (f"{name} is {width}x{height} = {width * height} pixels, over the limit of {limit} "
                       "(option img2img_max_input_pixels)")
        gr.Warning(html.escape(message), title="Error")
        return None, error_html(message)

    def picture_size(self, values: dict):
        """📐: the size fields take the current picture's size (rounded down to a multiple of 8)."""
        mode = values[self.mode]
        editors = {SKETCH: self.sketch, INPAINT: self.inpaint, INPAINT_SKETCH: self.inpaint_sketch}
        if mode in editors:
            image = _editor_value(values[editors[mode]])[0]
        else:
            image = values.get({IMG2IMG: self.init_img, INPAINT_UPLOAD: self.inpaint_base}.get(mode))
        if image is None:
            return gr.update(), gr.update()
        return img2img_batch.scaled_size(image, 1.0)
