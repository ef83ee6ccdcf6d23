"""The txt2img tab: layout and event wiring only. Values -> GenerationRequest -> queue.

Element ids are A1111's, since community extensions find the page by them.

The inputs reach `run` as one dict keyed by component (Gradio's set-of-inputs form), and
`REQUEST_FIELDS` maps each request field to its component, so there is no list of thirty
positional arguments to keep in step with the layout.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from concurrent.futures import CancelledError, Future

import gradio as gr

from modules.core import samplers
from modules.core.types import GenerationRequest, GenerationResult, RequestError
from modules.services.engine import Engine

SPECS = GenerationRequest.field_specs()

RANDOM_SEED_HINT = "Set seed to -1, which will cause a new random number to be used every time"
REUSE_SEED_HINT = "Reuse seed from last generation, mostly useful if it was randomized"

_task_numbers = itertools.count(1)


def _slider(name: str, label: str, value, elem_id: str, **overrides) -> gr.Slider:
    fs = SPECS[name]
    args = {"minimum": fs.minimum, "maximum": fs.maximum, "step": fs.ui_step, "value": value}
    args.update(overrides)
    return gr.Slider(label=label, elem_id=elem_id, **args)


def info_html(infotext: str, *, note: str = "") -> str:
    """One image's generation parameters, as A1111 shows them under the gallery."""
    body = html.escape(infotext).replace("\n", "<br>")
    extra = f"<p class='performance'>{html.escape(note)}</p>" if note else ""
    return f"<div class='infotext'>{body}</div>{extra}"


def error_html(message: str) -> str:
    return f"<div class='error'>{html.escape(message)}</div>"


def _empty_result() -> dict:
    return {"infotexts": [], "seeds": [], "note": ""}


