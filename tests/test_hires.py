"""Hires. fix on tiny real checkpoints: sizes, every upscaler, the second pass's options, infotext,
progress, seeds, and another checkpoint for the second pass through the engine's model cache."""

import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core import upscaling
from modules.core.devices import choose_policy
from modules.core.hires import target_size
from modules.core.infotext import parse_infotext
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, JobObserver, generate
from modules.core.types import GenerationRequest, RequestError

POLICY, _ = choose_policy()
HIRES = dict(width=64, height=64, steps=3, enable_hr=True, save_images=False)


def settings(tmp_path=None, **kw) -> GenerationSettings:
    outdir = {}
    if tmp_path is not None:
        outdir = dict(outdir_samples=tmp_path / "txt2img-images", outdir_grids=tmp_path / "txt2img-grids")
    return GenerationSettings(model_name="tiny-sd1", model_hash="0123456789", version="easel-test",
                              today=lambda: datetime.date(2026, 11, 23), **outdir, **kw)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(model, **request):
    return generate(GenerationRequest(**{"prompt": "a red circle", "seed": 3, **HIRES, **request}), model, settings())


def test_scale_gives_the_upscaled_size_and_a1111_infotext(tmp_path, sd1):
    request = GenerationRequest(prompt="a red circle", negative_prompt="blue", seed=3, **{**HIRES, "save_images": True})
    result = generate(request, sd1, settings(tmp_path))
    assert result.images[0].size == (128, 128) and (result.width, result.height) == (128, 128)
    saved = Image.open(tmp_path / "txt2img-images" / "2026-11-23" / "00000-3.png")
    assert saved.size == (128, 128)
    text = result.infotexts[0]
    assert saved.info["parameters"] == text
    assert text.splitlines()[2] == (
        "Steps: 3, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 3, Size: 64x64, "
        "Model hash: 0123456789, Model: tiny-sd1, Denoising strength: 0.75, RNG: CPU, Hires upscale: 2, "
        "Hires upscaler: Latent, Version: easel-test")
    parsed = parse_infotext(text)
    assert (parsed["Size-1"], parsed["Denoising strength"], parsed["Hires upscale"], parsed["Hires upscaler"]) == (
        "64", "0.75", "2", "Latent")
    assert "Hires steps" not in parsed and "Hires prompt" not in parsed and "Hires sampler" not in parsed

    odd = run(sd1, hr_scale=1.5)
    assert odd.images[0].size == (96, 96) and "Hires upscale: 1.5," in odd.infotexts[0]


def test_resize_rules_follow_a1111():
    # hr_scale; sizes are whole latent pixels
    assert target_size(64, 96, 2.0) == target_size(64, 96, 2.0, 0, 0, 8)
    s = target_size(64, 96, 2.0)
    assert (s.upscale_to, s.truncate, s.width, s.height) == ((128, 192), (0, 0), 128, 192)
    assert (target_size(64, 64, 1.1).width, target_size(64, 64, 1.1).upscale_to) == (64, (70, 70))
    # one side: the other keeps the aspect
    s = target_size(64, 96, 2.0, resize_x=128)
    assert (s.upscale_to, s.width, s.height) == ((128, 192), 128, 192)
    s = target_size(64, 96, 2.0, resize_y=144)
    assert (s.upscale_to, s.width, s.height) == ((96, 144), 96, 144)
    # both, other aspect: cover the target, then crop the overhang (in latent pixels)
    s = target_size(64, 96, 2.0, resize_x=128, resize_y=128)
    assert (s.upscale_to, s.truncate, s.width, s.height) == ((128, 192), (0, 8), 128, 128)
    s = target_size(96, 64, 2.0, resize_x=128, resize_y=128)
    assert (s.upscale_to, s.truncate, s.width, s.height) == ((192, 128), (8, 0), 128, 128)
    s = target_size(64, 64, 2.0, resize_x=160, resize_y=96)
    assert (s.upscale_to, s.truncate, s.width, s.height) == ((160, 160), (0, 8), 160, 96)


