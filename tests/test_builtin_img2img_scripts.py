"""Easel's img2img scripts after A1111's built-in ones: SD upscale, Loopback, Outpainting mk2.
Over real HTTP against the session's shared `server` (tiny SD1 loaded) with A1111's `script_name` /
`script_args` in A1111's order; the pure parts (tiles and their blending, the denoising curve,
matched noise) called directly. Pictures are 64 px, 1-2 steps."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image

from modules.core import matched_noise
from modules.core.infotext import parse_infotext
from modules.core.types import RequestError

from tests.api_common import BASE, assert_error
from tests.pictures import b64, picture
from tests.test_builtin_scripts import load_script, post

SMALL = {**BASE, "steps": 1}
INIT = picture(64, 64)


def img2img(server, title: str, args: list, **fields):
    body = {**SMALL, "init_images": [b64(INIT)], "denoising_strength": 0.5, **fields,
            "script_name": title, "script_args": args}
    return post(server, "/sdapi/v1/img2img", body)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------------ SD upscale

def test_tiles_cover_the_picture_and_overlaps_blend_linearly():
    sd_upscale = load_script("sd_upscale")
    from modules import images

    source = Image.new("RGB", (128, 128))
    grid = sd_upscale.tile_grid(source, 64, 64, 16)
    assert (len(grid.tiles), len(grid.tiles[0][2])) == (3, 3)  # ceil((128 - 16) / (64 - 16))
    assert [y for y, _h, _row in grid.tiles] == [0, 32, 64] and [x for x, _w, _t in grid.tiles[0][2]] == [0, 32, 64]

    # untouched tiles put back: the same picture, no seam anywhere
    image = picture(128, 128)
    same = sd_upscale.tile_grid(image, 64, 64, 16)
    assert np.array_equal(px(images.combine_grid(same)), px(image))

    # tiles painted in flat colours: each overlap is a ramp from the earlier tile's colour to the later's
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    for _y, _h, row in grid.tiles:
        for col, tile in enumerate(row):
            tile[2] = Image.new("RGB", (64, 64), colours[col])
    combined = px(images.combine_grid(grid))
    first_row = combined[0]
    assert first_row[31].tolist() == [200, 0, 0] and first_row[127].tolist() == [0, 0, 200]
    band = first_row[32:48]  # tiles 0 and 1 overlap at x 32..47: red falls as green rises, step by step
    assert band[0].tolist() == [200, 0, 0] and band[-1].tolist() == [0, 200, 0]
    assert (np.diff(band[:, 0]) <= 0).all() and (np.diff(band[:, 1]) >= 0).all()
    assert (np.abs(band[:, 0] + band[:, 1] - 200) <= 2).all()  # a blend, never darker or brighter
    assert np.abs(np.diff(combined.astype(float), axis=1)).max() <= 200 / 15 + 1  # no jump anywhere

    with pytest.raises(RequestError, match="overlap"):
        sd_upscale.tile_grid(source, 64, 64, 64)


def test_upscaler_is_taken_by_index_or_name():
    sd_upscale = load_script("sd_upscale")
    names = sd_upscale.upscaler_names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert sd_upscale.resolve_upscaler(1) == "Lanczos" and sd_upscale.resolve_upscaler("lanczos") == "Lanczos"
    assert sd_upscale.resolve_upscaler(2.0) == "Nearest"
    for bad in ("Bicubic-ish", len(names), -1, True, None):
        with pytest.raises(RequestError, match="upscaler"):
            sd_upscale.resolve_upscaler(bad)


def test_sd_upscale_paints_each_tile_and_blends_the_overlaps(server):
    from modules import images as a1111_images
    from modules.core import upscaling

    log_start = len(server.output())
    # 80 px tiles over the 128 px enlargement, 32 overlapping: 2 x 2 tiles at 0 and 48
    out, info = img2img(server, "SD upscale", ["", 32, "Lanczos", 2.0], width=80, height=80, denoising_strength=0.6)
    assert len(out) == 1 and out[0].size == (128, 128)  # scale 2 of 64 px
    assert "tiled as 2x2" in server.output()[log_start:]
    params = parse_infotext(info["infotexts"][0])
    assert (params["SD upscale overlap"], params["SD upscale upscaler"]) == ("32", "Lanczos")
    assert (params["Size"], params["Denoising strength"], params["Seed"]) == ("80x80", "0.6", str(BASE["seed"]))
    enlarged = upscaling.upscale_image(INIT, 128, 128, "Lanczos")
    assert np.abs(px(out[0]) - px(enlarged)).mean() > 5  # painted, not just enlarged

    # each tile is img2img of its piece of the enlargement, with the next seed (row by row)
    grid = a1111_images.split_grid(enlarged, 80, 80, 32)
    tiles = [t for _y, _h, row in grid.tiles for t in row]
    for k, tile in enumerate(tiles):
        painted, _ = post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [b64(tile[2])], "width": 80,
                                                        "height": 80, "denoising_strength": 0.6,
                                                        "seed": BASE["seed"] + k})
        tile[2] = painted[0]
    result = px(out[0])
    assert np.array_equal(result[:48, :48], px(tiles[0][2])[:48, :48])  # the corner only tile 0 covers
    assert np.array_equal(result[80:, 80:], px(tiles[3][2])[32:, 32:])
    # the overlap between the top tiles: a blend of the two, from the left one to the right one
    left, right = px(tiles[0][2])[:48, 48:80], px(tiles[1][2])[:48, :32]
    band = result[:48, 48:80]
    low, high = np.minimum(left, right) - 1, np.maximum(left, right) + 1
    assert ((band >= low) & (band <= high)).all()
    assert np.abs(band[:, 0] - left[:, 0]).max() <= 1 and np.abs(band[:, -1] - right[:, -1]).max() <= 1
    assert np.abs(band[:, 16] - right[:, 16]).mean() > 2 and np.abs(band[:, 16] - left[:, 16]).mean() > 2
    # the whole picture is the tiles put together by the blend (no seam left anywhere)
    assert np.abs(result - px(a1111_images.combine_grid(grid))).max() <= 1

    # no overlap: the tiles meet edge to edge
    log_start = len(server.output())
    hard, _ = img2img(server, "SD upscale", ["", 0, "Lanczos", 2.0], denoising_strength=0.6)
    assert hard[0].size == (128, 128) and "tiled as 2x2" in server.output()[log_start:]


def test_sd_upscale_batch_count_upscales_again_with_the_next_seed_and_none_keeps_the_size(server):
    images, info = img2img(server, "SD upscale", ["", 16, 0, 2.0], n_iter=2, batch_size=2)
    assert [im.size for im in images] == [(64, 64), (64, 64)]  # "None": re-tiled at its own size
    assert info["all_seeds"] == [BASE["seed"], BASE["seed"] + 1]
    assert not np.array_equal(px(images[0]), px(images[1]))
    assert parse_infotext(info["infotexts"][0])["SD upscale upscaler"] == "None"


# ------------------------------------------------------------------------------------ Loopback

@pytest.mark.parametrize("curve,expected", [
    ("Linear", [0.3, 0.6, 0.9]),
    ("Aggressive", [0.3, 0.3 + 0.6 * math.sin(math.pi / 4), 0.9]),
    ("Lazy", [0.3, 0.3 + 0.6 * (1 - math.cos(math.pi / 4)), 0.9]),
])
def test_denoising_curves(curve, expected):
    loopback = load_script("loopback")
    assert loopback.denoising_strengths(0.3, 0.9, 3, curve) == pytest.approx(expected)
    assert loopback.denoising_strengths(0.3, 0.9, 1, curve) == [0.3]


def test_loopback_feeds_each_picture_to_the_next_loop(server):
    images, info = img2img(server, "Loopback", [3, 0.9, "Linear"], denoising_strength=0.3)
    grid, pictures = images[0], images[1:]
    assert len(pictures) == 3 and info["index_of_first_image"] == 1  # the grid leads
    assert grid.size == (3 * 64, 64)
    for i, picture_ in enumerate(pictures):
        assert np.array_equal(px(grid.crop((64 * i, 0, 64 * i + 64, 64))), px(picture_))
    params = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [float(p["Denoising strength"]) for p in params] == pytest.approx([0.3, 0.6, 0.9])
    assert [p["Seed"] for p in params] == [str(BASE["seed"] + i) for i in range(3)]
    assert all(p["Final denoising strength"] == "0.9" and p["Denoising curve"] == "Linear" for p in params)

    # loop 2 is img2img of loop 1's picture with loop 2's seed and strength
    again, _ = post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [b64(pictures[0])],
                                                  "denoising_strength": 0.6, "seed": BASE["seed"] + 1})
    assert np.array_equal(px(again[0]), px(pictures[1]))
    # and not of the init picture
    fresh, _ = post(server, "/sdapi/v1/img2img", {**SMALL, "init_images": [b64(INIT)],
                                                  "denoising_strength": 0.6, "seed": BASE["seed"] + 1})
    assert not np.array_equal(px(fresh[0]), px(pictures[1]))


def test_loopback_appends_each_loops_deepbooru_tags_to_the_prompt(server):
    """A1111's "Append interrogated prompt at each iteration": DeepBooru tags of each loop's init
    picture after the job's prompt; CLIP and a missing DeepBooru file are refused by name."""
    from tests.fixtures.tiny_interrogators import write_deepbooru

    folder = server.data_dir / "models" / "torch_deepdanbooru"
    had = {p.name: p.read_bytes() for p in folder.glob("*.pt")} if folder.is_dir() else {}
    try:
        for p in folder.glob("*.pt") if folder.is_dir() else []:
            p.unlink()
        r = server.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(INIT)], "script_name": "Loopback",
                                                   "script_args": [2, 0.5, "Linear", "DeepBooru"]})
        assert "model-resnet_custom_v3.pt" in assert_error(r, "script_args", status=(422,))
        r = server.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(INIT)], "script_name": "Loopback",
                                                   "script_args": [2, 0.5, "Linear", "CLIP"]})
        assert "CLIP" in assert_error(r, "script_args", status=(422,))

        write_deepbooru(server.data_dir / "models")
        server.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 0.0})
        pictures, info = img2img(server, "Loopback", [2, 0.5, "Linear", "DeepBooru"], denoising_strength=0.3)
        prompts = [parse_infotext(t)["Prompt"] for t in info["infotexts"][1:]]
        assert len(prompts) == 2
        for i, prompt in enumerate(prompts):
            head, _, tags = prompt.partition(", ")
            assert head == SMALL["prompt"] and tags, prompt
        first = server.post("/sdapi/v1/interrogate", json={"image": b64(INIT), "model": "deepdanbooru"}).json()
        assert prompts[0] == f"{SMALL['prompt']}, {first['caption']}"  # loop 1: the init picture's tags
        second = server.post("/sdapi/v1/interrogate", json={"image": b64(pictures[1]), "model": "deepdanbooru"}).json()
        assert prompts[1] == f"{SMALL['prompt']}, {second['caption']}"  # loop 2: loop 1's picture's
    finally:
        server.post("/sdapi/v1/options", json={"interrogate_deepbooru_score_threshold": 0.5})
        for p in folder.glob("*.pt"):
            p.unlink()
        for name, data in had.items():
            (folder / name).write_bytes(data)


