"""The PNG Info tab (A1111's): drop a picture, see its generation parameters and the other text it
carries, and send them — with the picture, for img2img — to txt2img or img2img, whose controls
are filled as the ↙️ button fills them (paste_params.py).

The picture is read from the uploaded file itself (Gradio's cached copy of the upload,
unprocessed), because converting it to a PIL picture for display drops the text chunks.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from modules.core import image_io

from . import paste_params

if TYPE_CHECKING:
    from .img2img import Img2ImgTab
    from .txt2img import Txt2ImgTab

NOTHING = "Nothing found in the image."


def info_html(infotext: str | None, items: dict) -> str:
    """A1111's layout: each entry's name in bold, then its text (parameters first)."""
    entries = {**({"parameters": infotext} if infotext else {}), **items}
    if not entries:
        return f"<div><p>{NOTHING}</p></div>"
    return "\n".join(f"<div><p><b>{html.escape(str(key))}</b></p><p>{html.escape(str(value)).replace(chr(10), '<br>')}</p></div>"
                     for key, value in entries.items())


def read_upload(payload) -> tuple[str, str]:
    """(the infotext, the HTML shown) of an unprocessed upload; a file that is no picture says so."""
    if not isinstance(payload, dict) or not payload.get("path"):
        return "", ""
    name = payload.get("orig_name") or Path(payload["path"]).name
    try:
        infotext, items = image_io.read_info(Path(payload["path"]))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return "", f"<div class='error'>{html.escape(f'{name} is not an image Easel can read ({exc})')}</div>"
    return infotext or "", info_html(infotext, items)


class PngInfoTab:
    def build(self) -> None:
        with gr.Row(equal_height=False):
            with gr.Column(variant="panel"):
                self.image = gr.Image(label="Source", elem_id="pnginfo_image", type="pil", image_mode="RGBA",
                                      sources=["upload", "clipboard"], format="png")
            with gr.Column(variant="panel"):
                self.html = gr.HTML(elem_id="pnginfo_html")
                self.infotext = gr.Textbox(visible=False, elem_id="pnginfo_generation_info")
                with gr.Row():
                    self.send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img", size="sm")
                    self.send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img", size="sm")
        self.image.upload(read_upload, inputs=self.image, outputs=[self.infotext, self.html], preprocess=False,
                          queue=False, show_progress="hidden")
        self.image.clear(lambda: ("", ""), outputs=[self.infotext, self.html], queue=False)

    def wire_send(self, txt2img: Txt2ImgTab, img2img: Img2ImgTab, main_tabs: gr.Tabs, img2img_mode: int) -> None:
        """The sends: the parameters into the tab's controls, the picture into img2img's, then the tab is shown."""
        txt_fields = paste_params.unique(txt2img.all_paste_fields())
        img_fields = paste_params.unique(img2img.all_paste_fields())

        def to_txt2img(infotext: str):
            return gr.Tabs(selected="txt2img"), *paste_params.updates(txt_fields, infotext)

        def to_img2img(infotext: str, image):
            picture = image.copy() if isinstance(image, Image.Image) else gr.update()
            return (gr.Tabs(selected="img2img"), picture, gr.Tabs(selected=img2img_mode), img2img_mode,
                    gr.update(), *paste_params.updates(img_fields, infotext))

        self.send_txt2img.click(to_txt2img, inputs=self.infotext, outputs=[main_tabs, *[c for c, _ in txt_fields]],
                                queue=False)
        self.send_img2img.click(to_img2img, inputs=[self.infotext, self.image],
                                outputs=[main_tabs, img2img.init_img, img2img.mode_tabs, img2img.mode,
                                         img2img.inpaint_controls, *[c for c, _ in img_fields]], queue=False)
