"""Easel's built-in model: the procedural data, the pixel scorer, the shipped checkpoint
and a smoke run of its evaluation through the UI's generation function."""
import json
from pathlib import Path

import numpy as np
import pytest

from modules.builtin_model import dataset as data
from modules.builtin_model import scoring

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "models" / "Stable-diffusion" / "easel-shapes-v1.safetensors"
needs_checkpoint = pytest.mark.skipif(not CKPT.exists(), reason="built-in checkpoint not trained yet")


# ---------------------------------------------------------------- data set
def _draw(seed, n=20):
    rng = np.random.default_rng(seed)
    scenes = [data.sample_scene(rng) for _ in range(n)]
    return scenes, [data.caption(s, rng) for s in scenes], [np.asarray(data.render(s)) for s in scenes]


def test_same_seed_same_scenes_captions_and_pixels():
    a, b = _draw(7), _draw(7)
    assert a[0] == b[0] and a[1] == b[1]
    assert all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))
    assert _draw(8)[1] != a[1]


def test_images_are_native_size_rgb():
    image = data.render(data.sample_scene(np.random.default_rng(0)))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_training_scenes_never_use_a_held_out_combination():
    held = set(data.held_out_combinations())
    rng = np.random.default_rng(3)
    for _ in range(3000):
        scene = data.sample_scene(rng, "train")
        for s in scene.shapes:
            assert (s.colour, s.kind, scene.background, s.position) not in held
            assert s.colour != scene.background


def test_two_shape_scenes_do_not_overlap():
    rng = np.random.default_rng(4)
    pairs = [s for s in (data.sample_scene(rng, two_shape_prob=1.0) for _ in range(500))]
    for scene in pairs:
        a, b = scene.shapes
        assert a.position != b.position and not data._overlap(a, b, margin=0.0)


def test_evaluation_split_is_fixed_large_and_held_out():
    items = data.evaluation_items()
    assert items == data.evaluation_items()
    assert len(items) >= 100
    held = set(data.held_out_combinations())
    for it in items:
        assert (it.colour, it.shape, it.background, it.position) in held
        assert it.colour in it.caption and it.shape in it.caption and it.background in it.caption
    assert len({it.caption for it in items}) == len(items)


def test_captions_say_the_same_facts_in_several_ways():
    scene = data.scene_for("red", "circle", "blue", "top left", "small", np.random.default_rng(0))
    rng = np.random.default_rng(1)
    captions = {data.full_caption(scene, rng) for _ in range(200)}
    assert len(captions) > 20
    for c in captions:
        assert "red" in c and "circle" in c and "blue" in c and "top left" in c
        assert " a orange" not in c and "  " not in c


# ---------------------------------------------------------------- scorer
def test_scorer_reads_ground_truth_images_perfectly():
    rng = np.random.default_rng(11)
    tally, sizes = scoring.Tally(), 0
    for _ in range(600):
        colour = data.COLOURS[rng.integers(8)]
        background = [c for c in data.COLOURS if c != colour][rng.integers(7)]
        kind, position = data.SHAPES[rng.integers(3)], data.POSITION_NAMES[rng.integers(9)]
        size = data.SIZES[rng.integers(2)]
        reading = scoring.read(data.render(data.scene_for(colour, kind, background, position, size, rng)))
        tally.add(reading, background, colour, kind, position)
        sizes += reading.size == size
    assert tally.rates()["all_four"] == 1.0
    assert sizes == 600


def test_scorer_on_an_empty_background_finds_no_shape():
    reading = scoring.read(data.render(data.Scene("green", ())))
    assert reading.background == "green" and not reading.found


