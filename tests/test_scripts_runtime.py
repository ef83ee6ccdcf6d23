"""A1111's scripting runtime on tiny real checkpoints: the core's job hooks, the order and arguments
of every script hook and callback (the hook_recorder test extension records them), selectable
scripts calling process_images, broken hooks that are reported while the job completes, and the API's
script fields and /sdapi/v1/scripts, /sdapi/v1/script-info over real HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core import lora
from modules.core.job_hooks import JobHooks
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest, Img2ImgRequest
from tests.api_common import assert_error, decode

RECORDER = Path(__file__).parent / "fixtures" / "extensions" / "hook_recorder"
SMALL = dict(width=64, height=64, steps=2, negative_prompt="blurry")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def settings(tmp_path: Path | None = None, **kw) -> GenerationSettings:
    out = {} if tmp_path is None else dict(outdir_samples=tmp_path / "samples", outdir_grids=tmp_path / "grids")
    return GenerationSettings(model_name="tiny-sd1", model_hash="0123456789", version="easel-test", **out, **kw)


# ------------------------------------------------------------------------------------ core hooks

class PerImage(JobHooks):
    """Replaces the job's per-image prompts and seeds, as a wildcard script would."""

    def __init__(self, prompts, seeds):
        self.prompts, self.seeds = prompts, seeds

    def job_started(self, values):
        values.prompts[:] = self.prompts
        values.seeds[:] = self.seeds


def test_without_hooks_a_job_is_bit_identical_to_one_with_no_op_hooks(tmp_path, sd1):
    request = GenerationRequest(prompt="a red cube", seed=3, batch_size=2, n_iter=2, **SMALL)
    plain = generate(request, sd1, settings(tmp_path / "a"))
    hooked = generate(request, sd1, settings(tmp_path / "b"), hooks=JobHooks())
    assert plain.infotexts == hooked.infotexts and plain.seeds == hooked.seeds
    for a, b in zip([plain.grid, *plain.images], [hooked.grid, *hooked.images]):
        assert np.array_equal(pixels(a), pixels(b))
    assert [Path(p).name for p in plain.paths] == [Path(p).name for p in hooked.paths]
    assert [Path(p).read_bytes() for p in plain.paths] == [Path(p).read_bytes() for p in hooked.paths]


def test_per_image_prompts_and_seeds_are_generated_and_written(sd1):
    request = GenerationRequest(prompt="ignored", seed=1, batch_size=2, save_images=False, **SMALL)
    result = generate(request, sd1, settings(), hooks=PerImage(["a red cube", "a blue ball"], [11, 42]))
    assert result.seeds == [11, 42] and result.prompts == ["a red cube", "a blue ball"]
    assert result.infotexts[0].startswith("a red cube\n") and "Seed: 11," in result.infotexts[0]
    assert result.infotexts[1].startswith("a blue ball\n") and "Seed: 42," in result.infotexts[1]
    for prompt, seed, image in zip(["a red cube", "a blue ball"], [11, 42], result.images):
        alone = generate(GenerationRequest(prompt=prompt, seed=seed, save_images=False, **SMALL), sd1, settings())
        assert np.abs(pixels(image) - pixels(alone.images[0])).max() <= 1


def test_lora_tags_in_per_image_prompts_apply_per_batch(tmp_path, sd1, sdxl):
    from modules.services.loras import LoraRegistry
    from tests.fixtures.tiny_loras import write_lora_set

    write_lora_set(tmp_path, sd1, sdxl)
    s = settings(find_lora=LoraRegistry([tmp_path]).require)
    try:
        tagged = "a cube <lora:sd1_kohya:1>"
        request = GenerationRequest(prompt="a cube", seed=5, n_iter=2, save_images=False, **SMALL)
        result = generate(request, sd1, s, hooks=PerImage([tagged, "a cube"], [5, 5]))
        with_lora = generate(GenerationRequest(prompt=tagged, seed=5, save_images=False, **SMALL), sd1, s)
        without = generate(GenerationRequest(prompt="a cube", seed=5, save_images=False, **SMALL), sd1, s)
    finally:
        lora.deactivate(sd1)
    assert np.array_equal(pixels(result.images[0]), pixels(with_lora.images[0]))
    assert np.array_equal(pixels(result.images[1]), pixels(without.images[0]))
    assert np.abs(pixels(with_lora.images[0]) - pixels(without.images[0])).mean() > 1  # the LoRA did something
    assert result.infotexts[0].startswith(tagged + "\n") and "Lora hashes: " in result.infotexts[0]


