"""A1111's `modules.postprocessing`: the Extras job over the postprocessing scripts.

`ScriptsPostprocessor` is what modules.services.extras runs per picture: A1111's
`PostprocessedImage` of the picture (as RGB) through `modules.scripts.scripts_postproc` with one
argument list, the picture and every copy the scripts made as results (suffixes from their
nametags). The Extras tab and the API build it; `run_postprocessing` / `run_extras` are A1111's
entry points with its signatures, for extensions that call them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from modules import scripts, scripts_postprocessing, shared
from modules.core import postprocess
from modules.core.types import RequestError
from modules.services import extras


def runner() -> scripts_postprocessing.ScriptPostprocessingRunner:
    return scripts.scripts_postproc


class ScriptsPostprocessor:
    """modules.services.extras.Postprocessor over the postprocessing scripts and their arguments."""

    def __init__(self, args: list, script_runner: scripts_postprocessing.ScriptPostprocessingRunner | None = None):
        self.runner = script_runner or runner()
        self.args = list(args)

    def check(self, images: list[tuple[str, Image.Image]]) -> None:
        for _, image in images:
            self.runner.check(scripts_postprocessing.PostprocessedImage(image), self.args)

    def process(self, image: Image.Image) -> list[extras.Output]:
        pp = scripts_postprocessing.PostprocessedImage(image.convert("RGB"))
        self.runner.run(pp, self.args)
        used: dict = {}
        return [extras.Output(p.image, dict(p.info), p.get_suffix(used), p.caption)
                for p in [pp, *pp.extra_images]]


def extras_args(resize_mode=0, upscaling_resize=2.0, upscaling_resize_w=512, upscaling_resize_h=512,
                upscaling_crop=True, extras_upscaler_1="None", extras_upscaler_2="None",
                extras_upscaler_2_visibility=0.0, gfpgan_visibility=0.0, codeformer_visibility=0.0,
                codeformer_weight=0.0, max_side_length=0) -> dict[str, dict[str, Any]]:
    """A1111's Extras fields (the API's, the old positional run_extras') as the scripts' arguments
    by script name (A1111's run_extras mapping)."""
    return {
        "Upscale": {
            "upscale_enabled": True, "upscale_mode": resize_mode, "upscale_by": upscaling_resize,
            "max_side_length": max_side_length, "upscale_to_width": upscaling_resize_w,
            "upscale_to_height": upscaling_resize_h, "upscale_crop": upscaling_crop,
            "upscaler_1_name": extras_upscaler_1, "upscaler_2_name": extras_upscaler_2,
            "upscaler_2_visibility": extras_upscaler_2_visibility,
        },
        "GFPGAN": {"enable": True, "gfpgan_visibility": gfpgan_visibility},
        "CodeFormer": {"enable": True, "codeformer_visibility": codeformer_visibility,
                       "codeformer_weight": codeformer_weight},
    }


def merge_script_args(base: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]] | None,
                      field: str = "postprocessing_scripts") -> dict[str, dict[str, Any]]:
    """`more` ({script name: {argument: value}}) over `base`; an unknown script or argument is a
    RequestError naming `field`."""
    merged = {name: dict(values) for name, values in base.items()}
    if not more:
        return merged
    r = runner()
    r.ensure_layout()
    known = {s.name: s for s in r.scripts_in_preferred_order()}
    for name, values in more.items():
        script = known.get(name)
        if script is None:
            raise RequestError(field, f"no postprocessing script named {name!r}; there are: "
                                      + ", ".join(repr(n) for n in known))
        if not isinstance(values, dict):
            raise RequestError(f"{field}.{name}", "must be an object of argument name -> value")
        unknown = [k for k in values if k not in (script.controls or {})]
        if unknown:
            raise RequestError(f"{field}.{name}", f"unknown argument {', '.join(map(repr, unknown))}; "
                                                  f"{name!r} takes {', '.join(map(repr, script.controls or {}))}")
        merged.setdefault(name, {}).update(values)
    return merged


def postprocessor_for(scripts_args: dict[str, dict[str, Any]]) -> ScriptsPostprocessor:
    r = runner()
    return ScriptsPostprocessor(r.create_args_for_run(scripts_args), r)


def _engine():
    if shared.engine is None:
        raise RuntimeError("the server is not started (modules.shared.bind has not run)")
    return shared.engine


def _pictures(extras_mode, image, image_folder, input_dir) -> list[tuple[str, Image.Image]]:
    if extras_mode == 1:
        found = []
        for item in image_folder or []:
            if isinstance(item, Image.Image):
                found.append(("", item))
            else:
                path = item.get("path") if isinstance(item, dict) else getattr(item, "name", item)
                name = (item.get("orig_name") if isinstance(item, dict) else getattr(item, "orig_name", None))
                picture = Image.open(os.path.abspath(path))
                picture.load()
                found.append((os.path.splitext(name or os.path.basename(path))[0], picture))
        return found
    if extras_mode == 2:
        if getattr(shared.cmd_opts, "hide_ui_dir_config", False):
            raise RequestError("input_dir", "batch from server folders is disabled (--hide-ui-dir-config)")
        if not input_dir:
            raise RequestError("input_dir", "input directory not selected")
        found = []
        for path in sorted(Path(input_dir).iterdir()):
            try:
                with Image.open(path) as picture:
                    picture.load()
                    found.append((str(path), picture.copy() if picture.mode != "P" else picture.convert("RGBA")))
            except Exception:  # noqa: BLE001 - not a picture: skipped (A1111)
                continue
        return found
    if image is None:
        raise RequestError("image", "image not selected")
    return [("", image)]


def run_postprocessing(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args,
                       save_output: bool = True):
    """A1111's: postprocess one picture (mode 0), uploaded ones (1) or a folder's (2) with the
    scripts' positional `args`; saved to output_dir (mode 2) or the extras folder. Returns
    (pictures, info HTML, '')."""
    engine = _engine()
    pictures = _pictures(extras_mode, image, image_folder, input_dir)
    results = extras.submit(engine, pictures, ScriptsPostprocessor(list(args))).result()
    if save_output:
        folder = Path(output_dir) if extras_mode == 2 and output_dir else None
        extras.save(engine, results, folder, batch=extras_mode != 0)
    shown = [r.image for r in results] if extras_mode != 2 or show_extras_results else []
    return shown, postprocess.plaintext_to_html(results[-1].infotext if results else ""), ""


def run_postprocessing_webui(id_task, *args, **kwargs):
    return run_postprocessing(*args, **kwargs)


def run_extras(extras_mode, resize_mode, image, image_folder, input_dir, output_dir, show_extras_results,
               gfpgan_visibility, codeformer_visibility, codeformer_weight, upscaling_resize, upscaling_resize_w,
               upscaling_resize_h, upscaling_crop, extras_upscaler_1, extras_upscaler_2,
               extras_upscaler_2_visibility, upscale_first: bool, save_output: bool = True, max_side_length: int = 0):
    """A1111's old positional entry (its API's): the fields mapped to the scripts' arguments."""
    args = runner().create_args_for_run(extras_args(
        resize_mode, upscaling_resize, upscaling_resize_w, upscaling_resize_h, upscaling_crop, extras_upscaler_1,
        extras_upscaler_2, extras_upscaler_2_visibility, gfpgan_visibility, codeformer_visibility, codeformer_weight,
        max_side_length))
    return run_postprocessing(extras_mode, image, image_folder, input_dir, output_dir, show_extras_results, *args,
                              save_output=save_output)
