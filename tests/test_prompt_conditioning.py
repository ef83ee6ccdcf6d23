"""The prompt language on tiny real checkpoints: emphasis modes on the encoder output, per-step
conditioning from prompt-editing schedules and alternation, composable AND in the CFG combine,
and full generations (txt2img, hires, img2img, inpainting, SDXL) with every syntax element."""

import datetime

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import denoise, samplers
from modules.core.conditioning import CHUNK, TextConditioner
from modules.core.devices import choose_policy
from modules.core.infotext import parse_infotext
from modules.core.model_loader import load_checkpoint
from modules.core.model_ops import denoiser
from modules.core.pipeline import GenerationSettings, generate
from modules.core.scheduled_conditioning import ScheduledConditioning, schedule_length
from modules.core.types import GenerationRequest, Img2ImgRequest
from modules.services.options import Options
from tests.pictures import picture

POLICY, _ = choose_policy()
SMALL = dict(width=64, height=64, steps=4, seed=21, save_images=False)
EVERYTHING = ("a (red:1.3) [circle:square:0.5], [cat|dog|bird] ((sky)) [[dim]] \\(literal\\) "
              "[ghost::2] [late:3] BREAK second chunk AND a (blue:0.8) square :0.6")
EVERYTHING_NEGATIVE = "[ugly:bad:2], (blurry:1.2) BREAK [a|b]"


def settings(**kw) -> GenerationSettings:
    return GenerationSettings(model_name="tiny", model_hash="0123456789", version="easel-test",
                              today=lambda: datetime.date(2026, 11, 23), **kw)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def image_of(model, **fields) -> np.ndarray:
    return pixels(generate(GenerationRequest(**{**SMALL, **fields}), model, settings()).images[0])


def context(model, prompt, emphasis="Original") -> torch.Tensor:
    return TextConditioner(model, emphasis=emphasis).encode([prompt], 64, 64)["context"]


# -- emphasis ----------------------------------------------------------------------------

def test_neutral_and_equivalent_weights_are_bitwise_equal(sd1):
    plain = context(sd1, "red circle")
    assert torch.equal(context(sd1, "(red:1) circle"), plain)
    assert torch.equal(context(sd1, "(red:1.1) circle"), context(sd1, "(red) circle"))
    assert torch.equal(context(sd1, "(red:1.21) circle"), context(sd1, "((red)) circle"))
    assert torch.equal(context(sd1, "(red:0.9090909090909091) circle"), context(sd1, "[red] circle"))
    assert not torch.equal(context(sd1, "(red) circle"), plain)


def test_no_norm_scales_exactly_the_weighted_token(sd1):
    plain = context(sd1, "red circle")
    up = context(sd1, "(red:1.5) circle", "No norm")
    down = context(sd1, "[red] circle", "No norm")
    assert torch.equal(up[:, 1], plain[:, 1] * 1.5)  # BOS, red, circle, ...
    assert torch.equal(up[:, 0], plain[:, 0]) and torch.equal(up[:, 2:], plain[:, 2:])
    assert up[:, 1].norm() > plain[:, 1].norm() > down[:, 1].norm()


def test_original_scales_then_restores_the_mean(sd1):
    plain = context(sd1, "red circle")
    up = context(sd1, "(red:1.5) circle")
    assert torch.allclose(up.mean(), plain.mean(), rtol=1e-4, atol=1e-6)
    correction = up[:, 2:] / plain[:, 2:]  # every unweighted token: the same mean-restoring factor
    factor = correction.flatten()[0]
    assert torch.allclose(correction, factor.expand_as(correction), rtol=1e-4)
    assert torch.allclose(up[:, 1] / plain[:, 1], (1.5 * factor).expand_as(plain[:, 1]), rtol=1e-4)
    assert (up[:, 1].norm() / up[:, 2].norm()) > (plain[:, 1].norm() / plain[:, 2].norm())


def test_ignore_and_none_modes(sd1):
    # Ignore: parsed (brackets gone, BREAK works), weights count 1
    assert torch.equal(context(sd1, "((red:1.5)) circle", "Ignore"), context(sd1, "red circle"))
    assert context(sd1, "red BREAK circle", "Ignore").shape[1] == 2 * (CHUNK + 2)
    # None: nothing is parsed: the brackets are characters of the prompt, BREAK a word
    assert torch.equal(context(sd1, "(red:1.5) circle", "None"), context(sd1, "\\(red:1.5\\) circle"))
    assert context(sd1, "red BREAK circle", "None").shape[1] == CHUNK + 2
    with pytest.raises(ValueError, match="No norm"):
        TextConditioner(sd1, emphasis="Loud")


