"""What the txt2img and img2img tabs share: the prompt row with Generate/Interrupt/Skip and the
styles controls (styles.py), the extra networks panel under it (extra_networks.py), the
sampler, size, batch, CFG and seed controls, and the results column (gallery, infotext), with the
wiring between them: a job's progress, this page's Interrupt and Skip, errors as messages.

A tab is a subclass that lays out its own controls with the `build_*` pieces, lists the
components its request needs (`inputs`) and turns their values into a request (`make_request`)
that goes to the engine (`submit`). Element ids are A1111's, `<tabname>_<name>`, since community
extensions find the page by them.

The inputs reach `run` as one dict keyed by component (Gradio's set-of-inputs form), so there is
no list of thirty positional arguments to keep in step with the layout.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from modules.core import samplers
from modules.core.types import GenerationRequest, GenerationResult, Img2ImgRequest
from modules.services.engine import Engine
from modules.services.live_previews import LivePreviews
from modules.services.options import UI_REORDER_CATEGORIES

from . import paste_params
from .extra_networks import ExtraNetworksPanel
from .gallery_buttons import GalleryButtons
from .interrogate_buttons import InterrogateButtons
from .memory_note import memory_note
from .prompt_tools import PromptTools
from .refiner import RefinerControls
from .scripts_ui import ScriptsSection
from .styles import StylesControls

SPECS = Img2ImgRequest.field_specs()  # every request field: the txt2img ones and img2img's

RANDOM_SEED_HINT = "Set seed to -1, which will cause a new random number to be used every time"
REUSE_SEED_HINT = "Reuse seed from last generation, mostly useful if it was randomized"

_task_numbers = itertools.count(1)
_page_user = threading.local()  # the logged-in user of the page whose Generate runs in this thread


def slider(name: str, label: str, value, elem_id: str, **overrides) -> gr.Slider:
    """A slider whose bounds and step come from the request field's spec."""
    fs = SPECS[name]
    args = {"minimum": fs.minimum, "maximum": fs.maximum, "step": fs.ui_step, "value": value}
    args.update(overrides)
    return gr.Slider(label=label, elem_id=elem_id, **args)


def info_html(infotext: str, *, note: str = "") -> str:
    """One image's generation parameters, as A1111 shows them under the gallery."""
    body = html.escape(infotext).replace("\n", "<br>")
    extra = f"<p class='performance'>{html.escape(note).replace(chr(10), '<br>')}</p>" if note else ""
    return f"<div class='infotext'>{body}</div>{extra}"


def error_html(message: str) -> str:
    return f"<div class='error'>{html.escape(message)}</div>"


def empty_result() -> dict:
    return {"infotexts": [], "seeds": [], "note": ""}


@dataclass
class Shown:
    """What a finished job puts in the results column."""

    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    note: str = ""
    first_image: int = 0  # the gallery entries before it are grids (A1111's index_of_first_image)
    paths: list[str] = field(default_factory=list)  # where each entry was saved ("": not saved)

    @classmethod
    def of(cls, result: GenerationResult) -> "Shown":
        """The gallery's entries: the grid, then a script's further grids (X/Y/Z plot's per-Z ones),
        each with the first image's infotext and seed, then the images."""
        grids = ([result.grid] if result.grid is not None else []) + list(getattr(result, "extra_grids", None) or [])
        first_text = result.infotexts[0] if result.infotexts else ""
        first_seed = result.seeds[0] if result.seeds else -1
        grid_paths = [result.grid_path or ""] if result.grid is not None else []
        grid_paths += [""] * (len(grids) - len(grid_paths))  # a script's further grids: not known here
        image_paths = (list(result.paths) + [""] * len(result.images))[:len(result.images)]
        return cls(images=grids + result.images,
                   infotexts=[first_text] * len(grids) + result.infotexts,
                   seeds=[first_seed] * len(grids) + result.seeds, first_image=len(grids),
                   paths=grid_paths + image_paths,
                   note="Interrupted: the unfinished pictures were not saved." if result.interrupted else "")

    @classmethod
    def of_batch(cls, results: list[GenerationResult], note: str, limit: int) -> "Shown":
        """An img2img batch's entries: its results' images, the first `limit` of them (A1111's
        img2img_batch_show_results_limit: it counts pictures; -1: all)."""
        shown = cls(note=note)
        for result in results:
            shown.images += result.images
            shown.infotexts += result.infotexts
            shown.seeds += result.seeds
            shown.paths += (list(result.paths) + [""] * len(result.images))[:len(result.images)]
        if limit >= 0:
            shown.images, shown.infotexts, shown.seeds, shown.paths = (
                x[:limit] for x in (shown.images, shown.infotexts, shown.seeds, shown.paths))
        return shown

    def gallery(self, options) -> list:
        """The gallery's pictures: none with A1111's do_not_show_images (they are saved all the same,
        and the infotext is shown)."""
        return [] if options.get("do_not_show_images") else self.images


