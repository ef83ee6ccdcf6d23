"""Easel's own scripts (repo `scripts/`) through A1111's scripting API: X/Y/Z plot, Prompt matrix,
Prompts from file or textbox, Poor man's outpainting. Over real HTTP against the session's shared
`server` (tiny SD1 loaded), with A1111's `script_name` / `script_args`; plus the pure parts (ranges,
line options, legend layout) called directly. Pictures are 64 px, 1-2 steps."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
from PIL import Image

from modules.core import grid_labels
from modules.core.infotext import parse_infotext

from tests.api_common import BASE, assert_error, decode
from tests.pictures import picture

SMALL = {**BASE, "steps": 1}
LEGEND_LEFT = 64 * 3 // 4  # A1111: row labels take 3/4 of a cell's width


def load_script(name: str):
    """A script file as its own module, the way the script loader imports it."""
    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(f"easel_test_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post(server, path: str, body: dict) -> tuple[list[Image.Image], dict]:
    r = server.post(path, json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"])


def xyz_args(x=(4, "", []), y=(0, "", []), z=(0, "", []), draw_legend=True, include_lone_images=False,
             include_sub_grids=False, no_fixed_seeds=False, vary_seeds=(False, False, False), margin_size=0,
             csv_mode=False) -> list:
    """A1111's X/Y/Z plot script_args: (type index, values, dropdown values) per axis, then the flags."""
    return [*x, *y, *z, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary_seeds,
            margin_size, csv_mode]


def xyz(server, args: list, **fields) -> tuple[list[Image.Image], dict]:
    return post(server, "/sdapi/v1/txt2img", {**SMALL, **fields, "script_name": "X/Y/Z plot", "script_args": args})


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def labels(*texts) -> list[list[grid_labels.GridAnnotation]]:
    return [[grid_labels.GridAnnotation(t)] for t in texts]


def assert_cells_in_grid(grid: Image.Image, cells: list[Image.Image], cols: int, left: int, top: int,
                         margin: int = 0) -> None:
    """Each cell's pixels sit unchanged at its place in the grid (row by row, X fastest)."""
    for i, cell in enumerate(cells):
        col, row = i % cols, i // cols
        x, y = left + col * (cell.width + margin), top + row * (cell.height + margin)
        assert np.array_equal(px(grid.crop((x, y, x + cell.width, y + cell.height))), px(cell)), f"cell {i}"


def has_ink(image: Image.Image, box) -> bool:
    """Dark pixels (label text) in `box` of a white legend band."""
    return bool((px(image.crop(box)).min(axis=2) < 128).any())


# A1111's axis indices on the txt2img tab (its dropdown sends the index)
NOTHING, SEED, STEPS, CFG, PROMPT_SR, SAMPLER, CHECKPOINT, SCHEDULE, ETA, CLIP_SKIP, SIZE = 0, 1, 4, 6, 7, 9, 11, 17, 24, 25, 42
REFINER = 38  # "Refiner checkpoint"
I2I_DENOISING = 25  # the img2img tab has no Hires rows and gains Image CFG Scale


def test_axis_indices_are_a1111s():
    module = load_script("xyz_grid")
    options = module.axis_options_for(False)
    for index, label in ((NOTHING, "Nothing"), (SEED, "Seed"), (STEPS, "Steps"), (CFG, "CFG Scale"),
                         (PROMPT_SR, "Prompt S/R"), (SAMPLER, "Sampler"), (CHECKPOINT, "Checkpoint name"),
                         (SCHEDULE, "Schedule type"), (ETA, "Eta"), (SIZE, "Size")):
        assert options[index].label == label
    assert options[CLIP_SKIP].label == "Clip skip" and options[REFINER].label == "Refiner checkpoint"
    img2img = [o.label for o in module.axis_options_for(True)]
    assert img2img[6] == "Image CFG Scale" and "Hires steps" not in img2img and img2img[I2I_DENOISING] == "Denoising"