def test_loopback_curve_and_batch_count(server):
    _, info = img2img(server, "Loopback", [3, 0.9, "Aggressive"], denoising_strength=0.3)
    strengths = [float(parse_infotext(t)["Denoising strength"]) for t in info["infotexts"][1:]]
    assert strengths == pytest.approx([0.3, 0.3 + 0.6 * math.sin(math.pi / 4), 0.9], abs=0.01)

    # batch count 2: each run starts from the init picture again; its last picture is kept
    images, info = img2img(server, "Loopback", [2, 0.5, "Lazy"], denoising_strength=0.3, n_iter=2)
    assert len(images) == 3  # grid + one picture per run
    params = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [(p["Seed"], float(p["Denoising strength"])) for p in params] == \
        [(str(BASE["seed"] + 1), 0.5), (str(BASE["seed"] + 3), 0.5)]


# ------------------------------------------------------------------------------------ Outpainting mk2

def test_matched_noise_keeps_the_known_part_and_takes_its_colours():
    image = np.asarray(picture(64, 64), dtype=np.float64) / 255
    mask = np.zeros((64, 64))
    mask[:, 40:] = 1.0
    image[:, 40:] = 0.0
    out = matched_noise.matched_noise(image, mask, 1.0, 0.05)
    assert np.array_equal(out[:, :40], image[:, :40])
    known, filled = image[:, :40].reshape(-1, 3), out[:, 40:].reshape(-1, 3)
    assert np.abs(filled.mean(0) - known.mean(0)).max() < 0.02  # the known part's colours, not black
    assert np.abs(np.sort(filled[:, 0])[[0, -1]] - np.sort(known[:, 0])[[0, -1]]).max() < 0.05
    assert np.array_equal(out, matched_noise.matched_noise(image, mask, 1.0, 0.05))  # fixed seed

    def roughness(falloff):
        fill = matched_noise.matched_noise(image, mask, falloff, 0.05)[:, 40:]
        return np.abs(np.diff(fill, axis=1)).mean()

    assert roughness(0.0) > roughness(2.0)  # a lower fall-off exponent: finer detail
    with pytest.raises(ValueError):
        matched_noise.matched_noise(image, mask[:10], 1.0, 0.05)