@dataclass
class RunningJob:
    """A page's job: its task id and future (one file's job, in an img2img batch), and the flag
    that stops a batch between files."""

    task_id: str
    future: Future
    stop: threading.Event = field(default_factory=threading.Event)


# A1111's ui_reorder_categories (services.options): "prompt" and "override_settings" have no part of
# their own here (the prompts are in the top row), "batch" sits beside "dimensions" as A1111 puts it
def ordered_categories(user_order) -> list[str]:
    """A1111's ordered_ui_categories: a category the user lists (ui_reorder_list, item i) sorts just
    after the i-th category of the default order; the others keep their places."""
    wanted = {str(name).strip(): i * 2 + 1 for i, name in enumerate(user_order or [])}
    ranked = sorted(enumerate(UI_REORDER_CATEGORIES), key=lambda item: wanted.get(item[1], item[0] * 2))
    return [name for _, name in ranked]


class GenerationTab:
    tabname = ""  # "txt2img" / "img2img": the prefix of the element ids and of task ids
    allow_folders = True  # False under --hide-ui-dir-config (no 📂; img2img: no batch from server folders)

    def __init__(self, engine: Engine):
        self.engine = engine
        self._jobs: dict[str, RunningJob] = {}  # session -> what that page runs, for Interrupt and Skip
        self._jobs_lock = threading.Lock()
        self.styles = StylesControls(engine, self.tabname)
        self.extra_networks = ExtraNetworksPanel(engine, self.tabname)
        self.scripts = ScriptsSection(self.tabname)  # extensions' and Easel's scripts (modules/scripts.py)
        self.refiner = RefinerControls(engine, self.tabname)  # A1111's Refiner accordion (build_refiner)
        self.prompt_tools = PromptTools(engine, self.tabname)  # token counters, 🗑️ (prompt_tools.py)
        self.previews = LivePreviews(engine)  # the running job's picture, shown in the gallery
        # img2img: A1111's Interrogate CLIP / DeepBooru buttons beside the prompts
        self.interrogate = InterrogateButtons(engine) if self.tabname == "img2img" else None
        self._shown_previews: dict[str, tuple] = {}  # session -> (task id, preview id) its gallery shows

    def _id(self, name: str) -> str:
        return f"{self.tabname}_{name}"

    # -- layout pieces -----------------------------------------------------------------
    def build_sections(self, sections: dict) -> None:
        """The settings column's parts (``{category: build}``) in A1111's order, as ui_reorder_list
        rearranges it (read when the page is built: Reload UI after a change, as A1111's)."""
        options = getattr(self.engine, "options", None)
        for name in ordered_categories(options.get("ui_reorder_list") if options is not None else []):
            if name in sections:
                sections[name]()

    def build_toprow(self) -> None:
        with gr.Row(elem_id=self._id("toprow"), elem_classes=["toprow"]):
            with gr.Column(scale=6, elem_id=self._id("prompt_container")):
                self.prompt_tools.build_counter(negative=False)  # A1111's: just before its box
                self.prompt = gr.Textbox(label="Prompt", elem_id=self._id("prompt"), lines=3,
                                         placeholder="Prompt (press Ctrl+Enter to generate, Alt+Enter to skip)")
                self.prompt_tools.build_counter(negative=True)
                self.negative = gr.Textbox(label="Negative prompt", elem_id=self._id("neg_prompt"), lines=2,
                                           placeholder="Negative prompt")
            if self.interrogate is not None:
                self.interrogate.build()
            with gr.Column(scale=1, min_width=180, elem_id=self._id("actions_column"), elem_classes=["actions"]):
                self.generate = gr.Button("Generate", variant="primary", elem_id=self._id("generate"))
                with gr.Row():
                    self.interrupt = gr.Button("Interrupt", elem_id=self._id("interrupt"), visible=False)
                    self.skip = gr.Button("Skip", elem_id=self._id("skip"), visible=False)
                with gr.Row(elem_id=self._id("tools"), elem_classes=["tools-row"]):
                    self.paste = paste_params.build_button(self.tabname)
                    self.prompt_tools.build_buttons()  # 🗑️
                    self.extra_networks.build_button()
                    self.styles.build_buttons()
                self.styles.build()
        self.extra_networks.build()  # under the prompt, shown with 🎴

    def option(self, key: str, default=None):
        """An option as it is now (None-safe for a stand-in engine without options)."""
        options = getattr(self.engine, "options", None)
        return options.get(key, default) if options is not None else default

    def build_sampling(self) -> None:
        """A1111's sampler section, as samplers_in_dropdown says when the page is built (Reload UI):
        on (its default), the sampler and schedule type pickers in a row with the steps under them;
        off, the steps, then every sampler as a radio button, then the schedule type (a dropdown either
        way, as A1111's). `<tab>_sampling` holds the sampler's name in both."""
        hidden = self.hidden_samplers()
        names, first = samplers.visible_sampler_names(hidden), samplers.default_visible_sampler(hidden)

        def scheduler() -> gr.Dropdown:
            return gr.Dropdown(schedules_for(first), value="Automatic", label="Schedule type",
                               elem_id=self._id("scheduler"))

        if self.option("samplers_in_dropdown", True):
            with gr.Row(elem_id=f"sampler_selection_{self.tabname}"):
                self.sampler = gr.Dropdown(names, value=first, label="Sampling method", elem_id=self._id("sampling"))
                self.scheduler = scheduler()
            self.steps = slider("steps", "Sampling steps", 20, self._id("steps"))
        else:
            with gr.Group(elem_id=f"sampler_selection_{self.tabname}"):
                self.steps = slider("steps", "Sampling steps", 20, self._id("steps"))
                self.sampler = gr.Radio(names, value=first, label="Sampling method", elem_id=self._id("sampling"))
                self.scheduler = scheduler()

    def hidden_samplers(self) -> list[str]:
        """A1111's hide_samplers: names left out of this page's sampler lists (read when the page is
        built, as A1111's needs a UI reload)."""
        options = getattr(self.engine, "options", None)
        return list(options.get("hide_samplers") or []) if options is not None else []

    def sampler_lists(self) -> list[gr.components.Component]:
        """The dropdowns that list samplers (hide_samplers applies to them)."""
        return [self.sampler]

    def sampler_choices(self):
        """Updates for `sampler_lists` at page load: hide_samplers as it is now, and only the samplers
        the loaded model's family runs (flow models: Euler, Heun, DPM2, LMS, DPM++ 2M)."""
        return gr.update(choices=self._sampler_names())

    def _sampler_names(self) -> list[str]:
        names = samplers.visible_sampler_names(self.hidden_samplers())
        allowed = self.engine.family_samplers()
        return names if allowed is None else [n for n in names if n in allowed]

    def build_size(self, width: int, height: int, beside=None) -> None:
        """A1111's layout: the sizes in one column, its ⇅ switch button (`<tab>_res_switch_btn`,
        which extensions such as aspect-ratio-helper take over) in the next; `beside` builds more
        columns in the same row (txt2img's batch sliders, `build_batch_beside`)."""
        with gr.Row():
            with gr.Column(scale=4, min_width=200):
                self.width = slider("width", "Width", width, self._id("width"))
                self.height = slider("height", "Height", height, self._id("height"))
            with gr.Column(scale=0, min_width=48, elem_id=self._id("dimensions_row"), elem_classes=["dimensions-tools"]):
                self.res_switch = gr.Button("⇅", elem_id=self._id("res_switch_btn"), min_width=40, scale=0,
                                            elem_classes=["tool"])
            if beside is not None:
                beside()
        self.res_switch.click(None, inputs=[self.width, self.height], outputs=[self.width, self.height],
                              js="(w, h) => [h, w]", queue=False)

    def batch_together(self) -> bool:
        """A1111's dimensions_and_batch_together (read when the page is built): the batch sliders
        in a column beside the sizes (its default), or else a row of their own in the "batch" section."""
        return bool(self.option("dimensions_and_batch_together", True))

    def _batch_sliders(self) -> None:
        self.batch_count = slider("n_iter", "Batch count", 1, self._id("batch_count"))
        self.batch_size = slider("batch_size", "Batch size", 1, self._id("batch_size"))

    def build_batch_beside(self) -> None:
        """The batch sliders as a column of the sizes' row (dimensions_and_batch_together)."""
        with gr.Column(scale=2, min_width=160, elem_id=self._id("column_batch")):
            self._batch_sliders()

    def build_batch(self) -> None:
        """A1111's "batch" section: the batch sliders in a row of their own, unless they sit beside
        the sizes (dimensions_and_batch_together), where this builds nothing."""
        if self.batch_together():
            return
        with gr.Row(elem_id=self._id("column_batch")):
            self._batch_sliders()

    def build_cfg(self) -> None:
        distilled = self.engine.uses_distilled_guidance()
        self.cfg = slider("cfg_scale", "CFG Scale", 1.0 if distilled else 7.0, self._id("cfg_scale"))
        # Forge's control for guidance-distilled models (Flux dev): shown while one is loaded
        self.distilled_cfg = slider("distilled_cfg_scale", "Distilled CFG Scale", 3.5, self._id("distilled_cfg_scale"),
                                    visible=distilled)

    def family_updates(self, changed: bool) -> list:
        """The controls that follow the loaded model's family (after a checkpoint load): the distilled
        CFG slider's visibility, CFG 1 / 7 when the kind of guidance changed, the samplers it runs."""
        distilled = self.engine.uses_distilled_guidance()
        cfg = gr.update(value=1.0 if distilled else 7.0) if changed else gr.update()
        names = self._sampler_names()
        # a family that runs fewer samplers starts on its first; the user's pick stays where it can
        restricted = self.engine.family_samplers() is not None
        sampler = gr.update(choices=names, value=names[0]) if restricted and names else gr.update(choices=names)
        return [cfg, gr.update(visible=distilled), sampler]

    def family_controls(self) -> list[gr.components.Component]:
        return [self.cfg, self.distilled_cfg, self.sampler]

    def build_seed(self) -> None:
        with gr.Row(elem_id=self._id("seed_row"), elem_classes=["seed-row"]):
            self.seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=self._id("seed"), scale=4)
            self.random_seed = gr.Button("🎲️", elem_id=self._id("random_seed"), min_width=40, scale=0,
                                         elem_classes=["tool"])
            self.reuse_seed = gr.Button("♻️", elem_id=self._id("reuse_seed"), min_width=40, scale=0,
                                        elem_classes=["tool"])
            self.show_extra = gr.Checkbox(label="Extra", value=False, elem_id=self._id("subseed_show"),
                                          scale=1, min_width=80)
        with gr.Group(visible=False, elem_id=self._id("seed_extras")) as self.extra_group:
            with gr.Row():
                self.subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=self._id("subseed"))
                self.subseed_strength = slider("subseed_strength", "Variation strength", 0.0,
                                               self._id("subseed_strength"))
            with gr.Row():
                self.resize_w = gr.Slider(0, 2048, step=8, value=0, label="Resize seed from width",
                                          elem_id=self._id("seed_resize_from_w"))
                self.resize_h = gr.Slider(0, 2048, step=8, value=0, label="Resize seed from height",
                                          elem_id=self._id("seed_resize_from_h"))

    def build_refiner(self) -> None:
        """A1111's "Refiner" accordion (its section "accordions": after the sampler, with hires fix)."""
        self.refiner.build()

    def build_scripts(self) -> None:
        """The scripts' controls and the "Script" dropdown, at the bottom of the parameters column."""
        self.scripts.build()

    def build_results(self) -> None:
        """The gallery, `build_result_buttons` under it, the info box, and the per-page state."""
        # A1111's gallery_height: any CSS height, read when the page is built
        self.gallery = gr.Gallery(label="Output", elem_id=self._id("gallery"), columns=4, format="png",
                                  show_label=False, object_fit="contain",
                                  height=self.engine.options.get("gallery_height") or "auto")
        # while this page's job runs, the gallery shows the picture forming (live_preview_refresh_period)
        period = max(0.2, float(self.engine.options.get("live_preview_refresh_period") or 1000) / 1000)
        self.preview_timer = gr.Timer(value=period, active=False)
        # the job's progress as A1111 puts it in the tab's title ("NN% ETA: 5s"), for the page's script
        self.progress_text = gr.Textbox(visible="hidden", elem_id=self._id("progress_text"))
        self.build_result_buttons()
        self.info = gr.HTML(elem_id=f"html_info_{self.tabname}", elem_classes=["html-info"])
        # per page: what the last job gave (infotext and seed of every gallery entry) and
        # which entry is selected, for the info box and the recycle button
        self.result = gr.State(empty_result())
        self.selected = gr.State(0)

    def build_result_buttons(self) -> None:
        """A1111's buttons under the gallery: open folder, save, zip, send to img2img / inpaint /
        Extras (modules/ui/gallery_buttons.py; the page wires the send-to ones)."""
        self.buttons = GalleryButtons(self.tabname, self.output_folder, self.allow_folders,
                                      getattr(self.engine, "options", None))
        self.buttons.build()
        self.send_to_img2img = self.buttons.send_to_img2img
        self.send_to_inpaint = self.buttons.send_to_inpaint
        self.send_to_extras = self.buttons.send_to_extras

    def output_folder(self) -> Path:
        """Where this tab's pictures are saved (outdir_samples, else outdir_<tab>_samples)."""
        o = self.engine.options
        return self.engine.data_path / (o.get("outdir_samples") or o.get(f"outdir_{self.tabname}_samples") or "")

    # -- what a subclass provides ------------------------------------------------------
    def common_fields(self) -> dict[str, gr.components.Component]:
        """GenerationRequest field -> component, for the controls every tab has."""
        return {
            "prompt": self.prompt, "negative_prompt": self.negative, "sampler_name": self.sampler,
            "scheduler": self.scheduler, "steps": self.steps, "cfg_scale": self.cfg,
            "distilled_cfg_scale": self.distilled_cfg,
            "n_iter": self.batch_count, "batch_size": self.batch_size, "seed": self.seed,
            "subseed": self.subseed, "subseed_strength": self.subseed_strength,
            "seed_resize_from_w": self.resize_w, "seed_resize_from_h": self.resize_h,
        }

    def inputs(self) -> set[gr.components.Component]:
        return set(self.common_fields().values())

    def paste_fields(self) -> list[paste_params.PasteField]:
        """(component, infotext key) for the ↙️ button: the shared controls here, a tab adds its
        own, then its scripts' `infotext_fields` (A1111's paste fields)."""
        return [(self.prompt, "Prompt"), (self.negative, "Negative prompt"), (self.steps, "Steps"),
                (self.sampler, "Sampler"), (self.scheduler, "Schedule type"), (self.cfg, "CFG scale"),
                (self.distilled_cfg, "Distilled CFG Scale"),
                (self.seed, "Seed"), (self.width, "Size-1"), (self.height, "Size-2"),
                (self.batch_size, "Batch size"), (self.subseed, "Variation seed"),
                (self.subseed_strength, "Variation seed strength"),
                (self.resize_w, "Seed resize from-1"), (self.resize_h, "Seed resize from-2"),
                (self.styles.dropdown, _styles_array)]  # A1111's infotext_styles (infotext_utils)

    def all_paste_fields(self) -> list[paste_params.PasteField]:
        return self.paste_fields() + self.refiner.paste_fields() + self.scripts.infotext_fields()

    @staticmethod
    def field_values(values: dict, fields: dict[str, gr.components.Component]) -> dict:
        """Request keyword arguments from the event's values (empty fields left to the default)."""
        return {name: values[c] for name, c in fields.items() if values[c] is not None}

    def styled(self, values: dict, fields: dict) -> dict:
        """The request keyword arguments with the styles chosen in the dropdown applied to the prompts."""
        return self.styles.apply(values, fields)

    def make_request(self, values: dict) -> GenerationRequest:
        raise NotImplementedError

    def submit(self, request: GenerationRequest, task_id: str, scripts=None) -> Future:
        """Queue the job; `scripts` is its ScriptCall (None: no script runs)."""
        raise NotImplementedError

    @staticmethod
    def user_kw() -> dict:
        """submit's `user` keyword: the logged-in user of the page whose event runs in this thread
        (A1111's p.user: add_user_name_to_info, [user]); none without logins."""
        name = getattr(_page_user, "name", None)
        return {"user": name} if name else {}

    def execute(self, values: dict, session: str, progress: gr.Progress) -> Shown:
        """One job from the values; a tab with other kinds of work (img2img's batch) overrides it.
        A ValueError (RequestError included) becomes the message in the info box."""
        request = self.make_request(values)
        return Shown.of(self.run_job(request, session, progress, scripts=self.scripts.call(values)))

    # -- events ------------------------------------------------------------------------
    def wire(self) -> None:
        buttons = [self.generate, self.interrupt, self.skip]

        def busy():
            return (gr.update(visible=False), gr.update(visible=True), gr.update(visible=True), gr.Timer(active=True),
                    "")

        def idle():
            return (gr.update(visible=True), gr.update(visible=False), gr.update(visible=False), gr.Timer(active=False),
                    "")

        buttons = [*buttons, self.preview_timer, self.progress_text]
        started = self.generate.click(busy, outputs=buttons, queue=False)
        started.then(None, js=JOB_STARTED_JS)  # the page's wake lock (page.js)
        job = started.then(
            self.run, inputs=self.inputs() | {self.styles.dropdown} | self.scripts.components() | self.refiner.components(),
            outputs=[self.gallery, self.info, self.result, self.selected],
            concurrency_limit=None, show_progress_on=[self.gallery],
            # A1111's show_progressbar: the bar over the gallery (read when the page is built)
            show_progress="full" if self.engine.options.get("show_progressbar", True) else "hidden",
        )
        # `then` runs after success; `failure` covers what Gradio itself refuses before `run`
        # (a value out of a slider's bounds, an upload it cannot read), so Generate always comes back
        job.then(idle, outputs=buttons, queue=False).then(None, js=job_ended_js(finished=True))
        job.failure(idle, outputs=buttons, queue=False).then(None, js=job_ended_js(finished=False))

        self.preview_timer.tick(self.live_preview, outputs=self.gallery, queue=False, show_progress="hidden")
        self.preview_timer.tick(self.progress_title, outputs=self.progress_text, queue=False, show_progress="hidden")
        self.progress_text.change(None, inputs=self.progress_text, js=PROGRESS_TITLE_JS)
        # (through the queue, unlimited: interrupt_after_current's message shows as a toast)
        self.interrupt.click(self.interrupt_job, concurrency_limit=None)
        self.skip.click(self.skip_job, queue=False)
        self.random_seed.click(lambda: -1, outputs=self.seed, queue=False)
        self.reuse_seed.click(_seed_of, inputs=[self.result, self.selected], outputs=self.seed, queue=False)
        self.gallery.select(_select, inputs=self.result, outputs=[self.info, self.selected], queue=False)
        self.buttons.wire(self.gallery, self.result, self.selected)
        self.show_extra.change(lambda v: gr.update(visible=v), inputs=self.show_extra, outputs=self.extra_group,
                               queue=False)
        self.sampler.change(scheduler_choices, inputs=[self.sampler, self.scheduler], outputs=self.scheduler,
                            queue=False)
        self.styles.wire(self.prompt, self.negative)
        self.prompt_tools.wire(self.prompt, self.negative, self.steps, self.styles.dropdown)
        self.extra_networks.wire()
        if self.refiner.components():
            self.refiner.wire()
        paste_params.wire(self.paste, self.prompt, self.result, self.all_paste_fields())
        if self.interrogate is not None:
            self.interrogate.wire(self)

    def run(self, values: dict, request: gr.Request, progress=gr.Progress()):
        """Generate; errors end up in the info box (and a toast), never as a stuck page."""
        started = time.time()
        session = request.session_hash if request is not None else f"no-session-{next(_task_numbers)}"
        _page_user.name = getattr(request, "username", None)  # A1111's p.user (--gradio-auth logins)
        monitor = self.engine.memory_monitor  # A1111's shared.mem_mon (webui.py)
        if monitor is not None:
            monitor.monitor()
        try:
            shown = self.execute(values, session, progress)
        except CancelledError:
            return [], info_html("", note="Interrupted before it started."), empty_result(), 0
        except ValueError as exc:
            return self.failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown to the user; the worker printed the traceback
            return self.failed(f"{type(exc).__name__}: {exc}")
        finally:
            memory = monitor.stop() if monitor is not None else {}
        separator = "\n" if "\n" in shown.note else " "  # a batch's list of skipped files: one per line
        note = separator.join(filter(None, [shown.note, f"Time taken: {time.time() - started:.1f} s",
                                            memory_note(memory)]))
        state = {"infotexts": shown.infotexts, "seeds": shown.seeds, "note": note,
                 "index_of_first_image": shown.first_image, "paths": shown.paths}
        # nothing selected yet (-1): the reuse-seed and send-to buttons take the first entry, Save all of them
        return shown.gallery(self.engine.options), info_html(shown.infotexts[0] if shown.infotexts else "", note=note), state, -1

    def run_job(self, request: GenerationRequest, session: str, progress: gr.Progress,
                describe: str = "", scripts=None) -> GenerationResult:
        """Submit, show progress until done, return the result (raises what the job raised)."""
        task_id = f"ui-{self.tabname}-{next(_task_numbers)}"
        future = self.submit(request, task_id, scripts)
        self.follow(session, task_id, future, progress, describe)
        return future.result()

    def follow(self, session: str, task_id: str, future: Future, progress: gr.Progress, describe: str = "",
               running: RunningJob | None = None) -> None:
        """Register the job as this page's (for Interrupt/Skip) and show its progress until done.
        A batch passes its own `running` entry, which stays registered between its jobs."""
        entry = running or RunningJob(task_id, future)
        entry.task_id, entry.future = task_id, future
        with self._jobs_lock:
            self._jobs[session] = entry
        try:
            self._show_progress(future, task_id, progress, describe)
        finally:
            if running is None:
                with self._jobs_lock:
                    if self._jobs.get(session) is entry:
                        del self._jobs[session]
                self._shown_previews.pop(session, None)  # (kept per page only while its job runs)

    def _show_progress(self, future: Future, task_id: str, progress: gr.Progress, describe: str) -> None:
        queue = self.engine.queue  # the job's progress on whichever worker runs it
        prefix = f"{describe}, " if describe else ""
        while not future.done():
            live = queue.live(task_id)
            if live is None:
                progress(0.0, desc=prefix + "Waiting in queue")
            elif not live["steps"]:
                progress(0.0, desc=prefix + "Preparing")
            else:
                desc = f"Step {live['step']}/{live['steps']}"
                if live["batch_count"] > 1:
                    desc = f"Batch {live['batch'] + 1}/{live['batch_count']}, " + desc
                if live["eta"] is not None:
                    desc += f", ETA {duration(live['eta'])}"
                progress(live["progress"], desc=prefix + desc)
            time.sleep(0.2)

    @staticmethod
    def failed(message: str):
        gr.Warning(html.escape(message), title="Error")
        return [], error_html(message), empty_result(), 0

    def _own_job(self, request: gr.Request | None) -> RunningJob | None:
        if request is None:
            return None
        with self._jobs_lock:
            return self._jobs.get(request.session_hash)

    def interrupt_job(self, request: gr.Request) -> None:
        """This page's job: dropped if still queued, stopped if running (and a batch stops
        there). With no job of this page known (e.g. after a reload), whatever runs is
        interrupted, as in A1111. Under interrupt_after_current a running job of several pictures
        first finishes the one it is making (`stop_after_current`); a second click stops it at once."""
        own = self._own_job(request)
        if stop_after_current(self.engine, own.task_id if own is not None else None):
            if own is not None:
                own.stop.set()  # (a batch of files: no next one either)
            gr.Info("Generation will stop after finishing this image, click again to stop immediately.")
            return
        if own is None:
            self.engine.queue.interrupt_all()
            return
        own.stop.set()
        if not own.future.cancel():  # running: on this process's worker thread, or on a Ray worker
            self.engine.queue.interrupt_job(own.task_id)

    def live_preview(self, request: gr.Request):
        """The timer's tick while this page's job runs: the job's newest preview into the gallery,
        nothing when there is no new one (or previews are off, or the job is still queued)."""
        own = self._own_job(request)
        if own is None or own.future.done():
            return gr.skip()
        preview_id, image = self.engine.queue.live_preview(own.task_id, self.previews)
        session = request.session_hash
        if image is None or self._shown_previews.get(session) == (own.task_id, preview_id):
            return gr.skip()
        self._shown_previews[session] = (own.task_id, preview_id)
        return [image]

    def progress_title(self, request: gr.Request) -> str:
        """The timer's tick while this page's job runs: its progress as the tab's title shows it."""
        own = self._own_job(request)
        if own is None or own.future.done():
            return ""
        return title_progress(self.engine.queue.live(own.task_id))

    def skip_job(self, request: gr.Request) -> None:
        own = self._own_job(request)
        if own is None:
            self.engine.queue.skip_all()
        else:
            self.engine.queue.skip_job(own.task_id)