def test_hires_prompts_per_image_drive_the_second_pass(sd1):
    class HiresPrompts(JobHooks):
        def job_started(self, values):
            values.hr_prompts[:] = ["a blue ball"]

    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", hr_second_pass_steps=2, seed=8, save_images=False)
    request = GenerationRequest(prompt="a red cube", **hires, **SMALL)
    hooked = generate(request, sd1, settings(), hooks=HiresPrompts())
    asked = generate(GenerationRequest(prompt="a red cube", hr_prompt="a blue ball", **hires, **SMALL), sd1, settings())
    plain = generate(request, sd1, settings())
    assert hooked.images[0].size == (128, 128)
    assert np.array_equal(pixels(hooked.images[0]), pixels(asked.images[0]))
    assert np.abs(pixels(hooked.images[0]) - pixels(plain.images[0])).mean() > 0.5


# ------------------------------------------------------------------------------------ the runtime in-process

@pytest.fixture(scope="module")
def runtime(tiny_checkpoints, tmp_path_factory):
    """A real engine (worker thread, model cache, options) with A1111's slots bound to it and the
    hook_recorder extension loaded (plus the repository's scripts/)."""
    import webui
    from modules import cmd_args, errors, extensions, scripts, shared

    data = tmp_path_factory.mktemp("runtime-data")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1)], extra_preloads=[])
    engine = webui.build_engine(opts)
    saved_extensions = list(extensions.extensions)
    recorder = extensions.Extension("hook_recorder", str(RECORDER))
    extensions.extensions[:] = [recorder]  # errors are credited to it
    shared.bind(engine, opts)
    scripts.load_scripts(extension_list=[recorder])
    assert not [e for e in scripts.load_errors if "hook_recorder" in e[0]], scripts.load_errors
    yield engine
    extensions.extensions[:] = saved_extensions
    errors.exception_records.clear()


@pytest.fixture()
def log(tmp_path, monkeypatch):
    path = tmp_path / "hooks.jsonl"
    monkeypatch.setenv("EASEL_HOOK_RECORDER_LOG", str(path))

    def read(*names: str) -> list[dict]:
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [e for e in entries if not names or e["hook"] in names]

    return read


def recorder(mode: str = "") -> "ScriptCall":  # noqa: F821
    from modules.services.script_jobs import ScriptCall

    return ScriptCall(alwayson={"Hook recorder": [True, mode]})


SCRIPT_HOOKS = ("before_process", "process", "before_process_batch", "process_batch", "postprocess_batch",
                "postprocess_batch_list", "postprocess_image", "before_image_saved", "image_saved", "image_grid",
                "postprocess")


