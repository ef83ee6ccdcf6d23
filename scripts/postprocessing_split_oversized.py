"""A1111's "Split oversized images" Extras step (order 4000): a picture much longer (or wider) than
the upscale's target shape is scaled to the target's width (height) and cut into overlapping
target-sized parts; the first part replaces the picture, the others are extra results.

Arguments: enable, split_threshold (split when the picture's aspect ratio relative to the target's
is below it), overlap_ratio (how much neighbouring parts share). The target size is the Upscale
step's (`pp.shared.target_width/height`): without the Upscale step on, nothing is split.
"""

from __future__ import annotations

import math

import gradio as gr

from modules import scripts_postprocessing
from modules.core.types import RequestError
from modules.ui_components import InputAccordion


def split_pic(image, inverse_xy, width, height, overlap_ratio):
    """The parts of `image` scaled to `width` across (to `height` along x when `inverse_xy`), each
    width x height, evenly spaced from one end to the other."""
    across, along = (image.height, image.width) if inverse_xy else (image.width, image.height)
    part_across, part_along = (height, width) if inverse_xy else (width, height)
    length = along * part_across // across  # the long side once scaled to the part's width
    scaled = image.resize((length, part_across) if inverse_xy else (part_across, length))
    count = math.ceil((length - part_along * overlap_ratio) / (part_along * (1.0 - overlap_ratio)))
    if count < 2 or length <= part_along:
        yield scaled
        return
    step = (length - part_along) / (count - 1)
    for i in range(count):
        at = int(step * i)
        box = (at, 0, at + part_along, part_across) if inverse_xy else (0, at, part_across, at + part_along)
        yield scaled.crop(box)


class ScriptPostprocessingSplitOversized(scripts_postprocessing.ScriptPostprocessing):
    name = "Split oversized images"
    order = 4000

    def ui(self):
        with InputAccordion(False, label="Split oversized images", elem_id="extras_split_oversized") as enable:
            with gr.Row():
                split_threshold = gr.Slider(0.0, 1.0, step=0.05, value=0.5, label="Threshold",
                                            elem_id="postprocess_split_threshold")
                overlap_ratio = gr.Slider(0.0, 0.9, step=0.05, value=0.2, label="Overlap ratio",
                                          elem_id="postprocess_overlap_ratio")
        return {"enable": enable, "split_threshold": split_threshold, "overlap_ratio": overlap_ratio}

    def check(self, pp, enable=False, split_threshold=0.5, overlap_ratio=0.2):
        if not enable:
            return
        if split_threshold is None or not 0.0 <= split_threshold <= 1.0:
            raise RequestError("split_threshold", f"must be between 0 and 1, got {split_threshold}")
        if overlap_ratio is None or not 0.0 <= overlap_ratio <= 0.9:
            raise RequestError("overlap_ratio", f"must be between 0 and 0.9, got {overlap_ratio}")

    def process(self, pp, enable=False, split_threshold=0.5, overlap_ratio=0.2):
        if not enable:
            return
        width, height = pp.shared.target_width, pp.shared.target_height
        if not width or not height:
            return
        if pp.image.height > pp.image.width:  # tall: compare the widths at the same height
            ratio = (pp.image.width * height) / (pp.image.height * width)
            inverse_xy = False
        else:
            ratio = (pp.image.height * width) / (pp.image.width * height)
            inverse_xy = True
        if ratio >= 1.0 or ratio > split_threshold:
            return
        first, *others = split_pic(pp.image, inverse_xy, width, height, float(overlap_ratio))
        pp.image = first
        pp.extra_images = [pp.create_copy(part) for part in others]
