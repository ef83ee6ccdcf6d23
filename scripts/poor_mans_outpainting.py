"""A1111's "Poor man's outpainting" (img2img only): the canvas grows on the chosen sides and the new
area, plus a blend band into the old picture, is inpainted.

The canvas and mask come from :mod:`modules.core.outpaint` (A1111 works tile by tile on a canvas
rounded to 64 pixels; Easel inpaints the whole canvas, rounded to 8, in one job). Controls in
A1111's order, so ``script_args`` over the API match A1111's: [pixels, mask_blur, inpainting_fill,
direction] (inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing).
"""

from __future__ import annotations

import gradio as gr

import modules.scripts as scripts
from modules.core import outpaint
from modules.core.img2img import MASKED_CONTENT
from modules.core.types import RequestError
from modules.processing import process_images


def _whole(value):
    """Sliders send floats; the outpainting checks want whole numbers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class Script(scripts.Script):
    def title(self):
        return "Poor man's outpainting"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        if not is_img2img:
            return None
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                           elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4, elem_id=self.elem_id("mask_blur"))
        inpainting_fill = gr.Radio(label="Masked content", choices=list(MASKED_CONTENT), value=MASKED_CONTENT[0],
                                   type="index", elem_id=self.elem_id("inpainting_fill"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=list(outpaint.DIRECTIONS),
                                     value=list(outpaint.DIRECTIONS), elem_id=self.elem_id("direction"))
        return [pixels, mask_blur, inpainting_fill, direction]

    def run(self, p, pixels=128, mask_blur=4, inpainting_fill=0, direction=outpaint.DIRECTIONS):
        pixels, mask_blur, fill = _whole(pixels), _whole(mask_blur), _whole(inpainting_fill)
        if fill not in range(len(MASKED_CONTENT)) or isinstance(fill, bool):
            raise RequestError("script_args", f"inpainting_fill (3rd) must be 0..{len(MASKED_CONTENT) - 1}, got {fill!r}")
        if not getattr(p, "init_images", None):
            raise RequestError("init_images", "outpainting needs an init image")
        try:
            canvas = outpaint.extend_canvas(p.init_images[0], pixels, direction or [], mask_blur, fill)
        except RequestError as exc:  # name the script argument the client sent
            raise RequestError("script_args", f"{exc.field}: {exc.message}") from exc

        p.init_images = [canvas.image]
        p.image_mask = canvas.mask
        p.width, p.height = canvas.image.size
        p.resize_mode = 0
        p.mask_blur_x, p.mask_blur_y = canvas.mask_blur_x, canvas.mask_blur_y
        p.inpainting_fill = fill
        p.inpaint_full_res = False
        p.inpainting_mask_invert = 0
        return process_images(p)