def test_txt2img_hooks_run_in_a1111_order_with_their_arguments(runtime, log):
    request = GenerationRequest(prompt="a cat", seed=5, batch_size=2, n_iter=2, **SMALL)
    result = runtime.submit_txt2img(request, scripts=recorder()).result()

    order = [e["hook"] for e in log(*SCRIPT_HOOKS)]
    per_image = ["postprocess_image", "postprocess_image", "before_image_saved", "image_saved",
                 "before_image_saved", "image_saved"]
    per_batch = ["before_process_batch", "process_batch", "postprocess_batch", "postprocess_batch_list", *per_image]
    assert order == ["before_process", "process", *per_batch, *per_batch, "image_grid", "before_image_saved",
                     "image_saved", "postprocess"]

    process = log("process")[0]
    assert process["all_prompts"] == ["a cat"] * 4 and process["all_seeds"] == [5, 6, 7, 8]
    assert (process["width"], process["height"], process["is_img2img"]) == (64, 64, False)
    batches = log("before_process_batch")
    assert [(b["batch_number"], b["seeds"], b["prompts"]) for b in batches] == [(0, [5, 6], ["a cat"] * 2),
                                                                               (1, [7, 8], ["a cat"] * 2)]
    assert batches[0]["subseeds"] == process["all_subseeds"][:2]
    decoded = log("postprocess_batch")[0]
    assert decoded["shape"] == [2, 3, 64, 64] and 0.0 <= decoded["min"] <= decoded["max"] <= 1.0
    assert [e["batch_index"] for e in log("postprocess_image")] == [0, 1, 0, 1]

    saved = [e for e in log("image_saved") if "grid" not in Path(e["filename"]).name]
    assert [e["filename"] for e in saved] == result.paths  # the files the job returns
    for entry, path, text in zip(saved, result.paths, result.infotexts):
        assert entry["infotext"] == text == Image.open(path).info["parameters"]
    assert [e["filename"] for e in log("before_image_saved")][:1] == result.paths[:1]  # the name it will get
    grid = log("image_grid")[0]
    assert (grid["count"], grid["rows"], grid["cols"]) == (4, 2, 2)
    assert log("image_saved")[-1]["filename"] == result.grid_path
    post = log("postprocess")[0]
    assert post["images"] == 5 and post["index_of_first_image"] == 1 and post["infotexts"][1:] == result.infotexts


def test_cfg_callbacks_run_at_every_model_call(runtime, log):
    request = GenerationRequest(prompt="a cat", seed=5, n_iter=2, save_images=False, **{**SMALL, "steps": 3})
    runtime.submit_txt2img(request, scripts=recorder()).result()
    denoiser = log("cfg_denoiser")
    assert [e["step"] for e in denoiser] == [0, 1, 2, 0, 1, 2]  # Euler a: one model call per step, per batch
    assert all(e["total"] == 3 and e["x"] == [1, 4, 8, 8] and e["has_uncond"] for e in denoiser)
    assert denoiser[0]["text_cond"][0] == 1 and len(denoiser[0]["text_cond"]) == 3  # (B, tokens, width)
    assert denoiser[0]["sigma"][0] > denoiser[1]["sigma"][0] > denoiser[2]["sigma"][0] > 0
    assert [e["step"] for e in log("cfg_denoised")] == [0, 1, 2, 0, 1, 2]
    assert log("cfg_denoised")[0]["x"] == [2, 4, 8, 8]  # cond rows then uncond rows
    assert [e["step"] for e in log("cfg_after_cfg")] == [0, 1, 2, 0, 1, 2]


def test_prompts_changed_in_process_are_generated_and_in_the_infotext(runtime, log):
    request = GenerationRequest(prompt="a cat", seed=9, batch_size=2, save_images=False, **SMALL)
    changed = runtime.submit_txt2img(request, scripts=recorder("prompt")).result()
    same = runtime.submit_txt2img(GenerationRequest(**{**request.__dict__, "prompt": "a cat, recorded"})).result()
    assert changed.prompts == ["a cat, recorded"] * 2
    assert all(t.startswith("a cat, recorded\n") and "Recorder: on" in t for t in changed.infotexts)
    assert changed.extra_generation_params["Recorder"] == "on"
    for a, b in zip(changed.images, same.images):
        assert np.array_equal(pixels(a), pixels(b))
    assert [e["prompts"] for e in log("before_process_batch")] == [["a cat, recorded"] * 2]


def test_process_batch_prompts_reach_the_conditioning_only(runtime, log):
    request = GenerationRequest(prompt="a cat", seed=9, save_images=False, **SMALL)
    changed = runtime.submit_txt2img(request, scripts=recorder("batch_prompt")).result()
    conditioned = runtime.submit_txt2img(GenerationRequest(**{**request.__dict__, "prompt": "a cat, batch 0"})).result()
    assert np.array_equal(pixels(changed.images[0]), pixels(conditioned.images[0]))
    assert changed.infotexts[0].startswith("a cat\n")  # A1111: the infotext shows p.all_prompts


