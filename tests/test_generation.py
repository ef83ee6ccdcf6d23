"""The one generation function end to end on tiny real checkpoints: files, infotext,
seeds, reproducibility, conditioning and the shared queue."""

import datetime
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core.conditioning import CHUNK, PromptChunker, TextConditioner
from modules.core.devices import choose_policy
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, JobObserver, generate
from modules.core.types import GenerationRequest, RequestError

POLICY, _ = choose_policy()
SMALL = dict(width=64, height=64, steps=3)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def settings(tmp_path, **kw) -> GenerationSettings:
    return GenerationSettings(outdir_samples=tmp_path / "txt2img-images", outdir_grids=tmp_path / "txt2img-grids",
                              model_name="tiny-sd1", model_hash="0123456789", version="easel-test",
                              today=lambda: datetime.date(2026, 11, 23), **kw)


def test_images_on_disk_with_a1111_names_and_infotext(tmp_path, sd1):
    from sd_parsers import ParserManager

    request = GenerationRequest(prompt="a red circle, (blue:1.2)", negative_prompt="green, ugly", seed=1234,
                                batch_size=2, n_iter=2, sampler_name="DPM++ 2M", scheduler="Karras", **SMALL)
    result = generate(request, sd1, settings(tmp_path))
    day = tmp_path / "txt2img-images" / "2026-11-23"
    assert sorted(p.name for p in day.iterdir()) == ["00000-1234.png", "00001-1235.png", "00002-1236.png",
                                                     "00003-1237.png"]
    assert result.seeds == [1234, 1235, 1236, 1237]
    grid = Image.open(result.grid_path)
    assert grid.size == (128, 128)
    first = day / "00000-1234.png"
    assert first.read_bytes()[12:16] == b"IHDR" and first.read_bytes()[37:41] == b"tEXt"
    info = Image.open(first).info["parameters"]
    assert info == result.infotexts[0]
    lines = info.splitlines()
    assert lines[0] == "a red circle, (blue:1.2)" and lines[1] == "Negative prompt: green, ugly"
    assert lines[2].startswith("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
                               "Size: 64x64, Model hash: 0123456789, Model: tiny-sd1, RNG: CPU, Version: easel-test")
    parsed = ParserManager().parse(first)
    assert parsed.full_prompt == "a red circle, (blue:1.2)"
    sampler = parsed.samplers[0]
    assert sampler.name == "DPM++ 2M" and str(sampler.parameters["seed"]) == "1234"
    assert str(sampler.parameters["steps"]) == "3"