def test_resize_to_both_sides_crops_to_the_asked_size(sd1):
    result = run(sd1, width=64, height=96, hr_resize_x=128, hr_resize_y=128, hr_upscaler="Lanczos")
    assert result.images[0].size == (128, 128)
    parsed = parse_infotext(result.infotexts[0])
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"], parsed["Size"]) == ("128", "128", "64x96")
    assert "Hires upscale" not in parsed
    one_side = run(sd1, width=64, height=96, hr_resize_y=144)
    assert one_side.images[0].size == (96, 144) and "Hires resize: 0x144" in one_side.infotexts[0]


def test_every_latent_mode_and_image_upscaler_runs(sd1):
    images = {}
    for name in upscaling.names():
        result = run(sd1, hr_upscaler=name, steps=2)
        image = result.images[0]
        assert image.size == (128, 128), name
        assert pixels(image).std() > 1, name
        assert f"Hires upscaler: {name}" in result.infotexts[0]
        images[name] = pixels(image)
    assert np.abs(images["Latent"] - images["Lanczos"]).mean() > 1
    assert np.abs(images["Latent"] - images["Latent (nearest)"]).mean() > 1
    assert not np.array_equal(images["Nearest"], images["Lanczos"])  # close: the tiny VAE blurs both alike


def test_second_pass_options_change_the_output_and_are_written(sd1):
    base = run(sd1)
    variants = {
        "Hires steps: 5": dict(hr_second_pass_steps=5),
        "Denoising strength: 0.3": dict(denoising_strength=0.3),
        'Hires prompt: "a blue square, sharp"': dict(hr_prompt="a blue square, sharp"),
        "Hires negative prompt: green": dict(hr_negative_prompt="green"),
        "Hires sampler: Euler a": dict(hr_sampler_name="Euler a"),
        "Hires schedule type: Exponential": dict(hr_scheduler="Exponential"),
    }
    for key, fields in variants.items():
        result = run(sd1, **fields)
        assert key in result.infotexts[0], key
        assert np.abs(pixels(result.images[0]) - pixels(base.images[0])).mean() > 0.5, key
    parsed = parse_infotext(run(sd1, **variants['Hires prompt: "a blue square, sharp"']).infotexts[0])
    assert parsed["Hires prompt"] == "a blue square, sharp" and parsed["Prompt"] == "a red circle"
    # the "same" choices are the defaults: same pixels, no extra keys
    same = run(sd1, hr_sampler_name="Use same sampler", hr_scheduler="Use same scheduler",
               hr_checkpoint_name="Use same checkpoint", hr_prompt="", hr_negative_prompt="")
    assert np.array_equal(pixels(same.images[0]), pixels(base.images[0]))
    assert same.infotexts[0] == base.infotexts[0]
    # A1111's key order
    text = run(sd1, hr_prompt="p2", hr_sampler_name="DDIM", hr_second_pass_steps=2).infotexts[0]
    keys = [k for k in ("Denoising strength", "Hires sampler", "Hires prompt", "Hires upscale", "Hires steps",
                        "Hires upscaler", "Version") if k in text]
    assert sorted(keys, key=text.index) == keys and len(keys) == 7


def test_no_denoising_keeps_the_upscaled_picture(sd1):
    class Steps(JobObserver):
        calls = 0

        def on_step(self, step, total, latents, denoised):
            self.calls += 1

    observer = Steps()
    result = generate(GenerationRequest(prompt="a", seed=3, denoising_strength=0.0, **HIRES), sd1, settings(), observer)
    assert observer.calls == 3 and result.images[0].size == (128, 128)  # the first pass only


