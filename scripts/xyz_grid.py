"""A1111's "X/Y/Z plot": one picture per combination of up to three axes' values, in labelled grids.

Axes are :class:`AxisOption` rows in :data:`axis_options`, in A1111's order, so an API client's axis
*index* (A1111's dropdown is ``type="index"``) picks the same axis here; extensions append their own
rows as they do in A1111 (they find this module through ``scripts.scripts_data``). Every axis of
A1111 1.10 works: fields of ``p``, per-job options (``override_settings``), the VAE, face restoration,
the refiner and the FP8 mode.

Values are A1111's: comma-separated (CSV quoting, so a Prompt S/R value may hold commas), ranges
``1-5``, ``1-10 (+2)`` (step), ``1-10 [4]`` (count); float axes take the same with decimals.

The result: the grid of grids first (one X/Y grid per Z value, side by side, Z labels above), then
the X/Y grids when "Include Sub Grids" is on, then every cell's picture with "Include Sub Images";
infotexts align with the pictures. Grid infotexts carry ``Script``, ``X Type``, ``X Values`` (and
``Fixed X Values`` for seeds fixed here), the same for Y and, on the main grid, Z. Script args in
A1111's order: [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type,
z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode].
"""

from __future__ import annotations

import csv
import os.path
import random
import re
from collections import namedtuple
from copy import copy
from io import StringIO
from itertools import chain, permutations

import gradio as gr
import numpy as np
from PIL import Image

import modules.scripts as scripts
from modules import images, processing, sd_models, shared, shared_items
from modules.core import grid_labels, samplers, upscaling
from modules.core.types import RequestError
from modules.processing import Processed, process_images
from modules.shared import opts, state

fill_values_symbol = "\U0001f4d2"  # 📒

AxisInfo = namedtuple("AxisInfo", ["axis", "values"])


# -- what an axis value does to p -------------------------------------------------------------

def apply_field(field):
    def apply(p, x, xs):
        setattr(p, field, x)
    return apply


def apply_override(field, boolean: bool = False):
    def apply(p, x, xs):
        if boolean:
            x = str(x).lower() == "true"
        p.override_settings[field] = x
    return apply


