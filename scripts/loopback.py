"""A1111's "Loopback" (img2img only): the picture is run through img2img ``loops`` times, each
output the next loop's input, the seed +1 each loop; the denoising strength moves from the job's
own to ``final_denoising_strength`` along a curve: Linear, Aggressive (a sine: changes early) or
Lazy (1 - cosine: changes late). From the second loop on, "Masked content" is "original" (the
masked area starts from the previous output).

Controls in A1111's order, so ``script_args`` over the API match A1111's: [loops,
final_denoising_strength, denoising_curve, append_interrogation]. "Append interrogated prompt at each
iteration": with "DeepBooru" each loop's prompt is the job's prompt, a comma, then the DeepBooru tags
of that loop's init picture (modules.services.interrogator; its model file in
models/torch_deepdanbooru); with "CLIP" its BLIP caption and CLIP matches (models/BLIP, models/CLIP);
either is refused, naming the missing files, before any loop runs.

With batch count 1 every loop's picture is returned; with more, the last picture of each run
(each run starting from the init image again). A grid of them leads when there are several and
the ``return_grid`` option is on. Each picture carries its own infotext (its seed and denoising
strength), plus ``Final denoising strength`` and ``Denoising curve``.
"""

from __future__ import annotations

import math
import numbers

import gradio as gr

import modules.scripts as scripts
from modules import images, processing
from modules.core.types import RequestError
from modules.shared import opts, state

CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATIONS = ("None", "CLIP", "DeepBooru")


def _interrogation(choice):
    """The captioner for "Append interrogated prompt at each iteration" (None: "None"); refused up
    front, naming script_args, when it cannot run."""
    if choice is None or choice == "None":
        return None
    if choice not in INTERROGATIONS:
        raise RequestError("script_args", "append interrogated prompt (4th) must be one of "
                                          f"{', '.join(INTERROGATIONS)}; got {choice!r}")
    from modules.services import interrogator

    model = "clip" if choice == "CLIP" else "deepdanbooru"
    try:
        captioner = interrogator.current()
        captioner.check(model, "script_args")
    except RequestError as error:
        raise RequestError("script_args", f"append interrogated prompt (4th): {error.message}") from None
    return lambda image: captioner.interrogate(image.convert("RGB"), model)


def curve_progress(curve: str, progress: float) -> float:
    """How far (0..1) along the way to the final strength a loop at ``progress`` (0..1) is."""
    if curve == "Aggressive":
        return math.sin(progress * math.pi / 2)
    if curve == "Lazy":
        return 1 - math.cos(progress * math.pi / 2)
    return progress


def denoising_strengths(initial: float, final: float, loops: int, curve: str = "Linear") -> list[float]:
    """The strength of each loop: the job's own for the first, ``final`` for the last."""
    if loops == 1:
        return [initial]
    return [initial + (final - initial) * curve_progress(curve, i / (loops - 1)) for i in range(loops)]


def _check(loops, final_denoising_strength, denoising_curve) -> tuple[int, float, str]:
    if isinstance(loops, float) and loops.is_integer():
        loops = int(loops)
    if isinstance(loops, bool) or not isinstance(loops, int) or not 1 <= loops <= 1000:
        raise RequestError("script_args", f"loops (1st) must be a whole number from 1 to 1000, got {loops!r}")
    if isinstance(final_denoising_strength, bool) or not isinstance(final_denoising_strength, numbers.Real) \
            or not 0 <= final_denoising_strength <= 1:
        raise RequestError("script_args", "final denoising strength (2nd) must be a number from 0 to 1, "
                                          f"got {final_denoising_strength!r}")
    if denoising_curve not in CURVES:
        raise RequestError("script_args", f"denoising strength curve (3rd) must be one of {', '.join(CURVES)}; "
                                          f"got {denoising_curve!r}")
    return loops, float(final_denoising_strength), denoising_curve