def stop_after_current(engine: Engine, task_id: str | None) -> bool:
    """A1111's interrupt_after_current ("Don't Interrupt in the middle"): when the running job (the
    page's own `task_id`, or whichever runs when None) makes more than one picture and has not been
    asked already, ask it to stop once the current picture is done (A1111's stop_generating: the
    pictures made are finished and saved) and return True; otherwise False (interrupt at once)."""
    state = engine.state
    if not engine.options.get("interrupt_after_current") or state.stopping_generation or not state.busy:
        return False
    if state.job_count <= 1 or (task_id is not None and state.task_id != task_id):
        return False
    state.stopping_generation = True
    return True


def title_progress(live: dict | None) -> str:
    """A1111's progress text of the tab's title (progressbar.js): "NN%" and " ETA: 5s" (or 01:05,
    01:01:05), empty before the first step and when no job runs."""
    if live is None:
        return ""
    text = f"{int(live['progress'] * 100 + 0.5)}%" if live["progress"] > 0 else ""
    if live["eta"]:
        secs = int(live["eta"])
        if live["eta"] > 3600:
            eta = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        elif live["eta"] > 60:
            eta = f"{secs // 60:02d}:{secs % 60:02d}"
        else:
            eta = f"{secs}s"
        text += f" ETA: {eta}"
    return text.strip()