@pytest.mark.parametrize("directions,size,offset", [
    (["up"], (64, 80), (0, 16)),
    (["left", "right"], (96, 64), (16, 0)),
    (["left", "right", "up", "down"], (96, 96), (16, 16)),
])
def test_outpainting_mk2_grows_each_chosen_side_and_keeps_the_picture(server, directions, size, offset):
    images, info = img2img(server, "Outpainting mk2", ["", 16, 0, directions, 1.0, 0.05], denoising_strength=0.8)
    assert len(images) == 1 and images[0].size == size
    out = px(images[0])
    x, y = offset
    assert np.array_equal(out[y:y + 64, x:x + 64], px(INIT))  # mask blur 0: the old picture exactly
    new = np.ones(out.shape[:2], bool)
    new[y:y + 64, x:x + 64] = False
    assert out[new].std() > 2  # the new strips are painted, not flat
    assert parse_infotext(info["infotexts"][0])["Size"] == f"{size[0]}x{size[1]}"


def test_outpainting_mk2_blends_into_the_old_picture_and_counts_one_job_per_side(server):
    images, _ = img2img(server, "Outpainting mk2", ["", 16, 2, ["down"], 1.0, 0.5], denoising_strength=0.8)
    out, old = px(images[0]), px(INIT)
    assert images[0].size == (64, 80)
    assert np.array_equal(out[:16], old[:16])  # far from the band: kept
    assert not np.array_equal(out[60:64], old[60:64])  # the 2 * mask_blur band at the old edge is repainted


