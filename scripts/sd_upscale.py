"""A1111's "SD upscale" (img2img only): the init picture is enlarged by ``scale_factor`` with an
image upscaler, cut into tiles of the job's width x height overlapping by ``overlap`` pixels, each
tile is run through img2img, and the tiles are put back together, the overlaps blended with a
linear ramp so no seam shows (``modules.images.split_grid`` / ``combine_grid``).

Controls in A1111's order, so ``script_args`` over the API match A1111's:
[info (an HTML note; any value), overlap, upscaler (its index in the upscaler list, as the UI's
radio sends it, or its name, case-insensitive), scale_factor]. The upscaler "None" does not enlarge
(A1111: the picture is only re-tiled). Batch count makes that many upscales (seed +1 each); batch
size is how many tiles go through one img2img call. Infotext: ``SD upscale overlap``,
``SD upscale upscaler``.
"""

from __future__ import annotations

import math
import numbers

import gradio as gr
from PIL import Image

import modules.scripts as scripts
from modules import images, processing
from modules.core import upscaling
from modules.core.types import RequestError
from modules.processing import Processed
from modules.shared import opts, state


def upscaler_names() -> list[str]:
    """The radio's choices: the image upscalers (the list of /sdapi/v1/upscalers), in that order."""
    return [u.name for u in upscaling.image_upscalers()]


def resolve_upscaler(value) -> str:
    """An index into :func:`upscaler_names` or a name (any case) -> the registry's name."""
    names = upscaler_names()
    if isinstance(value, bool):
        pass
    elif isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()):
        if 0 <= int(value) < len(names):
            return names[int(value)]
    elif isinstance(value, str):
        by_lower = {name.lower(): name for name in names}
        if value.strip().lower() in by_lower:
            return by_lower[value.strip().lower()]
        upscaling.refresh()  # a model file put in its folder since the last look
        by_lower = {name.lower(): name for name in upscaler_names()}
        if value.strip().lower() in by_lower:
            return by_lower[value.strip().lower()]
    raise RequestError("script_args", f"upscaler (3rd) must be an index 0..{len(names) - 1} or one of "
                                      f"{', '.join(names)}; got {value!r}")


def _number(value, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RequestError("script_args", f"{what} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def tile_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int):
    """``images.split_grid`` after the checks its arithmetic needs."""
    if overlap >= min(tile_w, tile_h):
        raise RequestError("script_args", f"tile overlap (2nd) must be smaller than the tile size "
                                          f"{tile_w}x{tile_h} (width and height), got {overlap}")
    return images.split_grid(image, tile_w=tile_w, tile_h=tile_h, overlap=overlap)


class Script(scripts.Script):
    def title(self):
        return "SD upscale"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        info = gr.HTML("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; "
                       "use width and height sliders to set tile size</p>")
        overlap = gr.Slider(minimum=0, maximum=256, step=16, label="Tile overlap", value=64,
                            elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label="Scale Factor", value=2.0,
                                 elem_id=self.elem_id("scale_factor"))
        names = upscaler_names()
        upscaler_index = gr.Radio(label="Upscaler", choices=names, value=names[0], type="index",
                                  elem_id=self.elem_id("upscaler_index"))
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p, _info=None, overlap=64, upscaler_index=0, scale_factor=2.0):
        overlap = int(_number(overlap, "tile overlap (2nd)", 0, 4096))
        scale_factor = _number(scale_factor, "scale factor (4th)", 0.05, 16)
        upscaler = resolve_upscaler(upscaler_index)
        if not getattr(p, "init_images", None):
            raise RequestError("init_images", "SD upscale needs an init image")
        processing.fix_seed(p)
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = upscaler

        source = images.flatten(p.init_images[0], opts.img2img_background_color)
        if upscaler != "None":
            target = (max(1, int(source.width * scale_factor)), max(1, int(source.height * scale_factor)))
            source = upscaling.upscale_image(source, *target, name=upscaler)
        grid = tile_grid(source, int(p.width), int(p.height), overlap)
        tiles = [tile for _y, _h, row in grid.tiles for tile in row]
        cols, rows = len(grid.tiles[0][2]), len(grid.tiles)

        batch_size, upscale_count, first_seed = int(p.batch_size), int(p.n_iter), int(p.seed)
        batches = math.ceil(len(tiles) / batch_size)
        p.n_iter = 1
        p.do_not_save_grid = True
        p.do_not_save_samples = True
        state.job_count = batches * upscale_count
        print(f"SD upscaling will process a total of {len(tiles)} images tiled as {cols}x{rows} per upscale "
              f"in a total of {state.job_count} batches.")

        results, infotexts, seeds = [], [], []
        for n in range(upscale_count):
            p.seed = first_seed + n
            done = []
            for b in range(batches):
                chunk = [tile[2] for tile in tiles[b * batch_size:(b + 1) * batch_size]]
                p.init_images, p.batch_size = chunk, len(chunk)
                state.job = f"Batch {b + 1 + n * batches} out of {state.job_count}"
                processed = processing.process_images(p)
                if b == 0:
                    infotexts.append(processed.infotexts[processed.index_of_first_image]
                                     if processed.infotexts else processed.info)
                    seeds.append(first_seed + n)
                p.seed = processed.seed + 1
                done += processed.images[processed.index_of_first_image:]
                if state.interrupted:
                    break
            if len(done) < len(tiles) or state.interrupted:  # interrupted: no half-painted picture
                break
            for tile, painted in zip(tiles, done):
                tile[2] = painted
            combined = images.combine_grid(grid)
            combined.info["parameters"] = infotexts[n]
            results.append(combined)
            if opts.samples_save and p.outpath_samples:
                images.save_image(combined, p.outpath_samples, "", first_seed + n, p.prompt, opts.samples_format,
                                  info=infotexts[n], p=p)

        p.batch_size = batch_size
        infotexts, seeds = infotexts[:len(results)], seeds[:len(results)]
        return Processed(p, results, first_seed, infotexts[0] if infotexts else "", all_seeds=seeds or None,
                         infotexts=infotexts or None)