class Script(scripts.Script):
    def title(self):
        return "Loopback"

    def show(self, is_img2img):
        return is_img2img

    def ui(self, is_img2img):
        loops = gr.Slider(minimum=1, maximum=32, step=1, label="Loops", value=4, elem_id=self.elem_id("loops"))
        final_denoising_strength = gr.Slider(minimum=0, maximum=1, step=0.01, label="Final denoising strength",
                                             value=0.5, elem_id=self.elem_id("final_denoising_strength"))
        denoising_curve = gr.Dropdown(label="Denoising strength curve", choices=list(CURVES), value="Linear",
                                      elem_id=self.elem_id("denoising_curve"))
        append_interrogation = gr.Dropdown(label="Append interrogated prompt at each iteration",
                                           choices=list(INTERROGATIONS), value="None",
                                           elem_id=self.elem_id("append_interrogation"))
        return [loops, final_denoising_strength, denoising_curve, append_interrogation]

    def run(self, p, loops=4, final_denoising_strength=0.5, denoising_curve="Linear", append_interrogation="None"):
        loops, final, curve = _check(loops, final_denoising_strength, denoising_curve)
        if not getattr(p, "init_images", None):
            raise RequestError("init_images", "Loopback needs an init image")
        interrogate = _interrogation(append_interrogation)
        original_prompt = p.prompt
        processing.fix_seed(p)
        batch_count = int(p.n_iter)
        p.extra_generation_params["Final denoising strength"] = final
        p.extra_generation_params["Denoising curve"] = curve
        p.batch_size = 1
        p.n_iter = 1
        p.do_not_save_grid = True
        strengths = denoising_strengths(float(p.denoising_strength), final, loops, curve)
        original_init, original_fill = list(p.init_images), p.inpainting_fill
        state.job_count = loops * batch_count

        pictures, infotexts, seeds, prompts = [], [], [], []
        first_seed = None
        for n in range(batch_count):
            p.init_images = original_init
            p.inpainting_fill = original_fill
            last = None
            for i in range(loops):
                p.denoising_strength = strengths[i]
                if interrogate is not None:  # A1111: the job's prompt, then the tags of this loop's picture
                    p.prompt = (f"{original_prompt}, " if original_prompt else "") + interrogate(p.init_images[0])
                state.job = f"Iteration {i + 1}/{loops}, batch {n + 1}/{batch_count}"
                processed = processing.process_images(p)
                if state.interrupted or not processed.images[processed.index_of_first_image:]:
                    break
                first = processed.index_of_first_image
                if first_seed is None:
                    first_seed = processed.seed
                p.seed = processed.seed + 1
                last = (processed.images[first], processed.infotexts[min(first, len(processed.infotexts) - 1)],
                        processed.seed, processed.prompt)
                p.init_images = [last[0]]
                p.inpainting_fill = 1  # "original": the masked area starts from the previous output
                if batch_count == 1:
                    _keep(last, pictures, infotexts, seeds, prompts)
                if state.skipped:
                    break
            if batch_count > 1 and last is not None and not state.skipped and not state.interrupted:
                _keep(last, pictures, infotexts, seeds, prompts)
            if state.interrupted:
                break
        p.inpainting_fill = original_fill
        p.prompt = original_prompt

        grids = []
        if len(pictures) > 1:
            grid = images.image_grid(pictures, rows=1)
            grid.info["parameters"] = infotexts[0]
            if opts.grid_save and p.outpath_grids:
                images.save_image(grid, p.outpath_grids, "grid", first_seed, p.prompt, opts.grid_format,
                                  info=infotexts[0], short_filename=not opts.grid_extended_filename, grid=True, p=p)
            if opts.return_grid:
                grids.append(grid)
        texts = [infotexts[0]] * len(grids) + infotexts
        return processing.Processed(p, grids + pictures, first_seed if first_seed is not None else p.seed,
                                    texts[0] if texts else "", all_seeds=seeds or None, all_prompts=prompts or None,
                                    infotexts=texts or None, index_of_first_image=len(grids))


def _keep(last, pictures, infotexts, seeds, prompts) -> None:
    picture, text, seed, prompt = last
    picture.info["parameters"] = text
    pictures.append(picture)
    infotexts.append(text)
    seeds.append(seed)
    prompts.append(prompt)