# ------------------------------------------------------------------------------------ listing and errors

def test_scripts_are_listed_for_img2img_with_a1111s_controls(server):
    listed = server.get("/sdapi/v1/scripts").json()
    for name in ("sd upscale", "loopback", "outpainting mk2"):
        assert name in listed["img2img"] and name not in listed["txt2img"]
    info = {s["name"]: s for s in server.get("/sdapi/v1/script-info").json() if s["is_img2img"]}
    labels = {name: [a["label"] for a in info[name]["args"]] for name in ("sd upscale", "loopback", "outpainting mk2")}
    assert labels["sd upscale"][1:] == ["Tile overlap", "Upscaler", "Scale Factor"]
    assert labels["loopback"] == ["Loops", "Final denoising strength", "Denoising strength curve",
                                  "Append interrogated prompt at each iteration"]
    assert labels["outpainting mk2"][1:] == ["Pixels to expand", "Mask blur", "Outpainting direction",
                                             "Fall-off exponent (lower=higher detail)", "Color variation"]
    upscale_args = info["sd upscale"]["args"]
    assert upscale_args[1]["value"] == 64 and upscale_args[3]["value"] == 2.0
    assert upscale_args[2]["choices"][:2] == ["None", "Lanczos"]


@pytest.mark.parametrize("title,args,hint", [
    ("SD upscale", ["", 8, "Bicubic-ish", 2.0], "upscaler (3rd)"),
    ("SD upscale", ["", 64, "Lanczos", 2.0], "overlap"),
    ("SD upscale", ["", 8, "Lanczos", "big"], "scale factor (4th)"),
    ("Loopback", [0, 0.5, "Linear"], "loops (1st)"),
    ("Loopback", [2, 1.5, "Linear"], "final denoising strength (2nd)"),
    ("Loopback", [2, 0.5, "Wavy"], "curve (3rd)"),
    ("Outpainting mk2", ["", 16, 4, ["north"], 1.0, 0.05], "direction (4th)"),
    ("Outpainting mk2", ["", 4, 4, ["up"], 1.0, 0.05], "pixels"),
    ("Outpainting mk2", ["", 16, 4, ["up"], 1.0, 2], "color variation (6th)"),
], ids=lambda v: re.sub(r"\W+", "-", v) if isinstance(v, str) else None)
def test_bad_script_args_are_a_422_naming_script_args(server, title, args, hint):
    r = server.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(INIT)], "script_name": title,
                                               "script_args": args})
    assert hint in assert_error(r, "script_args", status=(422,))