def test_sdxl_restores_the_mean_of_each_text_encoder(sdxl):
    width = sdxl.text_encoders[0].config.hidden_size
    plain = context(sdxl, "red circle")
    up = context(sdxl, "(red:1.5) circle")
    for part in (slice(0, width), slice(width, None)):  # CLIP-L, then OpenCLIP-bigG (A1111: each its own)
        assert torch.allclose(up[..., part].mean(), plain[..., part].mean(), rtol=1e-4, atol=1e-6)
    no_norm = context(sdxl, "(red:1.5) circle", "No norm")
    assert torch.equal(no_norm[:, 1], plain[:, 1] * 1.5)


def test_duplicate_prompts_keep_a1111_batch_semantics(sd1):
    """Equal texts are encoded once, but the Original mean counts every row, as A1111's batch does."""
    conditioner = TextConditioner(sd1)
    batch = conditioner.encode(["(red:1.5) circle", "blue", "blue"], 64, 64)["context"]
    assert batch.shape[0] == 3 and torch.equal(batch[1], batch[2])
    plain = conditioner.encode(["red circle", "blue", "blue"], 64, 64)["context"]
    assert torch.allclose(batch.mean(), plain.mean(), rtol=1e-4, atol=1e-6)


def test_token_count_follows_the_prompt_language(sd1):
    conditioner = TextConditioner(sd1)
    assert conditioner.token_count("red circle") == (2, 75)
    assert conditioner.token_count("(red:1.5) circle") == (2, 75)  # brackets and weights take no tokens
    assert conditioner.token_count("red BREAK circle") == (76, 150)  # a closed chunk counts 75
    assert conditioner.token_count("[red:red circle on a table:2]", steps=4) == (5, 75)  # the longest text
    assert conditioner.token_count("red AND blue square") == (2, 75)  # the longest sub-prompt
    assert conditioner.token_count("red AND blue square", is_positive=False) == (4, 75)


def test_emphasis_option_and_infotext(sd1):
    option = Options(None).defs["emphasis"]
    assert option.default == "Original" and option.choices == ("None", "Ignore", "Original", "No norm")
    assert option.label == "Emphasis mode" and option.section == "Stable Diffusion"
    req = GenerationRequest(prompt="a (red:1.4) circle", **SMALL)
    no_norm = generate(req, sd1, settings(emphasis="No norm"))
    assert "Emphasis: No norm" in no_norm.infotexts[0]
    assert no_norm.extra_generation_params["Emphasis"] == "No norm"
    assert parse_infotext(no_norm.infotexts[0])["Emphasis"] == "No norm"
    original = generate(req, sd1, settings())
    assert "Emphasis" not in original.infotexts[0]
    plain = generate(GenerationRequest(prompt="a red circle", **SMALL), sd1, settings(emphasis="No norm"))
    assert "Emphasis" not in plain.infotexts[0]  # A1111 notes it only once a prompt has brackets
    assert np.abs(pixels(no_norm.images[0]) - pixels(original.images[0])).max() > 0


# -- per-step conditioning ---------------------------------------------------------------

class Recorder(denoise.DenoiseHooks):
    def __init__(self):
        self.contexts = []

    def cfg_denoiser(self, step, x, t, cond, uncond):
        self.contexts.append((cond["context"].clone(), uncond["context"].clone() if uncond else None))


def run_loop(model, conds, sampler="Euler", steps=10, cfg_scale=7.0, batch=1, composition=None):
    recorder = Recorder()
    noise = torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    scheduler = samplers.build_scheduler(sampler, "Automatic", prediction_type=model.spec.prediction_type)
    latents = denoise.sample(denoiser(model), scheduler, noise, conds.cond_for_step, steps=steps,
                             cfg_scale=cfg_scale, hooks=recorder,
                             composition=conds.composition if composition is None else composition)
    return recorder.contexts, latents


def encoded(model, text) -> torch.Tensor:
    return TextConditioner(model).encode([text], 64, 64)["context"]


def test_prompt_editing_switches_exactly_at_the_a1111_step(sd1):
    conds = ScheduledConditioning(TextConditioner(sd1), ["[red:blue:0.5]"], ["[ugly:bad:3]"], 10, 64, 64)
    contexts, _ = run_loop(sd1, conds)
    red, blue, ugly, bad = (encoded(sd1, t) for t in ("red", "blue", "ugly", "bad"))
    assert len(contexts) == 10
    for step, (cond, uncond) in enumerate(contexts):
        # schedule [(5, red), (10, blue)]: 0-based steps 0..5 read the first entry (A1111)
        assert torch.allclose(cond, red if step <= 5 else blue, atol=1e-5), step
        assert torch.allclose(uncond, ugly if step <= 3 else bad, atol=1e-5), step  # negatives too
    assert not torch.allclose(red, blue, atol=1e-3)
    assert conds.cond_for_step(0)[0] is conds.cond_for_step(5)[0]  # identical steps: one cached dict
    assert conds.cond.texts(5) == ["red"] and conds.cond.texts(6) == ["blue"]


