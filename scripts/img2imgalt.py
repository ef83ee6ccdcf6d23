"""A1111's "img2img alternative test" (img2img only): instead of the seed's noise, img2img starts
from the noise that gives the init picture back, found by running Euler's method backwards with
the "Original prompt" (:mod:`modules.core.noise_inversion`). Sampling from it with a changed prompt
changes the picture while its layout stays; "Randomness" mixes in fresh noise (from seed + 1, one
per picture), keeping the mix's variance.

Controls in A1111's order, so ``script_args`` over the API match A1111's: [original_prompt,
original_negative_prompt, decode CFG scale (0-15), decode steps (1-150), randomness (0-1), sigma
adjustment]. As in A1111 the job is one picture (batch size and count 1); it is meant for denoising
strength 1 (sampling then starts from that noise alone; below 1 it starts from A1111's mix of the
init latents and the noise). The infotext gets A1111's fields: Decode prompt, Decode negative
prompt, Decode CFG scale, Decode steps, Randomness, Sigma Adjustment.

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


def check(original_prompt, original_negative_prompt, cfg, steps, randomness, sigma_adjustment):
    for value, what in ((original_prompt, "original prompt (1st)"),
                        (original_negative_prompt, "original negative prompt (2nd)")):
        if not isinstance(value, str):
            raise RequestError("script_args", f"{what} must be text, got {value!r}")
    if not isinstance(sigma_adjustment, bool):
        raise RequestError("script_args", f"sigma adjustment (6th) must be true or false, got {sigma_adjustment!r}")
    return (original_prompt, original_negative_prompt, _number(cfg, "decode CFG scale (3rd)", 0, 15),
            _number(steps, "decode steps (4th)", 1, 150, whole=True), _number(randomness, "randomness (5th)", 0, 1),
            sigma_adjustment)


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
        original_prompt = gr.Textbox(label="Original prompt", lines=1, elem_id=self.elem_id("original_prompt"))
        original_negative_prompt = gr.Textbox(label="Original negative prompt", lines=1,
                                              elem_id=self.elem_id("original_negative_prompt"))
        cfg = gr.Slider(label="Decode CFG scale", minimum=0.0, maximum=15.0, step=0.1, value=1.0,
                        elem_id=self.elem_id("cfg"))
        steps = gr.Slider(label="Decode steps", minimum=1, maximum=150, step=1, value=50, elem_id=self.elem_id("st"))
        randomness = gr.Slider(label="Randomness", minimum=0.0, maximum=1.0, step=0.01, value=0.0,
                               elem_id=self.elem_id("randomness"))
        sigma_adjustment = gr.Checkbox(label="Sigma adjustment for finding noise for image", value=False,
                                       elem_id=self.elem_id("sigma_adjustment"))
        return [original_prompt, original_negative_prompt, cfg, steps, randomness, sigma_adjustment]

    def run(self, p, original_prompt="", original_negative_prompt="", cfg=1.0, st=50, randomness=0.0,
            sigma_adjustment=False):
        prompt, negative, cfg, steps, randomness, sigma_adjustment = check(
            original_prompt, original_negative_prompt, cfg, st, randomness, sigma_adjustment)
        if not getattr(p, "init_images", None):
            raise RequestError("init_images", "img2img alternative test needs an init image")
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
