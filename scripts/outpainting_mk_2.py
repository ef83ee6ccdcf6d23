"""A1111's "Outpainting mk2" (img2img only): the picture grows by ``pixels`` on each chosen side,
one side after the other (left, right, up, down: one img2img job each), the new strip filled first
with noise matched to the picture's spectrum and colours (:mod:`modules.core.matched_noise`, with
the fall-off exponent and colour variation), then inpainted with "Masked content: original".

Controls in A1111's order, so ``script_args`` over the API match A1111's: [info (an HTML note; any
value), pixels, mask_blur, direction, noise_q (fall-off exponent), color_variation].

Unlike A1111, which rounds the whole canvas up to a multiple of 64 (growing more than asked) and
repaints a window of the job's size at the new edge, Easel rounds each grown side to a multiple
of 8 (as its Poor man's outpainting, :mod:`modules.core.outpaint`) and inpaints the whole canvas of
each pass; the mask reaches ``2 * mask_blur`` pixels into the old picture and is blurred by
``4 * mask_blur`` along the grown axis. Outside that band the old picture is kept as it was.
"""

from __future__ import annotations

import numbers

import gradio as gr
import numpy as np
from PIL import Image

import modules.scripts as scripts
from modules import images, processing
from modules.core import matched_noise, outpaint
from modules.core.types import RequestError
from modules.processing import Processed, process_images
from modules.shared import opts, state


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _fraction(value, what: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= high:
        raise RequestError("script_args", f"{what} must be a number from 0 to {high:g}, got {value!r}")
    return float(value)


def grow(image: Image.Image, side: str, pixels: int, mask_blur: int, falloff: float, color_variation: float):
    """One pass's canvas (the new strip filled with matched noise) and mask."""
    try:
        canvas = outpaint.extend_canvas(image, pixels, [side], mask_blur, inpainting_fill=1)
    except RequestError as exc:  # name the script argument the client sent
        raise RequestError("script_args", f"{exc.field}: {exc.message}") from exc
    new_area = np.ones((canvas.image.height, canvas.image.width))
    x, y = canvas.offset
    new_area[y:y + image.height, x:x + image.width] = 0.0
    pixels_01 = np.asarray(canvas.image, dtype=np.float64) / 255.0
    filled = matched_noise.matched_noise(pixels_01, new_area, falloff, color_variation)
    canvas.image = Image.fromarray(np.round(filled * 255).astype(np.uint8), "RGB")
    return canvas


class Script(scripts.Script):
    def title(self):
        return "Outpainting mk2"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        if not is_img2img:
            return None
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Recommended settings: Sampling Steps: 80-100, "
                       "Sampler: Euler a, Denoising strength: 0.8</p>")
        pixels = gr.Slider(label="Pixels to expand", minimum=8, maximum=256, step=8, value=128,
                           elem_id=self.elem_id("pixels"))
        mask_blur = gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=8, elem_id=self.elem_id("mask_blur"))
        direction = gr.CheckboxGroup(label="Outpainting direction", choices=list(outpaint.DIRECTIONS),
                                     value=list(outpaint.DIRECTIONS), elem_id=self.elem_id("direction"))
        noise_q = gr.Slider(label="Fall-off exponent (lower=higher detail)", minimum=0.0, maximum=4.0, step=0.01,
                            value=1.0, elem_id=self.elem_id("noise_q"))
        color_variation = gr.Slider(label="Color variation", minimum=0.0, maximum=1.0, step=0.01, value=0.05,
                                    elem_id=self.elem_id("color_variation"))
        return [info, pixels, mask_blur, direction, noise_q, color_variation]

    def run(self, p, _info=None, pixels=128, mask_blur=8, direction=outpaint.DIRECTIONS, noise_q=1.0,
            color_variation=0.05):
        pixels, mask_blur = _whole(pixels), _whole(mask_blur)
        direction = [direction] if isinstance(direction, str) else list(direction or [])
        unknown = [d for d in direction if d not in outpaint.DIRECTIONS]
        if unknown or not direction:
            raise RequestError("script_args", f"direction (4th) must be one or more of "
                                              f"{', '.join(outpaint.DIRECTIONS)}; got {direction!r}")
        noise_q = _fraction(noise_q, "fall-off exponent (5th)", 4.0)
        color_variation = _fraction(color_variation, "color variation (6th)", 1.0)
        if not getattr(p, "init_images", None):
            raise RequestError("init_images", "outpainting needs an init image")
        sides = [side for side in outpaint.DIRECTIONS if side in direction]
        init = images.flatten(p.init_images[0], opts.img2img_background_color)
        grow(init, sides[0], pixels, mask_blur, noise_q, color_variation)  # bad pixels / mask blur: fail first

        processing.fix_seed(p)
        batch_count, batch_size, base_seed = int(p.n_iter), int(p.batch_size), int(p.seed)
        p.n_iter = 1
        p.inpaint_full_res = False
        p.inpainting_fill = 1  # "original": the matched noise
        p.inpainting_mask_invert = 0
        p.resize_mode = 0
        p.do_not_save_samples = True
        p.do_not_save_grid = True
        state.job_count = batch_count * len(sides)

        pictures, infotexts, seeds = [], [], []
        first_seed, first_info = None, ""
        for n in range(batch_count):
            state.job = f"Batch {n + 1} out of {batch_count}"
            current = [init] * batch_size
            p.seed = base_seed + n * batch_size  # every pass of a batch: the same seeds (as A1111)
            for side in sides:
                canvases = [grow(im, side, pixels, mask_blur, noise_q, color_variation) for im in current]
                p.init_images = [c.image for c in canvases]
                p.image_mask = canvases[0].mask
                p.width, p.height = canvases[0].image.size
                p.mask_blur_x, p.mask_blur_y = canvases[0].mask_blur_x, canvases[0].mask_blur_y
                processed = process_images(p)
                first = processed.index_of_first_image
                if state.interrupted or len(processed.images) - first < batch_size:
                    break
                if first_seed is None:
                    first_seed, first_info = processed.seed, processed.info
                current = processed.images[first:first + batch_size]
                texts = processed.infotexts[first:first + batch_size] or [processed.info] * batch_size
                pass_seeds = processed.all_seeds[:batch_size]
            else:
                pictures += current
                infotexts += texts
                seeds += pass_seeds
                continue
            break

        for picture, text in zip(pictures, infotexts):
            picture.info["parameters"] = text
        grids = []
        if len(pictures) > 1:
            grid = images.image_grid(pictures)
            grid.info["parameters"] = infotexts[0]
            if opts.return_grid:
                grids.append(grid)
            if opts.grid_save and p.outpath_grids:
                images.save_image(grid, p.outpath_grids, "grid", first_seed, p.prompt, opts.grid_format,
                                  info=infotexts[0], short_filename=not opts.grid_extended_filename, grid=True, p=p)
        if opts.samples_save and p.outpath_samples:
            for picture, text, seed in zip(pictures, infotexts, seeds):
                images.save_image(picture, p.outpath_samples, "", seed, p.prompt, opts.samples_format, info=text, p=p)
        texts = [infotexts[0]] * len(grids) + infotexts
        return Processed(p, grids + pictures, first_seed if first_seed is not None else p.seed, first_info,
                         all_seeds=([seeds[0]] * len(grids) + seeds) or None, infotexts=texts or None,
                         index_of_first_image=len(grids))