class Txt2ImgTab:
    def __init__(self, engine: Engine):
        self.engine = engine
        # session -> (task id, future) of the job that page started, for Interrupt and Skip
        self._jobs: dict[str, tuple[str, Future]] = {}
        self._jobs_lock = threading.Lock()

    # -- layout ----------------------------------------------------------------------
    def build(self) -> None:
        width, height = self.engine.native_size()
        with gr.Row(elem_id="txt2img_toprow"):
            with gr.Column(scale=6, elem_id="txt2img_prompt_container"):
                self.prompt = gr.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3,
                                         placeholder="Prompt (press Ctrl+Enter to generate, Alt+Enter to skip)")
                self.negative = gr.Textbox(label="Negative prompt", elem_id="txt2img_neg_prompt", lines=2,
                                           placeholder="Negative prompt")
            with gr.Column(scale=1, min_width=180, elem_id="txt2img_actions_column"):
                self.generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                with gr.Row():
                    self.interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", visible=False)
                    self.skip = gr.Button("Skip", elem_id="txt2img_skip", visible=False)
        with gr.Row(equal_height=False):
            with gr.Column(elem_id="txt2img_settings"):
                with gr.Row():
                    self.sampler = gr.Dropdown(samplers.SAMPLER_NAMES, value="Euler a", label="Sampling method",
                                               elem_id="txt2img_sampling")
                    self.scheduler = gr.Dropdown(_schedules_for("Euler a"), value="Automatic",
                                                 label="Schedule type", elem_id="txt2img_scheduler")
                self.steps = _slider("steps", "Sampling steps", 20, "txt2img_steps")
                with gr.Row():
                    self.width = _slider("width", "Width", width, "txt2img_width")
                    self.height = _slider("height", "Height", height, "txt2img_height")
                with gr.Row():
                    self.batch_count = _slider("n_iter", "Batch count", 1, "txt2img_batch_count")
                    self.batch_size = _slider("batch_size", "Batch size", 1, "txt2img_batch_size")
                self.cfg = _slider("cfg_scale", "CFG Scale", 7.0, "txt2img_cfg_scale")
                with gr.Row(elem_id="txt2img_seed_row"):
                    self.seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed", scale=4)
                    self.random_seed = gr.Button("🎲️", elem_id="txt2img_random_seed", min_width=40, scale=0,
                                                 elem_classes=["tool"])
                    self.reuse_seed = gr.Button("♻️", elem_id="txt2img_reuse_seed", min_width=40, scale=0,
                                                elem_classes=["tool"])
                    self.show_extra = gr.Checkbox(label="Extra", value=False, elem_id="txt2img_subseed_show",
                                                  scale=1, min_width=80)
                with gr.Group(visible=False, elem_id="txt2img_seed_extras") as self.extra_group:
                    with gr.Row():
                        self.subseed = gr.Number(label="Variation seed", value=-1, precision=0,
                                                 elem_id="txt2img_subseed")
                        self.subseed_strength = _slider("subseed_strength", "Variation strength", 0.0,
                                                        "txt2img_subseed_strength")
                    with gr.Row():
                        self.resize_w = gr.Slider(0, 2048, step=8, value=0, label="Resize seed from width",
                                                  elem_id="txt2img_seed_resize_from_w")
                        self.resize_h = gr.Slider(0, 2048, step=8, value=0, label="Resize seed from height",
                                                  elem_id="txt2img_seed_resize_from_h")
            with gr.Column(elem_id="txt2img_results"):
                self.gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=4, format="png",
                                          show_label=False, object_fit="contain", height="auto")
                self.info = gr.HTML(elem_id="html_info_txt2img")
                # per page: what the last job gave (infotext and seed of every gallery entry) and
                # which entry is selected, for the info box and the recycle button
                self.result = gr.State(_empty_result())
                self.selected = gr.State(0)
        self._wire()

    @property
    def request_fields(self) -> dict[str, gr.components.Component]:
        """GenerationRequest field -> the component that holds its value."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative, "sampler_name": self.sampler,
            "scheduler": self.scheduler, "steps": self.steps, "cfg_scale": self.cfg, "width": self.width,
            "height": self.height, "n_iter": self.batch_count, "batch_size": self.batch_size, "seed": self.seed,
            "subseed": self.subseed, "subseed_strength": self.subseed_strength,
            "seed_resize_from_w": self.resize_w, "seed_resize_from_h": self.resize_h,
        }

    # -- events ----------------------------------------------------------------------
    def _wire(self) -> None:
        buttons = [self.generate, self.interrupt, self.skip]

        def busy():
            return gr.update(visible=False), gr.update(visible=True), gr.update(visible=True)

        def idle():
            return gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)

        started = self.generate.click(busy, outputs=buttons, queue=False)
        job = started.then(
            self.run, inputs=set(self.request_fields.values()),
            outputs=[self.gallery, self.info, self.result, self.selected],
            concurrency_limit=None, show_progress_on=[self.gallery],
        )
        # `then` runs after success; `failure` covers what Gradio itself refuses before `run`
        # (a value out of a slider's bounds), so Generate always comes back
        job.then(idle, outputs=buttons, queue=False)
        job.failure(idle, outputs=buttons, queue=False)

        self.interrupt.click(self.interrupt_job, queue=False)
        self.skip.click(self.skip_job, queue=False)
        self.random_seed.click(lambda: -1, outputs=self.seed, queue=False)
        self.reuse_seed.click(_seed_of, inputs=[self.result, self.selected], outputs=self.seed, queue=False)
        self.gallery.select(_select, inputs=self.result, outputs=[self.info, self.selected], queue=False)
        self.show_extra.change(lambda v: gr.update(visible=v), inputs=self.show_extra, outputs=self.extra_group,
                               queue=False)
        self.sampler.change(_scheduler_choices, inputs=[self.sampler, self.scheduler], outputs=self.scheduler,
                            queue=False)

    def run(self, values: dict, request: gr.Request, progress=gr.Progress()):
        """Generate; errors end up in the info box (and a toast), never as a stuck page."""
        started = time.time()
        try:
            req = GenerationRequest(**{name: values[c] for name, c in self.request_fields.items()
                                       if values[c] is not None})
        except RequestError as exc:
            return self._failed(str(exc))

        task_id = f"ui-txt2img-{next(_task_numbers)}"
        future = self.engine.submit_txt2img(req, task_id=task_id)
        session = request.session_hash if request is not None else task_id
        with self._jobs_lock:
            self._jobs[session] = (task_id, future)
        try:
            self._follow(future, task_id, progress)
            result: GenerationResult = future.result()
        except CancelledError:
            return [], info_html("", note="Interrupted before it started."), _empty_result(), 0
        except ValueError as exc:
            return self._failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown to the user; the worker printed the traceback
            return self._failed(f"{type(exc).__name__}: {exc}")
        finally:
            with self._jobs_lock:
                if self._jobs.get(session, (None,))[0] == task_id:
                    del self._jobs[session]

        images = ([result.grid] if result.grid is not None else []) + result.images
        infotexts = ([result.infotexts[0]] if result.grid is not None else []) + result.infotexts
        seeds = ([result.seeds[0]] if result.grid is not None else []) + result.seeds
        note = f"Time taken: {time.time() - started:.1f} s"
        if result.interrupted:
            note = "Interrupted: the images were not saved. " + note
        shown = {"infotexts": infotexts, "seeds": seeds, "note": note}
        return images, info_html(infotexts[0] if infotexts else "", note=note), shown, 0

    def _follow(self, future: Future, task_id: str, progress: gr.Progress) -> None:
        state = self.engine.state
        while not future.done():
            if state.task_id != task_id:
                progress(0.0, desc="Waiting in queue")
            elif not state.sampling_steps:
                progress(0.0, desc="Preparing")
            else:
                frac, eta = state.progress()
                desc = f"Step {state.sampling_step}/{state.sampling_steps}"
                if state.job_count > 1:
                    desc = f"Batch {state.job_no + 1}/{state.job_count}, " + desc
                if eta is not None:
                    desc += f", ETA {_duration(eta)}"
                progress(frac, desc=desc)
            time.sleep(0.2)

    @staticmethod
    def _failed(message: str):
        gr.Warning(html.escape(message), title="Error")
        return [], error_html(message), _empty_result(), 0

    def _own_job(self, request: gr.Request | None) -> tuple[str, Future] | None:
        if request is None:
            return None
        with self._jobs_lock:
            return self._jobs.get(request.session_hash)

    def interrupt_job(self, request: gr.Request) -> None:
        """This page's job: dropped if still queued, stopped if running. With no job of this
        page known (e.g. after a reload), whatever runs is interrupted, as in A1111."""
        own = self._own_job(request)
        if own is None:
            self.engine.state.interrupt()
            return
        task_id, future = own
        if not future.cancel() and self.engine.state.task_id == task_id:
            self.engine.state.interrupt()

    def skip_job(self, request: gr.Request) -> None:
        own = self._own_job(request)
        if own is None or self.engine.state.task_id == own[0]:
            self.engine.state.skip()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _schedules_for(sampler: str) -> list[str]:
    try:
        return samplers.supported_schedules(sampler)
    except (AttributeError, ValueError):
        return [label for label, _ in samplers.SCHEDULE_TYPES]


def _scheduler_choices(sampler: str, scheduler: str):
    choices = _schedules_for(sampler)
    return gr.update(choices=choices, value=scheduler if scheduler in choices else "Automatic")


def _select(result: dict, evt: gr.SelectData):
    index = evt.index if isinstance(evt.index, int) else 0
    texts = result.get("infotexts") or []
    if not 0 <= index < len(texts):
        return gr.update(), 0
    return info_html(texts[index], note=result.get("note", "")), index


def _seed_of(result: dict, selected: int):
    seeds = result.get("seeds") or []
    if not seeds:
        return gr.update()
    return seeds[selected if 0 <= selected < len(seeds) else 0]