def test_same_request_same_pixels_and_seed_matters(tmp_path, sd1):
    req = dict(prompt="a square", seed=42, save_images=False, **SMALL)
    a = generate(GenerationRequest(**req), sd1, settings(tmp_path)).images[0]
    b = generate(GenerationRequest(**req), sd1, settings(tmp_path)).images[0]
    c = generate(GenerationRequest(**{**req, "seed": 43}), sd1, settings(tmp_path)).images[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2S a", "DPM++ SDE"])
def test_batch_image_equals_its_single_run(tmp_path, sd1, sampler):
    """A1111: image i of a batch is the image of seed+i alone, stochastic samplers included."""
    batch = generate(GenerationRequest(prompt="x", seed=7, batch_size=3, sampler_name=sampler, save_images=False,
                                       **SMALL), sd1, settings(tmp_path))
    single = generate(GenerationRequest(prompt="x", seed=9, sampler_name=sampler, save_images=False, **SMALL),
                      sd1, settings(tmp_path))
    assert np.abs(pixels(batch.images[2]) - pixels(single.images[0])).max() <= 1


def test_negative_prompt_and_cfg_change_the_image(tmp_path, sd1):
    base = dict(prompt="a circle", seed=3, save_images=False, **SMALL)
    plain = pixels(generate(GenerationRequest(**base), sd1, settings(tmp_path)).images[0])
    negative = pixels(generate(GenerationRequest(**base, negative_prompt="red"), sd1, settings(tmp_path)).images[0])
    low_cfg = pixels(generate(GenerationRequest(**base, cfg_scale=1.0), sd1, settings(tmp_path)).images[0])
    assert np.abs(plain - negative).mean() > 0.5
    assert np.abs(plain - low_cfg).mean() > 0.5


def test_variation_seed_and_resize_seed(tmp_path, sd1):
    base = dict(prompt="a", seed=11, save_images=False, **SMALL)
    plain = generate(GenerationRequest(**base), sd1, settings(tmp_path))
    varied = generate(GenerationRequest(**base, subseed=5, subseed_strength=0.5), sd1, settings(tmp_path))
    zero = generate(GenerationRequest(**base, subseed=5, subseed_strength=0.0), sd1, settings(tmp_path))
    resized = generate(GenerationRequest(**base, seed_resize_from_w=128, seed_resize_from_h=128), sd1,
                       settings(tmp_path))
    assert np.array_equal(pixels(plain.images[0]), pixels(zero.images[0]))
    assert np.abs(pixels(plain.images[0]) - pixels(varied.images[0])).mean() > 0.5
    assert "Variation seed: 5, Variation seed strength: 0.5" in varied.infotexts[0]
    assert "Seed resize from: 128x128" in resized.infotexts[0]


@pytest.mark.parametrize("name", ["sd2_v", "sdxl", "sd1_inpainting"])
def test_every_family_generates(tmp_path, tiny_checkpoints, name):
    model = load_checkpoint(tiny_checkpoints[name], POLICY)
    result = generate(GenerationRequest(prompt="a blue square", negative_prompt="red", seed=5, **SMALL), model,
                      settings(tmp_path))
    image = result.images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 1  # not a flat or NaN-black image
    assert (tmp_path / "txt2img-images" / "2026-11-23" / "00000-5.png").is_file()


def test_native_size_is_the_default(tmp_path, tiny_checkpoints):
    model = load_checkpoint(tiny_checkpoints.sd2_v, POLICY)
    result = generate(GenerationRequest(prompt="a", steps=1, save_images=False), model, settings(tmp_path))
    assert result.images[0].size == (768, 768)


# -- conditioning --------------------------------------------------------------------------

def test_long_prompts_are_chunked_not_truncated(sd1):
    conditioner = TextConditioner(sd1)
    short = conditioner.encode(["a cat"], 64, 64)["context"]
    words = ", ".join(f"word{i}" for i in range(60))  # well over 75 tokens
    long = conditioner.encode([words], 64, 64)["context"]
    assert short.shape[1] == 77 and long.shape[1] % 77 == 0 and long.shape[1] >= 154
    ending_a = conditioner.encode([words + ", red"], 64, 64)["context"]
    ending_b = conditioner.encode([words + ", blue"], 64, 64)["context"]
    assert not torch.allclose(ending_a, ending_b)  # words past token 75 still count


def test_comma_backtrack_and_break(sd1):
    chunker = PromptChunker(sd1.tokenizers[0])
    comma = chunker.comma
    tokens = chunker.tokenize(["a " * 70 + ", b b b b b b b b"])[0]
    chunks = chunker.chunks([("a " * 70 + ", b b b b b b b b", 1.0)])
    assert len(tokens) > CHUNK and len(chunks) == 2
    assert chunks[0].tokens[-1] == comma  # cut after the last comma, tail moved to chunk 2
    assert chunks[1].tokens == tokens[len(chunks[0].tokens):]
    broken = chunker.chunks([("red", 1.0), ("BREAK", -1.0), ("blue", 1.0)])
    assert len(broken) == 2


def test_clip_skip_changes_sd1_conditioning(sd1):
    a = TextConditioner(sd1, clip_skip=1).encode(["a red circle"], 64, 64)["context"]
    b = TextConditioner(sd1, clip_skip=2).encode(["a red circle"], 64, 64)["context"]
    assert a.shape == b.shape and not torch.allclose(a, b)


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("width", 65, "multiple of 8"), ("height", 0, "at least 64"), ("steps", 0, "at least 1"),
    ("batch_size", 0, "at least 1"), ("prompt", 5, "must be text"), ("prompt", ["a"], "must be text"),
    ("cfg_scale", "abc", "must be a number"), ("seed", 1.5, "must be an integer"),
])
def test_bad_values_name_their_field(field, value, message):
    with pytest.raises(RequestError, match=message) as info:
        GenerationRequest(**{field: value})
    assert info.value.field == field


