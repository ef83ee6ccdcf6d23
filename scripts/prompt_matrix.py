"""A1111's "Prompt matrix": every combination of the prompt's ``|``-separated parts, in one grid.

``a cat | red | at night`` makes four pictures: ``a cat``, ``a cat, red``, ``a cat, at night`` and
``a cat, red, at night``; the first part is in every picture, each further part in half of them.
The grid's columns are labelled with the first half of the optional parts, its rows with the rest,
a part struck through where it is left out (A1111's ``draw_prompt_matrix``). Controls in A1111's
order, so ``script_args`` over the API match A1111's: [put_at_start, different_seeds, prompt_type,
variations_delimiter, margin_size].
"""

from __future__ import annotations

import math

import gradio as gr

import modules.scripts as scripts
from modules import images, processing
from modules.core import grid_labels
from modules.core.types import RequestError
from modules.processing import process_images
from modules.shared import opts

PROMPT_TYPES = ("positive", "negative")
DELIMITERS = {"comma": ", ", "space": " "}


def matrix_prompts(prompt: str, put_at_start: bool = False, delimiter: str = ", ") -> tuple[list[str], list[str]]:
    """(the parts, one prompt per combination): combination ``n`` holds optional part ``k``
    (``parts[k + 1]``) when bit ``k`` of ``n`` is set."""
    parts = prompt.split("|")
    optional = [text.strip().strip(",") for text in parts[1:]]
    prompts = []
    for combination in range(2 ** len(optional)):
        chosen = [text for k, text in enumerate(optional) if combination & (1 << k)]
        ordered = chosen + [parts[0].strip()] if put_at_start else [parts[0].strip()] + chosen
        prompts.append(delimiter.join(text for text in ordered if text))
    return parts, prompts


def _option(name: str, default):
    value = opts.data.get(name) if hasattr(opts, "data") else getattr(opts, name, None)
    return default if value is None else value




def labelled_grid(pictures: list, parts: list[str], batch_size: int, margin: int):
    """The pictures in a grid of 2^ceil(k/2) columns and 2^floor(k/2) rows (k optional parts),
    with A1111's prompt matrix labels."""
    rows = 1 << ((len(parts) - 1) // 2)
    grid = images.image_grid(pictures, batch_size, rows=rows)
    colors = grid_labels.GridColors(_option("grid_text_active_color", "#000000"),
                                    _option("grid_text_inactive_color", "#999999"),
                                    _option("grid_background_color", "#ffffff"))
    return grid_labels.draw_prompt_matrix(grid, pictures[0].width, pictures[0].height, parts, margin, colors,
                                          _option("font", None) or None)


class Script(scripts.Script):
    def title(self):
        return "Prompt matrix"

    def ui(self, is_img2img):
        gr.HTML("<br />")
        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False,
                                           elem_id=self.elem_id("put_at_start"))
                different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False,
                                              elem_id=self.elem_id("different_seeds"))
            with gr.Column():
                prompt_type = gr.Radio(list(PROMPT_TYPES), label="Select prompt", value="positive",
                                       elem_id=self.elem_id("prompt_type"))
                variations_delimiter = gr.Radio(list(DELIMITERS), label="Select joining char", value="comma",
                                                elem_id=self.elem_id("variations_delimiter"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]

    def run(self, p, put_at_start=False, different_seeds=False, prompt_type="positive", variations_delimiter="comma",
            margin_size=0):
        if prompt_type not in PROMPT_TYPES:
            raise RequestError("script_args", f"prompt type (3rd) must be one of {', '.join(PROMPT_TYPES)}; got {prompt_type!r}")
        if variations_delimiter not in DELIMITERS:
            raise RequestError("script_args", f"joining char (4th) must be one of {', '.join(DELIMITERS)}; "
                                              f"got {variations_delimiter!r}")
        processing.fix_seed(p)
        source = p.prompt if prompt_type == "positive" else p.negative_prompt
        original = source[0] if isinstance(source, list) else source
        shown = p.prompt[0] if isinstance(p.prompt, list) else p.prompt
        parts, prompts = matrix_prompts(original, bool(put_at_start), DELIMITERS[variations_delimiter])

        save_grid = not getattr(p, "do_not_save_grid", False)
        if len(prompts) % p.batch_size:  # every batch full: the largest power of two that fits (A1111
            p.batch_size = 1 << (min(p.batch_size, len(prompts)).bit_length() - 1)  # runs a short last one)
        p.n_iter = math.ceil(len(prompts) / p.batch_size)
        p.do_not_save_grid = True  # the labelled grid below replaces the plain one
        print(f"Prompt matrix will create {len(prompts)} images using a total of {p.n_iter} batches.")
        if prompt_type == "positive":
            p.prompt = prompts
        else:
            p.negative_prompt = prompts
        p.seed = [int(p.seed) + (i if different_seeds else 0) for i in range(len(prompts))]
        p.prompt_for_display = shown
        processed = process_images(p)

        pictures = processed.images[processed.index_of_first_image:]
        if not pictures:  # interrupted before the first picture
            return processed
        first = processed.index_of_first_image
        grid = labelled_grid(pictures, parts, p.batch_size, int(margin_size or 0))
        processed.images = [grid, *pictures]
        # as A1111: the grid leads (index_of_first_image = 1) with the first picture's infotext
        texts = list(processed.infotexts)
        texts = texts[first:] if len(texts) == len(pictures) + first else texts
        processed.infotexts = [texts[0], *texts]
        processed.index_of_first_image = 1
        grid.info["parameters"] = processed.infotexts[0]
        if save_grid and _option("grid_save", True) and p.outpath_grids:
            images.save_image(grid, p.outpath_grids, "prompt_matrix", extension=_option("grid_format", "png"),
                              prompt=original, seed=processed.seed, grid=True, p=p, info=processed.infotexts[0])
        return processed
