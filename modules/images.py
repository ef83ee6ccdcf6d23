"""A1111's `modules.images`: saving, grids and resizing as extensions call them.

Thin over modules.core.image_io (encoding with the infotext, grid layout), modules.core.masks
(resize modes) and modules.core.grid_labels (grid annotations). Settings come from the running
server through modules.shared.opts, with A1111's defaults for the ones Easel has no control for
(files go in a dated sub-folder named by `[date]`, are numbered, and carry the seed).
"""

from __future__ import annotations

import math
import os
import re
import string
import sys
from collections import namedtuple
from pathlib import Path

from PIL import Image, PngImagePlugin

from modules.core import atomic_write, filename_pattern, image_io, masks, upscaling
from modules.core import grid_labels
from modules.core.grid_labels import GridAnnotation  # noqa: F401  (A1111 names)

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST

invalid_filename_chars = filename_pattern.INVALID_FILENAME_CHARS
invalid_filename_prefix = " "
invalid_filename_postfix = " ."
re_nonletters = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
re_pattern = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
re_pattern_arg = re.compile(r"(.*)<([^>]*)>$")
max_filename_part_length = filename_pattern.MAX_FILENAME_PART_LENGTH
NOTHING_AND_SKIP_PREVIOUS_TEXT = filename_pattern.SKIP

# A1111's defaults for the saving options Easel's settings do not have
_DEFAULTS = {
    "save_to_dirs": True, "grid_save_to_dirs": True, "directories_filename_pattern": "[date]",
    "samples_filename_pattern": "", "save_images_add_number": True, "save_txt": False,
    "enable_pnginfo": True, "jpeg_quality": 80, "webp_lossless": False, "grid_prevent_empty_spots": False,
    "n_rows": -1, "grid_background_color": "#ffffff", "directories_max_prompt_words": 8,
    "date_format": "%Y-%m-%d", "samples_format": "png", "grid_format": "png",
    "save_images_replace_action": "Replace", "export_for_4chan": True, "img_downscale_threshold": 4.0,
    "target_side_length": 4000, "CLIP_stop_at_last_layers": 1,
    "grid_text_active_color": "#000000", "grid_text_inactive_color": "#999999", "font": "",
}


def draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin=0, colors=None, font_path=None):
    """A1111's: labels around a grid, in the colours of the grid_text_active_color,
    grid_text_inactive_color and grid_background_color options and the `font` option's font file."""
    colors = colors or grid_labels.GridColors(_opt("grid_text_active_color"), _opt("grid_text_inactive_color"),
                                              _opt("grid_background_color"))
    return grid_labels.draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin, colors,
                                             font_path or _opt("font") or None)


def _opt(name: str):
    shared = sys.modules.get("modules.shared")
    if shared is not None:
        try:
            value = getattr(shared.opts, name)
            if value is not None:
                return value
        except AttributeError:
            pass
    return _DEFAULTS.get(name)


def _under_data_dir(path) -> str:
    """A relative output folder (p.outpath_samples, p.outpath_grids: the options are relative) lies
    under the server's data dir, where the pipeline saves too; an absolute one is kept."""
    path = os.fspath(path)
    if os.path.isabs(path):
        return path
    shared = sys.modules.get("modules.shared")
    root = getattr(getattr(shared, "engine", None), "data_path", None)
    if root is None:
        from modules import paths_internal
        root = paths_internal.data_path
    return os.path.join(os.fspath(root), path)


def _callbacks():
    try:
        from modules import script_callbacks
    except ImportError:  # noqa: BLE001 - saving works without the scripting layer
        return None
    return script_callbacks


def sanitize_filename_part(text, replace_spaces: bool = True):
    return filename_pattern.sanitize_filename_part(text, replace_spaces, max_length=max_filename_part_length,
                                                   invalid_chars=invalid_filename_chars)


# ---- grids ----------------------------------------------------------------------------------------

Grid = namedtuple("Grid", ["tiles", "tile_w", "tile_h", "image_w", "image_h", "overlap"])