def test_postprocess_image_replaces_the_picture_returned_and_saved(runtime, log):
    request = GenerationRequest(prompt="a cat", seed=2, batch_size=2, **SMALL)
    result = runtime.submit_txt2img(request, scripts=recorder("replace")).result()
    red = np.zeros((64, 64, 3), dtype=np.int16)
    red[..., 0] = 255
    for image, path in zip(result.images, result.paths):
        assert np.array_equal(pixels(image), red)
        assert np.array_equal(pixels(Image.open(path)), red)
    assert np.array_equal(pixels(result.grid), np.concatenate([red, red], axis=1))


def test_img2img_hooks_see_the_init_image(runtime, log):
    init = Image.new("RGB", (64, 64), (30, 160, 90))
    request = Img2ImgRequest(prompt="a cat", seed=4, init_images=[init], denoising_strength=0.5, save_images=False,
                             **SMALL)
    result = runtime.submit_img2img(request, scripts=recorder()).result()
    process = log("process")[0]
    assert process["is_img2img"] and process["init_images"] == 1 and (process["width"], process["height"]) == (64, 64)
    assert [e["hook"] for e in log(*SCRIPT_HOOKS)] == ["before_process", "process", "before_process_batch",
                                                       "process_batch", "postprocess_batch", "postprocess_batch_list",
                                                       "postprocess_image", "postprocess"]
    assert log("setup")[0]["is_img2img"] is True
    assert len(result.images) == 1 and "Denoising strength: 0.5" in result.infotexts[0]


def test_post_sample_gets_the_final_hires_latents_and_before_hr_runs_before_that_pass(runtime, log):
    base = dict(prompt="a cat", batch_size=1, n_iter=2, save_images=False, enable_hr=True, hr_scale=2.0,
                hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2, **SMALL)
    zeroed = [runtime.submit_txt2img(GenerationRequest(seed=s, **base), scripts=recorder("zero_latents")).result()
              for s in (1, 2)]
    kept = runtime.submit_txt2img(GenerationRequest(seed=1, **base), scripts=recorder()).result()
    # the second pass's latents, after it ran, once per batch
    order = [e["hook"] for e in log("before_hr", "post_sample", "cfg_denoiser", "postprocess_batch")][:13]
    assert order == ["cfg_denoiser"] * 2 + ["before_hr"] + ["cfg_denoiser"] * 2 + ["post_sample", "postprocess_batch"] \
        + ["cfg_denoiser"] * 2 + ["before_hr"] + ["cfg_denoiser"] * 2 + ["post_sample"]
    assert {tuple(e["shape"]) for e in log("post_sample")} == {(1, 4, 16, 16)}
    hr = log("before_hr")[0]
    assert hr["width"] == 64 and hr["hr_upscale_to"] == [128, 128]
    assert [e["iteration"] for e in log("before_hr")][:2] == [0, 1]
    # zeroed latents decode to the same picture whatever the seed; untouched ones do not
    assert zeroed[0].images[0].size == (128, 128)
    assert np.array_equal(pixels(zeroed[0].images[0]), pixels(zeroed[1].images[1]))
    assert np.abs(pixels(zeroed[0].images[0]) - pixels(kept.images[0])).mean() > 1.0


