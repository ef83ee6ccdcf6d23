"""A1111's `modules.extras`: PNG info of a picture (`run_pnginfo`) and the merger's helpers.

`run_pnginfo` reads as Easel's PNG Info tab does; merging is Easel's Checkpoint Merger tab and
its service (modules.services.merger), not A1111's positional `run_modelmerger`."""

from __future__ import annotations

import torch

from modules import images, sd_models


def run_pnginfo(image):
    """('', the infotext, the HTML the PNG Info tab shows) of a picture (A1111)."""
    if image is None:
        return "", "", ""
    from modules.ui.pnginfo_tab import info_html

    geninfo, items = images.read_info_from_image(image)
    return "", geninfo, info_html(geninfo, items)


def to_half(tensor, enable):
    if enable and tensor.dtype == torch.float:
        return tensor.half()
    return tensor


def read_metadata(model_names):
    """The merge metadata of a checkpoint by its title, as JSON text (A1111's ⬇️ button)."""
    import json

    info = sd_models.get_closet_checkpoint_match(model_names)
    if info is None or not str(info.filename).endswith(".safetensors"):
        return ""
    return json.dumps(sd_models.read_metadata_from_safetensors(info.filename), indent=4, ensure_ascii=False)


def run_modelmerger(*args, **kwargs):
    raise NotImplementedError("Easel merges checkpoints in its Checkpoint Merger tab (modules.services.merger); "
                              "A1111's positional run_modelmerger is not provided")