def test_second_order_samplers_schedule_twice_the_steps(sd1):
    prompt = "[red:blue:0.5]"
    conds = ScheduledConditioning(TextConditioner(sd1), [prompt], [""], schedule_length(5, "Heun"), 64, 64)
    assert schedule_length(5, "Heun") == 10 and schedule_length(5, "Euler a") == 5
    contexts, _ = run_loop(sd1, conds, sampler="Heun", steps=5)
    assert len(contexts) == 9  # Heun: 2 * 5 - 1 model calls
    red = encoded(sd1, "red")
    assert [torch.allclose(c, red, atol=1e-5) for c, _ in contexts] == [True] * 6 + [False] * 3


def test_alternation_switches_every_step(sd1):
    conds = ScheduledConditioning(TextConditioner(sd1), ["a [red|blue] b"], [""], 6, 64, 64)
    assert [conds.cond.texts(i)[0] for i in range(6)] == ["a red b", "a red b", "a blue b", "a red b",
                                                         "a blue b", "a red b"]
    contexts, _ = run_loop(sd1, conds, steps=6)
    red, blue = encoded(sd1, "a red b"), encoded(sd1, "a blue b")
    assert torch.allclose(contexts[1][0], red, atol=1e-5) and torch.allclose(contexts[2][0], blue, atol=1e-5)
    assert conds.cond_for_step(1)[0] is conds.cond_for_step(3)[0]


def test_batch_rows_with_different_schedules_and_lengths(sd1):
    long = ", ".join(f"word{i}" for i in range(50))  # several chunks
    length = encoded(sd1, long).shape[1]
    conds = ScheduledConditioning(TextConditioner(sd1), ["[red:blue:2]", long], ["", ""], 4, 64, 64)
    cond, _ = conds.cond_for_step(0)
    assert length >= 2 * (CHUNK + 2) and cond["context"].shape[:2] == (2, length)
    assert torch.allclose(cond["context"][1], encoded(sd1, long)[0], atol=1e-5)
    assert torch.allclose(cond["context"][0, :CHUNK + 2], encoded(sd1, "red")[0], atol=1e-5)
    # the shorter row is padded with its last vector (A1111)
    padding = cond["context"][0, CHUNK + 2:]
    assert torch.equal(padding, cond["context"][0, CHUNK + 1].expand_as(padding))
    assert torch.allclose(conds.cond_for_step(3)[0]["context"][0, :CHUNK + 2], encoded(sd1, "blue")[0], atol=1e-5)


# -- composable AND ----------------------------------------------------------------------

def test_single_subprompt_is_bitwise_the_plain_combine(sd1):
    conds = ScheduledConditioning(TextConditioner(sd1), ["a red circle"] * 2, ["blue"] * 2, 10, 64, 64)
    assert conds.composition is None
    _, plain = run_loop(sd1, conds, batch=2)
    _, composed = run_loop(sd1, conds, batch=2, composition=[[(0, 1.0)], [(1, 1.0)]])
    assert torch.equal(plain, composed)


def test_and_rows_weights_and_combine(sd1):
    conds = ScheduledConditioning(TextConditioner(sd1), ["red AND blue :0.5"] * 2, ["", ""], 4, 64, 64)
    assert conds.composition == [[(0, 1.0), (1, 0.5)], [(2, 1.0), (3, 0.5)]]
    cond, uncond = conds.cond_for_step(0)
    assert cond["context"].shape[0] == 4 and uncond["context"].shape[0] == 2
    assert torch.allclose(cond["context"][1], encoded(sd1, " blue")[0], atol=1e-5)
    # the combine is A1111's: uncond + sum(w * cfg * (cond_i - uncond))
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return c["context"][:, :1, :4].reshape(-1, 4, 1, 1).expand(-1, 4, 8, 8) + x

    class Capture(denoise.DenoiseHooks):
        def cfg_denoised(self, step, x_pred):
            self.x_pred = x_pred.clone()

        def cfg_after_cfg(self, step, pred):
            self.pred = pred.clone()
            return pred

    hooks = Capture()
    scheduler = samplers.build_scheduler("Euler", "Automatic")
    denoise.sample(model, scheduler, torch.zeros(2, 4, 8, 8), conds.cond_for_step, steps=1, cfg_scale=3.0,
                   hooks=hooks, composition=conds.composition)
    assert calls == [6]  # 4 cond rows + 2 uncond rows in one call
    c, u = hooks.x_pred[:4], hooks.x_pred[4:]
    expected = torch.stack([u[0] + (c[0] - u[0]) * 3.0 + (c[1] - u[0]) * 1.5,
                            u[1] + (c[2] - u[1]) * 3.0 + (c[3] - u[1]) * 1.5])
    assert torch.allclose(hooks.pred, expected)