@pytest.mark.parametrize("text,kind,expected", [
    ("1-5", int, [1, 2, 3, 4, 5]),
    ("1-10 (+3)", int, [1, 4, 7, 10]),
    ("10-1 (-3)", int, [10, 7, 4, 1]),
    ("1-10 [4]", int, [1, 4, 7, 10]),
    ("1, 3-4, 8", int, [1, 3, 4, 8]),
    ("-1, -1", int, [-1, -1]),
    ("0.5-1 (+0.25)", float, [0.5, 0.75, 1.0]),
    ("1-2 [3]", float, [1.0, 1.5, 2.0]),
    ("5, 7.5", float, [5.0, 7.5]),
    ('red, "red, shiny",blue', str, ["red", "red, shiny", "blue"]),
])
def test_axis_values_are_parsed_as_a1111_does(text, kind, expected):
    module = load_script("xyz_grid")
    opt = module.AxisOption("T", kind, module.do_nothing)
    assert module.parse_axis(None, opt, text, []) == pytest.approx(expected) if kind is float else \
        module.parse_axis(None, opt, text, []) == expected


def test_bad_axis_values_are_refused_with_the_axis_named():
    from modules.core.types import RequestError

    module = load_script("xyz_grid")
    steps = module.AxisOption("Steps", int, module.apply_field("steps"))
    with pytest.raises(RequestError, match="Steps"):
        module.parse_axis(None, steps, "1, two", [])
    skip_early = next(o for o in module.axis_options_for(False) if o.label == "Skip Early CFG")
    with pytest.raises(RequestError, match=r'Skip Early CFG value "1.5" out of range \[0.0, 1.0\]'):
        module.parse_axis(None, skip_early, "0.5, 1.5", [])
    with pytest.raises(RequestError, match="unknown X/Y/Z plot axis 'Colour'"):
        module.resolve_axis(module.axis_options_for(False), "Colour")
    assert module.resolve_axis(module.axis_options_for(False), "steps").label == "Steps"