def image_grid(imgs, batch_size: int = 1, rows: int | None = None) -> Image.Image:
    """A1111's grid: `rows` or the n_rows setting decide the layout; on_image_grid callbacks may
    change columns and rows before the images are pasted."""
    imgs = list(imgs)
    layout_rows, cols = image_io.grid_layout(len(imgs), rows, batch_size, n_rows=int(_opt("n_rows")),
                                             prevent_empty_spots=bool(_opt("grid_prevent_empty_spots")))
    callbacks = _callbacks()
    if callbacks is not None and hasattr(callbacks, "ImageGridLoopParams"):
        params = callbacks.ImageGridLoopParams(imgs, cols, layout_rows)
        callbacks.image_grid_callback(params)
        imgs, cols, layout_rows = params.imgs, params.cols, params.rows
    if cols * layout_rows < len(imgs):
        raise ValueError(f"a {cols}x{layout_rows} grid cannot hold {len(imgs)} images")
    return image_io.image_grid(imgs, layout_rows, background=str(_opt("grid_background_color")))


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """Tiles of `image` with `overlap` pixels in common (A1111, for tiled upscaling)."""
    w, h = image.width, image.height
    non_overlap_width, non_overlap_height = tile_w - overlap, tile_h - overlap
    cols = max(1, math.ceil((w - overlap) / non_overlap_width))
    rows = max(1, math.ceil((h - overlap) / non_overlap_height))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        row_images = []
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, row_images])
    return grid


def combine_grid(grid: Grid) -> Image.Image:
    """Put split_grid's tiles back together, blending the overlaps."""
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        combined_row = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or grid.overlap <= 0:  # no overlap (A1111's slider starts at 0): edge to edge
                combined_row.paste(tile, (x, 0))
                continue
            combined_row.paste(tile.crop((0, 0, grid.overlap, h)), (x, 0), mask=_ramp(grid.overlap, h, True))
            combined_row.paste(tile.crop((grid.overlap, 0, w, h)), (x + grid.overlap, 0))
        if y == 0 or grid.overlap <= 0:
            combined.paste(combined_row, (0, y))
            continue
        combined.paste(combined_row.crop((0, 0, combined_row.width, grid.overlap)), (0, y),
                       mask=_ramp(combined_row.width, grid.overlap, False))
        combined.paste(combined_row.crop((0, grid.overlap, combined_row.width, h)), (0, y + grid.overlap))
    return combined


def _ramp(width: int, height: int, horizontal: bool) -> Image.Image:
    """A mask rising from 0 to 255 across the overlap (left to right, or top to bottom)."""
    length = width if horizontal else height
    line = Image.new("L", (length, 1))
    line.putdata([int(255 * i / max(1, length - 1)) for i in range(length)])
    return line.resize((width, height)) if horizontal else line.transpose(Image.Transpose.ROTATE_270).resize((width, height))


# ---- resizing ---------------------------------------------------------------------------------------

def resize_image(resize_mode: int, im: Image.Image, width: int, height: int, upscaler_name: str | None = None):
    """A1111's resize modes: 0 just resize, 1 crop and resize, 2 resize and fill (3, latent upscale,
    resizes like 0 for a picture). `upscaler_name` enlarges with that image upscaler first."""
    upscaler_name = upscaler_name or None
    if upscaler_name and upscaler_name != "None" and not upscaling.is_latent(upscaler_name):
        if resize_mode in (0, 3):
            return upscaling.upscale_image(im, width, height, upscaler_name)
        ratio, source = width / height, im.width / im.height
        cover = (ratio > source) if resize_mode == 1 else (ratio < source)
        scale = width / im.width if cover else height / im.height
        if scale > 1:
            im = upscaling.upscale_image(im, max(1, round(im.width * scale)), max(1, round(im.height * scale)), upscaler_name)
    return masks.resize_image(resize_mode, im, width, height)


def flatten(img: Image.Image, bgcolor: str) -> Image.Image:
    """Any mode -> RGB, transparent parts on `bgcolor`."""
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")


# ---- file names --------------------------------------------------------------------------------------

def get_next_sequence_number(path, basename: str = "") -> int:
    """The next free number among `path`'s files named NNNNN... (or basename-NNNN...)."""
    return image_io.next_sequence_number(Path(path), basename)


