"""A1111's file names and folders: the pattern tags (modules.core.filename_pattern) against A1111's
contract, and each saving option through a real job on the tiny checkpoint, asserting the files."""

import datetime
import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from modules.core import filename_pattern as fp
from modules.core.image_io import read_infotext
from modules.core.types import GenerationRequest

NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)


def name(pattern, **values):
    return fp.apply(pattern, fp.NameValues(**{"now": NOW, "today": datetime.date(2026, 3, 4), **values}))


# ------------------------------------------------------------------------------------------ pattern tags

def test_sanitize_like_a1111():
    assert fp.sanitize_filename_part('a/b:c d#e<f>"g|h?i*j\\k') == "a_b_c_d_e_f__g_h_i_j_k"
    assert fp.sanitize_filename_part("  lead and trail. .", replace_spaces=False) == "lead and trail"
    assert fp.sanitize_filename_part("x" * 300) == "x" * 128
    assert fp.sanitize_filename_part("a b", max_length=1) == "a"
    assert fp.sanitize_filename_part("a:b/c", invalid_chars=fp.UNIX_INVALID_FILENAME_CHARS) == "a:b_c"
    assert fp.sanitize_filename_part(None) is None


def test_prompt_tags():
    prompt = "A cat, (on:1.2) a mat; in  the hat. red blue green yellow"
    assert name("[prompt_words]", prompt=prompt) == "A cat on 1 2 a mat in"  # 8 words by default
    assert name("[prompt_words]", prompt=prompt, max_prompt_words=3) == "A cat on"
    assert name("[prompt_words]", prompt="!!! ...") == "empty"
    assert name("[prompt]", prompt="a cat: on/mat") == "a_cat__on_mat"
    assert name("[prompt_spaces]", prompt="a cat: on/mat") == "a cat_ on_mat"
    assert name("[prompt_no_styles]", prompt="a cat, masterpiece, best", style_prompts=["{prompt}, masterpiece, best"]) == "a cat"
    assert name("[styles]") == "None"
    assert name("[styles]", styles=["None", "Photo: warm", "b/w"]) == "Photo_ warm, b_w"
    assert name("[hasprompt<cat|nocat><dog|nodog><bird>]", prompt="A CAT") == "catnodog"


def test_hash_tags():
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    assert name("[prompt_hash]", prompt="a cat") == sha("a cat")[:8]
    assert name("[prompt_hash<4>]", prompt="a cat") == sha("a cat")[:4]
    assert name("[negative_prompt_hash<5>]", negative_prompt="ugly") == sha("ugly")[:5]
    assert name("[full_prompt_hash]", prompt="one", job_prompt="a cat", negative_prompt="ugly") == sha("a cat ugly")[:8]
    picture = Image.new("RGB", (3, 2), "red")
    assert name("[image_hash<6>]", image=picture) == hashlib.sha256(picture.tobytes()).hexdigest()[:6]
    assert name("[image_hash]", image=picture) == hashlib.sha256(picture.tobytes()).hexdigest()


def test_time_tags():
    assert name("[date]") == "2026-03-04"
    assert name("[datetime]") == NOW.astimezone(None).strftime("%Y%m%d%H%M%S")
    assert name("[datetime<%Y%m%d>]") == NOW.astimezone(None).strftime("%Y%m%d")
    assert name("[datetime<%Y-%m-%d %H><UTC>]") == "2026-03-04 05"
    assert name("[datetime<%H:%M><Asia/Tokyo>]") == "14_06"  # ":" sanitised, +9 h
    assert name("[datetime<%H><No/Such_Zone>]") == NOW.astimezone(None).strftime("%H")  # local time
    assert name("[job_timestamp]", job_timestamp="20260304050607") == "20260304050607"