def test_legend_layout_is_a1111s():
    # font size (w + h) // 25, row labels 3/4 of a cell wide, column labels: text height + 2 line gaps
    left, top = grid_labels.legend_padding(64, 64, labels("Steps: 1", "Steps: 2"), labels("CFG Scale: 5"))
    assert left == 48
    font_size = (64 + 64) // 25
    assert font_size + 2 * (font_size // 2) - 2 <= top <= 2 * font_size + 2 * (font_size // 2)
    assert grid_labels.legend_padding(64, 64, labels("", ""), labels("")) == (0, 0)
    grid = Image.new("RGB", (128, 64), "red")
    out = grid_labels.draw_grid_annotations(grid, 64, 64, labels("Steps: 1", "Steps: 2"), labels("row"), margin=6)
    assert out.size == (48 + 128 + 6, top + 64)
    assert np.array_equal(px(out.crop((48 + 70, top, 48 + 134, top + 64))), px(grid.crop((64, 0, 128, 64))))
    with pytest.raises(ValueError, match="horizontal texts"):
        grid_labels.draw_grid_annotations(grid, 64, 64, labels("only one"), labels("row"))


# ------------------------------------------------------------------------------------ X/Y/Z plot

def test_xyz_grid_is_the_cells_plus_the_legend_and_every_cell_got_its_values(server):
    args = xyz_args(x=(STEPS, "1-2", []), y=(CFG, "5, 7.5", []), include_lone_images=True)
    images, info = xyz(server, args)

    grid, cells = images[0], images[1:]
    assert len(cells) == 4 and all(c.size == (64, 64) for c in cells)
    left, top = grid_labels.legend_padding(64, 64, labels("Steps: 1", "Steps: 2"),
                                           labels("CFG Scale: 5.0", "CFG Scale: 7.5"))
    assert left == LEGEND_LEFT and top > 0
    assert grid.size == (left + 2 * 64, top + 2 * 64)
    assert_cells_in_grid(grid, cells, cols=2, left=left, top=top)
    assert has_ink(grid, (left, 0, grid.width, top)) and has_ink(grid, (0, top, left, grid.height))
    assert px(grid)[0, 0].tolist() == [255, 255, 255]

    # each cell's infotext: X fastest, then Y
    cell_values = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [(v["Steps"], v["CFG scale"]) for v in cell_values] == [("1", "5"), ("2", "5"), ("1", "7.5"), ("2", "7.5")]
    assert {v["Seed"] for v in cell_values} == {str(BASE["seed"])}
    # the grid's infotext names the plot and its axes
    params = parse_infotext(info["infotexts"][0])
    assert params["Script"] == "X/Y/Z plot"
    assert (params["X Type"], params["X Values"], params["Y Type"], params["Y Values"]) == \
        ("Steps", "1-2", "CFG Scale", "5, 7.5")


def test_xyz_margins_apply_between_cells_and_no_legend_is_the_bare_grid(server):
    seeds = (SEED, "1, 2", [])
    images, info = xyz(server, xyz_args(x=seeds, y=(CFG, "5, 6", []), margin_size=10, include_lone_images=True))
    left, top = grid_labels.legend_padding(64, 64, labels("Seed: 1", "Seed: 2"), labels("CFG Scale: 5.0", "CFG Scale: 6.0"))
    assert images[0].size == (left + 2 * 64 + 10, top + 2 * 64 + 10)
    assert_cells_in_grid(images[0], images[1:], cols=2, left=left, top=top, margin=10)
    assert [parse_infotext(t)["Seed"] for t in info["infotexts"][1:]] == ["1", "2", "1", "2"]
    assert parse_infotext(info["infotexts"][0])["Fixed X Values"] == "1, 2"

    bare, _ = xyz(server, xyz_args(x=seeds, draw_legend=False, margin_size=10))
    assert len(bare) == 1 and bare[0].size == (128, 64)


def test_xyz_z_axis_makes_a_grid_of_grids_with_titles(server):
    args = xyz_args(x=(SEED, "3, 4", []), z=(PROMPT_SR, "cube, sphere", []), include_sub_grids=True)
    images, info = xyz(server, args)

    main, subs = images[0], images[1:]
    assert len(subs) == 2
    _, sub_top = grid_labels.legend_padding(64, 64, labels("Seed: 3", "Seed: 4"), labels(""))
    assert all(s.size == (2 * 64, sub_top + 64) for s in subs)  # no Y labels: no left band
    _, title_top = grid_labels.legend_padding(128, sub_top + 64, labels("cube", "sphere"), labels(""))
    assert main.size == (2 * 128, title_top + sub_top + 64)
    assert_cells_in_grid(main, subs, cols=2, left=0, top=title_top)
    assert has_ink(main, (0, 0, main.width, title_top))
    assert not np.array_equal(px(subs[0]), px(subs[1]))  # another prompt, other pictures

    main_params, sub_params = parse_infotext(info["infotexts"][0]), [parse_infotext(t) for t in info["infotexts"][1:]]
    assert (main_params["Z Type"], main_params["Z Values"]) == ("Prompt S/R", "cube, sphere")
    assert all(p["X Type"] == "Seed" and "Z Type" not in p for p in sub_params)
    prompts = [t.split("\n")[0] for t in info["infotexts"][1:]]
    assert prompts == ["a red cube on a table", "a red sphere on a table"]


def test_xyz_prompt_sr_values_may_hold_commas_in_quotes(server):
    args = xyz_args(x=(PROMPT_SR, 'red, "red, shiny", blue', []), include_lone_images=True)
    images, info = xyz(server, args)
    assert len(images) == 4
    assert [t.split("\n")[0] for t in info["infotexts"][1:]] == [
        "a red cube on a table", "a red, shiny cube on a table", "a blue cube on a table"]


def test_xyz_sampler_schedule_and_size_axes(server):
    args = xyz_args(x=(SAMPLER, "", ["Euler", "Heun"]), y=(SCHEDULE, "", ["Uniform", "Karras"]),
                    z=(SIZE, "64x64, 96x64", []), include_lone_images=True)
    images, info = xyz(server, args)
    cells = images[1:]
    assert len(cells) == 8
    values = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [(v["Sampler"], v["Schedule type"], v["Size"]) for v in values] == [
        (s, k, size) for size in ("64x64", "96x64") for k in ("Uniform", "Karras") for s in ("Euler", "Heun")]
    assert [c.size for c in cells] == [(64, 64)] * 4 + [(96, 64)] * 4
    # one X/Y grid per size, their legends scaled to their cells; side by side in cells as large as the larger
    assert images[0].width == 2 * (96 * 3 // 4 + 2 * 96)
    assert parse_infotext(info["infotexts"][0])["X Values"] == "Euler,Heun"


def test_xyz_seeds_fixed_once_or_kept_random_and_clip_skip_axis(server):
    args = dict(x=(CFG, "5, 6", []), y=(CLIP_SKIP, "1, 2", []), include_lone_images=True)
    _, fixed = xyz(server, xyz_args(**args), seed=-1)
    cells = [parse_infotext(t) for t in fixed["infotexts"][1:]]
    assert len({c["Seed"] for c in cells}) == 1 and cells[0]["Seed"] != "-1"  # one seed drawn for the plot
    assert [c.get("Clip skip") for c in cells] == [None, None, "2", "2"]  # A1111 writes it from 2 on
    _, kept = xyz(server, xyz_args(**args, no_fixed_seeds=True), seed=-1)
    assert len({parse_infotext(t)["Seed"] for t in kept["infotexts"][1:]}) == 4  # "Keep -1 for seeds"


def test_xyz_on_img2img_with_the_denoising_axis_and_varied_seeds(server):
    from tests.pictures import b64

    body = {**SMALL, "init_images": [b64(picture())], "script_name": "X/Y/Z plot",
            "script_args": xyz_args(x=(I2I_DENOISING, "0.3, 0.6", []), vary_seeds=(True, False, False),
                                    include_lone_images=True)}
    images, info = post(server, "/sdapi/v1/img2img", body)
    assert len(images) == 3
    cells = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [(c["Denoising strength"], c["Seed"]) for c in cells] == [("0.3", "1234"), ("0.6", "1235")]
    assert parse_infotext(info["infotexts"][0])["X Type"] == "Denoising"


def test_xyz_checkpoint_axis_loads_each_checkpoint_and_puts_the_selected_one_back(server):
    models = server.get("/sdapi/v1/sd-models").json()
    titles = {m["model_name"]: m["title"] for m in models if m["filename"].endswith(".safetensors")}
    before = server.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert before == titles["tiny-sd1"]
    chosen = [titles["tiny-sd1"], titles["tiny-sd1-inpainting"]]
    log_start = len(server.output())
    images, info = xyz(server, xyz_args(x=(CHECKPOINT, "", chosen), include_lone_images=True))

    cells = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [c["Model"] for c in cells] == ["tiny-sd1", "tiny-sd1-inpainting"]
    assert "Conditional mask weight" in cells[1] and "Conditional mask weight" not in cells[0]
    # the inpainting model was loaded for its cell, then the selected one again, before anything else ran
    # found anywhere in a line: the console's progress bars (stderr, merged here) redraw themselves
    # around it with \r and cursor movements
    loads = re.findall(r"Model loaded: (\S+)", server.output()[log_start:])
    assert loads[-2:] == ["tiny-sd1-inpainting.safetensors", "tiny-sd1.safetensors"]
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before


@pytest.mark.parametrize("args,hint", [
    (xyz_args(x=(SAMPLER, "", ["No such sampler"])), "Unknown sampler"),
    (xyz_args(x=(REFINER, "None, no-such-model", [])), "Unknown checkpoint: no-such-model"),
    (xyz_args(x=(STEPS, "1, lots", [])), "Steps"),
    (xyz_args(x=(PROMPT_SR, "dragon, cat", [])), "did not find dragon"),
    (xyz_args(x=(99, "1", [])), "out of range"),
], ids=["sampler", "unknown-refiner", "not-a-number", "prompt-sr-missing", "axis-index"])
def test_bad_xyz_requests_are_a_422_naming_script_args(server, args, hint):
    r = server.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "X/Y/Z plot", "script_args": args})
    assert hint in assert_error(r, "script_args", status=(422,))


