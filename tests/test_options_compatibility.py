"""A1111's "Compatibility" switches (issue 13), each checked where it acts, on the tiny real SD1
checkpoint: use_old_karras_scheduler_sigmas (the schedule's sigmas), use_old_hires_fix_width_height
(the first pass's size, the result's size, the infotext), hires_fix_use_firstpass_conds (the hires
prompts encoded under the first prompt's LoRA), use_old_scheduling (prompt-editing timelines and
A1111's "Old prompt editing timelines" key), and the options travelling per request through the
API's override_settings.

dont_fix_second_order_samplers_schedule is not here: A1111 1.10 reads it nowhere (since 1.6 the
schedule of a second-order sampler is always doubled, SamplerData.total_steps), which Easel does too.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import lora, samplers
from modules.core.hires import old_first_pass_size
from modules.core.infotext import parse_infotext
from modules.core.infotext_defaults import COMPATIBILITY_INFOTEXT_TO_OPTION, PASTE_KEYS
from modules.core.pipeline import GenerationSettings, generate
from modules.core.prompt_parser import old_timelines_differ, prompt_schedules
from modules.core.sampler_options import SamplerOptions
from modules.core.types import GenerationRequest

SMALL = dict(width=64, height=64, steps=2, seed=11, save_images=False, sampler_name="Euler")
OLD_KEY = "Old prompt editing timelines"


def settings(**kw) -> GenerationSettings:
    return GenerationSettings(model_name="tiny-sd1", model_hash="0123456789", **kw)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def same(a, b) -> bool:
    return np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


# ----------------------------------------------------------------- use_old_karras_scheduler_sigmas

def _sigmas(sampler: str, schedule: str, options: SamplerOptions, steps: int = 4) -> list[float]:
    scheduler = samplers.build_scheduler(sampler, schedule, options=options)
    scheduler.set_timesteps(steps)
    return [round(float(s), 4) for s in scheduler.sigmas]


def test_old_karras_sigmas_run_every_schedule_function_from_10_to_0_1():
    old = SamplerOptions(use_old_karras_scheduler_sigmas=True)
    # the model's range (0.0292 .. 14.6146) by default; A1111's old 0.1 .. 10 with the option
    assert _sigmas("DPM++ 2M", "Karras", SamplerOptions()) == [14.6146, 3.1686, 0.4469, 0.0292, 0.0]
    # Karras, rho 7: (10^(1/7) + i/3 (0.1^(1/7) - 10^(1/7)))^7
    ramp = torch.linspace(0, 1, 4)
    expected = [round(float(s), 4) for s in (10 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10 ** (1 / 7))) ** 7] + [0.0]
    assert _sigmas("DPM++ 2M", "Karras", old) == expected == [10.0, 2.9341, 0.6629, 0.1, 0.0]
    assert _sigmas("Euler", "Karras", old) == expected
    # A1111 1.10 hands the range to every schedule function, not only Karras'
    assert _sigmas("DPM++ 2M", "Exponential", old) == [10.0, 2.1544, 0.4642, 0.1, 0.0]
    # a sampler's "Automatic" that means the model's own sigmas takes none of the range (A1111)
    assert _sigmas("Euler", "Automatic", old) == _sigmas("Euler", "Automatic", SamplerOptions())
    # the sigma_min / sigma_max options still win over the old range
    assert _sigmas("DPM++ 2M", "Karras", SamplerOptions(use_old_karras_scheduler_sigmas=True, sigma_min=0.5)) == [
        10.0, 4.2168, 1.5743, 0.5, 0.0]
    # A1111 writes no infotext key for it
    assert samplers.infotext_params("DPM++ 2M", "Karras", old) == {}


def test_old_karras_sigmas_change_the_picture_and_not_the_infotext(sd1):
    request = GenerationRequest(prompt="a red circle", **{**SMALL, "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
    plain = generate(request, sd1, settings())
    old = generate(request, sd1, settings(sampler_options=SamplerOptions(use_old_karras_scheduler_sigmas=True)))
    assert not same(plain, old)
    assert old.infotexts[0] == plain.infotexts[0]


# ----------------------------------------------------------------- use_old_hires_fix_width_height

def test_old_first_pass_size_is_a1111s():
    # about 512x512 pixels at the final aspect, each side rounded up to a multiple of 64
    assert old_first_pass_size(512, 512) == (512, 512)
    assert old_first_pass_size(1024, 768) == (640, 448)
    assert old_first_pass_size(1920, 1080) == (704, 384)
    assert old_first_pass_size(128, 64) == (768, 384)
    assert old_first_pass_size(64, 64) == (512, 512)


def test_old_hires_width_height_are_the_final_size(sd1):
    request = GenerationRequest(prompt="a red circle", **{**SMALL, "width": 128, "height": 64, "enable_hr": True,
                                                          "hr_scale": 3.0})
    old = generate(request, sd1, settings(use_old_hires_fix_width_height=True))
    # the first pass at A1111's old size, the result at the sliders' size, Upscale by not read
    assert old.first_pass_size == (768, 384)
    assert old.images[0].size == (128, 64) and (old.width, old.height) == (128, 64)
    info = parse_infotext(old.infotexts[0])
    assert (info["Size-1"], info["Size-2"]) == ("768", "384")
    assert info["Hires resize-1"] == "128" and info["Hires resize-2"] == "64"
    assert "Hires upscale" not in info


# ----------------------------------------------------------------- hires_fix_use_firstpass_conds

@pytest.fixture(scope="module")
def te_lora(tmp_path_factory, sd1):
    """A LoRA on the text encoder only (kohya names): it changes what a prompt encodes to."""
    from modules.services.loras import LoraRegistry
    from tests.fixtures.tiny_loras import SD1_FILES, _tensors, _write, module_of

    folder = tmp_path_factory.mktemp("Lora")
    gen = torch.Generator().manual_seed(5)
    tensors = {}
    for key, kind, (part, name), opts in SD1_FILES["sd1_kohya"]:
        if part == "te0":
            tensors.update(_tensors(gen, key, kind, tuple(module_of(sd1, part, name).weight.shape), opts, 4.0))
    _write(folder / "te_only.safetensors", tensors)
    yield LoraRegistry([folder]).require
    lora.deactivate(sd1)


def test_firstpass_conds_encode_the_hires_prompt_under_the_first_prompts_lora(sd1, te_lora):
    def run(prompt, hr_prompt, **kw):
        request = GenerationRequest(prompt=prompt, hr_prompt=hr_prompt, **{**SMALL, "enable_hr": True, "hr_scale": 1.5})
        return generate(request, sd1, settings(find_lora=te_lora, **kw))

    tagged, plain = "<lora:te_only:1> a red circle", "a red circle"
    # the first prompt has the LoRA, the hires prompt not: A1111 encodes the hires prompt without it,
    # unless the option is on (its conds come with the first pass's, under the first pass's networks)
    off = run(tagged, plain)
    on = run(tagged, plain, hires_fix_use_firstpass_conds=True)
    assert not same(off, on)
    # ... which is the hires pass of a job whose hires prompt names the LoRA (its UNet part is nil)
    assert same(on, run(tagged, tagged))
    assert on.infotexts[0] == off.infotexts[0]  # no infotext key


# ----------------------------------------------------------------- use_old_scheduling

def test_old_timelines_schedules():
    # [a:b:N]: old, N < 1 a fraction and N >= 1 a step; new, a decimal point makes a fraction
    assert prompt_schedules(["[a:b:1.5]"], 4) == [[(4, "a")]]
    assert prompt_schedules(["[a:b:1.5]"], 4, use_old_scheduling=True) == [[(1, "a"), (4, "b")]]
    # the hires pass: new, the timeline goes on (1 .. 2 is the hires pass); old, it restarts
    assert prompt_schedules(["[a:b:0.5]"], 4, 4) == [[(4, "b")]]
    assert prompt_schedules(["[a:b:0.5]"], 4, 4, use_old_scheduling=True) == [[(2, "a"), (4, "b")]]
    assert not old_timelines_differ(["[a:b:0.5]", "[a:b:2]", "plain"], 4)
    assert old_timelines_differ(["[a:b:1.5]"], 4) and old_timelines_differ(["[a:b:0.5]"], 4, 4)
    assert COMPATIBILITY_INFOTEXT_TO_OPTION == {OLD_KEY: "use_old_scheduling"} and OLD_KEY in PASTE_KEYS


def test_old_timelines_change_the_picture_and_write_a1111s_key(sd1):
    def run(prompt, old, **kw):  # 3 steps: the old timeline's step 1 leaves one step to "blue"
        request = GenerationRequest(prompt=prompt, negative_prompt="blurry", **{**SMALL, "steps": 3, **kw})
        return generate(request, sd1, settings(use_old_scheduling=old))

    # a schedule both timelines read alike: no key
    assert OLD_KEY not in run("a [red:blue:0.5] circle", True).infotexts[0]
    # 1.5: new, a fraction past the end (red throughout); old, step 1 (blue after it)
    old, new = run("a [red:blue:1.5] circle", True), run("a [red:blue:1.5] circle", False)
    assert not same(old, new)
    assert parse_infotext(old.infotexts[0])[OLD_KEY] == "True" and OLD_KEY not in new.infotexts[0]
    # the key sits among A1111's extra parameters, before the version
    assert old.infotexts[0].splitlines()[-1].endswith(f"{OLD_KEY}: True")
    # the negative prompt's schedule counts too (A1111 checks both)
    neg = generate(GenerationRequest(prompt="a circle", negative_prompt="[red:blue:1.5]", **SMALL), sd1,
                   settings(use_old_scheduling=True))
    assert OLD_KEY in neg.infotexts[0]


def test_old_timelines_restart_in_the_hires_pass(sd1):
    def run(old):
        request = GenerationRequest(prompt="a [red:blue:0.5] circle", **{**SMALL, "enable_hr": True, "hr_scale": 1.5})
        return generate(request, sd1, settings(use_old_scheduling=old))

    old, new = run(True), run(False)
    assert not same(old, new)  # the first pass alike, the hires pass starts with "red" again
    assert parse_infotext(old.infotexts[0])[OLD_KEY] == "True" and OLD_KEY not in new.infotexts[0]


# ----------------------------------------------------------------- per request, through the API

def test_override_settings_carry_the_compatibility_options(server):
    def txt2img(**overrides):
        body = {"prompt": "a [red:blue:1.5] circle", "steps": 2, "width": 128, "height": 64, "seed": 5,
                "sampler_name": "DPM++ 2M", "scheduler": "Karras", "enable_hr": True, "hr_scale": 1.5,
                "denoising_strength": 0.5, "override_settings": overrides,
                "override_settings_restore_afterwards": True}
        response = server.post("/sdapi/v1/txt2img", json=body, timeout=300)
        assert response.status_code == 200, response.text
        data = response.json()
        infotext = json.loads(data["info"])["infotexts"][0]
        return Image.open(io.BytesIO(base64.b64decode(data["images"][0]))), parse_infotext(infotext)

    plain, plain_info = txt2img()
    assert plain.size == (192, 96) and OLD_KEY not in plain_info
    old, info = txt2img(use_old_scheduling=True, use_old_hires_fix_width_height=True,
                        hires_fix_use_firstpass_conds=True, use_old_karras_scheduler_sigmas=True,
                        dont_fix_second_order_samplers_schedule=True)
    assert old.size == (128, 64)
    assert (info["Size-1"], info["Size-2"], info[OLD_KEY]) == ("768", "384", "True")
    karras, _ = txt2img(use_old_karras_scheduler_sigmas=True)
    assert karras.size == plain.size and not np.array_equal(pixels(karras), pixels(plain))
