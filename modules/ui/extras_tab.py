"""The Extras tab (A1111's): postprocess one picture, several uploaded ones, or every picture of a
server folder (Batch from Directory; off under --hide-ui-dir-config) with A1111's postprocessing
scripts (modules.scripts.scripts_postproc: Easel's Upscale, GFPGAN, CodeFormer, Split oversized
images, Create flipped copies in scripts/, and extensions' steps), their controls built from each
script's ui() in the order of the postprocessing_operation_order setting. The job goes through the
worker queue (modules.services.extras, as the API's extras do); the results (copies included) are
shown and saved to the extras output folder (outdir_extras_samples, or the batch's output folder)
with the input's parameters and the postprocessing text. A folder's unreadable files are listed and
skipped. Element ids are A1111's."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
from PIL import Image

from modules import postprocessing
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
        with gr.Row(equal_height=False):
            with gr.Column(variant="panel"):
                self.mode = gr.Number(SINGLE, precision=0, visible=False)  # the selected tab, kept in the page
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
                runner = postprocessing.runner()
                self.script_inputs = runner.setup_ui()
                # the arguments' names, script by script, as laid out (the click hands the values in this order)
                self.script_layout = [(script.name, list(script.controls or {}))
                                      for script in runner.scripts_in_preferred_order()]
                self.generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Column(variant="panel"):
                self.gallery = gr.Gallery(label="Result", elem_id="extras_gallery", columns=4, format="png",
                                          show_label=False, object_fit="contain",
                                          height=self.engine.options.get("gallery_height") or "auto")
                self.info = gr.HTML(elem_id="html_info_extras")
        # (in the page, in click order: the page may click through the tabs at load)
        single.select(None, js=f"() => {SINGLE}", outputs=self.mode, queue=False)
        batch.select(None, js=f"() => {BATCH}", outputs=self.mode, queue=False)
        directory.select(None, js=f"() => {FOLDER}", outputs=self.mode, queue=False)
        self.image.change(lambda: postprocessing.runner().image_changed(), queue=False, show_progress="hidden")
        inputs = [self.mode, self.image, self.files, self.input_dir, self.output_dir, self.show_results,
                  *self.script_inputs]
        # unprocessed: the uploads are read from their files, which keeps their parameters text
        self.generate.click(self.run_scripts, inputs=inputs, outputs=[self.gallery, self.info], concurrency_limit=None,
                            show_progress_on=[self.gallery], preprocess=False)

    def run_scripts(self, mode, image, files, input_dir="", output_dir="", show_results=True, *script_values):
        """The Generate button: the scripts' control values, in the layout's order."""
        values = [_preprocessed(control, value) for control, value in zip(self.script_inputs, script_values)]
        given = {}
        for name, arg_names in self.script_layout:
            given[name] = dict(zip(arg_names, values))
            values = values[len(arg_names):]
        return self._execute(mode, image, files, input_dir, output_dir, show_results, given)

    def run(self, mode, image, files, scale_to, upscale_by, width, height, crop, upscaler_1, upscaler_2, visibility,
            input_dir="", output_dir="", show_results=True, gfpgan=0.0, codeformer=0.0, codeformer_weight=0.0):
        """A1111's fields (run_extras'): the Upscale, GFPGAN and CodeFormer scripts' arguments."""
        given = postprocessing.extras_args(
            1 if scale_to else 0, float(upscale_by), int(width), int(height), bool(crop), upscaler_1, upscaler_2,
            float(visibility), float(gfpgan or 0), float(codeformer or 0), float(codeformer_weight or 0))
        return self._execute(mode, image, files, input_dir, output_dir, show_results, given)

    def _execute(self, mode, image, files, input_dir, output_dir, show_results, given: dict):
        """Postprocess, save, show; a problem is the message in the info box."""
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
            postprocessor = postprocessing.postprocessor_for(given)
            results = extras.submit(self.engine, pictures, postprocessor).result()
            paths = extras.save(self.engine, results, target, batch=mode != SINGLE)
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


def _preprocessed(control, value):
    """A script control's value as Gradio would hand it to a preprocessed event (the click is not
    preprocessed, for the uploads' sake): its data model, then its own preprocess (a dropdown of
    type "index": the index; an image: the picture)."""
    if value is None:
        return None
    try:
        model = getattr(control, "data_model", None)
        if model is not None:
            value = model.model_validate(value)
        return control.preprocess(value)
    except Exception as exc:  # noqa: BLE001 - the plain value then; the script may still cope
        print(f"[easel] Extras: the value of {getattr(control, 'elem_id', None) or type(control).__name__} "
              f"could not be preprocessed ({exc}); passing it as sent")
        return value