class FilenameGenerator:
    """A1111's [tag] patterns for file and folder names, over modules.core.filename_pattern (every
    A1111 1.10 tag). `replacements`: tags extensions add (name -> function(self, *args)); they win
    over the built-in ones, as assigning into A1111's table does."""

    replacements: dict = {}
    default_time_format = filename_pattern.DEFAULT_TIME_FORMAT

    def __init__(self, p, seed, prompt, image, zip=False, basename=""):
        self.p = p
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.zip = zip
        self.basename = basename

    def _p(self, name, default=None):
        value = getattr(self.p, name, default) if self.p is not None else default
        return default if value is None else value

    def values(self) -> filename_pattern.NameValues:
        """What the name may use, from `p` and the running server."""
        from modules.core import saving

        p = self._p
        shared = sys.modules.get("modules.shared")
        engine = getattr(shared, "engine", None) if shared is not None else None
        info = getattr(getattr(engine, "models", None), "info", None)
        styles = [s for s in (p("styles") or []) if s]
        style_db = getattr(shared, "prompt_styles", None) if shared is not None else None
        try:
            style_prompts = list(style_db.get_style_prompts(styles)) if style_db is not None and styles else []
        except Exception:  # noqa: BLE001 - unknown styles: [prompt_no_styles] is the prompt
            style_prompts = []
        sampler, schedule = p("sampler_name"), p("scheduler", "Automatic")
        model_name = info.model_name.rsplit("/", 1)[-1] if info is not None else None
        return filename_pattern.NameValues(
            seed=self.seed, prompt=self.prompt, negative_prompt=p("negative_prompt", ""), job_prompt=p("prompt"),
            all_seeds=list(p("all_seeds", []) or []), styles=styles, style_prompts=style_prompts,
            steps=p("steps"), cfg_scale=p("cfg_scale"), width=p("width"), height=p("height"),
            sampler=sampler, scheduler=saving.scheduler_label(sampler, schedule) if sampler else None,
            model_hash=p("sd_model_hash") or getattr(info, "shorthash", None),
            model_name=os.path.splitext(model_name)[0] if model_name else None,
            vae_file=p("sd_vae_name"), clip_skip=_opt("CLIP_stop_at_last_layers"),
            denoising_strength=p("denoising_strength"), user=p("user"),
            job_timestamp=p("job_timestamp") or getattr(getattr(shared, "state", None), "job_timestamp", ""),
            batch_size=p("batch_size", 1), batch_index=p("batch_index", 0), n_iter=p("n_iter", 1),
            iteration=p("iteration", 0), image=self.image, basename=self.basename, zip=self.zip,
            max_prompt_words=int(_opt("directories_max_prompt_words")),
            max_length=max_filename_part_length, invalid_chars=invalid_filename_chars,
        )

    def prompt_words(self):
        return self.apply("[prompt_words]")

    def datetime(self, *args):
        return self.apply("[datetime" + "".join(f"<{a}>" for a in args) + "]")

    def apply(self, x: str) -> str:
        extra = {name: (lambda f: lambda *args: f(self, *args))(fun) for name, fun in self.replacements.items()}
        return filename_pattern.apply(x, self.values(), extra)


# ---- saving ------------------------------------------------------------------------------------------

def save_image_with_geninfo(image: Image.Image, geninfo, filename, extension=None, existing_pnginfo=None,
                            pnginfo_section_name: str = "parameters") -> None:
    """Write `image` to `filename` with `geninfo` embedded the A1111 way (PNG text chunk, or
    EXIF UserComment for JPEG and WebP); other PNG chunks of `existing_pnginfo` are kept."""
    extension = (extension or os.path.splitext(filename)[1]).lower().lstrip(".")
    if extension == "png" and (existing_pnginfo or pnginfo_section_name != "parameters"):
        info = PngImagePlugin.PngInfo()
        for key, value in (existing_pnginfo or {}).items():
            info.add_text(str(key), str(value))
        if geninfo is not None:
            info.add_text(pnginfo_section_name, str(geninfo))
        image.save(filename, format="PNG", pnginfo=info)
        return
    data = image_io.encode_image(image, extension, geninfo, quality=int(_opt("jpeg_quality")),
                                 webp_lossless=bool(_opt("webp_lossless")))
    with open(filename, "wb") as file:
        file.write(data)