def test_progress_counts_two_jobs_per_batch(sd1):
    class Recorder(JobObserver):
        def __init__(self):
            self.events = []

        def begin_batch(self, batch_index, batch_count, steps):
            self.events.append(("batch", batch_index, batch_count, steps))

        def on_step(self, step, total, latents, denoised):
            self.events.append(("step", step + 1, total, tuple(latents.shape[-2:])))

    observer = Recorder()
    generate(GenerationRequest(prompt="a", seed=3, n_iter=2, sampler_name="Euler", hr_second_pass_steps=2,
                               denoising_strength=0.5, **HIRES), sd1, settings(), observer)
    first = [("batch", 0, 4, 3)] + [("step", i, 3, (8, 8)) for i in (1, 2, 3)]
    second = [("batch", 1, 4, 2)] + [("step", i, 2, (16, 16)) for i in (1, 2)]
    assert observer.events[:len(first) + len(second)] == first + second
    assert [e for e in observer.events if e[0] == "batch"] == [("batch", 0, 4, 3), ("batch", 1, 4, 2),
                                                               ("batch", 2, 4, 3), ("batch", 3, 4, 2)]


def test_skip_and_interrupt_in_the_first_pass(sd1):
    class Control(JobObserver):
        """Skips (or interrupts) at the first pass's second step of batch 0."""

        def __init__(self, interrupt=False):
            self.interrupt, self.fired, self.steps, self.hires_steps = interrupt, False, 0, []
            self.batch = None

        def begin_batch(self, batch_index, batch_count, steps):
            self.batch = batch_index

        def on_step(self, step, total, latents, denoised):
            self.steps += 1
            if self.batch % 2:
                self.hires_steps.append(self.batch)

        def skipped(self):
            fire = not self.interrupt and not self.fired and self.steps == 2
            self.fired = self.fired or fire
            return fire

        def interrupted(self):
            return self.interrupt and self.steps >= 2

    request = GenerationRequest(prompt="a", seed=3, n_iter=2, **HIRES)
    skipper = Control()
    skipped = generate(request, sd1, settings(), skipper)
    # A1111: a skipped batch is still upscaled (its hires sampler stops at once); the next one runs fully
    assert not skipped.interrupted and [im.size for im in skipped.images] == [(128, 128), (128, 128)]
    assert skipper.hires_steps == [3, 3, 3]  # only batch 1's hires pass sampled
    normal = generate(request, sd1, settings())
    assert np.array_equal(pixels(skipped.images[1]), pixels(normal.images[1]))
    assert np.abs(pixels(skipped.images[0]) - pixels(normal.images[0])).mean() > 1

    interrupted = generate(request, sd1, settings(), Control(interrupt=True))
    # A1111: the interrupted batch comes back as the first pass left it, and the job ends
    assert interrupted.interrupted and [im.size for im in interrupted.images] == [(64, 64)]


def test_second_pass_noise_comes_from_the_image_seeds(sd1):
    """Image i of a hires batch is the image of seed+i alone (Euler a adds seeded noise every step)."""
    batch = run(sd1, seed=7, batch_size=2)
    single = run(sd1, seed=8)
    assert np.abs(pixels(batch.images[1]) - pixels(single.images[0])).max() <= 1
    assert np.abs(pixels(batch.images[0]) - pixels(single.images[0])).mean() > 1


def test_invalid_hires_values_are_request_errors(sd1):
    with pytest.raises(RequestError) as err:
        GenerationRequest(prompt="a", enable_hr=True, hr_upscaler="ESRGAN_4x")
    assert err.value.field == "hr_upscaler" and "known: Latent, " in err.value.message
    GenerationRequest(prompt="a", hr_upscaler="ESRGAN_4x")  # A1111 ignores it while hires is off
    for fields, field in ((dict(hr_sampler_name="nope"), "hr_sampler_name"),
                          (dict(hr_sampler_name="DDIM", hr_scheduler="Wavy"), "hr_scheduler"),
                          (dict(hr_checkpoint_name="other"), "hr_checkpoint_name"),
                          (dict(hr_scale=0.5), "hr_scale")):
        with pytest.raises(RequestError) as err:
            run(sd1, **fields)
        assert err.value.field == field