def apply_prompt(p, x, xs):
    """Prompt S/R: the first value is searched for, every value (the first too) replaces it."""
    if xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RequestError("script_args", f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    p.prompt = p.prompt.replace(xs[0], x)
    p.negative_prompt = p.negative_prompt.replace(xs[0], x)


def apply_order(p, x, xs):
    """Prompt order: the listed tokens, found in the prompt, put back in the order of ``x``."""
    found = sorted((p.prompt.find(token), token) for token in x)
    pieces, rest = [], p.prompt
    for _, token in found:
        at = rest.find(token)
        pieces.append(rest[:at])
        rest = rest[at + len(token):]
    p.prompt = "".join(piece + token for piece, token in zip(pieces, x)) + rest


def apply_checkpoint(p, x, xs):
    info = sd_models.get_closet_checkpoint_match(x)
    if info is None:
        raise RequestError("script_args", f"Unknown checkpoint: {x}")
    p.override_settings["sd_model_checkpoint"] = info.name


def apply_size(p, x, xs):
    width, _, height = str(x).partition("x")
    p.width, p.height = int(width.strip()), int(height.strip())


def apply_styles(p, x, _):
    p.styles.extend(x.split(","))


def find_vae(name: str) -> str:
    """A1111 1.10's: "Automatic", "None", or the VAE of that name (any case); else Automatic, said."""
    name = name.strip()
    if name.lower() in ("auto", "automatic"):
        return "Automatic"
    if name.lower() == "none":
        return "None"
    found = next((k for k in shared_items.sd_vae_items() if k.lower() == name.lower()), None)
    if found is None:
        print(f"No VAE found for {name}; using Automatic")
        return "Automatic"
    return found


def apply_vae(p, x, xs):
    p.override_settings["sd_vae"] = find_vae(x)


def apply_uni_pc_order(p, x, xs):
    p.override_settings["uni_pc_order"] = min(x, p.steps - 1)


def apply_face_restore(p, x, xs):
    """"CodeFormer" / "GFPGAN" restore with that model; true/yes/y/1 with the option's model."""
    value = str(x).lower()
    if value in ("codeformer", "gfpgan"):
        p.face_restoration_model = "CodeFormer" if value == "codeformer" else "GFPGAN"
        p.restore_faces = True
    else:
        p.restore_faces = value in ("true", "yes", "y", "1")


def apply_refiner(p, x, xs):
    p.refiner_checkpoint = None if str(x).strip() in ("", "None") else x


def do_nothing(p, x, xs):
    pass


# -- checks before anything runs ---------------------------------------------------------------

def confirm_samplers(p, xs):
    for x in xs:
        try:
            samplers.resolve(x)
        except ValueError as exc:
            raise RequestError("script_args", f"Unknown sampler: {x} ({exc})") from exc


def confirm_checkpoints(p, xs):
    for x in xs:
        if sd_models.get_closet_checkpoint_match(x) is None:
            raise RequestError("script_args", f"Unknown checkpoint: {x}")


def confirm_checkpoints_or_none(p, xs):
    for x in xs:
        if x not in (None, "", "None") and sd_models.get_closet_checkpoint_match(x) is None:
            raise RequestError("script_args", f"Unknown checkpoint: {x}")


def confirm_schedules(p, xs):
    known = [label for label, _ in samplers.SCHEDULE_TYPES]
    for x in xs:
        if x not in known:
            raise RequestError("script_args", f"Unknown schedule type: {x}; known: {', '.join(known)}")


def confirm_prompt_sr(p, xs):
    if xs and xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RequestError("script_args", f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")


def confirm_sizes(p, xs):
    for x in xs:
        if not re.fullmatch(r"\s*\d+\s*x\s*\d+\s*", str(x)):
            raise RequestError("script_args", f"Invalid size in XYZ plot: {x} (write it as WIDTHxHEIGHT, e.g. 512x768)")


def confirm_range(min_val, max_val, axis_label):
    def confirm(p, xs):
        for x in xs:
            if not min_val <= x <= max_val:
                raise RequestError("script_args", f'{axis_label} value "{x}" out of range [{min_val}, {max_val}]')
    return confirm


def confirm_choices(choices):
    def confirm(p, xs):
        known = choices()
        for x in xs:
            if x not in known:
                raise RequestError("script_args", f"unknown value {x}; known: {', '.join(map(str, known))}")
    return confirm


# -- labels -------------------------------------------------------------------------------------

def boolean_choice(reverse: bool = False):
    def choice():
        return ["False", "True"] if reverse else ["True", "False"]
    return choice


def format_value_add_label(p, opt, x):
    if type(x) is float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if type(x) is float:
        x = round(x, 8)
    return x


def format_value_join_list(p, opt, x):
    return ", ".join(x)


def format_nothing(p, opt, x):
    return ""


def format_remove_path(p, opt, x):
    return os.path.basename(x)


def str_permutations(x):
    """Marks an axis whose values are every ordering of the listed tokens (Prompt order)."""
    return x


def list_to_csv_string(data_list):
    with StringIO() as out:
        csv.writer(out).writerow(data_list)
        return out.getvalue().strip()


def csv_string_to_list_strip(data_str):
    return [x.strip() for x in chain.from_iterable(csv.reader(StringIO(data_str or ""), skipinitialspace=True))]


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost  # the dearest axis to change goes outermost (checkpoints: loaded once per value)
        self.choices = choices
        self.prepare = prepare


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


def _checkpoint_titles():
    return sorted(sd_models.checkpoints_list, key=str.casefold)


def _sampler_choices():
    from modules import sd_samplers

    return sd_samplers.visible_sampler_names()  # A1111: without the ones the hide_samplers option hides


def _style_choices():
    styles = getattr(shared, "prompt_styles", None)
    return list(getattr(styles, "styles", None) or [])


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Var. seed", int, apply_field("subseed")),
    AxisOption("Var. strength", float, apply_field("subseed_strength")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionImg2Img("Image CFG Scale", float, apply_field("image_cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value, confirm=confirm_prompt_sr),
    AxisOption("Prompt order", str_permutations, apply_order, format_value=format_value_join_list),
    AxisOptionTxt2Img("Sampler", str, apply_field("sampler_name"), format_value=format_value, confirm=confirm_samplers,
                      choices=_sampler_choices),
    AxisOptionTxt2Img("Hires sampler", str, apply_field("hr_sampler_name"), confirm=confirm_samplers,
                      choices=_sampler_choices),
    AxisOptionImg2Img("Sampler", str, apply_field("sampler_name"), format_value=format_value, confirm=confirm_samplers,
                      choices=_sampler_choices),
    AxisOption("Checkpoint name", str, apply_checkpoint, format_value=format_remove_path, confirm=confirm_checkpoints,
               cost=1.0, choices=_checkpoint_titles),
    AxisOption("Negative Guidance minimum sigma", float, apply_field("s_min_uncond")),
    AxisOption("Sigma Churn", float, apply_field("s_churn")),
    AxisOption("Sigma min", float, apply_field("s_tmin")),
    AxisOption("Sigma max", float, apply_field("s_tmax")),
    AxisOption("Sigma noise", float, apply_field("s_noise")),
    AxisOption("Schedule type", str, apply_field("scheduler"), confirm=confirm_schedules,
               choices=lambda: [label for label, _ in samplers.SCHEDULE_TYPES]),
    AxisOption("Schedule min sigma", float, apply_override("sigma_min")),
    AxisOption("Schedule max sigma", float, apply_override("sigma_max")),
    AxisOption("Schedule rho", float, apply_override("rho")),
    AxisOption("Skip Early CFG", float, apply_override("skip_early_cond"),
               confirm=confirm_range(0.0, 1.0, "Skip Early CFG")),
    AxisOption("Beta schedule alpha", float, apply_override("beta_dist_alpha")),
    AxisOption("Beta schedule beta", float, apply_override("beta_dist_beta")),
    AxisOption("Eta", float, apply_field("eta")),
    AxisOption("Clip skip", int, apply_override("CLIP_stop_at_last_layers"), confirm=confirm_range(1, 12, "Clip skip")),
    AxisOption("Denoising", float, apply_field("denoising_strength"), confirm=confirm_range(0.0, 1.0, "Denoising")),
    AxisOption("Initial noise multiplier", float, apply_field("initial_noise_multiplier")),
    AxisOption("Extra noise", float, apply_override("img2img_extra_noise")),
    AxisOptionTxt2Img("Hires upscaler", str, apply_field("hr_upscaler"), confirm=confirm_choices(upscaling.names),
                      choices=upscaling.names),
    AxisOptionImg2Img("Cond. Image Mask Weight", float, apply_override("inpainting_mask_weight"),
                      confirm=confirm_range(0.0, 1.0, "Cond. Image Mask Weight")),
    AxisOption("VAE", str, apply_vae, cost=0.7, choices=lambda: shared_items.sd_vae_items()),
    AxisOption("Styles", str, apply_styles, choices=_style_choices),
    AxisOption("UniPC Order", int, apply_uni_pc_order, cost=0.5),
    AxisOption("Face restore", str, apply_face_restore, format_value=format_value),
    AxisOption("Token merging ratio", float, apply_override("token_merging_ratio")),
    AxisOption("Token merging ratio high-res", float, apply_override("token_merging_ratio_hr")),
    AxisOption("Always discard next-to-last sigma", str, apply_override("always_discard_next_to_last_sigma", boolean=True),
               choices=boolean_choice(reverse=True)),
    AxisOption("SGM noise multiplier", str, apply_override("sgm_noise_multiplier", boolean=True),
               choices=boolean_choice(reverse=True)),
    AxisOption("Refiner checkpoint", str, apply_refiner, format_value=format_remove_path,
               confirm=confirm_checkpoints_or_none, cost=1.0, choices=lambda: ["None"] + _checkpoint_titles()),
    AxisOption("Refiner switch at", float, apply_field("refiner_switch_at"),
               confirm=confirm_range(0.0, 1.0, "Refiner switch at")),
    AxisOption("RNG source", str, apply_override("randn_source"), confirm=confirm_choices(lambda: ["GPU", "CPU", "NV"]),
               choices=lambda: ["GPU", "CPU", "NV"]),
    AxisOption("FP8 mode", str, apply_override("fp8_storage"), cost=0.9,
               choices=lambda: ["Disable", "Enable for SDXL", "Enable"]),
    AxisOption("Size", str, apply_size, confirm=confirm_sizes),
]


def axis_options_for(is_img2img: bool) -> list[AxisOption]:
    """The axes of one tab (A1111's ``current_axis_options``), in order."""
    return [x for x in axis_options if type(x) is AxisOption or x.is_img2img == is_img2img]


# -- values -------------------------------------------------------------------------------------

re_range = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
re_range_count = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
re_range_count_float = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")


def _number(text: str, kind):
    return kind(text.replace(" ", ""))


def expand_ranges(values: list[str], kind) -> list:
    """A1111's ranges: ``a-b`` (every whole number, both ends included), ``a-b (+s)`` (step s),
    ``a-b [n]`` (n values evenly from a to b); other values pass through."""
    out = []
    for value in values:
        if kind is int:
            step, count = re_range.fullmatch(value), re_range_count.fullmatch(value)
            if step is not None:
                start, end = _number(step.group(1), int), _number(step.group(2), int)
                by = int(step.group(3)) if step.group(3) is not None else 1
                out += list(range(start, end + (1 if by > 0 else -1), by))
            elif count is not None:
                start, end = _number(count.group(1), int), _number(count.group(2), int)
                n = int(count.group(3)) if count.group(3) is not None else 1
                out += [int(x) for x in np.linspace(start, end, n).tolist()]
            else:
                out.append(value)
        elif kind is float:
            step, count = re_range_float.fullmatch(value), re_range_count_float.fullmatch(value)
            if step is not None:
                start, end = _number(step.group(1), float), _number(step.group(2), float)
                by = float(step.group(3)) if step.group(3) is not None else 1.0
                out += np.arange(start, end + by, by).tolist()
            elif count is not None:
                start, end = _number(count.group(1), float), _number(count.group(2), float)
                n = int(float(count.group(3))) if count.group(3) is not None else 1
                out += np.linspace(start, end, n).tolist()
            else:
                out.append(value)
        else:
            out.append(value)
    return out


def parse_axis(p, opt: AxisOption, vals: str, vals_dropdown, csv_mode: bool = False) -> list:
    """An axis's values, typed and checked (RequestError on ``script_args`` naming the axis)."""
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and not csv_mode and vals_dropdown:
        values = list(vals_dropdown)
    elif opt.prepare is not None:
        values = opt.prepare(vals)
    else:
        values = csv_string_to_list_strip(vals)
    values = [v for v in values if v != ""] if opt.type is not str else values
    if opt.type is str_permutations:
        values = list(permutations(values))
    else:
        values = expand_ranges(values, opt.type)
    try:
        values = [opt.type(x) for x in values]
    except (TypeError, ValueError) as exc:
        raise RequestError("script_args", f"{opt.label}: {exc}") from exc
    if not values:
        raise RequestError("script_args", f"{opt.label}: no values given")
    if opt.confirm:
        opt.confirm(p, values)
    return values


def resolve_axis(options: list[AxisOption], axis_type) -> AxisOption:
    """An axis by its index (A1111's dropdown value) or its label."""
    if axis_type is None or axis_type == "":
        return options[0]
    if isinstance(axis_type, str) and not axis_type.strip().lstrip("-").isdigit():
        for opt in options:
            if opt.label.lower() == axis_type.strip().lower():
                return opt
        raise RequestError("script_args", f"unknown X/Y/Z plot axis '{axis_type}'; known: "
                                          f"{', '.join(o.label for o in options)}")
    index = int(axis_type)
    if not 0 <= index < len(options):
        raise RequestError("script_args", f"X/Y/Z plot axis index {index} is out of range 0..{len(options) - 1}")
    return options[index]


def axis_order(x_opt, y_opt, z_opt) -> tuple[str, str]:
    """(outermost, middle) loop axes: the dearest axis changes least often (A1111's rule)."""
    if x_opt.cost > y_opt.cost and x_opt.cost > z_opt.cost:
        return "x", ("y" if y_opt.cost > z_opt.cost else "z")
    if y_opt.cost > x_opt.cost and y_opt.cost > z_opt.cost:
        return "y", ("x" if x_opt.cost > z_opt.cost else "z")
    if z_opt.cost > x_opt.cost and z_opt.cost > y_opt.cost:
        return "z", ("x" if x_opt.cost > y_opt.cost else "y")
    return "z", "y"


# -- the grid -----------------------------------------------------------------------------------

def _option(name: str, default):
    value = opts.data.get(name) if hasattr(opts, "data") else getattr(opts, name, None)
    return default if value is None else value




def _colors() -> grid_labels.GridColors:
    return grid_labels.GridColors(_option("grid_text_active_color", "#000000"),
                                  _option("grid_text_inactive_color", "#999999"),
                                  _option("grid_background_color", "#ffffff"))


# Processed's per-picture lists, kept aligned with the images (the default for a failed cell)
PER_PICTURE = {"infotexts": "", "all_prompts": "", "all_negative_prompts": "", "all_seeds": -1, "all_subseeds": -1}


def draw_xyz_grid(p, xs, ys, zs, x_labels, y_labels, z_labels, cell, draw_legend, include_lone_images,
                  include_sub_grids, first_axes_processed, second_axes_processed, margin_size):
    """Runs every cell (in the order the costs ask for) and builds the grids. Returns a Processed
    whose images are [grid of grids, one grid per Z value, every cell's picture]."""
    hor_texts = [[grid_labels.GridAnnotation(str(x))] for x in x_labels]
    ver_texts = [[grid_labels.GridAnnotation(str(y))] for y in y_labels]
    title_texts = [[grid_labels.GridAnnotation(str(z))] for z in z_labels]
    count = len(xs) * len(ys) * len(zs)
    cells: list = [None] * count
    # per cell, its first picture's values (a failed cell keeps the empty ones)
    values = {name: [default] * count for name, default in PER_PICTURE.items()}
    template = None
    state.job_count = count * p.n_iter

    def run_cell(ix, iy, iz):
        nonlocal template
        index = ix + iy * len(xs) + iz * len(xs) * len(ys)
        state.job = f"{index + 1} out of {count}"
        processed = cell(xs[ix], ys[iy], zs[iz], ix, iy, iz)
        if not processed.images:
            return
        template = template or processed
        cells[index] = processed.images[0]  # with a batch, its grid (A1111)
        first = getattr(processed, "index_of_first_image", 0) if len(processed.images) > 1 else 0
        if processed.infotexts:
            values["infotexts"][index] = processed.infotexts[min(first, len(processed.infotexts) - 1)]
        for name in PER_PICTURE:
            if name != "infotexts" and getattr(processed, name, None):
                values[name][index] = getattr(processed, name)[0]

    loops = {"x": range(len(xs)), "y": range(len(ys)), "z": range(len(zs))}
    third = ({"x", "y", "z"} - {first_axes_processed, second_axes_processed}).pop()
    for a in loops[first_axes_processed]:
        for b in loops[second_axes_processed]:
            for c in loops[third]:
                where = {first_axes_processed: a, second_axes_processed: b, third: c}
                run_cell(where["x"], where["y"], where["z"])

    if template is None:
        print("X/Y/Z plot: no cell produced a picture")
        return Processed(p, [])
    size = next(im.size for im in cells if im is not None)
    mode = next(im.mode for im in cells if im is not None)
    cells = [im if im is not None else Image.new(mode, size) for im in cells]  # a failed cell stays empty

    per_grid = len(xs) * len(ys)
    sub_grids = []
    for iz in range(len(zs)):
        part = cells[iz * per_grid:(iz + 1) * per_grid]
        grid = images.image_grid(part, rows=len(ys))
        if draw_legend:
            cell_w, cell_h = (max(sizes) for sizes in zip(*(im.size for im in part)))
            grid = grid_labels.draw_grid_annotations(grid, cell_w, cell_h, hor_texts, ver_texts, margin_size, _colors(),
                                                     _option("font", None) or None)
        sub_grids.append(grid)
    z_grid = images.image_grid(sub_grids, rows=1)
    if draw_legend:
        sub_w, sub_h = (max(sizes) for sizes in zip(*(im.size for im in sub_grids)))
        z_grid = grid_labels.draw_grid_annotations(z_grid, sub_w, sub_h, title_texts, [[grid_labels.GridAnnotation()]],
                                                   colors=_colors(), font_path=_option("font", None) or None)

    result = copy(template)
    result.images = [z_grid, *sub_grids, *cells]
    for name, per_cell in values.items():  # a grid takes the values of its first cell
        setattr(result, name, [per_cell[0], *(per_cell[iz * per_grid] for iz in range(len(zs))), *per_cell])
    result.index_of_first_image = 1
    return result


class SharedSettingsStackHelper:
    """After the plot: the selected checkpoint back in place (a Checkpoint name axis loads others)."""

    def __init__(self, restore_checkpoint: bool):
        self.restore_checkpoint = restore_checkpoint

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, tb):
        if self.restore_checkpoint:
            sd_models.reload_model_weights()


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = axis_options_for(is_img2img)
        labels = [x.label for x in self.current_axis_options]
        from modules.ui_components import ToolButton

        with gr.Row():
            with gr.Column(scale=19):
                rows = []
                for axis, default in (("x", 1), ("y", 0), ("z", 0)):
                    with gr.Row():
                        kind = gr.Dropdown(label=f"{axis.upper()} type", choices=labels, value=labels[default], type="index",
                                           elem_id=self.elem_id(f"{axis}_type"))
                        values = gr.Textbox(label=f"{axis.upper()} values", lines=1, elem_id=self.elem_id(f"{axis}_values"))
                        values_dropdown = gr.Dropdown(label=f"{axis.upper()} values", visible=False, multiselect=True,
                                                      interactive=True)
                        fill_button = ToolButton(value=fill_values_symbol, elem_id=f"xyz_grid_fill_{axis}_tool_button",
                                                 visible=False)
                    rows.append((kind, values, values_dropdown, fill_button))
        (x_type, x_values, x_values_dropdown, fill_x), (y_type, y_values, y_values_dropdown, fill_y), \
            (z_type, z_values, z_values_dropdown, fill_z) = rows

        with gr.Row(variant="compact", elem_id="axis_options"):
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
                no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False, elem_id=self.elem_id("no_fixed_seeds"))
                with gr.Row():
                    vary_seeds_x = gr.Checkbox(label="Vary seeds for X", value=False, min_width=80,
                                               elem_id=self.elem_id("vary_seeds_x"),
                                               info="Use different seeds for images along X axis.")
                    vary_seeds_y = gr.Checkbox(label="Vary seeds for Y", value=False, min_width=80,
                                               elem_id=self.elem_id("vary_seeds_y"),
                                               info="Use different seeds for images along Y axis.")
                    vary_seeds_z = gr.Checkbox(label="Vary seeds for Z", value=False, min_width=80,
                                               elem_id=self.elem_id("vary_seeds_z"),
                                               info="Use different seeds for images along Z axis.")
            with gr.Column():
                include_lone_images = gr.Checkbox(label="Include Sub Images", value=False,
                                                  elem_id=self.elem_id("include_lone_images"))
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id=self.elem_id("include_sub_grids"))
                csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                       elem_id=self.elem_id("csv_mode"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))

        with gr.Row(variant="compact", elem_id="swap_axes"):
            swap_xy = gr.Button(value="Swap X/Y axes", elem_id="xy_grid_swap_axes_button")
            swap_yz = gr.Button(value="Swap Y/Z axes", elem_id="yz_grid_swap_axes_button")
            swap_xz = gr.Button(value="Swap X/Z axes", elem_id="xz_grid_swap_axes_button")

        def swap_axes(type1, values1, dropdown1, type2, values2, dropdown2):
            options = self.current_axis_options
            return options[type2 or 0].label, values2, dropdown2, options[type1 or 0].label, values1, dropdown1

        for button, first, second in ((swap_xy, rows[0], rows[1]), (swap_yz, rows[1], rows[2]), (swap_xz, rows[0], rows[2])):
            swap = [*first[:3], *second[:3]]
            button.click(swap_axes, inputs=swap, outputs=swap)

        def fill(axis_type, csv_mode):
            axis = self.current_axis_options[axis_type or 0]
            if not axis.choices:
                return gr.update(), gr.update()
            if csv_mode:
                return list_to_csv_string(axis.choices()), gr.update()
            return gr.update(), gr.update(value=axis.choices())

        def select_axis(axis_type, axis_values, axis_values_dropdown, csv_mode):
            choices = self.current_axis_options[axis_type or 0].choices
            has_choices = choices is not None
            if has_choices:
                choices = choices()
                if csv_mode:
                    if axis_values_dropdown:
                        axis_values = list_to_csv_string([x for x in axis_values_dropdown if x in choices])
                        axis_values_dropdown = []
                elif axis_values:
                    axis_values_dropdown = [x for x in csv_string_to_list_strip(axis_values) if x in choices]
                    axis_values = ""
            return (gr.update(visible=has_choices), gr.update(visible=not has_choices or csv_mode, value=axis_values),
                    gr.update(choices=choices if has_choices else [], visible=has_choices and not csv_mode,
                              value=axis_values_dropdown or []))

        for kind, values, values_dropdown, fill_button in rows:
            fill_button.click(fn=fill, inputs=[kind, csv_mode], outputs=[values, values_dropdown])
            kind.change(fn=select_axis, inputs=[kind, values, values_dropdown, csv_mode],
                        outputs=[fill_button, values, values_dropdown])

        def change_choice_mode(csv_mode, *axes):
            out = []
            for i in range(3):
                out += select_axis(*axes[3 * i:3 * i + 3], csv_mode)
            return out

        csv_mode.change(fn=change_choice_mode, inputs=[csv_mode, *(c for row in rows for c in row[:3])],
                        outputs=[c for row in rows for c in (row[3], row[1], row[2])])

        def dropdown_from_params(axis):
            return lambda params: gr.update(value=csv_string_to_list_strip(params.get(f"{axis} Values", "")))

        self.infotext_fields = (
            (x_type, "X Type"), (x_values, "X Values"), (x_values_dropdown, dropdown_from_params("X")),
            (y_type, "Y Type"), (y_values, "Y Values"), (y_values_dropdown, dropdown_from_params("Y")),
            (z_type, "Z Type"), (z_values, "Z Values"), (z_values_dropdown, dropdown_from_params("Z")),
        )
        return [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
                z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
                vary_seeds_y, vary_seeds_z, margin_size, csv_mode]

    def run(self, p, x_type=1, x_values="", x_values_dropdown=None, y_type=0, y_values="", y_values_dropdown=None,
            z_type=0, z_values="", z_values_dropdown=None, draw_legend=True, include_lone_images=False,
            include_sub_grids=False, no_fixed_seeds=False, vary_seeds_x=False, vary_seeds_y=False, vary_seeds_z=False,
            margin_size=0, csv_mode=False):
        options = axis_options_for(bool(getattr(self, "is_img2img", False)))
        if not no_fixed_seeds:
            processing.fix_seed(p)
        if not _option("return_grid", True):
            p.batch_size = 1
        margin_size = int(margin_size or 0)

        axes = {}
        for name, kind, vals, dropdown in (("x", x_type, x_values, x_values_dropdown), ("y", y_type, y_values, y_values_dropdown),
                                            ("z", z_type, z_values, z_values_dropdown)):
            opt = resolve_axis(options, kind)
            if opt.choices is not None and not csv_mode and dropdown:
                vals = list_to_csv_string(dropdown)  # the infotext records what was plotted
            axes[name] = [opt, vals or "", parse_axis(p, opt, vals or "", dropdown or [], csv_mode)]
        (x_opt, x_values, xs), (y_opt, y_values, ys), (z_opt, z_values, zs) = axes["x"], axes["y"], axes["z"]

        width, height = p.width or 512, p.height or 512
        grid_mp = round(len(xs) * len(ys) * len(zs) * width * height / 1_000_000)
        limit = _option("img_max_size_mp", 200)
        if grid_mp >= limit:
            raise RequestError("script_args", f"Resulting grid would be too large ({grid_mp} MPixels) "
                                              f"(max configured size is {limit} MPixels)")

        def fix_axis_seeds(opt, values):
            if opt.label in ("Seed", "Var. seed"):
                return [int(random.randrange(4294967294)) if v in (None, "", -1) else v for v in values]
            return values

        if not no_fixed_seeds:
            xs, ys, zs = fix_axis_seeds(x_opt, xs), fix_axis_seeds(y_opt, ys), fix_axis_seeds(z_opt, zs)

        cells_per_image = p.n_iter * p.batch_size
        print(f"X/Y/Z plot will create {len(xs) * len(ys) * len(zs) * cells_per_image} images on {len(zs)} "
              f"{len(xs)}x{len(ys)} grid{'s' if len(zs) > 1 else ''}"
              f"{f'; {cells_per_image} images per cell' if cells_per_image > 1 else ''}.")
        state.xyz_plot_x, state.xyz_plot_y, state.xyz_plot_z = AxisInfo(x_opt, xs), AxisInfo(y_opt, ys), AxisInfo(z_opt, zs)
        first_axes_processed, second_axes_processed = axis_order(x_opt, y_opt, z_opt)
        grid_infotext = [None] * (1 + len(zs))

        def axis_params(prefix, opt, raw, values):
            if opt.label == "Nothing":
                return {}
            params = {f"{prefix} Type": opt.label, f"{prefix} Values": raw}
            if opt.label in ("Seed", "Var. seed") and not no_fixed_seeds:
                params[f"Fixed {prefix} Values"] = ", ".join(str(v) for v in values)
            return params

        def cell(x, y, z, ix, iy, iz):
            if state.interrupted:
                return Processed(p, [], p.seed, "")
            pc = copy(p)
            pc.styles = list(getattr(p, "styles", None) or [])
            pc.override_settings = dict(getattr(p, "override_settings", None) or {})
            pc.extra_generation_params = dict(getattr(p, "extra_generation_params", None) or {})
            x_opt.apply(pc, x, xs)
            y_opt.apply(pc, y, ys)
            z_opt.apply(pc, z, zs)
            x_dim = len(xs) if vary_seeds_x else 1
            y_dim = len(ys) if vary_seeds_y else 1
            if vary_seeds_x:
                pc.seed += ix
            if vary_seeds_y:
                pc.seed += iy * x_dim
            if vary_seeds_z:
                pc.seed += iz * x_dim * y_dim
            try:
                res = process_images(pc)
            except RequestError as exc:  # a value the generation refuses: the whole plot is wrong
                raise RequestError("script_args", f"X/Y/Z plot cell {ix + 1},{iy + 1},{iz + 1}: {exc.field}: {exc.message}") from exc
            except Exception as exc:  # A1111: report it, leave the cell empty, go on
                print(f"X/Y/Z plot: generating image for cell {ix + 1},{iy + 1},{iz + 1} failed: {exc!r}")
                res = Processed(p, [], p.seed, "")

            if not res.images:  # failed or interrupted: nothing to describe
                return res
            if grid_infotext[1 + iz] is None and ix == 0 and iy == 0:  # this Z value's grid
                pc.extra_generation_params = {**pc.extra_generation_params, "Script": self.title(),
                                              **axis_params("X", x_opt, x_values, xs), **axis_params("Y", y_opt, y_values, ys)}
                grid_infotext[1 + iz] = processing.create_infotext(pc, pc.all_prompts, pc.all_seeds, pc.all_subseeds)
            if grid_infotext[0] is None and ix == 0 and iy == 0 and iz == 0:  # the grid of grids
                pc.extra_generation_params = {**pc.extra_generation_params, **axis_params("Z", z_opt, z_values, zs)}
                grid_infotext[0] = processing.create_infotext(pc, pc.all_prompts, pc.all_seeds, pc.all_subseeds)
            return res

        restore = any(opt.label == "Checkpoint name" for opt in (x_opt, y_opt, z_opt))
        with SharedSettingsStackHelper(restore):
            processed = draw_xyz_grid(
                p, xs=xs, ys=ys, zs=zs,
                x_labels=[x_opt.format_value(p, x_opt, x) for x in xs],
                y_labels=[y_opt.format_value(p, y_opt, y) for y in ys],
                z_labels=[z_opt.format_value(p, z_opt, z) for z in zs],
                cell=cell, draw_legend=draw_legend, include_lone_images=include_lone_images,
                include_sub_grids=include_sub_grids, first_axes_processed=first_axes_processed,
                second_axes_processed=second_axes_processed, margin_size=margin_size)
        if not processed.images:
            return processed

        z_count = len(zs)
        for i, text in enumerate(grid_infotext):
            if text is not None:
                processed.infotexts[i] = text
        for g in range(z_count + 1):
            processed.images[g].info["parameters"] = processed.infotexts[g]
        if _option("grid_save", True) and not getattr(p, "do_not_save_grid", False) and p.outpath_grids:
            for g in range(z_count + 1 if (include_sub_grids and z_count > 1) else 1):
                images.save_image(processed.images[g], p.outpath_grids, "xyz_grid", info=processed.infotexts[g],
                                  extension=_option("grid_format", "png"), prompt=processed.all_prompts[g],
                                  seed=processed.all_seeds[g], grid=True, p=processed)

        keep = [0]
        if include_sub_grids:
            keep += range(1, z_count + 1)
        if include_lone_images:
            keep += range(z_count + 1, len(processed.images))
        for name in ("images", *PER_PICTURE):
            setattr(processed, name, [getattr(processed, name)[i] for i in keep])
        return processed
