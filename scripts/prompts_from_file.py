"""A1111's "Prompts from file or textbox": one job per line.

A plain line is a prompt. A line with ``--`` options sets fields of that line's job, the way A1111
parses them (``shlex`` words; ``--prompt`` and ``--negative_prompt`` take every word up to the next
``--option``), e.g. ``--prompt "a red cube" --steps 10 --cfg_scale 5 --sampler_name "DPM++ 2M"``.
A line that does not parse is used as a plain prompt, as in A1111. With the tab's own prompt set, a
line's prompt goes before it ("start") or after it ("end").

Controls in A1111's order, so ``script_args`` over the API match A1111's: [checkbox_iterate,
checkbox_iterate_batch, prompt_position, prompt_txt]; the file upload fills the textbox.
"""

from __future__ import annotations

import copy
import shlex

import gradio as gr

import modules.scripts as scripts
from modules import sd_models
from modules.core import samplers
from modules.core.types import RequestError
from modules.processing import Processed, fix_seed, process_images
from modules.shared import state


def _text(value: str) -> str:
    return value


def _boolean(value: str) -> bool:
    return value == "true"  # A1111: only the lower-case word turns an option on


# A1111's accepted options and how each value is read; sd_model and sampler_index are translated below
PROMPT_TAGS = {
    "sd_model": _text,
    "outpath_samples": _text,
    "outpath_grids": _text,
    "prompt_for_display": _text,
    "prompt": _text,
    "negative_prompt": _text,
    "styles": _text,
    "seed": int,
    "subseed_strength": float,
    "subseed": int,
    "seed_resize_from_h": int,
    "seed_resize_from_w": int,
    "sampler_index": int,
    "sampler_name": _text,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "restore_faces": _boolean,
    "tiling": _boolean,
    "do_not_save_samples": _boolean,
    "do_not_save_grid": _boolean,
}


def cmdargs(line: str) -> dict:
    """The options of one line (A1111's name for it). ValueError names what is wrong."""
    words = shlex.split(line)
    found = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise ValueError(f'must start with "--": {word}')
        if pos + 1 >= len(words):
            raise ValueError(f"missing argument for command line option {word}")
        tag = word[2:]
        if tag in ("prompt", "negative_prompt"):  # the prompt runs on to the next option
            pos += 1
            text = [words[pos]]
            pos += 1
            while pos < len(words) and not words[pos].startswith("--"):
                text.append(words[pos])
                pos += 1
            found[tag] = " ".join(text)
            continue
        reader = PROMPT_TAGS.get(tag)
        if reader is None:
            raise ValueError(f"unknown commandline option: {word}")
        value = words[pos + 1]
        if tag == "sampler_name":
            value = _sampler_name(value)
        found[tag] = reader(value)
        pos += 2
    if "sampler_index" in found:  # A1111's old way: the sampler's position in the list
        names = samplers.SAMPLER_NAMES
        index = found.pop("sampler_index")
        if not 0 <= index < len(names):
            raise ValueError(f"sampler_index {index} is out of range 0..{len(names) - 1}")
        found.setdefault("sampler_name", names[index])
    return found


def _sampler_name(name: str) -> str:
    """Checked now (A1111 quietly turns an unknown name into None); kept as written: an old
    combined name such as "DPM++ 2M Karras" carries its schedule."""
    samplers.resolve(name)  # ValueError naming the known samplers
    return name


def parse_lines(text: str) -> list[dict]:
    """One job's options per non-empty line. A line that does not parse is a plain prompt (A1111),
    unless it starts with ``--``: then it is meant as options and its mistake is reported
    (RequestError on ``script_args`` naming the line) instead of becoming a strange prompt."""
    jobs = []
    for number, line in enumerate((raw.strip() for raw in (text or "").splitlines()), 1):
        if not line:
            continue
        if "--" in line:
            try:
                jobs.append(cmdargs(line))
                continue
            except ValueError as exc:
                if line.startswith("--"):
                    raise RequestError("script_args", f"line {number} of the prompt inputs: {exc}") from exc
                print(f'Prompts from file: line {number} used as a plain prompt ({exc})')
        jobs.append({"prompt": line})
    return jobs