def test_the_img2img_tab_has_the_controls_with_a1111s_element_ids(server):
    components = server.get("/config").json()["components"]
    ids = {c["props"].get("elem_id") for c in components}
    for elem_id in ("script_sd_upscale_overlap", "script_sd_upscale_scale_factor", "script_sd_upscale_upscaler_index",
                    "script_loopback_loops", "script_loopback_final_denoising_strength",
                    "script_loopback_denoising_curve", "script_outpainting_mk2_pixels",
                    "script_outpainting_mk2_mask_blur", "script_outpainting_mk2_direction",
                    "script_outpainting_mk2_noise_q", "script_outpainting_mk2_color_variation",
                    *(f"script_img2img_alternative_test_{name}" for name in (
                        "override_sampler", "override_prompt", "original_prompt", "original_negative_prompt",
                        "override_steps", "st", "override_strength", "cfg", "randomness", "sigma_adjustment"))):
        assert elem_id in ids, elem_id
    labels = {c["props"].get("label") for c in components}
    assert "Override `Denoising strength` to 1?" in labels
    loopback = next(c["props"] for c in components if c["props"].get("elem_id") == "script_loopback_append_interrogation")
    assert loopback["label"] == "Append interrogated prompt at each iteration"
    assert [c[0] if isinstance(c, (list, tuple)) else c for c in loopback["choices"]] == ["None", "CLIP", "DeepBooru"]
    upscaler = next(c["props"] for c in components if c["props"].get("elem_id") == "script_sd_upscale_upscaler_index")
    assert [choice[0] if isinstance(choice, (list, tuple)) else choice for choice in upscaler["choices"]][:2] == \
        ["None", "Lanczos"]


# ------------------------------------------------------------------------ img2img alternative test

def _a1111_find_noise(external, call, alphas_cumprod, x, cond, uncond, cfg, steps, sigma_adjustment):
    """A1111's find_noise_for_image(_sigma_adjustment) on k-diffusion's CompVisDenoiser, written
    from its contract (scripts/img2imgalt.py): the reference for Easel's inversion."""
    import types as _types

    dnw = external.CompVisDenoiser(_types.SimpleNamespace(alphas_cumprod=alphas_cumprod))
    sigmas = dnw.get_sigmas(steps).flip(0)
    s_in = x.new_ones([x.shape[0]])
    for i in range(1, len(sigmas)):
        at = sigmas[i - 1] if sigma_adjustment else sigmas[i]
        c_out, c_in = [k.reshape(-1, 1, 1, 1) for k in dnw.get_scalings(at * s_in)]
        t = dnw.sigma_to_t((sigmas[i] if sigma_adjustment and i == 1 else at) * s_in)
        den_u, den_c = (x + call(x * c_in, t, c) * c_out for c in (uncond, cond))
        denoised = den_u + (den_c - den_u) * cfg
        if sigma_adjustment:
            d = (x - denoised) / (2 * sigmas[i] if i == 1 else sigmas[i - 1])
        else:
            d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i] - sigmas[i - 1])
    return x / sigmas[-1] if sigma_adjustment else x / x.std()