def test_job_tags_and_skipping():
    values = dict(seed=11, steps=20, cfg_scale=7.0, width=64, height=48, sampler="DPM++ 2M", scheduler="Karras",
                  model_hash="abc123", model_name="tiny: model", clip_skip=2, denoising_strength=0.5)
    assert name("[SEED]-[steps]-[cfg]-[width]x[height]-[sampler]-[scheduler]-[sampler_scheduler]", **values) \
        == "11-20-7.0-64x48-DPM++ 2M-Karras-DPM++ 2M Karras"
    assert name("[model_hash]-[model_name]-[clip_skip]-[denoising]", **values) == "abc123-tiny_ model-2-0.5"
    assert name("a-[denoising]-b", denoising_strength=0) == "-b"  # nothing: the text before ("a-") goes too
    assert name("[seed]-[batch_number]-[generation_number]-[seed_last]", seed=5) == "5"
    four = dict(seed=7, all_seeds=[5, 6, 7, 8], batch_size=2, batch_index=0, n_iter=2, iteration=1)
    assert name("[seed]-[batch_number]-[generation_number]-[seed_first]-[seed_last]-[batch_size]", **four) == "7-1-3-5-8-2"
    assert name("[batch_number]", zip=True, **four) == ""
    assert name("[vae_filename]") == "NoneType"
    assert name("[vae_filename]", vae_file="my.vae.safetensors") == "my"
    assert name("[basename]") == "img" and name("[basename]", basename="grid") == "grid"
    assert name("x[none]y") == "xy"


def test_unknown_tags_stay_as_written():
    assert name("[nope]-[nope<x>]-[seed]", seed=3) == "[nope]-[nope<x>]-3"
    assert name("[user]") == "[user]" and name("[user]", user="ann") == "ann"  # no user: unknown (A1111)
    assert name("[prompt_hash<x>]", prompt="a") == "[prompt_hash<x>]"  # a bad argument
    assert name("[sampler]") == "[sampler]"
    assert set(fp.TAGS) >= {"seed", "steps", "cfg", "width", "height", "styles", "sampler", "scheduler", "model_hash",
                            "model_name", "prompt_hash", "negative_prompt_hash", "full_prompt_hash", "prompt",
                            "prompt_no_styles", "prompt_spaces", "prompt_words", "batch_number", "generation_number",
                            "hasprompt", "clip_skip", "denoising", "user", "vae_filename", "none", "date", "datetime",
                            "job_timestamp", "image_hash", "seed_first", "seed_last", "sampler_scheduler", "basename"}


def test_folder_names_stay_below_the_output_folder():
    assert fp.safe_relative("../../etc/[x] ") == "etc/[x]"
    assert fp.safe_relative("/abs\\path/./a/") == "abs/path/a"
    assert fp.safe_relative("C:/x") == "x"


def test_scheduler_label_as_a1111_writes_it():
    from modules.core.saving import scheduler_label

    assert scheduler_label("DPM++ 2M", "Automatic") == "Karras"
    assert scheduler_label("Euler a", "Automatic") == "Automatic"
    assert scheduler_label("Euler", "SGM Uniform") == "Sgm uniform"


# ------------------------------------------------------------------------------------------ options table

def test_options_have_a1111_names_defaults_and_sections():
    from modules.services.options import Options

    o = Options(None)
    expected = {
        "samples_filename_pattern": ("", "saving-images"), "save_images_add_number": (True, "saving-images"),
        "save_images_replace_action": ("Replace", "saving-images"), "grid_save": (True, "saving-images"),
        "grid_format": ("png", "saving-images"), "grid_extended_filename": (False, "saving-images"),
        "samples_format": ("png", "saving-images"), "jpeg_quality": (80, "saving-images"),
        "webp_lossless": (False, "saving-images"), "export_for_4chan": (True, "saving-images"),
        "img_downscale_threshold": (4.0, "saving-images"), "target_side_length": (4000, "saving-images"),
        "save_txt": (False, "infotext"), "save_to_dirs": (True, "saving-to-dirs"),
        "grid_save_to_dirs": (True, "saving-to-dirs"), "directories_filename_pattern": ("[date]", "saving-to-dirs"),
        "directories_max_prompt_words": (8, "saving-to-dirs"), "outdir_samples": ("", "saving-paths"),
        "outdir_grids": ("", "saving-paths"), "outdir_txt2img_grids": ("outputs/txt2img-grids", "saving-paths"),
    }
    for key, (default, section) in expected.items():
        assert (o.defs[key].default, o.defs[key].section_id) == (default, section), key
    assert o.defs["save_images_replace_action"].choice_list() == ("Replace", "Add number suffix")
    with pytest.raises(ValueError):
        o.check("directories_max_prompt_words", 21)
    for key in ("samples_filename_pattern", "directories_filename_pattern", "outdir_grids"):
        assert o.defs[key].restrict, key  # --hide-ui-dir-config locks them (A1111's restricted_opts)