def test_bad_compositions_are_refused(sd1):
    conds = ScheduledConditioning(TextConditioner(sd1), ["a"], [""], 2, 64, 64)
    scheduler = samplers.build_scheduler("Euler", "Automatic")
    for bad, message in [([[(0, 1.0)], [(1, 1.0)]], "batch of 1"), ([[(1, 1.0)]], "rows 0..0"), ([[]], "no cond")]:
        with pytest.raises(ValueError, match=message):
            denoise.sample(denoiser(sd1), scheduler, torch.zeros(1, 4, 8, 8), conds.cond_for_step, steps=2,
                           cfg_scale=7.0, composition=bad)


def test_and_generates_something_else_than_either_part(sd1):
    both = image_of(sd1, prompt="a red circle AND a blue square:0.7")
    first = image_of(sd1, prompt="a red circle")
    second = image_of(sd1, prompt="a blue square")
    assert np.abs(both - first).mean() > 0.5 and np.abs(both - second).mean() > 0.5
    weighted = image_of(sd1, prompt="a red circle AND a blue square:-0.5")
    assert np.abs(both - weighted).mean() > 0.5
    # a weight-1 single prompt, composed or not, is the plain prompt; CFG 1 still composes with uncond
    assert np.array_equal(image_of(sd1, prompt="a red circle :1"), first)
    assert np.abs(image_of(sd1, prompt="a red circle:0.5", cfg_scale=1.0)
                  - image_of(sd1, prompt="a red circle", cfg_scale=1.0)).mean() > 0.5


# -- whole generations -------------------------------------------------------------------

def test_a_scheduled_prompt_differs_from_both_ends(sd1):
    mixed = image_of(sd1, prompt="[a red circle:a blue square:1]", steps=6)  # 2 of 6 steps red (tiny model:
    assert np.abs(mixed - image_of(sd1, prompt="a red circle", steps=6)).mean() > 0.25  # early steps weigh most)
    assert np.abs(mixed - image_of(sd1, prompt="a blue square", steps=6)).mean() > 5
    assert np.array_equal(image_of(sd1, prompt="[a red circle:a blue square:1.0]", steps=6),
                          image_of(sd1, prompt="a red circle", steps=6))


@pytest.mark.parametrize("name", ["sd1", "sdxl", "sd1_inpainting"])
def test_every_syntax_element_generates_with_verbatim_infotext(tiny_checkpoints, name):
    model = load_checkpoint(tiny_checkpoints[name], POLICY)
    request = GenerationRequest(prompt=EVERYTHING, negative_prompt=EVERYTHING_NEGATIVE, batch_size=2, **SMALL)
    result = generate(request, model, settings())
    for image in result.images:
        assert image.size == (64, 64) and np.asarray(image).std() > 1
    assert result.infotexts[0].splitlines()[0] == EVERYTHING
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Prompt"] == EVERYTHING and parsed["Negative prompt"] == EVERYTHING_NEGATIVE
    assert result.prompts == [EVERYTHING] * 2


def test_every_syntax_element_in_the_hires_pass(sd1):
    result = generate(GenerationRequest(prompt=EVERYTHING, negative_prompt=EVERYTHING_NEGATIVE, enable_hr=True,
                                        hr_scale=1.5, hr_prompt="(sharp:1.2) [a|b] AND detail :0.5",
                                        **{**SMALL, "steps": 3}), sd1, settings())
    assert result.images[0].size == (96, 96) and np.asarray(result.images[0]).std() > 1
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Prompt"] == EVERYTHING and parsed["Hires prompt"] == "(sharp:1.2) [a|b] AND detail :0.5"


def test_hires_pass_continues_the_first_pass_timeline(sd1):
    """A fraction below 1 is over before the hires pass starts (A1111's hires scheduling)."""
    base = dict(prompt="a red circle", enable_hr=True, hr_scale=1.5, **{**SMALL, "steps": 3})
    scheduled = image_of(sd1, **base, hr_prompt="[a red circle:a blue square:0.5]")
    late = image_of(sd1, **base, hr_prompt="a blue square")
    assert np.array_equal(scheduled, late)
    halfway = image_of(sd1, **base, hr_prompt="[a red circle:a blue square:1.5]")
    assert np.abs(halfway - late).mean() > 0.5


def test_img2img_schedule_spans_the_requested_steps(sd1):
    """A1111: the schedule is for `steps`; with denoising 0.5 only the first half of it runs."""
    def run(prompt):
        request = Img2ImgRequest(init_images=[picture()], prompt=prompt, denoising_strength=0.5,
                                 **{**SMALL, "steps": 10})
        return pixels(generate(request, sd1, settings()).images[0])

    assert np.array_equal(run("[a red circle:a blue square:0.5]"), run("a red circle"))
    assert np.abs(run("[a red circle:a blue square:0.2]") - run("a red circle")).mean() > 0.5
