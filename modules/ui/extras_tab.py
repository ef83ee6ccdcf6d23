"""The Extras tab (A1111's): upscale one picture, several uploaded ones, or every picture of a
server folder (Batch from Directory; off under --hide-ui-dir-config) with the image upscalers
(modules.core.postprocess), optionally blending a second upscaler in. The job goes through the
worker queue (modules.services.extras, as the API's extras do); the results are shown and saved to
the extras output folder (outdir_extras_samples, or the batch's output folder) with the input's
parameters and the postprocessing text. A folder's unreadable files are listed and skipped.
Element ids are A1111's."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.core import postprocess
from modules.core.types import RequestError
from modules.services import extras, img2img_batch
from modules.services.engine import Engine

from .generation_tab import error_html

SINGLE, BATCH, FOLDER = 0, 1, 2


def _path(upload) -> str | None:
    """The file of an unprocessed upload (Gradio's file record, or a path)."""
    if isinstance(upload, dict):
        return upload.get("path")
    return getattr(upload, "name", upload) if upload else None


def _open(upload) -> tuple[str, Image.Image]:
    """(file name, picture) of an upload, read from the file so its text (parameters) is kept."""
    path = Path(_path(upload))
    name = (upload.get("orig_name") if isinstance(upload, dict) else None) or path.name
    try:
        return name, img2img_batch.read_picture(path)
    except ValueError as exc:
        raise ValueError(f"{name} is not an image Easel can read ({exc})") from None


def _folder_pictures(input_dir: str) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """(name, picture) of every readable file of the folder, and "name: why" for the others."""
    folder = img2img_batch.folder_field(input_dir, "input_dir", must_exist=True)
    if folder is None:
        raise RequestError("input_dir", "no input folder given")
    pictures, skipped = [], []
    for path in img2img_batch.list_files(folder):
        try:
            pictures.append((path.name, img2img_batch.read_picture(path)))
        except ValueError as exc:
            skipped.append(f"{path.name}: {exc}")
    return pictures, skipped


class ExtrasTab:
    def __init__(self, engine: Engine, allow_folders: bool = True):
        self.engine = engine
        self.allow_folders = allow_folders  # False under --hide-ui-dir-config

    single_tab_id, single_mode = "single_image", SINGLE  # what the send-to buttons select

    def build(self) -> None:
        names = postprocess.image_upscaler_names()
        with gr.Row(equal_height=False):
            with gr.Column(variant="panel"):
                self.mode = gr.State(SINGLE)
                with gr.Tabs(elem_id="mode_extras") as self.mode_tabs:
                    with gr.Tab("Single Image", id="single_image", elem_id="extras_single_tab") as single:
                        self.image = gr.Image(label="Source", elem_id="extras_image", type="pil", image_mode="RGBA",
                                              sources=["upload", "clipboard"], format="png")
                    with gr.Tab("Batch Process", id="batch_process", elem_id="extras_batch_process_tab") as batch:
                        self.files = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                             elem_id="extras_image_batch")
                    with gr.Tab("Batch from Directory", id="batch_from_directory", elem_id="extras_batch_directory_tab",
                                visible=self.allow_folders) as directory:
                        self.input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir",
                                                    placeholder="A directory on the same machine where the server is running.")
                        self.output_dir = gr.Textbox(label="Output directory", elem_id="extras_batch_output_dir",
                                                     placeholder="Leave blank to save images to the default path.")
                        self.show_results = gr.Checkbox(label="Show result images", value=True,
                                                        elem_id="extras_show_extras_results")
                self.scale_to = gr.State(False)
                with gr.Tabs(elem_id="extras_resize_mode"):
                    with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as scale_by_tab:
                        self.upscale_by = gr.Slider(1.0, 8.0, step=0.05, value=2.0, label="Resize",
                                                    elem_id="extras_upscaling_resize")
                    with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as scale_to_tab:
                        with gr.Row():
                            self.width = gr.Slider(64, 8192, step=8, value=512, label="Width",
                                                   elem_id="extras_upscaling_resize_w")
                            self.height = gr.Slider(64, 8192, step=8, value=512, label="Height",
                                                    elem_id="extras_upscaling_resize_h")
                            self.crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras_upscaling_crop")
                with gr.Row():
                    self.upscaler_1 = gr.Dropdown(names, value=names[0], label="Upscaler 1", elem_id="extras_upscaler_1")
                    self.upscaler_2 = gr.Dropdown(names, value=names[0], label="Upscaler 2", elem_id="extras_upscaler_2")
                    self.visibility = gr.Slider(0.0, 1.0, step=0.001, value=0.0, label="Upscaler 2 visibility",
                                                elem_id="extras_upscaler_2_visibility")
                # A1111's GFPGAN and CodeFormer postprocessing (0 visibility: off); after the upscale
                with gr.Row(elem_id="extras_face_restoration"):
                    self.gfpgan = gr.Slider(0.0, 1.0, step=0.001, value=0.0, label="GFPGAN visibility",
                                            elem_id="extras_gfpgan_visibility")
                    self.codeformer = gr.Slider(0.0, 1.0, step=0.001, value=0.0, label="CodeFormer visibility",
                                                elem_id="extras_codeformer_visibility")
                    self.codeformer_weight = gr.Slider(0.0, 1.0, step=0.001, value=0.0,
                                                       label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                                       elem_id="extras_codeformer_weight")
                self.generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Column(variant="panel"):
                self.gallery = gr.Gallery(label="Result", elem_id="extras_gallery", columns=4, format="png",
                                          show_label=False, object_fit="contain", height="auto")
                self.info = gr.HTML(elem_id="html_info_extras")
        single.select(lambda: SINGLE, outputs=self.mode, queue=False)
        batch.select(lambda: BATCH, outputs=self.mode, queue=False)
        directory.select(lambda: FOLDER, outputs=self.mode, queue=False)
        scale_by_tab.select(lambda: False, outputs=self.scale_to, queue=False)
        scale_to_tab.select(lambda: True, outputs=self.scale_to, queue=False)
        inputs = [self.mode, self.image, self.files, self.scale_to, self.upscale_by, self.width, self.height,
                  self.crop, self.upscaler_1, self.upscaler_2, self.visibility, self.input_dir, self.output_dir,
                  self.show_results, self.gfpgan, self.codeformer, self.codeformer_weight]
        # unprocessed: the uploads are read from their files, which keeps their parameters text
        self.generate.click(self.run, inputs=inputs, outputs=[self.gallery, self.info], concurrency_limit=None,
                            show_progress_on=[self.gallery], preprocess=False)

    def run(self, mode, image, files, scale_to, upscale_by, width, height, crop, upscaler_1, upscaler_2, visibility,
            input_dir="", output_dir="", show_results=True, gfpgan=0.0, codeformer=0.0, codeformer_weight=0.0):
        """Upscale, save, show; a problem is the message in the info box."""
        skipped, target = [], None
        try:
            if mode == FOLDER:
                if not self.allow_folders:
                    raise RequestError("input_dir", "batch from server folders is disabled (--hide-ui-dir-config)")
                pictures, skipped = _folder_pictures(input_dir)
                target = img2img_batch.folder_field(output_dir, "output_dir", must_exist=False)
            else:
                uploads = (files or []) if mode == BATCH else ([image] if _path(image) else [])
                pictures = [_open(upload) for upload in uploads]
            if not pictures:
                raise ValueError({SINGLE: "Upload a picture first", BATCH: "Upload pictures first"}.get(
                    mode, "No readable pictures in the input folder"))
            settings = postprocess.UpscaleSettings(
                mode=1 if scale_to else 0, upscale_by=float(upscale_by), width=int(width), height=int(height),
                crop=bool(crop), upscaler_1=upscaler_1, upscaler_2=upscaler_2,
                upscaler_2_visibility=float(visibility), gfpgan_visibility=float(gfpgan or 0),
                codeformer_visibility=float(codeformer or 0), codeformer_weight=float(codeformer_weight or 0))
            results = extras.submit(self.engine, pictures, settings).result()
            paths = extras.save(self.engine, results, target)
        except (ValueError, OSError) as exc:  # RequestError included; OSError: an output folder not writable
            message = str(exc) if isinstance(exc, ValueError) else f"could not save the results: {exc}"
            gr.Warning(html.escape(message), title="Error")
            return [], error_html(message)
        lines = [f"Saved {len(paths)} image{'s' if len(paths) != 1 else ''} to {paths[0].parent}"] if paths else []
        lines += [f"Skipped {s}" for s in skipped]
        last = results[-1].infotext if results else ""
        shown = [r.image for r in results] if show_results or mode != FOLDER else []
        return shown, postprocess.plaintext_to_html(last) + "".join(
            f"<p class='performance'>{html.escape(line)}</p>" for line in lines)