def _inpaint_request(seed: int, **kw) -> Img2ImgRequest:
    init = Image.new("RGB", (64, 64), (30, 160, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half is repainted
    return Img2ImgRequest(prompt="a cat", seed=seed, init_images=[init], mask=mask, denoising_strength=0.9,
                          save_images=False, **{**SMALL, "steps": 4, **kw})


def test_on_mask_blend_runs_at_every_inpainting_step_and_can_change_the_blend(runtime, log):
    blended = [runtime.submit_img2img(_inpaint_request(s), scripts=recorder("blend_init")).result() for s in (1, 2)]
    finals = [e["final"] for e in log("on_mask_blend")]
    assert finals[:5] == [False, False, False, False, True]  # A1111: int(4 * 0.9) + 1 = 4 steps, then the final
    assert all(e["shape"] == [1, 4, 8, 8] and abs(e["mask_sum"] - 1.0) < 1e-6 for e in log("on_mask_blend"))
    plain = [runtime.submit_img2img(_inpaint_request(s), scripts=recorder()).result() for s in (1, 2)]
    left = np.s_[:, :24]
    # keeping the init latents everywhere: the repainted half no longer depends on the seed
    assert np.array_equal(pixels(blended[0].images[0])[left], pixels(blended[1].images[0])[left])
    assert np.abs(pixels(plain[0].images[0])[left] - pixels(plain[1].images[0])[left]).mean() > 1.0


def test_postprocess_maskoverlay_sees_and_can_replace_what_is_pasted_back(runtime, log):
    init = np.asarray(_inpaint_request(1).init_images[0], dtype=np.int16)
    kept = runtime.submit_img2img(_inpaint_request(5), scripts=recorder()).result()
    entry = log("postprocess_maskoverlay")[0]
    assert (entry["index"], entry["overlay_mode"], entry["mask_mode"], entry["size"]) == (0, "RGBA", "L", [64, 64])
    assert (entry["alpha_left"], entry["alpha_right"], entry["mask_left"]) == (0, 255, 255)
    right = np.s_[:, 48:]  # clear of the blurred mask edge
    assert np.array_equal(pixels(kept.images[0])[right], init[right])  # the original, pasted back
    bare = runtime.submit_img2img(_inpaint_request(5), scripts=recorder("no_overlay")).result()
    assert np.abs(pixels(bare.images[0])[right] - init[right]).mean() > 1.0  # nothing pasted back


def test_postprocess_image_after_composite_sees_the_pasted_back_picture(runtime, log):
    result = runtime.submit_img2img(_inpaint_request(3), scripts=recorder("composite_blue")).result()
    blue = np.zeros((64, 64, 3), dtype=np.int16)
    blue[..., 2] = 255
    assert np.array_equal(pixels(result.images[0]), blue)  # after the paste-back, which would keep the right half
    assert log("postprocess_image_after_composite")[0]["size"] == [64, 64]
    txt = runtime.submit_txt2img(GenerationRequest(prompt="a cat", seed=1, save_images=False, **SMALL),
                                 scripts=recorder()).result()
    assert len(txt.images) == 1 and [e["hook"] for e in log("postprocess_image", "postprocess_image_after_composite")][-2:] \
        == ["postprocess_image", "postprocess_image_after_composite"]


def test_extra_noise_setting_adds_noise_the_callback_can_replace(runtime, log):
    request = Img2ImgRequest(prompt="a cat", seed=4, init_images=[Image.new("RGB", (64, 64), (30, 160, 90))],
                             denoising_strength=0.5, save_images=False, **SMALL)
    none = runtime.submit_img2img(request, scripts=recorder()).result()
    assert not log("extra_noise") and "Extra noise" not in none.infotexts[0]
    extra = runtime.submit_img2img(request, overrides={"img2img_extra_noise": 0.5}, scripts=recorder()).result()
    called = log("extra_noise")
    assert len(called) == 1 and called[0]["noise"] == called[0]["x"] == called[0]["xi"] == [1, 4, 8, 8]
    assert "Extra noise: 0.5" in extra.infotexts[0]
    assert np.abs(pixels(extra.images[0]) - pixels(none.images[0])).mean() > 1.0
    zeroed = runtime.submit_img2img(request, overrides={"img2img_extra_noise": 0.5},
                                    scripts=recorder("zero_extra")).result()
    assert np.array_equal(pixels(zeroed.images[0]), pixels(none.images[0]))
    assert "Extra noise: 0.5" in zeroed.infotexts[0]


def test_img2img_batch_runs_the_scripts_with_every_file(runtime, log, tmp_path):
    from modules.services import img2img_batch
    from modules.services.script_jobs import ScriptCall

    source = tmp_path / "in"
    source.mkdir()
    for name, shade in (("a", 20), ("b", 200)):
        Image.new("RGB", (64, 64), (shade, 100, 50)).save(source / f"{name}.png")
    fields = dict(prompt="a cat", seed=3, steps=2, width=64, height=64, denoising_strength=0.5)
    report = img2img_batch.run_batch(runtime, fields, source, tmp_path / "red", scripts=recorder("replace"))
    assert sorted(p.name for p in report.written) == ["a.png", "b.png"]
    red = np.zeros((64, 64, 3), dtype=np.int16)
    red[..., 0] = 255
    for path in report.written:  # the AlwaysVisible script's picture is what the batch wrote
        assert np.array_equal(pixels(Image.open(path)), red)
    assert [e["is_img2img"] for e in log("process")] == [True, True]
    # a selectable script runs per file; its two pictures per file are written as name-1, name-2
    report = img2img_batch.run_batch(runtime, fields, source, tmp_path / "run",
                                     scripts=ScriptCall(title="recorder RUN", args=["batch", 2]))
    assert sorted(p.name for p in report.written) == ["a-1.png", "a-2.png", "b-1.png", "b-2.png"]
    assert all("Recorder run: batch" in Image.open(p).info["parameters"] for p in report.written)


def test_a_selectable_script_runs_process_images_itself(runtime, log):
    from modules.services.script_jobs import ScriptCall

    request = GenerationRequest(prompt="a dog", **{**SMALL, "negative_prompt": ""})
    result = runtime.submit_txt2img(request, scripts=ScriptCall(title="recorder RUN", args=["yo", 2])).result()
    assert log("run")[0]["note"] == "yo" and log("run")[0]["times"] == 2
    assert result.seeds == [100, 101] and len(result.images) == 2 and result.grid is None
    assert all("Recorder run: yo" in t for t in result.infotexts)
    assert "Seed: 100," in result.infotexts[0] and "Seed: 101," in result.infotexts[1]


def test_a_failing_hook_is_reported_with_its_extension_and_the_job_completes(runtime, log):
    from modules import errors, extensions

    errors.exception_records.clear()
    modes = "fail:process,fail:process_batch,fail:postprocess_image,fail:cfg_denoiser,fail:before_image_saved"
    request = GenerationRequest(prompt="a cat", seed=7, batch_size=2, **SMALL)
    result = runtime.submit_txt2img(request, scripts=recorder(modes)).result()
    plain = runtime.submit_txt2img(request).result()
    assert len(result.images) == 2 and all(Path(p).is_file() for p in result.paths)
    for a, b in zip(result.images, plain.images):  # the failed hooks changed nothing
        assert np.array_equal(pixels(a), pixels(b))
    messages = [m for m, _ in errors.exception_records]
    for hook in ("running process", "running process_batch", "running postprocess_image",
                 "cfg_denoiser_callback", "before_image_saved_callback"):
        assert any(m.startswith("[extension hook_recorder] Error") and hook in m for m in messages), (hook, messages)
    assert any("fails in process on purpose" in text for _, text in errors.exception_records)
    assert any("RuntimeError" in e for e in extensions.errors_of("hook_recorder"))


def test_a_selectable_script_that_fails_fails_the_job_and_the_worker_goes_on(runtime, log):
    from modules.core.types import RequestError
    from modules.services.script_jobs import ScriptCall

    with pytest.raises(RequestError) as info:
        runtime.submit_txt2img(GenerationRequest(prompt="x", **SMALL),
                               scripts=ScriptCall(title="No such script")).result()
    assert info.value.field == "script_name" and "'recorder run'" in info.value.message
    ok = runtime.submit_txt2img(GenerationRequest(prompt="x", save_images=False, **SMALL)).result()
    assert len(ok.images) == 1


def test_process_images_from_another_thread_with_an_extension_made_p(runtime, log):
    from modules import processing, shared

    p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, prompt="a house", seed=77, steps=2,
                                                    width=64, height=64, batch_size=2, do_not_save_samples=True,
                                                    do_not_save_grid=True)
    p.extra_generation_params["Made by"] = "test"
    processed = processing.process_images(p)  # this (test) thread is not the worker: it is queued there
    assert len(processed.images) == 2 and processed.index_of_first_image == 0
    assert processed.all_seeds == [77, 78] and p.all_prompts == ["a house", "a house"]
    assert "Made by: test" in processed.infotexts[0] and processed.images[0].size == (64, 64)
    info = json.loads(processed.js())
    assert info["all_seeds"] == [77, 78] and info["infotexts"] == processed.infotexts
    assert processed.info == processed.infotexts[0] == processing.create_infotext(
        p, p.all_prompts, p.all_seeds, p.all_subseeds)


def test_reloading_scripts_drops_the_old_callbacks(runtime, log):
    from modules import extensions, script_callbacks, scripts

    def owned() -> int:
        return sum(1 for callbacks in script_callbacks.callback_map.values() for c in callbacks
                   if "hook_recorder" in c.script)

    before = owned()
    recorder_ext = extensions.extensions[0]
    scripts.load_scripts(extension_list=[recorder_ext])
    assert owned() == before > 10
    assert [e["hook"] for e in log("script_unloaded", "imported")] == ["script_unloaded", "imported"]
    # the repository's built-in ControlNet first, then the extension's
    assert [s.title() for s in scripts.scripts_txt2img.alwayson_scripts] == ["ControlNet", "Hook recorder"]


def test_options_added_by_an_extension_are_settings(runtime):
    from modules import script_callbacks, shared

    script_callbacks.ui_settings_callback()
    definition = runtime.options.defs["hook_recorder_option"]
    assert definition.label == "Hook recorder option" and definition.section == "Hook recorder"
    assert shared.opts.hook_recorder_option == "default"
    assert "requires Reload UI" in shared.opts.data_labels["hook_recorder_option"].comment_after
    assert shared.opts.set("hook_recorder_option", "changed") is True
    assert runtime.options.get("hook_recorder_option") == "changed" and shared.opts.hook_recorder_option == "changed"


# ------------------------------------------------------------------------------------ the API over real HTTP

@pytest.fixture(scope="module")
def recorder_server(tiny_checkpoints, tmp_path_factory):
    import os

    from tests.server import run_server

    data = tmp_path_factory.mktemp("recorder-server")
    shutil.copytree(RECORDER, data / "extensions" / "hook_recorder")
    log_path = data / "hooks.jsonl"
    old = os.environ.get("EASEL_HOOK_RECORDER_LOG")
    os.environ["EASEL_HOOK_RECORDER_LOG"] = str(log_path)
    try:
        with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--nowebui",
                        "--ckpt", str(tiny_checkpoints.sd1)) as srv:
            srv.hook_log = log_path
            yield srv
    finally:
        if old is None:
            os.environ.pop("EASEL_HOOK_RECORDER_LOG", None)
        else:
            os.environ["EASEL_HOOK_RECORDER_LOG"] = old


