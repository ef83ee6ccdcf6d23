"""A1111's buttons under a generation tab's gallery, with its element ids:

- 📂 `<tab>_open_folder`: the folder A1111's open_dir_button_choice names: "Subdirectory" (the
  default) the one the selected picture (the first without a selection) was saved in, "Output
  Root" the tab's output folder, which is also the answer for a picture that was not saved (A1111's
  "Subdirectory (even temp dir)" would open Gradio's temporary folder for those; Easel shows unsaved
  pictures from memory, so there is none). On a page opened on the server's own machine with a
  desktop, the folder opens in its file manager (as A1111); otherwise (a page on another computer, a
  server without a desktop) the page says where the folder is on the server. Hidden under
  --hide-ui-dir-config, as in A1111.
- 💾 `save_<tab>` / 🗃️ `save_zip_<tab>`: A1111's "Save": the pictures (or only the selected one,
  `save_selected_only`) are written with their infotext to `outdir_save` (log/images), a row each
  in its log.csv, offered as downloads (`download_files_<tab>`); 🗃️ adds images.zip of them.
  `html_log_<tab>` says what was saved.
- 🖼️ `<tab>_send_to_img2img`, 🎨️ `<tab>_send_to_inpaint`, 📐 `<tab>_send_to_extras`: the selected
  picture (the first without a selection) to img2img, its Inpaint tab or Extras (wired by the page,
  modules/ui/app.py, which knows the other tabs).
"""

from __future__ import annotations

import html
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import gradio as gr

HINTS = {
    **{f"{tab}_{name}": text for tab in ("txt2img", "img2img") for name, text in {
        "open_folder": "Open images output directory",
        "send_to_img2img": "Send image and generation parameters to img2img tab",
        "send_to_inpaint": "Send image and generation parameters to img2img inpaint tab",
        "send_to_extras": "Send image and generation parameters to extras tab",
    }.items()},
    **{f"{prefix}_{tab}": text for tab in ("txt2img", "img2img") for prefix, text in {
        "save": "Save the image to a dedicated directory (outdir_save, log/images by default)",
        "save_zip": "Save zip archive with images to a dedicated directory (outdir_save)",
    }.items()},
}

_LOCAL_CLIENTS = {"127.0.0.1", "::1", "localhost"}


class GalleryButtons:
    def __init__(self, tabname: str, output_folder, allow_folders: bool = True, options=None):
        """`output_folder()`: the tab's output folder now (the options may change)."""
        self.tabname = tabname
        self.output_folder = output_folder
        self.allow_folders = allow_folders
        self.options = options

    def build(self) -> None:
        tab = self.tabname
        tool = {"min_width": 40, "scale": 0, "elem_classes": ["tool"]}
        with gr.Row(elem_id=f"image_buttons_{tab}", elem_classes=["image-buttons"]):
            self.open_folder = gr.Button("📂", elem_id=f"{tab}_open_folder", visible=self.allow_folders, **tool)
            self.save = gr.Button("💾", elem_id=f"save_{tab}", **tool)
            self.save_zip = gr.Button("🗃️", elem_id=f"save_zip_{tab}", **tool)
            self.send_to_img2img = gr.Button("🖼️", elem_id=f"{tab}_send_to_img2img", **tool)
            self.send_to_inpaint = gr.Button("🎨️", elem_id=f"{tab}_send_to_inpaint", **tool)
            self.send_to_extras = gr.Button("📐", elem_id=f"{tab}_send_to_extras", **tool)
        self.download = gr.File(None, file_count="multiple", interactive=False, show_label=False, visible=False,
                                elem_id=f"download_files_{tab}")
        self.log = gr.HTML(elem_id=f"html_log_{tab}", elem_classes=["html-log"])

    def wire(self, gallery: gr.Gallery, result: gr.State, selected: gr.State) -> None:
        self.open_folder.click(self.open, inputs=[result, selected])  # (through the queue: its message is a toast)
        for button, make_zip in ((self.save, False), (self.save_zip, True)):
            button.click(lambda g, r, s, z=make_zip: save(g, r, s, z), inputs=[gallery, result, selected],
                         outputs=[self.download, self.log], queue=False)

    def folder_for(self, result: dict | None, selected: int | None) -> Path:
        """What 📂 opens: the selected picture's folder ("Subdirectory"s), else the output root."""
        root = Path(self.output_folder())
        choice = self.options.get("open_dir_button_choice") if self.options is not None else "Subdirectory"
        paths = list((result or {}).get("paths") or [])
        if not str(choice or "").startswith("Subdirectory") or not paths:
            return root
        first = int((result or {}).get("index_of_first_image") or 0)
        index = selected if selected is not None and 0 <= selected < len(paths) else min(first, len(paths) - 1)
        return Path(paths[index]).parent if paths[index] else root

    def open(self, result: dict, selected: int, request: gr.Request) -> None:
        if not self.allow_folders:
            return
        folder = self.folder_for(result, selected)
        if not folder.is_dir():
            gr.Info(html.escape(f"Folder {folder} does not exist yet; it is made with the first saved image."),
                    title="Output folder")
            return
        client = getattr(getattr(request, "client", None), "host", None)
        if client in _LOCAL_CLIENTS and _open_in_file_manager(folder):
            gr.Info(html.escape(f"Opened {folder}"), title="Output folder")
            return
        gr.Info(html.escape(f"On the server: {folder}"), title="Output folder")


def _open_in_file_manager(folder: Path) -> bool:
    """Open the folder on this machine's desktop; False where there is none to open it on."""
    system = platform.system()
    try:
        if system == "Windows":
            os.startfile(folder)  # type: ignore[attr-defined]  # noqa: S606 - a folder, not a command
            return True
        command = "open" if system == "Darwin" else "xdg-open"
        if shutil.which(command) is None or (system != "Darwin" and not (os.environ.get("DISPLAY")
                                                                          or os.environ.get("WAYLAND_DISPLAY"))):
            return False
        subprocess.Popen([command, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        return True
    except OSError:
        return False


def save(gallery, result: dict, selected: int, make_zip: bool):
    """💾 / 🗃️: A1111's `ui_common.save_files` over what the gallery shows."""
    from modules import ui_common

    if not gallery:
        return gr.update(visible=False), "<div class='error'>Nothing to save: generate pictures first.</div>"
    data = {"infotexts": list((result or {}).get("infotexts") or []),
            "index_of_first_image": int((result or {}).get("index_of_first_image") or 0)}
    index = selected if isinstance(selected, int) else -1
    return ui_common.save_files(json.dumps(data), gallery, make_zip, index)