# ------------------------------------------------------------------------------------------ real jobs

@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    import webui
    from modules import cmd_args

    data = tmp_path_factory.mktemp("filenames-data")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1)], extra_preloads=[])
    return webui.build_engine(opts)


def run(engine, tmp_path, overrides=None, **request):
    """One job with the outputs under tmp_path; returns (result, samples folder, grids folder)."""
    samples, grids = tmp_path / "samples", tmp_path / "grids"
    body = dict(prompt="a red box, on: a mat", negative_prompt="ugly", seed=5, steps=1, width=64, height=64,
                sampler_name="Euler a") | request
    options = {"outdir_samples": str(samples), "outdir_grids": str(grids)} | (overrides or {})
    return engine.submit_txt2img(GenerationRequest(**body), overrides=options).result(), samples, grids


FLAT = {"save_to_dirs": False, "samples_filename_pattern": "[seed]"}  # NNNNN-SEED.ext in the output folder itself


def files(folder):
    return sorted(str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*") if p.is_file())


def test_defaults_dated_folders_numbers_and_seeds(engine, tmp_path):
    result, samples, grids = run(engine, tmp_path, batch_size=2)
    today = datetime.date.today().isoformat()
    assert files(samples) == [f"{today}/00000-5.png", f"{today}/00001-6.png"]
    assert files(grids) == [f"{today}/grid-0000.png"]
    assert result.paths == [str(samples / today / "00000-5.png"), str(samples / today / "00001-6.png")]
    assert read_infotext(samples / today / "00000-5.png") == result.infotexts[0]


def test_default_folders_are_the_txt2img_ones(engine):
    result = engine.txt2img(GenerationRequest(prompt="x", seed=9, steps=1, width=64, height=64))
    today = datetime.date.today().isoformat()
    folder = engine.data_path / "outputs" / "txt2img-images" / today
    assert result.paths[0].startswith(str(folder)) and result.paths[0].endswith("-9.png")


def test_samples_filename_pattern(engine, tmp_path):
    pattern = "[seed]-[steps]-[cfg]-[width]x[height]-[sampler]-[prompt_words]-[model_name]-[clip_skip]-[nope]"
    run(engine, tmp_path, {"samples_filename_pattern": pattern, "directories_max_prompt_words": 3})
    [only] = files(tmp_path / "samples")
    assert only.split("/")[1] == "00000-5-1-7.0-64x64-Euler a-a red box-tiny-sd1-1-[nope].png"


def test_generation_and_batch_numbers(engine, tmp_path):
    run(engine, tmp_path, {"samples_filename_pattern": "[generation_number]-[batch_number]-[seed]",
                           "save_to_dirs": False}, batch_size=2, n_iter=2)
    assert files(tmp_path / "samples") == ["00000-1-1-5.png", "00001-2-2-6.png", "00002-3-1-7.png", "00003-4-2-8.png"]


def test_save_to_dirs_off_puts_the_prompt_in_the_name(engine, tmp_path):
    run(engine, tmp_path, {"save_to_dirs": False})
    assert files(tmp_path / "samples") == ["00000-5-a red box, on_ a mat.png"]  # "[seed]-[prompt_spaces]"


def test_directories_filename_pattern_and_prompt_words(engine, tmp_path):
    run(engine, tmp_path, {"directories_filename_pattern": "[model_name]/[prompt_words]", "directories_max_prompt_words": 2})
    assert files(tmp_path / "samples") == ["tiny-sd1/a red/00000-5.png"]
    run(engine, tmp_path / "up", {"directories_filename_pattern": "../../[seed]"})
    assert files(tmp_path / "up" / "samples") == ["5/00000-5.png"]  # never outside the output folder


def test_without_numbers_replace_or_add_a_suffix(engine, tmp_path):
    plain = {"save_images_add_number": False, "samples_filename_pattern": "[prompt_words]", "save_to_dirs": False}
    first, samples, _ = run(engine, tmp_path, plain)
    second, _, _ = run(engine, tmp_path, plain, seed=6)
    assert files(samples) == ["a red box on a mat.png"]  # replaced by the second job's picture
    assert read_infotext(samples / "a red box on a mat.png") == second.infotexts[0]
    suffix = plain | {"save_images_replace_action": "Add number suffix"}
    run(engine, tmp_path, suffix, seed=7)
    run(engine, tmp_path, suffix, seed=8)
    assert files(samples) == ["a red box on a mat-1.png", "a red box on a mat-2.png", "a red box on a mat.png"]
    assert "Seed: 8" in read_infotext(samples / "a red box on a mat-2.png")
    run(engine, tmp_path / "none", {"samples_filename_pattern": "[none]", "save_to_dirs": False})
    assert files(tmp_path / "none" / "samples") == ["00000.png"]  # nothing left: the number alone


def test_grid_options(engine, tmp_path):
    run(engine, tmp_path, {"grid_save_to_dirs": False, "grid_extended_filename": True}, batch_size=2)
    assert files(tmp_path / "grids") == ["grid-0000-5.png"]
    run(engine, tmp_path / "b", {"grid_save": False}, batch_size=2)
    assert not (tmp_path / "b" / "grids").exists()
    result, _, grids = run(engine, tmp_path / "c", {"grid_format": "jpg", "grid_save_to_dirs": False}, batch_size=2)
    assert files(grids) == ["grid-0000.jpg"] and result.grid_path == str(grids / "grid-0000.jpg")


def test_grid_layout_options(engine, tmp_path):
    """n_rows, grid_prevent_empty_spots, grid_background_color, grid_only_if_multiple (A1111's rules)."""
    flat = {"grid_save_to_dirs": False}
    result, _, grids = run(engine, tmp_path / "auto", flat, batch_size=3)
    assert result.grid.size == (128, 128)  # round(sqrt(3)) = 2 rows, 2 columns, one empty spot
    assert result.grid.getpixel((96, 96)) == (255, 255, 255)  # A1111's default background
    result, _, _ = run(engine, tmp_path / "red", flat | {"grid_background_color": "#ff0000"}, batch_size=3)
    assert result.grid.getpixel((96, 96)) == (255, 0, 0)
    result, _, _ = run(engine, tmp_path / "full", flat | {"grid_prevent_empty_spots": True}, batch_size=3)
    assert result.grid.size == (192, 64)  # 3 = 1 x 3: no empty spot
    result, _, _ = run(engine, tmp_path / "rows", flat | {"n_rows": 3}, batch_size=3)
    assert result.grid.size == (64, 192)
    result, _, _ = run(engine, tmp_path / "batch", flat | {"n_rows": 0}, batch_size=1, n_iter=2)
    assert result.grid.size == (128, 64)  # 0: as many rows as the batch size (1)
    result, _, grids = run(engine, tmp_path / "one", flat | {"grid_only_if_multiple": False})
    assert result.grid is not None and files(grids) == ["grid-0000.png"]  # a grid of one picture, saved
    result, _, grids = run(engine, tmp_path / "one-off", flat)
    assert result.grid is None and not grids.exists()


def test_save_txt_beside_the_picture(engine, tmp_path):
    result, samples, grids = run(engine, tmp_path, FLAT | {"save_txt": True, "grid_save_to_dirs": False},
                                 batch_size=2)
    assert files(samples) == ["00000-5.png", "00000-5.txt", "00001-6.png", "00001-6.txt"]
    assert (samples / "00001-6.txt").read_text(encoding="utf-8") == result.infotexts[1] + "\n"
    assert files(grids) == ["grid-0000.png", "grid-0000.txt"]
    run(engine, tmp_path / "off", FLAT)
    assert files(tmp_path / "off" / "samples") == ["00000-5.png"]


def test_export_for_4chan_over_the_limits(engine, tmp_path):
    result, samples, _ = run(engine, tmp_path, FLAT | {"img_downscale_threshold": 0.0})
    assert files(samples) == ["00000-5.jpg", "00000-5.png"]  # any file is over 0 MB: a same-size copy
    with Image.open(samples / "00000-5.jpg") as copy:
        assert copy.format == "JPEG" and copy.size == (64, 64)
    assert read_infotext(samples / "00000-5.jpg") == result.infotexts[0]
    run(engine, tmp_path / "side", FLAT | {"target_side_length": 32}, width=128, height=64)
    with Image.open(tmp_path / "side" / "samples" / "00000-5.jpg") as copy:
        assert copy.size == (32, 16)  # the long side down to the limit
    run(engine, tmp_path / "off", FLAT | {"target_side_length": 32, "export_for_4chan": False})
    assert files(tmp_path / "off" / "samples") == ["00000-5.png"]
    run(engine, tmp_path / "small", FLAT)  # 64x64, a few kB: under both limits
    assert files(tmp_path / "small" / "samples") == ["00000-5.png"]


def test_formats_and_webp_lossless(engine, tmp_path):
    result, samples, _ = run(engine, tmp_path, FLAT | {"samples_format": "webp", "webp_lossless": True})
    assert files(samples) == ["00000-5.webp"]
    with Image.open(samples / "00000-5.webp") as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(result.images[0].convert("RGB")))
    result, samples, _ = run(engine, tmp_path / "lossy", FLAT | {"samples_format": "webp", "jpeg_quality": 30})
    with Image.open(samples / "00000-5.webp") as saved:
        assert not np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(result.images[0].convert("RGB")))