API_BASE = {"prompt": "a red cube", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 2, "seed": 1234}


def test_api_alwayson_scripts_reach_the_script(recorder_server):
    body = {**API_BASE, "batch_size": 2, "save_images": True,
            "alwayson_scripts": {"Hook recorder": {"args": [True, "prompt"]}}}
    r = recorder_server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["a red cube, recorded"] * 2
    assert all("Recorder: on" in t for t in info["infotexts"])
    assert info["extra_generation_params"]["Recorder"] == "on"
    images = [decode(x) for x in r.json()["images"]]
    assert len(images) == 3 and images[0].size == (128, 64)  # the grid first (A1111)
    assert images[1].info["parameters"].startswith("a red cube, recorded\n")


def test_api_script_name_runs_a_selectable_script(recorder_server):
    body = {**API_BASE, "script_name": "Recorder run", "script_args": ["api", 2]}
    r = recorder_server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [100, 101] and all("Recorder run: api" in t for t in info["infotexts"])
    assert len(r.json()["images"]) == 2
    r = recorder_server.post("/sdapi/v1/img2img", json={**API_BASE, "script_name": "recorder run",
                                                       "script_args": ["i2i"], "init_images": [_png()]})
    assert r.status_code == 200, r.text
    assert "Recorder run: i2i" in json.loads(r.json()["info"])["infotexts"][0]


