"""A1111's `modules.img2img`: `process_batch`, img2img over a folder with A1111's `p`.

Folder rules are Easel's img2img Batch's (modules.services.img2img_batch: every file, masks by
stem or the only one, unreadable files reported and skipped). Each picture runs as
`process_images(p)` (or the selected script's `run`), so scripts and extensions see every file's
job; results go to `output_dir` under the input's stem. `img2img(...)`, A1111's UI function with
its positional controls, is Easel's img2img tab and HTTP API instead.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from modules import images, processing, shared
from modules.services import img2img_batch as _batch


def process_batch(p, input_dir, output_dir, inpaint_mask_dir, args, to_scale=False, scale_by=1.0,
                  use_png_info=False, png_info_props=None, png_info_dir=None):
    """Run `p` on every picture of `input_dir` (with its mask from `inpaint_mask_dir`), saving to
    `output_dir`; the last Processed comes back (None when nothing ran)."""
    files = _batch.list_files(Path(input_dir)) if isinstance(input_dir, (str, os.PathLike)) else [Path(f) for f in input_dir]
    masks = _batch.list_files(Path(inpaint_mask_dir)) if inpaint_mask_dir and Path(inpaint_mask_dir).is_dir() else []
    shared.state.job_count = len(files) * p.n_iter
    processed = None
    for number, path in enumerate(files):
        if shared.state.interrupted or getattr(shared.state, "stopping_generation", False):
            break
        shared.state.job = f"{number + 1} out of {len(files)}"
        try:
            image = _batch.read_picture(path)
        except ValueError as exc:
            print(f"Error processing {path}: {exc}")
            continue
        job = copy.copy(p)
        job.init_images = [image] * max(1, int(getattr(p, "batch_size", 1)))
        if to_scale:
            job.width, job.height = _batch.scaled_size(image, scale_by)
        if masks:
            mask_path = _batch.find_mask(masks, path)
            if mask_path is None:
                print(f"Warning: mask is not found for {path} in {inpaint_mask_dir}. Skipping it.")
                continue
            job.image_mask = _batch.read_picture(mask_path)
        processed = None
        if getattr(job, "scripts", None) is not None and args is not None:
            processed = job.scripts.run(job, *args)
        if processed is None:
            processed = processing.process_images(job)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            for n, picture in enumerate(processed.images[processed.index_of_first_image:]):
                stem = path.stem if n == 0 else f"{path.stem}-{n}"
                info = processed.infotexts[processed.index_of_first_image + n] if processed.infotexts else processed.info
                images.save_image_with_geninfo(picture, info, os.path.join(output_dir, stem + ".png"))
    return processed


def img2img(*args, **kwargs):
    raise NotImplementedError("Easel: A1111's img2img() UI function (its positional controls) is the img2img tab "
                              "and POST /sdapi/v1/img2img; build a StableDiffusionProcessingImg2Img and call "
                              "modules.processing.process_images instead")