# ------------------------------------------------------------------------------------ Prompt matrix

def test_prompt_matrix_makes_every_combination_in_a_labelled_grid(server):
    body = {**SMALL, "prompt": "a cube|red|at night", "script_name": "Prompt matrix",
            "script_args": [False, False, "positive", "comma", 0]}
    images, info = post(server, "/sdapi/v1/txt2img", body)

    grid, pictures = images[0], images[1:]  # as A1111: the grid leads, with the first picture's infotext
    assert len(pictures) == 2 ** 2 and info["index_of_first_image"] == 1
    assert info["all_prompts"] == ["a cube", "a cube, red", "a cube, at night", "a cube, red, at night"]
    assert [t.split("\n")[0] for t in info["infotexts"]] == info["all_prompts"][:1] + info["all_prompts"]
    assert info["all_seeds"] == [BASE["seed"]] * 4
    hor, ver = grid_labels.prompt_matrix_annotations(["a cube", "red", "at night"])
    left, top = grid_labels.legend_padding(64, 64, hor, ver)
    assert left == LEGEND_LEFT and grid.size == (left + 2 * 64, top + 2 * 64)
    assert_cells_in_grid(grid, pictures, cols=2, left=left, top=top)


def test_prompt_matrix_options_start_seeds_negative_space(server):
    body = {**SMALL, "prompt": "a cube|red", "script_name": "prompt matrix",
            "script_args": [True, True, "positive", "space", 6]}
    images, info = post(server, "/sdapi/v1/txt2img", body)
    assert info["all_prompts"] == ["a cube", "red a cube"]
    assert info["all_seeds"] == [BASE["seed"], BASE["seed"] + 1]
    _, top = grid_labels.legend_padding(64, 64, *grid_labels.prompt_matrix_annotations(["a cube", "red"]))
    assert images[0].size == (2 * 64 + 6, top + 64)  # one row, no row labels, a 6 px margin between
    assert_cells_in_grid(images[0], images[1:], cols=2, left=0, top=top, margin=6)

    body = {**SMALL, "negative_prompt": "blurry|ugly|dark", "batch_size": 3, "script_name": "Prompt matrix",
            "script_args": [False, False, "negative", "comma", 0]}  # 4 pictures: batches of 2, not 3
    images, info = post(server, "/sdapi/v1/txt2img", body)
    assert len(images) == 5 and info["all_prompts"] == [SMALL["prompt"]] * 4
    assert info["all_negative_prompts"] == ["blurry", "blurry, ugly", "blurry, dark", "blurry, ugly, dark"]