def _atomically_save(image, geninfo, filename, extension, existing_pnginfo, section) -> None:
    with atomic_write.temporary_path(filename) as temp:  # a name of its own: two saves of one file cannot mix
        save_image_with_geninfo(image, geninfo, str(temp), extension, existing_pnginfo, section)


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    """Save an image the way A1111 does; returns (file name, text file name or None).

    Folder: `path`, plus the directories pattern ("[date]") when saving to folders. File name:
    a number (NNNNN, or basename-NNNN), then the file-name pattern ("[seed]") and `suffix`, or
    `forced_filename`. on_before_image_saved callbacks may change the picture, name and info;
    on_image_saved callbacks see the result."""
    namegen = FilenameGenerator(p, seed, prompt, image, basename=basename)
    path = _under_data_dir(path)
    if save_to_dirs is None:
        save_to_dirs = (grid and bool(_opt("grid_save_to_dirs"))) or (not grid and bool(_opt("save_to_dirs")) and not no_prompt)
    if save_to_dirs:
        dirname = filename_pattern.safe_relative(namegen.apply(_opt("directories_filename_pattern") or "[prompt_words]"))
        path = os.path.join(path, dirname)
    os.makedirs(path, exist_ok=True)
    extension = str(extension).lower().lstrip(".")

    if forced_filename is None:
        if short_filename or seed is None:
            file_decoration = ""
        elif _opt("save_to_dirs"):
            file_decoration = _opt("samples_filename_pattern") or "[seed]"
        else:
            file_decoration = _opt("samples_filename_pattern") or "[seed]-[prompt_spaces]"
        file_decoration = namegen.apply(file_decoration) + suffix
        add_number = bool(_opt("save_images_add_number")) or file_decoration == ""
        if file_decoration and add_number:
            file_decoration = f"-{file_decoration}"
        if add_number:
            basecount = get_next_sequence_number(path, basename)
            fullfn = None
            for i in range(500):
                fn = f"{basecount + i:05}" if basename == "" else f"{basename}-{basecount + i:04}"
                fullfn = os.path.join(path, f"{fn}{file_decoration}.{extension}")
                if not os.path.exists(fullfn):
                    break
        else:
            fullfn = os.path.join(path, f"{file_decoration}.{extension}")
            if _opt("save_images_replace_action") == "Add number suffix":  # keep the file there: stem-1, stem-2, ...
                n = 0
                while os.path.exists(fullfn):
                    n += 1
                    fullfn = os.path.join(path, f"{file_decoration}-{n}.{extension}")
    else:
        fullfn = os.path.join(path, f"{forced_filename}.{extension}")

    pnginfo = dict(existing_info or {})
    if info is not None:
        pnginfo[pnginfo_section_name] = info
    callbacks = _callbacks()
    params = None
    if callbacks is not None and hasattr(callbacks, "ImageSaveParams"):
        params = callbacks.ImageSaveParams(image, p, fullfn, pnginfo)
        callbacks.before_image_saved_callback(params)
        image, fullfn, pnginfo = params.image, params.filename, params.pnginfo
    info = pnginfo.get(pnginfo_section_name, None) if _opt("enable_pnginfo") else None
    extra = {k: v for k, v in pnginfo.items() if k != pnginfo_section_name}
    final_extension = os.path.splitext(fullfn)[1].lower().lstrip(".") or extension
    _atomically_save(image, info, fullfn, final_extension, extra, pnginfo_section_name)
    if _opt("export_for_4chan"):  # a smaller NAME.jpg beside a large picture
        from modules.core import saving

        saving.export_for_4chan(Path(fullfn), image, info, threshold_mb=float(_opt("img_downscale_threshold")),
                                side_length=int(_opt("target_side_length")), quality=int(_opt("jpeg_quality")),
                                replace=_opt("save_images_replace_action") != "Add number suffix")

    txt_fullfn = None
    if _opt("save_txt") and info is not None:
        txt_fullfn = f"{os.path.splitext(fullfn)[0]}.txt"
        with open(txt_fullfn, "w", encoding="utf8") as file:
            file.write(f"{info}\n")
    if params is not None:
        params.filename = fullfn
        callbacks.image_saved_callback(params)
    return fullfn, txt_fullfn


# ---- reading -----------------------------------------------------------------------------------------

def read_info_from_image(image: Image.Image) -> tuple[str | None, dict]:
    """(the infotext, the image's other info items) as A1111 returns them."""
    return image_io.read_info(image)


def image_data(data: bytes):
    """(infotext, None) of image bytes; (text, None) for a text file's bytes (A1111)."""
    import io

    try:
        image = Image.open(io.BytesIO(data))
        textinfo, _ = read_info_from_image(image)
        return textinfo, None
    except Exception:  # noqa: BLE001 - not an image: maybe the text itself
        pass
    try:
        text = data.decode("utf8")
        assert len(text) < 10000
        return text, None
    except Exception:  # noqa: BLE001
        pass
    return "", None
