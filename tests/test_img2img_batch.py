"""img2img Batch (modules/services/img2img_batch.py) through a real engine on the tiny SD1 checkpoint.

Folders of real pictures in, files out: every readable picture gives a file under its own name
with the infotext in it, an unreadable one is reported and skipped, masks are matched by name."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core import masks
from modules.core.devices import choose_policy
from modules.core.types import RequestError
from modules.services import img2img_batch
from modules.services.checkpoints import CheckpointRegistry, HashCache
from modules.services.engine import Engine
from modules.services.jobs import JobState, WorkQueue
from modules.services.model_cache import ModelCache
from modules.services.options import Options

POLICY, _ = choose_policy()
FIELDS = dict(prompt="a red circle", seed=7, steps=2, width=64, height=64, checkpoint="tiny-sd1")


@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    state = JobState()
    return Engine(Options(None), CheckpointRegistry([tiny_checkpoints.checkpoints_dir], HashCache(None)),
                  ModelCache(POLICY), state, WorkQueue(state), tmp_path_factory.mktemp("batch-data"))


def picture(shade: int, size=(64, 64)) -> Image.Image:
    """A gradient with a bright square; `shade` makes the pictures of a folder differ."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, shade)], -1)
    array[height // 4:height // 2, width // 4:width // 2] = (250, 240, 30)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_every_readable_picture_is_written_and_a_corrupt_one_is_skipped(engine, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    picture(10).save(source / "first.png")
    picture(120).save(source / "second.png")
    picture(200).save(source / "third.jpg", quality=95)
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a picture" * 10)

    # 5 steps at 0.3: A1111's k-diffusion img2img runs int(0.3 * 5) + 1 = 2 of them, from the fourth
    # sigma (with 2 steps at 0.6 it would start from the first, pure noise: the pictures would not matter)
    report = img2img_batch.run_batch(engine, dict(FIELDS, steps=5, denoising_strength=0.3), source, target)

    assert report.total == 4 and report.processed == 3 and not report.interrupted
    assert sorted(p.name for p in report.written) == ["first.png", "second.png", "third.png"]
    assert sorted(p.name for p in target.iterdir()) == ["first.png", "second.png", "third.png"]
    assert [s.path.name for s in report.skipped] == ["broken.png"]
    assert "not a readable image" in report.skipped[0].reason
    assert "broken.png: not a readable image" in report.summary()
    outputs = {}
    for path in report.written:
        with Image.open(path) as png:
            assert png.size == (64, 64)
            assert "Denoising strength: 0.3" in png.info["parameters"]
            assert "Seed: 7," in png.info["parameters"]
            outputs[path.stem] = px(png)
    # each output comes from its own input: same seed, different pictures, different results
    assert np.abs(outputs["first"] - outputs["second"]).mean() > 1
    assert np.abs(outputs["second"] - outputs["third"]).mean() > 1
    # the batch writes only to its output folder, not to the usual outputs
    assert not (engine.data_path / "outputs").exists()


def test_masks_are_matched_by_name_and_a_picture_without_one_is_skipped(engine, tmp_path):
    source, target, mask_dir = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
    for folder in (source, mask_dir):
        folder.mkdir()
    left, right = Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 24, 64))
    right.paste(255, (40, 0, 64, 64))
    for name, shade in (("alpha", 30), ("beta", 160), ("gamma", 90)):
        picture(shade).save(source / f"{name}.png")
    left.save(mask_dir / "alpha.png")
    right.save(mask_dir / "beta.webp", lossless=True)  # matched by the stem, whatever the extension

    fields = dict(FIELDS, denoising_strength=0.9, mask_blur=2, n_iter=2)
    report = img2img_batch.run_batch(engine, fields, source, target, mask_dir)

    assert [str(s) for s in report.skipped] == [f"gamma.png: no mask named gamma.* in {mask_dir}"]
    assert sorted(p.name for p in report.written) == ["alpha-1.png", "alpha-2.png", "beta-1.png", "beta-2.png"]
    for name, mask in (("alpha", left), ("beta", right)):
        original = px(picture({"alpha": 30, "beta": 160}[name]))
        kept = np.asarray(masks.blur(mask, 2, 2)) == 0  # outside the blurred mask: the input, exactly
        repainted = np.asarray(mask) == 255
        for number in (1, 2):
            with Image.open(target / f"{name}-{number}.png") as png:
                out = px(png)
                assert "Mask blur: 2" in png.info["parameters"]
            assert np.array_equal(out[kept], original[kept]), (name, number)
            assert np.abs(out[repainted] - original[repainted]).mean() > 5, (name, number)


def test_one_mask_serves_every_picture_and_resize_by_follows_each_picture(engine, tmp_path):
    source, target, mask_dir = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
    for folder in (source, mask_dir):
        folder.mkdir()
    picture(50, (80, 64)).save(source / "wide.png")
    picture(50, (64, 72)).save(source / "tall.png")
    only = Image.new("L", (8, 8), 0)
    only.paste(255, (0, 0, 4, 8))  # any size: stretched to each picture
    only.save(mask_dir / "any-name.png")

    fields = {k: v for k, v in FIELDS.items() if k not in ("width", "height")}
    report = img2img_batch.run_batch(engine, fields, source, target, mask_dir, scale=1.0)

    assert report.skipped == [] and report.processed == 2
    with Image.open(target / "wide.png") as wide, Image.open(target / "tall.png") as tall:
        assert wide.size == (80, 64) and tall.size == (64, 72)
        assert "Size: 80x64" in wide.info["parameters"]


def test_batch_level_problems_are_request_errors(engine, tmp_path):
    with pytest.raises(RequestError) as err:
        img2img_batch.run_batch(engine, FIELDS, tmp_path / "missing", tmp_path / "out")
    assert err.value.field == "input_dir"
    with pytest.raises(RequestError) as err:
        img2img_batch.run_batch(engine, FIELDS, tmp_path, "")
    assert err.value.field == "output_dir"
    with pytest.raises(RequestError) as err:
        img2img_batch.run_batch(engine, FIELDS, tmp_path, tmp_path / "out", tmp_path / "no-masks-here")
    assert err.value.field == "mask_dir"
    with pytest.raises(RequestError) as err:  # checked once, before any file is read
        img2img_batch.run_batch(engine, dict(FIELDS, steps=0), tmp_path, tmp_path / "out")
    assert err.value.field == "steps"
    assert not Path(tmp_path / "out").exists()