# ------------------------------------------------------------------------------------ Prompts from file

def test_prompt_lines_with_options_are_parsed_as_a1111_does():
    module = load_script("prompts_from_file")
    line = '--prompt "a blue cube" on grass --steps 10 --cfg_scale 5 --seed 7 --sampler_name "DPM++ 2M" --tiling true'
    assert module.cmdargs(line) == {"prompt": "a blue cube on grass", "steps": 10, "cfg_scale": 5.0, "seed": 7,
                                    "sampler_name": "DPM++ 2M", "tiling": True}
    assert module.cmdargs("--sampler_index 1 --width 96 --restore_faces True") == {
        "sampler_name": "Euler", "width": 96, "restore_faces": False}  # only "true" is true, as in A1111
    for bad in ("--colour red", "--steps", "--steps many", '--prompt "unclosed'):
        with pytest.raises(ValueError):
            module.cmdargs(bad)
    jobs = module.parse_lines("a cat\n\n  a dog -- on a sofa  \n--prompt x --n_iter 2\n")
    assert jobs == [{"prompt": "a cat"}, {"prompt": "a dog -- on a sofa"}, {"prompt": "x", "n_iter": 2}]
    # an uploaded file fills the textbox, its lines trimmed
    cleared, update = module.load_prompt_file(b"  a cat \r\n--prompt dog --steps 3\n")
    assert cleared is None and update["value"] == "a cat\n--prompt dog --steps 3\n"