def load_prompt_file(file):
    """The uploaded file's lines into the textbox (bytes, or a path with Gradio's "filepath")."""
    if file is None:
        return None, gr.update()
    data = file if isinstance(file, (bytes, bytearray)) else open(file, "rb").read()
    lines = [line.strip() for line in data.decode("utf8", errors="ignore").split("\n")]
    return None, gr.update(value="\n".join(lines), lines=7)


class Script(scripts.Script):
    def title(self):
        return "Prompts from file or textbox"

    def ui(self, is_img2img):
        checkbox_iterate = gr.Checkbox(label="Iterate seed every line", value=False,
                                       elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start",
                                   elem_id=self.elem_id("prompt_position"))
        prompt_txt = gr.Textbox(label="List of prompt inputs", lines=2, elem_id=self.elem_id("prompt_txt"))
        file = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))
        file.change(fn=load_prompt_file, inputs=[file], outputs=[file, prompt_txt], show_progress="hidden")
        prompt_txt.change(lambda text: gr.update(lines=7 if "\n" in (text or "") else 2), inputs=[prompt_txt],
                          outputs=[prompt_txt], show_progress="hidden")
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    def run(self, p, checkbox_iterate=False, checkbox_iterate_batch=False, prompt_position="start", prompt_txt=""):
        if prompt_position not in ("start", "end"):
            raise RequestError("script_args", f"prompt position (3rd) must be 'start' or 'end'; got {prompt_position!r}")
        jobs = parse_lines(prompt_txt)
        if not jobs:
            raise RequestError("script_args", "the list of prompt inputs (4th) has no lines")
        for job in jobs:
            if "sd_model" in job:  # A1111 looks the checkpoint up before anything runs
                job["sd_model"] = _checkpoint_name(job["sd_model"])
        p.do_not_save_grid = True
        job_count = sum(job.get("n_iter", p.n_iter) for job in jobs)
        print(f"Will process {len(jobs)} lines in {job_count} jobs.")
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed == -1:
            fix_seed(p)  # one seed to start from (iterate) or for every line (same seed)
        state.job_count = job_count

        pictures, infotexts = [], []
        per_picture = {"all_prompts": [], "all_negative_prompts": [], "all_seeds": [], "all_subseeds": []}
        for job in jobs:
            state.job = f"{state.job_no + 1} out of {state.job_count}"
            line_p = copy.copy(p)
            line_p.override_settings = dict(getattr(p, "override_settings", None) or {})
            for key, value in job.items():
                if key == "sd_model":
                    line_p.override_settings["sd_model_checkpoint"] = value
                elif key == "styles":  # A1111 would set the text itself: a list of names is meant
                    line_p.styles = [name.strip() for name in value.split(",") if name.strip()]
                else:
                    setattr(line_p, key, value)
            for key in ("prompt", "negative_prompt"):
                if job.get(key) and getattr(p, key):
                    both = (job[key], getattr(p, key)) if prompt_position == "start" else (getattr(p, key), job[key])
                    setattr(line_p, key, " ".join(both))
            processed = process_images(line_p)
            pictures += processed.images
            infotexts += processed.infotexts
            for name, values in per_picture.items():  # A1111 keeps only the prompts; the seeds are wanted too
                values += getattr(processed, name)
            if checkbox_iterate:
                p.seed = p.seed + p.batch_size * p.n_iter
        first_seed = per_picture["all_seeds"][0] if per_picture["all_seeds"] else p.seed
        return Processed(p, pictures, first_seed, infotexts[0] if infotexts else "", infotexts=infotexts, **per_picture)


def _checkpoint_name(name: str) -> str:
    info = sd_models.get_closet_checkpoint_match(name)
    if info is None:
        raise RequestError("script_args", f"unknown checkpoint in --sd_model: {name}")
    return info.name