def test_scorer_survives_noise_and_blur():
    from PIL import ImageFilter

    rng = np.random.default_rng(12)
    tally = scoring.Tally()
    for _ in range(100):
        colour = data.COLOURS[rng.integers(8)]
        background = [c for c in data.COLOURS if c != colour][rng.integers(7)]
        kind, position = data.SHAPES[rng.integers(3)], data.POSITION_NAMES[rng.integers(9)]
        image = data.render(data.scene_for(colour, kind, background, position, "large", rng))
        pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        tally.add(scoring.read(pixels), background, colour, kind, position)
    assert tally.rates()["all_four"] >= 0.95


# ---------------------------------------------------------------- the shipped checkpoint
@needs_checkpoint
def test_checkpoint_is_small_sd1_with_native_size_in_its_header():
    from safetensors import safe_open

    assert CKPT.stat().st_size <= 30 * 1024 * 1024
    with safe_open(str(CKPT), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.resolution"] == "64x64"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["easel.vae_scaling_factor"] == "0.18215"
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.post_quant_conv.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    entry = json.loads(CKPT.with_suffix(".json").read_text())
    assert entry["name"] == "easel-shapes-v1" and entry["native_resolution"] == [64, 64]
    assert "seed" in entry["training_recipe"]


@needs_checkpoint
def test_loader_sees_the_native_size_and_sd_latent_scale():
    from modules.builtin_model.evaluate import load_model

    model = load_model(CKPT)
    assert model.spec.family == "sd1"
    assert tuple(model.spec.native_size) == (64, 64)
    assert model.spec.prediction_type == "epsilon"
    assert model.vae.config.scaling_factor == pytest.approx(0.18215)


@needs_checkpoint
def test_smoke_evaluation_through_the_ui_generation_function(tmp_path):
    from modules.builtin_model import evaluate

    summary = evaluate.run(CKPT, tmp_path, limit=12, neg_samples=16, bars=evaluate.SMOKE_BARS,
                           write_metadata=False)
    assert (tmp_path / "contact_sheet.png").exists()
    assert summary["bars_missed"] == [], summary["bars_missed"]


# ---------------------------------------------------------------- the training script
def test_training_script_runs_every_stage_and_writes_a_loadable_checkpoint(tmp_path):
    """The recipe at toy lengths: every stage (VAE, latent pool, UNet + text encoder with its refine
    phase, export) runs, and the file it writes is an SD1 checkpoint the real loader reads and
    generates from. The full-length run is what built the committed model."""
    import torch
    from safetensors import safe_open

    from modules.builtin_model import train
    from modules.builtin_model.evaluate import load_model
    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest

    out = tmp_path / "toy.safetensors"
    threads = torch.get_num_threads()
    try:
        train.main(["--run-dir", str(tmp_path / "run"), "--out", str(out), "--threads", "1", "--seed", "5",
                    "--vae-steps", "2", "--vae-refine-steps", "1", "--vae-batch", "2", "--pool-size", "16",
                    "--vae-norm-images", "128", "--unet-steps", "3", "--refine-steps", "2", "--unet-batch", "4", "--warmup", "1",
                    "--save-every", "2"])
    finally:
        torch.set_num_threads(threads)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "vae B step 1 reconstructions" in log and "encoded 16 scenes" in log
    times = json.loads((tmp_path / "run" / "stage_times.json").read_text())
    assert set(times) == {"vae", "latents", "unet"} and all(v >= 0 for v in times.values())
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["easel.training_recipe"])
    assert (recipe["seed"], recipe["unet_steps"], recipe["refine_steps"], recipe["unet_steps_done"]) == (5, 3, 2, "5")
    entry = json.loads(out.with_suffix(".json").read_text())
    assert entry["native_resolution"] == [64, 64]
    assert entry["training_seconds"]["total"] == pytest.approx(sum(times.values()), abs=0.2)
    model = load_model(out)
    assert model.spec.family == "sd1" and tuple(model.spec.native_size) == (64, 64)
    result = generate(GenerationRequest(prompt="a red circle on a blue background", steps=2, seed=1,
                                        save_images=False), model)
    assert result.images[0].size == (64, 64)