def test_job_timestamp_and_date_tags_in_a_job(engine, tmp_path):
    result, samples, _ = run(engine, tmp_path, {"save_to_dirs": False, "samples_filename_pattern": "[job_timestamp]-[datetime<%Y>]"})
    [only] = files(samples)
    assert re.fullmatch(r"00000-\d{14}-\d{4}\.png", only)
    assert only.split("-")[1] == result.job_timestamp


def test_images_save_image_uses_the_same_names(engine, tmp_path):
    """An extension's images.save_image(..., p=p) names files by the same options and tags."""
    from types import SimpleNamespace

    from modules import images, shared

    saved_opts = {k: shared.opts.data.get(k) for k in ("samples_filename_pattern", "save_txt", "save_images_add_number")}
    try:
        shared.opts.data.update(samples_filename_pattern="[seed]-[steps]-[prompt_hash<4>]", save_txt=True)
        p = SimpleNamespace(steps=12, cfg_scale=7.0, sampler_name="Euler", scheduler="Automatic", batch_size=1,
                            n_iter=1, negative_prompt="", prompt="a box", styles=[])
        path, txt = images.save_image(Image.new("RGB", (8, 8)), str(tmp_path), "", seed=3, prompt="a box",
                                      info="a box\nSteps: 12", p=p)
    finally:
        shared.opts.data.update(saved_opts)
    expected = f"00000-3-12-{hashlib.sha256(b'a box').hexdigest()[:4]}"
    assert path.endswith(f"{expected}.png") and txt.endswith(f"{expected}.txt")
    assert open(txt, encoding="utf-8").read() == "a box\nSteps: 12\n"