@pytest.mark.parametrize("sigma_adjustment", [False, True])
def test_the_noise_found_is_a1111s_on_k_diffusions_denoiser(sd1, sigma_adjustment):
    import torch

    from modules.core import model_ops, noise_inversion
    from modules.core.scheduled_conditioning import ScheduledConditioning
    from modules.core.sigma_schedules import TrainingSigmas
    from tests.k_reference import _load_k_diffusion

    _sampling, external = _load_k_diffusion()
    training = TrainingSigmas.from_config()
    call = model_ops.denoiser(sd1)
    conditioner = sd1.family.conditioner(sd1)
    cond, uncond = ScheduledConditioning(conditioner, ["a red house"], ["blurry"], 1, 64, 64).cond_for_step(0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    easel = noise_inversion.find_noise(
        noise_inversion.EpsilonOrV(call, training, "epsilon", cond, uncond, 2.5), x,
        noise_inversion.inversion_sigmas(6, training), sigma_adjustment=sigma_adjustment)
    with torch.no_grad():
        reference = _a1111_find_noise(external, call, training.alphas_cumprod, x, cond, uncond, 2.5, 6, sigma_adjustment)
    assert easel.shape == x.shape
    assert torch.allclose(easel, reference, atol=1e-4, rtol=1e-4), (easel - reference).abs().max()
    if not sigma_adjustment:
        assert abs(float(easel.std()) - 1.0) < 1e-5


ALT = "img2img alternative test"


def alt_args(prompt, negative, cfg, steps, randomness, sigma_adjustment, *, override_sampler=False,
             override_prompt=False, override_steps=False, override_strength=False):
    """A1111's 11 script_args: [info, override_sampler, override_prompt, original_prompt,
    original_negative_prompt, override_steps, st, override_strength, cfg, randomness, sigma_adjustment]."""
    return [None, override_sampler, override_prompt, prompt, negative, override_steps, steps, override_strength,
            cfg, randomness, sigma_adjustment]


def _alt(server, args, **fields):
    return img2img(server, ALT, args, **{"denoising_strength": 1.0, "steps": 4, "sampler_name": "Euler", **fields})


def test_img2img_alternative_test_starts_from_the_pictures_noise(server):
    args = alt_args("a red circle", "", 1.0, 4, 0.0, False)
    first, info = _alt(server, args, seed=11)
    again, _ = _alt(server, args, seed=12345)
    # randomness 0: the start is the picture's own noise, the seed plays no part
    assert np.array_equal(px(first[0]), px(again[0]))
    text = info["infotexts"][0]
    for part in ("Decode prompt: a red circle", "Decode CFG scale: 1.0", "Decode steps: 4", "Randomness: 0.0",
                 "Sigma Adjustment: False"):
        assert part in text, (part, text)
    assert len(first) == 1 and info["seed"] == 11
    listed = {s["name"]: s for s in server.get("/sdapi/v1/script-info").json() if s["is_img2img"]}
    assert [a["label"] for a in listed[ALT]["args"]] == [
        "", "Override `Sampling method` to Euler?(this method is built for it)",
        "Override `prompt` to the same value as `original prompt`?(and `negative prompt`)",
        "Original prompt", "Original negative prompt",
        "Override `Sampling Steps` to the same value as `Decode steps`?", "Decode steps",
        "Override `Denoising strength` to 1?", "Decode CFG scale", "Randomness",
        "Sigma adjustment for finding noise for image"]
    assert [a["value"] for a in listed[ALT]["args"]][1:] == [True, True, None, None, True, 50, True, 1.0, 0.0, False]

    # randomness: fresh noise from seed + 1 mixed in, so the seed counts again
    mixed_a, _ = _alt(server, alt_args("a red circle", "", 1.0, 4, 0.5, False), seed=11)
    mixed_b, _ = _alt(server, alt_args("a red circle", "", 1.0, 4, 0.5, False), seed=12)
    assert not np.array_equal(px(mixed_a[0]), px(mixed_b[0]))
    assert not np.array_equal(px(mixed_a[0]), px(first[0]))

    # the other inversion and a DPM++ scheduler (VP-scaled noising) run too, one picture each
    adjusted, info_adj = _alt(server, alt_args("a red circle", "blurry", 2.0, 3, 0.0, True), sampler_name="DPM++ 2M",
                              batch_size=2, n_iter=2)
    assert len(adjusted) == 1 and "Sigma Adjustment: True" in info_adj["infotexts"][0]
    assert "Sampler: DPM++ 2M" in info_adj["infotexts"][0]


def test_img2img_alternative_test_takes_an_a1111_clients_eleven_args(server):
    """An A1111 client's call: the info's value first, the overrides on (A1111's defaults), so the job
    runs with Euler, the original prompts, the decode steps and denoising strength 1, whatever the
    request said; the same call with the overrides off keeps the request's own values."""
    a1111 = ["* `CFG Scale` should be 2 or lower.", True, True, "a blue square", "ugly", True, 3, True, 1.5, 0.0, False]
    pics, info = img2img(server, ALT, a1111, prompt="something else", negative_prompt="", steps=7,
                         sampler_name="DPM++ 2M", denoising_strength=0.3, seed=5)
    text = info["infotexts"][0]
    assert len(pics) == 1
    assert text.startswith("a blue square\nNegative prompt: ugly\n"), text
    for part in ("Steps: 3,", "Sampler: Euler,", "Denoising strength: 1,", "Decode prompt: a blue square",
                 "Decode negative prompt: ugly", "Decode CFG scale: 1.5", "Decode steps: 3"):
        assert part in text, (part, text)
    # the same picture as the call that asked for these values itself, with no overrides
    plain, _ = img2img(server, ALT, alt_args("a blue square", "ugly", 1.5, 3, 0.0, False), prompt="a blue square",
                       negative_prompt="ugly", steps=3, sampler_name="Euler", denoising_strength=1.0, seed=5)
    assert np.array_equal(px(pics[0]), px(plain[0]))
    kept, kept_info = img2img(server, ALT, [None, False, False, "a blue square", "ugly", False, 3, False, 1.5, 0.0,
                                            False], prompt="something else", negative_prompt="", steps=2,
                              sampler_name="DPM++ 2M", denoising_strength=0.9, seed=5)
    text = kept_info["infotexts"][0]
    assert text.startswith("something else\n"), text
    for part in ("Steps: 2,", "Sampler: DPM++ 2M,", "Denoising strength: 0.9,"):
        assert part in text, (part, text)


def test_img2img_alternative_test_with_full_randomness_is_txt2img_from_the_next_seed(server):
    """Randomness 1 keeps nothing of the found noise: at denoising strength 1 the job starts from
    sigma_max times seed + 1's noise, which is where txt2img with seed + 1 starts; the init picture
    no longer matters."""
    base = {**SMALL, "steps": 3, "sampler_name": "Euler", "prompt": "a red circle", "negative_prompt": "",
            "seed": 40}
    args = alt_args("a red circle", "", 1.0, 3, 1.0, False)
    alt, _ = _alt(server, args, **base)
    other, _ = _alt(server, args, **{**base, "init_images": [b64(picture(64, 64).transpose(Image.Transpose.ROTATE_90))]})
    txt, _ = post(server, "/sdapi/v1/txt2img", {**base, "seed": 41})
    assert np.abs(px(alt[0]) - px(other[0])).max() <= 1
    assert np.abs(px(alt[0]) - px(txt[0])).max() <= 2, np.abs(px(alt[0]) - px(txt[0])).max()


@pytest.mark.parametrize("args,hint", [
    (alt_args("x", "", 16, 4, 0.0, False), "decode CFG scale (9th)"),
    (alt_args("x", "", 1.0, 0, 0.0, False), "decode steps (7th)"),
    (alt_args("x", "", 1.0, 4, 1.5, False), "randomness (10th)"),
    (alt_args("x", "", 1.0, 4, 0.0, "yes"), "sigma adjustment (11th)"),
    (alt_args(3, "", 1.0, 4, 0.0, False), "original prompt (4th)"),
    (alt_args("x", "", 1.0, 4, 0.0, False, override_sampler="x"), "override sampler (2nd)"),
    (alt_args("x", "", 1.0, 4, 0.0, False, override_strength=1.0), "override strength (8th)"),
], ids=["cfg", "steps", "randomness", "sigma", "prompt", "override-sampler", "override-strength"])
def test_img2img_alternative_test_refuses_bad_args_by_name(server, args, hint):
    r = server.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(INIT)], "denoising_strength": 1.0,
                                               "script_name": ALT, "script_args": args})
    assert hint in assert_error(r, "script_args", status=(422,))
    assert "img2img alternative test" not in server.get("/sdapi/v1/scripts").json()["txt2img"]