def test_api_unknown_scripts_are_refused_naming_them(recorder_server):
    message = assert_error(recorder_server.post("/sdapi/v1/txt2img", json={**API_BASE, "script_name": "Nope"}),
                           "script_name", (422,))
    assert "Nope" in message and "'recorder run'" in message
    message = assert_error(recorder_server.post("/sdapi/v1/txt2img", json={
        **API_BASE, "alwayson_scripts": {"Nope": {"args": []}}}), "alwayson_scripts", (422,))
    assert "Nope" in message and "'hook recorder'" in message
    message = assert_error(recorder_server.post("/sdapi/v1/txt2img", json={
        **API_BASE, "alwayson_scripts": {"Recorder run": {"args": []}}}), "alwayson_scripts", (422,))
    assert "selectable" in message
    assert recorder_server.post("/sdapi/v1/txt2img", json=API_BASE).status_code == 200  # the server goes on


def test_api_scripts_lists_and_script_info(recorder_server):
    r = recorder_server.get("/sdapi/v1/scripts")
    assert r.status_code == 200
    listed = r.json()
    assert set(listed) == {"txt2img", "img2img"}
    for tab in ("txt2img", "img2img"):
        assert "hook recorder" in listed[tab] and "recorder run" in listed[tab]
        assert all(name == name.lower() for name in listed[tab])
    infos = recorder_server.get("/sdapi/v1/script-info").json()
    run = [i for i in infos if i["name"] == "recorder run" and i["is_img2img"] is False][0]
    assert run["is_alwayson"] is False
    assert [a["label"] for a in run["args"]] == ["Note", "Times"]
    times = run["args"][1]
    assert (times["value"], times["minimum"], times["maximum"], times["step"]) == (1, 1, 3, 1)
    hook = [i for i in infos if i["name"] == "hook recorder" and i["is_img2img"] is True][0]
    assert hook["is_alwayson"] is True and [a["value"] for a in hook["args"]] == [False, ""]
    assert all(set(a) == {"label", "value", "minimum", "maximum", "step", "choices"} for i in infos for a in i["args"])