def test_unknown_sampler_lists_known_ones(tmp_path, sd1):
    with pytest.raises(RequestError, match="Euler a") as info:
        generate(GenerationRequest(prompt="x", sampler_name="Nope", **SMALL), sd1, settings(tmp_path))
    assert info.value.field == "sampler_name"


# -- progress, interrupt, skip, one queue --------------------------------------------------

class Recorder(JobObserver):
    def __init__(self, interrupt_at=None, skip_at=None):
        self.steps, self.batches = [], []
        self.interrupt_at, self.skip_at = interrupt_at, skip_at
        self._interrupt = self._skip = False

    def begin_batch(self, i, n, steps):
        self.batches.append(i)
        self._skip = False

    def on_step(self, step, total, latents, denoised):
        self.steps.append((len(self.batches) - 1, step, total))
        if self.interrupt_at == len(self.steps):
            self._interrupt = True
        if self.skip_at == len(self.steps):
            self._skip = True

    def interrupted(self):
        return self._interrupt

    def skipped(self):
        return self._skip


def test_progress_interrupt_and_skip(tmp_path, sd1):
    base = dict(prompt="x", seed=1, width=64, height=64, steps=5, n_iter=3)
    rec = Recorder()
    generate(GenerationRequest(**base), sd1, settings(tmp_path), rec)
    assert rec.steps == [(b, s, 5) for b in range(3) for s in range(5)]

    rec = Recorder(skip_at=2)  # skip ends batch 0 after 2 steps; batches 1 and 2 run fully
    result = generate(GenerationRequest(**base), sd1, settings(tmp_path / "skip"), rec)
    assert [b for b, _, _ in rec.steps].count(0) == 2 and len(rec.steps) == 12
    assert len(result.images) == 3 and not result.interrupted

    rec = Recorder(interrupt_at=3)
    result = generate(GenerationRequest(**base), sd1, settings(tmp_path / "interrupt"), rec)
    assert result.interrupted and len(rec.steps) == 3 and len(result.images) == 1
    assert not (tmp_path / "interrupt" / "txt2img-images" / "2026-11-23").exists()  # half-done is not saved


def test_queue_runs_one_job_at_a_time():
    from modules.services.jobs import JobState, WorkQueue

    queue = WorkQueue(JobState())
    running, overlap = [0], []
    lock = threading.Lock()

    def job(i):
        with lock:
            running[0] += 1
            overlap.append(running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if i == 2:
            raise ValueError("bad input in job 2")
        return i

    futures = [queue.submit("t", job, i) for i in range(5)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(timeout=10))
        except ValueError as exc:
            outcomes.append(str(exc))
    assert outcomes == [0, 1, "bad input in job 2", 3, 4]  # a failing job does not stop the queue
    assert max(overlap) == 1


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_jpeg_and_webp_output_carry_the_infotext_in_exif(tmp_path, sd1, fmt):
    from sd_parsers import ParserManager

    from modules.core.image_io import read_infotext

    result = generate(GenerationRequest(prompt="a green triangle", negative_prompt="red", seed=21, **SMALL), sd1,
                      settings(tmp_path, samples_format=fmt))
    path = tmp_path / "txt2img-images" / "2026-11-23" / f"00000-21.{fmt}"
    assert result.paths == [str(path)]
    raw = Image.open(path).getexif().get_ifd(0x8769)[0x9286]
    assert raw[:8] == b"UNICODE\0" and raw[8:].decode("utf-16-be") == result.infotexts[0]
    assert read_infotext(path) == result.infotexts[0]
    assert ParserManager().parse(path).full_prompt == "a green triangle"
