"""A1111's `modules.ui_common`: the few page helpers extensions import from it (also reachable as
`modules.ui.<name>`, where A1111 had them first)."""

from __future__ import annotations

import html

from modules.ui_components import ToolButton, create_refresh_button

__all__ = ["ToolButton", "create_refresh_button", "gr_show", "plaintext_to_html", "refresh_symbol", "save_files"]

refresh_symbol = "\U0001f504"  # 🔄


def plaintext_to_html(text: str, classname: str | None = None) -> str:
    """Text as a paragraph of HTML, one line per line (A1111's)."""
    content = "<br>\n".join(html.escape(line) for line in (text or "").split("\n"))
    return f"<p class='{classname}'>{content}</p>" if classname else f"<p>{content}</p>"


def gr_show(visible: bool = True) -> dict:
    return {"visible": visible, "__type__": "update"}


def _opt(name: str, default=None):
    from modules import shared

    value = shared.opts.data.get(name)
    return default if value is None else value


def save_files(js_data, images, do_make_zip, index):
    """A1111's Save button: write the gallery's pictures (all, or the selected one with the
    `save_selected_only` setting) to `outdir_save` (log/images) with their infotexts, append a row
    per picture to its log.csv (`save_write_log_csv`), optionally zip them (named by
    `grid_zip_filename_pattern`); (file update, "Saved: <first name>" HTML)."""
    import contextlib
    import csv
    import json
    import os
    import zipfile

    from modules import images as images_module
    from modules import infotext_utils, paths_internal

    data = json.loads(js_data) if isinstance(js_data, str) else dict(js_data or {})
    infotexts = list(data.get("infotexts") or [])
    first_image = int(data.get("index_of_first_image") or 0)
    path = _opt("outdir_save", "log/images")
    if not os.path.isabs(path):
        path = os.path.join(paths_internal.data_path, path)
    extension = str(_opt("samples_format", "png"))
    images = list(images or [])
    start_index = 0
    if index > -1 and _opt("save_selected_only", True) and index >= first_image and index < len(images):
        images, start_index = [images[index]], index
    os.makedirs(path, exist_ok=True)
    filenames, fullfns, parsed = [], [], []
    fields = ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
              "sd_model_name", "sd_model_hash"]
    logfile_path = os.path.join(path, "log.csv")
    new_log = not os.path.exists(logfile_path) or os.path.getsize(logfile_path) == 0
    write_log = bool(_opt("save_write_log_csv", True))
    image = None
    with (open(logfile_path, "a", encoding="utf8", newline="") if write_log else contextlib.nullcontext()) as file:
        writer = csv.writer(file) if file is not None else None
        if writer is not None and new_log:
            writer.writerow(fields)
        for image_index, filedata in enumerate(images, start_index):
            picture = infotext_utils.image_from_url_text(filedata)
            if picture is None:
                continue
            image = picture
            infotext = infotexts[image_index] if image_index < len(infotexts) else ""
            parameters = infotext_utils.parse_generation_parameters(infotext, []) if infotext else {}
            parsed.append(parameters)
            fullfn, txt_fullfn = images_module.save_image(
                image, path, "", seed=parameters.get("Seed"), prompt=parameters.get("Prompt"), extension=extension,
                info=infotext or None, grid=image_index < first_image, p=None,
                save_to_dirs=bool(_opt("use_save_to_dirs_for_ui", False)))
            filenames.append(os.path.basename(fullfn))
            fullfns.append(fullfn)
            if txt_fullfn:
                filenames.append(os.path.basename(txt_fullfn))
                fullfns.append(txt_fullfn)
            if writer is None:
                continue
            writer.writerow([parameters.get("Prompt", ""), parameters.get("Seed", ""), image.width, image.height,
                             parameters.get("Sampler", ""), parameters.get("CFG scale", ""),
                             parameters.get("Steps", ""), filenames[0], parameters.get("Negative prompt", ""),
                             data.get("sd_model_name", ""), data.get("sd_model_hash", "")])
    if do_make_zip and fullfns:
        zip_filepath = os.path.join(path, f"{_zip_name(data, parsed, image)}.zip")
        with zipfile.ZipFile(zip_filepath, "w") as zip_file:
            for name in fullfns:
                zip_file.write(name, arcname=os.path.basename(name))
        fullfns.insert(0, zip_filepath)
    update = {"__type__": "update", "value": fullfns, "visible": True}
    return update, plaintext_to_html(f"Saved: {filenames[0] if filenames else 'nothing'}")


def _zip_name(data: dict, parsed: list[dict], image) -> str:
    """A1111's archive name: `grid_zip_filename_pattern`, by default
    "[datetime]_[[model_name]]_[seed]-[seed_last]", over the saved pictures' seeds and first prompt."""
    import types

    from modules import images as images_module

    p = types.SimpleNamespace(**{k: v for k, v in data.items() if isinstance(k, str) and k.isidentifier()})
    p.all_seeds = [x.get("Seed") for x in parsed]
    first = parsed[0] if parsed else {}
    namegen = images_module.FilenameGenerator(p, first.get("Seed"), first.get("Prompt"), image, True)
    name = namegen.apply(_opt("grid_zip_filename_pattern", "") or "[datetime]_[[model_name]]_[seed]-[seed_last]")
    return name or "images"