def test_prompts_from_file_runs_one_job_per_line(server):
    lines = ("a red cube\n--prompt \"a blue ball\" --steps 1 --cfg_scale 5 --seed 7 --width 96\n"
             "--prompt green --sd_model tiny-sd1-inpainting --steps 1\n")
    body = {**BASE, "prompt": "", "script_name": "Prompts from file or textbox",
            "script_args": [False, False, "start", lines]}
    images, info = post(server, "/sdapi/v1/txt2img", body)
    assert [im.size for im in images] == [(64, 64), (96, 64), (64, 64)]
    first, second, third = (parse_infotext(t) for t in info["infotexts"])
    assert (first["Model"], third["Model"]) == ("tiny-sd1", "tiny-sd1-inpainting")
    assert info["infotexts"][0].startswith("a red cube\n") and info["infotexts"][1].startswith("a blue ball\n")
    assert (first["Steps"], first["CFG scale"], first["Seed"]) == ("2", "7", str(BASE["seed"]))
    assert (second["Steps"], second["CFG scale"], second["Seed"]) == ("1", "5", "7")


def test_prompts_from_file_seed_options_and_prompt_position(server):
    body = {**SMALL, "script_name": "Prompts from file or textbox", "script_args": [True, False, "end", "one\ntwo\nthree"]}
    _, info = post(server, "/sdapi/v1/txt2img", body)
    assert info["all_seeds"] == [BASE["seed"], BASE["seed"] + 1, BASE["seed"] + 2]
    assert info["all_prompts"] == [f"{SMALL['prompt']} {w}" for w in ("one", "two", "three")]

    body = {**SMALL, "seed": -1, "script_name": "Prompts from file or textbox", "script_args": [False, True, "start", "a\nb"]}
    _, info = post(server, "/sdapi/v1/txt2img", body)
    assert len(set(info["all_seeds"])) == 1 and info["all_seeds"][0] != -1

    r = server.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Prompts from file or textbox",
                                               "script_args": [False, False, "start", "--steps lots"]})
    assert "line 1" in assert_error(r, "script_args", status=(422,))


# ------------------------------------------------------------------------------------ outpainting

def test_outpainting_script_grows_the_canvas_upwards(server):
    from tests.pictures import b64

    body = {**BASE, "init_images": [b64(picture())], "denoising_strength": 0.8,
            "script_name": "Poor man's outpainting", "script_args": [24, 4, 2, ["up"]]}
    images, info = post(server, "/sdapi/v1/img2img", body)
    assert images[0].size == (64, 88)
    out, old = np.asarray(images[0], dtype=np.int16), np.asarray(picture(), dtype=np.int16)
    assert np.array_equal(out[-16:], old[-16:])  # the bottom, far from the blend band, is the old picture
    assert "Masked content: latent noise" in info["infotexts"][0]


def test_outpainting_is_listed_for_img2img_only_with_a1111s_arguments(server):
    listed = server.get("/sdapi/v1/scripts").json()
    assert "poor man's outpainting" in listed["img2img"] and "poor man's outpainting" not in listed["txt2img"]
    assert {"x/y/z plot", "prompt matrix", "prompts from file or textbox"} <= set(listed["txt2img"])
    info = {s["name"]: s for s in server.get("/sdapi/v1/script-info").json() if s["is_img2img"]}
    args = info["poor man's outpainting"]["args"]
    assert [a["label"] for a in args] == ["Pixels to expand", "Mask blur", "Masked content", "Outpainting direction"]
    assert args[0]["value"] == 128 and args[3]["value"] == ["left", "right", "up", "down"]