def test_api_callbacks_at_start_add_routes_and_options(recorder_server):
    entries = [json.loads(line) for line in recorder_server.hook_log.read_text().splitlines()]
    hooks = [e["hook"] for e in entries]
    assert hooks.index("imported") < hooks.index("ui_settings") < hooks.index("app_started")
    assert [e for e in entries if e["hook"] == "app_started"][0] == {"hook": "app_started", "has_app": True,
                                                                      "has_demo": False}
    assert recorder_server.get("/hook-recorder/ping").json() == {"pong": True, "option": "default"}
    assert recorder_server.get("/sdapi/v1/options").json()["hook_recorder_option"] == "default"
    assert any(e["hook"] == "model_loaded" and e["family"] == "sd1" for e in entries)


def _png() -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_component_callbacks_receive_a_key_keyword():
    """Regression: Gradio 6 components pass `key=`; it clashed with the callback table's own
    parameter name, so on_before_component/on_after_component raised for those components."""
    from modules import script_callbacks

    seen = []
    script_callbacks.on_before_component(lambda component, **kw: seen.append(("before", component, kw)))
    script_callbacks.on_after_component(lambda component, **kw: seen.append(("after", component, kw)))
    try:
        script_callbacks.before_component_callback("box", key="k1", elem_id="txt2img_prompt")
        script_callbacks.after_component_callback("box", key="k1", elem_id="txt2img_prompt")
    finally:
        for name in ("callbacks_before_component", "callbacks_after_component"):
            script_callbacks.callback_map[name].clear()
    assert seen == [("before", "box", {"key": "k1", "elem_id": "txt2img_prompt"}),
                    ("after", "box", {"key": "k1", "elem_id": "txt2img_prompt"})]