# the page's hooks (modules/ui/page.js) around a job: its progress in the title, the wake lock, the sound
PROGRESS_TITLE_JS = "(text) => { if (window.easelProgressTitle) window.easelProgressTitle(text); }"
JOB_STARTED_JS = "() => { if (window.easelJobStarted) window.easelJobStarted(); }"


def job_ended_js(finished: bool) -> str:
    return f"() => {{ if (window.easelJobEnded) window.easelJobEnded({'true' if finished else 'false'}); }}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def schedules_for(sampler: str) -> list[str]:
    try:
        return samplers.supported_schedules(sampler)
    except (AttributeError, ValueError):
        return [label for label, _ in samplers.SCHEDULE_TYPES]


def scheduler_choices(sampler: str, scheduler: str):
    choices = schedules_for(sampler)
    return gr.update(choices=choices, value=scheduler if scheduler in choices else "Automatic")


def _select(result: dict, evt: gr.SelectData):
    index = evt.index if isinstance(evt.index, int) else 0
    texts = result.get("infotexts") or []
    if not 0 <= index < len(texts):
        return gr.update(), 0
    return info_html(texts[index], note=result.get("note", "")), index


def _styles_array(params: dict):
    """The styles a pasted infotext's prompts carry ("Styles array"); no change without it."""
    found = params.get("Styles array")
    return gr.update(value=list(found)) if isinstance(found, list) else gr.update()


def _seed_of(result: dict, selected: int):
    seeds = result.get("seeds") or []
    if not seeds:
        return gr.update()
    return seeds[selected if 0 <= selected < len(seeds) else 0]
