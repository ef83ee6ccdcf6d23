"""A1111's "img2img alternative test" (img2img only): instead of the seed's noise, img2img starts
from the noise that gives the init picture back, found by running Euler's method backwards with
the "Original prompt" (:mod:`modules.core.noise_inversion`). Sampling from it with a changed prompt
changes the picture while its layout stays; "Randomness" mixes in fresh noise (from seed + 1, one
per picture), keeping the mix's variance.

Controls in A1111's order, so ``script_args`` over the API match A1111's (11): [info (a note, its
value unused), override sampler, override prompt, original_prompt, original_negative_prompt,
override steps, decode steps (1-150), override strength, decode CFG scale (0-15), randomness (0-1),
sigma adjustment]. The overrides, on by default as in A1111, make the job use Euler, the original
prompts as its prompts, the decode steps as its steps and denoising strength 1 (sampling then starts
from the found noise alone; below 1 it starts from A1111's mix of the init latents and the noise).
As in A1111 the job is one picture (batch size and count 1). The infotext gets A1111's fields: Decode
prompt, Decode negative prompt, Decode CFG scale, Decode steps, Randomness, Sigma Adjustment.

The noise found is kept while the picture, the prompts and the decode settings stay the same, so a
second run with another prompt or randomness does not find it again. Better than A1111: any
sampler and schedule works (the noise is put where the job's own scheduler starts), v-prediction
models are inverted with their own parametrisation, and bad arguments are refused by name.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import gradio as gr
import torch

import modules.scripts as scripts
from modules import processing
from modules.core.types import RequestError
from modules.shared import state


class _Cached(NamedTuple):  # (a script module is not in sys.modules, which dataclasses need)
    noise: torch.Tensor
    key: tuple
    latents: torch.Tensor


def _number(value, what: str, low: float, high: float, *, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high \
            or (whole and float(value) != int(value)):
        kind = "a whole number" if whole else "a number"
        raise RequestError("script_args", f"{what} must be {kind} from {low:g} to {high:g}, got {value!r}")
    return int(value) if whole else float(value)


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError("script_args", f"{what} must be true or false, got {value!r}")
    return value


def check(override_sampler, override_prompt, original_prompt, original_negative_prompt, override_steps, st,
          override_strength, cfg, randomness, sigma_adjustment):
    """The script's arguments after A1111's info (1st), checked and named by their place."""
    for value, what in ((original_prompt, "original prompt (4th)"),
                        (original_negative_prompt, "original negative prompt (5th)")):
        if not isinstance(value, str):
            raise RequestError("script_args", f"{what} must be text, got {value!r}")
    return (_flag(override_sampler, "override sampler (2nd)"), _flag(override_prompt, "override prompt (3rd)"),
            original_prompt, original_negative_prompt, _flag(override_steps, "override steps (6th)"),
            _number(st, "decode steps (7th)", 1, 150, whole=True), _flag(override_strength, "override strength (8th)"),
            _number(cfg, "decode CFG scale (9th)", 0, 15), _number(randomness, "randomness (10th)", 0, 1),
            _flag(sigma_adjustment, "sigma adjustment (11th)"))


def mix(found: torch.Tensor, fresh: torch.Tensor, randomness: float) -> torch.Tensor:
    """The found noise and fresh noise, mixed keeping unit variance (A1111's formula)."""
    return ((1 - randomness) * found + randomness * fresh) / ((randomness ** 2 + (1 - randomness) ** 2) ** 0.5)


class Script(scripts.Script):
    def __init__(self):
        self.cache: _Cached | None = None

    def title(self):
        return "img2img alternative test"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        info = gr.Markdown("* `CFG Scale` should be 2 or lower.")
        override_sampler = gr.Checkbox(label="Override `Sampling method` to Euler?(this method is built for it)",
                                       value=True, elem_id=self.elem_id("override_sampler"))
        override_prompt = gr.Checkbox(
            label="Override `prompt` to the same value as `original prompt`?(and `negative prompt`)", value=True,
            elem_id=self.elem_id("override_prompt"))
        original_prompt = gr.Textbox(label="Original prompt", lines=1, elem_id=self.elem_id("original_prompt"))
        original_negative_prompt = gr.Textbox(label="Original negative prompt", lines=1,
                                              elem_id=self.elem_id("original_negative_prompt"))
        override_steps = gr.Checkbox(label="Override `Sampling Steps` to the same value as `Decode steps`?",
                                     value=True, elem_id=self.elem_id("override_steps"))
        st = gr.Slider(label="Decode steps", minimum=1, maximum=150, step=1, value=50, elem_id=self.elem_id("st"))
        override_strength = gr.Checkbox(label="Override `Denoising strength` to 1?", value=True,
                                        elem_id=self.elem_id("override_strength"))
        cfg = gr.Slider(label="Decode CFG scale", minimum=0.0, maximum=15.0, step=0.1, value=1.0,
                        elem_id=self.elem_id("cfg"))
        randomness = gr.Slider(label="Randomness", minimum=0.0, maximum=1.0, step=0.01, value=0.0,
                               elem_id=self.elem_id("randomness"))
        sigma_adjustment = gr.Checkbox(label="Sigma adjustment for finding noise for image", value=False,
                                       elem_id=self.elem_id("sigma_adjustment"))
        return [info, override_sampler, override_prompt, original_prompt, original_negative_prompt,
                override_steps, st, override_strength, cfg, randomness, sigma_adjustment]

    def run(self, p, _info=None, override_sampler=True, override_prompt=True, original_prompt="",
            original_negative_prompt="", override_steps=True, st=50, override_strength=True, cfg=1.0,
            randomness=0.0, sigma_adjustment=False):
        (override_sampler, override_prompt, prompt, negative, override_steps, steps, override_strength, cfg,
         randomness, sigma_adjustment) = check(override_sampler, override_prompt, original_prompt,
                                               original_negative_prompt, override_steps, st, override_strength,
                                               cfg, randomness, sigma_adjustment)
        if not getattr(p, "init_images", None):
            raise RequestError("init_images", "img2img alternative test needs an init image")
        if override_sampler:  # A1111's overrides, each on by default
            p.sampler_name = "Euler"
        if override_prompt:
            p.prompt = prompt
            p.negative_prompt = negative
        if override_steps:
            p.steps = steps
        if override_strength:
            p.denoising_strength = 1.0
        p.batch_size = 1
        p.n_iter = 1
        key = (prompt, negative, cfg, steps, sigma_adjustment)

        def start_noise(start):
            cached = self.cache
            if (cached is not None and cached.key == key and cached.latents.shape == start.init_latents.shape
                    and torch.equal(cached.latents, start.init_latents.cpu())):
                found = cached.noise.to(start.noise.device)
            else:
                state.job = "Finding the noise of the picture"
                found = start.invert(prompt, negative, cfg, steps, sigma_adjustment)
                self.cache = _Cached(found.cpu(), key, start.init_latents.detach().cpu().clone())
            combined = found
            if randomness > 0:
                combined = mix(found, start.seed_noise([s + 1 for s in start.seeds]), randomness)
            # where the job's scheduler starts, x0 + sigma * noise is then the combined noise at sigma_max
            return combined - start.init_latents / start.first_sigma()

        p.start_noise = start_noise
        p.extra_generation_params["Decode prompt"] = prompt
        p.extra_generation_params["Decode negative prompt"] = negative
        p.extra_generation_params["Decode CFG scale"] = cfg
        p.extra_generation_params["Decode steps"] = steps
        p.extra_generation_params["Randomness"] = randomness
        p.extra_generation_params["Sigma Adjustment"] = sigma_adjustment
        return processing.process_images(p)