def test_hires_checkpoint_through_the_engine_cache(tmp_path, tiny_checkpoints, sd1):
    from modules.services.checkpoints import CheckpointRegistry, HashCache
    from modules.services.engine import Engine
    from modules.services.jobs import JobState, WorkQueue
    from modules.services.model_cache import ModelCache
    from modules.services.options import Options

    options = Options(None)
    options.data.update(sd_model_checkpoint="tiny-sd1.safetensors", samples_save=False)
    state = JobState()
    registry = CheckpointRegistry([Path(tiny_checkpoints.checkpoints_dir)], HashCache(None))
    engine = Engine(options, registry, ModelCache(POLICY), state, WorkQueue(state), tmp_path)

    request = dict(prompt="a red circle", seed=3, n_iter=2, **HIRES)
    other = engine.txt2img(GenerationRequest(**request, hr_checkpoint_name="tiny-sd1-inpainting"))
    assert engine.models.info.name == "tiny-sd1.safetensors"  # the job's own checkpoint is loaded again
    assert options.data["sd_model_checkpoint"] == registry.find("tiny-sd1.safetensors").title  # not selected
    short_hash = registry.find("tiny-sd1-inpainting").shorthash
    assert f"Hires checkpoint: tiny-sd1-inpainting [{short_hash}], Hires upscale: 2" in other.infotexts[0]
    assert all(im.size == (128, 128) for im in other.images)

    same = engine.txt2img(GenerationRequest(**request))
    assert np.abs(pixels(other.images[0]) - pixels(same.images[0])).mean() > 1
    # the second batch started from the first checkpoint again: it equals that seed run alone
    alone = engine.txt2img(GenerationRequest(**{**request, "n_iter": 1, "seed": 4},
                                             hr_checkpoint_name="tiny-sd1-inpainting"))
    assert np.array_equal(pixels(other.images[1]), pixels(alone.images[0]))

    with pytest.raises(RequestError) as err:
        engine.txt2img(GenerationRequest(**request, hr_checkpoint_name="missing"))
    assert err.value.field == "hr_checkpoint_name" and "unknown checkpoint 'missing'" in err.value.message
    assert engine.models.info.name == "tiny-sd1.safetensors"


@pytest.mark.parametrize("name", ["sd2_v", "sdxl", "sd1_inpainting"])
def test_every_family_runs_a_hires_pass(tiny_checkpoints, name):
    model = load_checkpoint(tiny_checkpoints[name], POLICY)
    for upscaler in ("Latent", "Lanczos"):  # latent path and decode -> enlarge -> encode path
        image = run(model, hr_upscaler=upscaler, steps=2).images[0]
        assert image.size == (128, 128) and pixels(image).std() > 1


def test_checkpoint_protocol_and_tiling_of_the_hires_model(tiny_checkpoints, sd1):
    from modules.core import tiling

    other = load_checkpoint(tiny_checkpoints.sd1_inpainting, POLICY)
    calls, seen = [], []

    def load_model(name):
        calls.append(name)
        return other if name else sd1

    class Watch(JobObserver):
        def on_step(self, step, total, latents, denoised):
            seen.append((latents.shape[-1], {m.padding_mode for m in tiling.conv_layers(sd1)},
                         {m.padding_mode for m in tiling.conv_layers(other)}))

    result = generate(GenerationRequest(prompt="a", seed=3, n_iter=2, tiling=True, hr_checkpoint_name="other",
                                        **HIRES), sd1, settings(load_model=load_model,
                                                                checkpoint_title=lambda n: f"{n} [0a1b2c3d4e]"),
                      Watch())
    assert calls == ["other", None, "other", None]  # the job's own checkpoint back after each hires pass
    first, hires_pass = [s for s in seen if s[0] == 8], [s for s in seen if s[0] == 16]
    assert first and all(s[1] == {"circular"} for s in first)
    assert hires_pass and all(s[2] == {"circular"} for s in hires_pass)
    assert {m.padding_mode for m in tiling.conv_layers(sd1) + tiling.conv_layers(other)} == {"zeros"}
    assert "Tiling: True" in result.infotexts[0] and "Hires checkpoint: other [0a1b2c3d4e]" in result.infotexts[0]
