"""The services wired together: what the UI and the API both call.

`Engine.txt2img(request)` puts the job on the single worker queue, makes sure the
requested checkpoint is loaded there, turns the options into the job's settings and
runs the core's one generation function.
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from modules.core.checkpoint_file import CheckpointError, probe
from modules.core.families import ConditioningOptions
from modules.core.hires import target_size as hires_target_size
from modules.core.img2img import Img2ImgSettings, default_size
from modules.core.pipeline import GenerationSettings, generate
from modules.core.sampler_options import SamplerOptions
from modules.core.types import GenerationRequest, GenerationResult, Img2ImgRequest, RequestError
from modules.core.version import VERSION  # noqa: F401  (importable here too, as before)

from .checkpoints import CheckpointInfo, CheckpointRegistry
from .console_progress import console_line
from .embeddings import EmbeddingDatabase
from .jobs import JobState, StateObserver, WorkQueue
from .loras import LoraRegistry
from .model_cache import ModelCache
from . import face_restorers, live_previews, script_jobs
from .options import Options
from .script_jobs import ScriptCall
from .styles import StyleDatabase
from .vaes import VaeRegistry, apply_vae


@dataclass
class Engine:
    options: Options
    checkpoints: CheckpointRegistry
    models: ModelCache
    state: JobState
    queue: WorkQueue
    data_path: Path
    embeddings: EmbeddingDatabase | None = None  # textual-inversion embeddings folder(s); None: no TI
    styles: StyleDatabase | None = None  # prompt styles (styles.csv files); None: no styles
    loras: LoraRegistry | None = None  # LoRA files (--lora-dir); None: <lora:...> is refused
    hypernetworks: object | None = None  # services.hypernetworks.HypernetworkRegistry; None: <hypernet:...> refused
    vaes: VaeRegistry | None = None  # VAE files (--vae-dir): listed (/sdapi/v1/sd-vae), chosen by sd_vae
    vae_path: str | None = None  # --vae-path: this VAE file always (overrides sd_vae)
    memory_monitor: object | None = None  # A1111's shared.mem_mon (modules.memmon), set by webui.py
    # A1111's script flow (modules.script_host, from webui.py); None: jobs run without scripts
    script_host: script_jobs.ScriptHost | None = None
    # who asked for the job running now (the UI's logged-in user, A1111's p.user; None: unknown), for
    # add_user_name_to_info and the [user] file name tag; set by _run on the one worker thread
    job_user: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.vaes is not None:  # sd_vae's choices are the files on disk: "Automatic", "None", names
            self.options.defs["sd_vae"].choices = self.vaes.choices

    # -- checkpoints -----------------------------------------------------------------
    def resolve_checkpoint(self, name: str | None) -> CheckpointInfo:
        """The named checkpoint, else the selected one, else the default one."""
        if name:
            info = self.checkpoints.find(name)
            if info is None:
                self.checkpoints.refresh()
                info = self.checkpoints.find(name)
            if info is None:
                known = ", ".join(self.checkpoints.titles()) or "none"
                raise RequestError("checkpoint", f"unknown checkpoint '{name}'; known: {known}")
            return info
        info = self.checkpoints.find(self.options.get("sd_model_checkpoint")) or self.checkpoints.default()
        if info is None:
            raise RequestError("checkpoint", "no checkpoints found in models/Stable-diffusion")
        return info

    def _load(self, info: CheckpointInfo, remember: bool = True, vae: str | None = None,
              overrides: dict | None = None):
        """Load on the worker. `remember` makes it the selected checkpoint; a per-request
        override (A1111's override_settings) does not. `vae`: the job's sd_vae override (None:
        the option's); a VAE file that does not fit is a RequestError on sd_vae. `overrides`: the
        job's option values, which win for the load's own options (fp8_storage, VAE precision ...)."""
        self.checkpoints.ensure_hash(info)
        if hasattr(self.models, "apply_options"):  # cache limits, VAE precision and tiling, fp8 (Settings)
            get = self.options.get
            if overrides:
                def get(key: str, _get=self.options.get):
                    return overrides[key] if key in overrides else _get(key)
            self.models.apply_options(get)
        model = self.models.load(info)
        try:
            apply_vae(model, self.vae_file(info, vae, overrides), getattr(self.models, "vae_cache", None))
        except ValueError as exc:
            raise RequestError("sd_vae", str(exc)) from exc
        if remember:
            self.options.data["sd_model_checkpoint"] = info.title
            if self.embeddings is not None:  # the listed embeddings are the selected model's
                self.embeddings.refresh(model, announce=bool(self.options.get("textual_inversion_print_at_load")))
        return model

    # -- VAE -------------------------------------------------------------------------
    def vae_file(self, info: CheckpointInfo, choice: str | None = None, overrides: dict | None = None):
        """The external VAE file for checkpoint `info` under sd_vae `choice` (None: the option's);
        None: the checkpoint's own VAE. `overrides`: the job's option values
        (sd_vae_overrides_per_model_preferences)."""
        if self.vaes is None:
            return None
        key = "sd_vae_overrides_per_model_preferences"
        setting_wins = bool((overrides or {}).get(key, self.options.get(key, True)))
        return self.vaes.resolve(self.options.get("sd_vae") if choice is None else choice, info.filename,
                                 self.vae_path, setting_wins=setting_wins)

    def select_vae(self, choice: str) -> None:
        """Set sd_vae: the VAE is put into the loaded model first (on the worker, after queued
        jobs); a file that does not fit raises a ValueError naming it and nothing changes."""
        self.options.check("sd_vae", choice)

        def apply() -> None:
            model, info = self.models.model, self.models.info
            if model is not None and info is not None:
                apply_vae(model, self.vae_file(info, choice), getattr(self.models, "vae_cache", None))
            self.options.set("sd_vae", choice)

        self.queue.submit("load VAE", apply).result()

    def vae_hash(self, path) -> str:
        """A1111's `VAE hash`: the first 10 hex digits of the file's sha256 (cached like checkpoints')."""
        return self.checkpoints.hashes.sha256(path)[:10]

    def short_title(self, info: CheckpointInfo) -> str:
        """A1111's short title: the file's stem and its short hash (`Hires checkpoint` infotext)."""
        self.checkpoints.ensure_hash(info)
        stem = info.model_name.rsplit("/", 1)[-1]
        return f"{stem} [{info.shorthash}]" if info.shorthash else stem

    def _hires_checkpoint(self, name: str) -> CheckpointInfo:
        """`hr_checkpoint_name`'s checkpoint, looked at before the job starts: a file that cannot be
        one is a RequestError on that field (not a failure halfway through the job)."""
        info = self.resolve_checkpoint(name)
        try:
            probe(info.filename)
        except CheckpointError as exc:
            raise RequestError("hr_checkpoint_name", str(exc)) from exc
        return info

    def _load_hires(self, job_info: CheckpointInfo, name: str | None, vae: str | None, overrides: dict | None = None):
        """Load the hires pass's checkpoint (None: the job's own again); a file that fails to load
        is a RequestError on hr_checkpoint_name."""
        if name is None:
            return self._load(job_info, remember=False, vae=vae, overrides=overrides)
        info = self._hires_checkpoint(name)
        try:
            return self._load(info, remember=False, vae=vae, overrides=overrides)
        except RequestError:
            raise
        except ValueError as exc:  # CheckpointError, UnsupportedCheckpoint: the file's fault
            raise RequestError("hr_checkpoint_name", str(exc)) from exc

    def select_checkpoint(self, name: str, as_setting: bool = True) -> CheckpointInfo:
        """Load a checkpoint (on the worker, after queued jobs) and remember it. `as_setting`: another
        checkpoint than the selected one is a change of the sd_model_checkpoint setting, which the
        command line may lock (OptionRestricted); False for an extension's reload_model_weights,
        which A1111 lets through (it writes the option directly)."""
        info = self.resolve_checkpoint(name)
        selected = self.checkpoints.find(self.options.get("sd_model_checkpoint") or "")
        if as_setting and (selected is None or selected.filename != info.filename):
            self.options.check_allowed("sd_model_checkpoint", info.title)
        self.queue.submit("load checkpoint", self._load, info).result()
        self.options.save()
        return info

    def load_default_in_background(self):
        """At start-up: queue the default checkpoint's load; a failure is reported, not fatal."""

        def load() -> CheckpointInfo | None:
            try:
                info = self.resolve_checkpoint(None)
                self._load(info)
                return info
            except ValueError as exc:
                print(f"[easel] no checkpoint loaded at start: {exc}")
                return None

        return self.queue.submit("load checkpoint", load)

    def refresh_embeddings(self, force: bool = False) -> None:
        """Read the embedding folders again for the loaded model, on the worker: tokenizing the
        names must not overlap a running job's use of the same tokenizer."""
        if self.embeddings is not None:
            self.queue.submit("refresh embeddings", lambda: self.embeddings.refresh(self.models.model, force=force)).result()

    # -- styles ----------------------------------------------------------------------
    def apply_styles(self, request: GenerationRequest, names: list[str] | None) -> GenerationRequest:
        """The request with its prompts expanded by the named styles (A1111 applies them before
        anything else sees the prompts); an unknown name is a RequestError on `styles`."""
        if not names:
            return request
        if self.styles is None:
            raise RequestError("styles", "no styles are available")
        return self.styles.apply_to_request(request, names)

    # -- generation ------------------------------------------------------------------
    def check_overrides(self, overrides: dict | None) -> dict:
        """Validated per-job option values (raises ValueError naming the option)."""
        checked = {}
        for key, value in (overrides or {}).items():
            if key not in self.options.defs:
                raise RequestError(f"override_settings.{key}", "unknown option")
            try:  # the value's checks, then the command line's locks (--freeze-settings, ...)
                checked[key] = self.options.check(key, value)
            except ValueError as exc:
                raise RequestError(f"override_settings.{key}", str(exc)) from exc
        return checked

    def settings_for(self, info: CheckpointInfo, kind: str = "txt2img", overrides: dict | None = None,
                     user: str | None = None) -> GenerationSettings:
        o = {**self.options.data, **(overrides or {})}
        try:
            vae_file = self.vae_file(info, o.get("sd_vae"), overrides)
        except ValueError:  # already refused when the job's model was loaded
            vae_file = None
        samples = o.get("outdir_samples") or o.get(f"outdir_{kind}_samples")
        grids = o.get("outdir_grids", "") or o.get(f"outdir_{kind}_grids")
        return GenerationSettings(
            outdir_samples=self.data_path / samples if o.get("samples_save") else None,
            outdir_grids=self.data_path / grids,
            samples_format=o.get("samples_format"),
            grid_format=o.get("grid_format"),
            save_grid=o.get("grid_save"),
            return_grid=o.get("return_grid"),
            grid_only_if_multiple=o.get("grid_only_if_multiple"),
            grid_rows=o.get("n_rows"),
            grid_prevent_empty_spots=o.get("grid_prevent_empty_spots"),
            grid_background=o.get("grid_background_color"),
            jpeg_quality=o.get("jpeg_quality"),
            clip_skip=o.get("CLIP_stop_at_last_layers"),
            **_token_merging(o, kind, overrides or {}),
            emphasis=o.get("emphasis"),
            # file names and folders (A1111's saving options; modules.core.saving)
            samples_filename_pattern=o.get("samples_filename_pattern"),
            save_images_add_number=o.get("save_images_add_number"),
            save_images_replace_action=o.get("save_images_replace_action"),
            grid_extended_filename=o.get("grid_extended_filename"),
            save_to_dirs=o.get("save_to_dirs"),
            grid_save_to_dirs=o.get("grid_save_to_dirs"),
            directories_filename_pattern=o.get("directories_filename_pattern"),
            directories_max_prompt_words=o.get("directories_max_prompt_words"),
            save_txt=o.get("save_txt"),
            export_for_4chan=o.get("export_for_4chan"),
            img_downscale_threshold=o.get("img_downscale_threshold"),
            target_side_length=o.get("target_side_length"),
            webp_lossless=o.get("webp_lossless"),
            # A1111 1.10's further saving/infotext options (issue 13)
            enable_pnginfo=bool(o.get("enable_pnginfo", True)),
            save_images_before_face_restoration=bool(o.get("save_images_before_face_restoration")),
            save_images_before_highres_fix=bool(o.get("save_images_before_highres_fix")),
            save_images_before_color_correction=bool(o.get("save_images_before_color_correction")),
            save_mask=bool(o.get("save_mask")),
            save_mask_composite=bool(o.get("save_mask_composite")),
            return_mask=bool(o.get("return_mask")),
            return_mask_composite=bool(o.get("return_mask_composite")),
            save_incomplete_images=bool(o.get("save_incomplete_images")),
            live_preview_content=o.get("live_preview_content") or "Prompt",
            batch_cond_uncond=bool(o.get("batch_cond_uncond", True)),
            persistent_cond_cache=bool(o.get("persistent_cond_cache", True)),
            pad_cond_uncond="v0" if o.get("pad_cond_uncond_v0") else "empty" if o.get("pad_cond_uncond") else "",
            interrupt_decode=(live_previews.interrupt_decoder(o.get("show_progress_type"))
                              if o.get("live_preview_fast_interrupt") else None),
            outdir_init_images=(self.data_path / (o.get("outdir_init_images") or "outputs/init-images")
                                if kind == "img2img" and o.get("save_init_img") else None),
            add_user_name_to_info=bool(o.get("add_user_name_to_info")),
            user=user if user is not None else self.job_user,
            job_timestamp=self.state.job_timestamp,
            eta_noise_seed_delta=o.get("eta_noise_seed_delta"),
            randn_source=o.get("randn_source"),
            sampler_options=SamplerOptions.from_options(o.get),  # A1111's "Sampler parameters"
            model_name=info.model_name.rsplit("/", 1)[-1],
            model_hash=info.shorthash,
            add_model_hash_to_info=o.get("add_model_hash_to_info"),
            add_model_name_to_info=o.get("add_model_name_to_info"),
            vae_name=vae_file.name if vae_file else None,
            vae_hash=self.vae_hash(vae_file) if vae_file else None,
            add_vae_name_to_info=o.get("add_vae_name_to_info", True),
            add_vae_hash_to_info=o.get("add_vae_hash_to_info", True),
            version=VERSION if o.get("add_version_to_infotext") else None,
            embeddings=self.embeddings,
            find_lora=self.loras.require if self.loras is not None else None,  # <lora:name> -> file
            find_hypernetwork=self.hypernetworks.require if self.hypernetworks is not None else None,
            # sd_hypernetwork, at extra_networks_default_multiplier (A1111's tag)
            always_hypernetwork=(self.hypernetworks.always(o.get("sd_hypernetwork"),
                                                           o.get("extra_networks_default_multiplier", 1.0))
                                 if self.hypernetworks is not None else None),
            add_lora_hashes_to_info=o.get("lora_add_hashes_to_infotext"),
            add_ti_hashes_to_info=o.get("textual_inversion_add_hashes_to_infotext"),
            # the hires checkpoint: through the model cache, never selected; None puts this job's back
            load_model=lambda name: self._load_hires(info, name, o.get("sd_vae"), overrides),
            checkpoint_title=lambda name: self.short_title(self._hires_checkpoint(name)),
            # SDXL's size/crop conditioning and the refiner (A1111's sdxl_* and refiner options)
            conditioning=ConditioningOptions(
                crop_top=int(o.get("sdxl_crop_top", 0)), crop_left=int(o.get("sdxl_crop_left", 0)),
                high_aesthetic_score=float(o.get("sdxl_refiner_high_aesthetic_score", 6.0)),
                low_aesthetic_score=float(o.get("sdxl_refiner_low_aesthetic_score", 2.5)),
                comma_padding_backtrack=int(o.get("comma_padding_backtrack", 20)),
                sdxl_clip_l_skip=bool(o.get("sdxl_clip_l_skip", False))),
            hires_fix_refiner_pass=o.get("hires_fix_refiner_pass", "second pass"),
            refiner_switch_by_sample_steps=bool(o.get("refiner_switch_by_sample_steps", False)),
            # A1111's Compatibility switches (use_old_karras_scheduler_sigmas travels in sampler_options)
            use_old_scheduling=bool(o.get("use_old_scheduling", False)),
            use_old_hires_fix_width_height=bool(o.get("use_old_hires_fix_width_height", False)),
            hires_fix_use_firstpass_conds=bool(o.get("hires_fix_use_firstpass_conds", False)),
            img2img=Img2ImgSettings(
                color_correction=o.get("img2img_color_correction"),
                mask_weight=o.get("inpainting_mask_weight"),
                noise_multiplier=o.get("initial_noise_multiplier"),
                extra_noise=o.get("img2img_extra_noise"),
                fix_steps=o.get("img2img_fix_steps"),
                background_color=o.get("img2img_background_color"),
                max_input_pixels=o.get("img2img_max_input_pixels"),
                overlay=bool(o.get("overlay_inpaint", True)),
                upscaler=o.get("upscaler_for_img2img"),
            ),
        )

    def _run(self, kind: str, request: GenerationRequest, overrides: dict, scripts=None,
             user: str | None = None, console_prompt: bool = False) -> GenerationResult:
        """On the worker: load the request's checkpoint, generate, stamp the job's timestamp.
        With `scripts` (a script_jobs.ScriptCall) A1111's script flow runs instead. `user`: who
        asked (the job's settings get it). enable_console_prompts: the prompt of a UI job
        (`console_prompt`) is printed first; samples_log_stdout: the job's generation info after."""
        job_options = {**self.options.data, **(overrides or {})}
        # A1111 prints it in its UI's txt2img/img2img handlers only: its API's jobs print none
        if console_prompt and job_options.get("enable_console_prompts"):
            console_line(f"\n{kind}: {request.prompt}")
        self.job_user = user
        try:
            result = self._generate(kind, request, overrides, scripts)
        finally:
            self.job_user = None
        if job_options.get("samples_log_stdout"):
            console_line(json.dumps(generation_info(request, result), ensure_ascii=False, default=str))
        return result

    def _generate(self, kind: str, request: GenerationRequest, overrides: dict, scripts=None) -> GenerationResult:
        if scripts is not None and self.script_host is None and not scripts.empty:
            raise RequestError("script_name", "scripts are not available here (no script host)")
        if scripts is not None and self.script_host is not None \
                and script_jobs.wanted(self.script_host.runner_for(kind), scripts):
            result = self.script_host.run(self, kind, request, overrides, scripts)
            result.job_timestamp = self.state.job_timestamp
            return result
        info = self.resolve_checkpoint(request.checkpoint)
        model = self._load(info, remember=request.checkpoint is None, vae=(overrides or {}).get("sd_vae"),
                           overrides=overrides)
        if self.embeddings is not None:  # new or changed embedding files count from this job on (A1111)
            self.embeddings.refresh(model, announce=bool({**self.options.data, **(overrides or {})}.get(
                "textual_inversion_print_at_load")))
        restorer = face_restorers.wanted({**self.options.data, **(overrides or {})})
        hooks = None if restorer is None else face_restorers.FaceRestorationHooks(face_restorers.current(), restorer)
        observer = StateObserver(self.state, full_preview_every=self.full_preview_every(model, overrides),
                                 full_preview_grid=bool(self.options.get("show_progress_grid")))
        result = generate(request, model, self.settings_for(info, kind, overrides), observer, hooks)
        result.job_timestamp = self.state.job_timestamp
        return result

    def full_preview_every(self, model, overrides: dict | None = None) -> int | None:
        """Every how many steps a job decodes a "Full" live preview with its model's VAE (None: the
        preview method is another, previews are off, or the VAE is offloaded and
        live_preview_allow_lowvram_full is off: A1111 then shows Approx NN)."""
        o = {**self.options.data, **(overrides or {})}
        every = o.get("show_progress_every_n_steps")
        if not o.get("live_previews_enable") or o.get("show_progress_type") != "Full" or every is None or every == -1:
            return None
        memory = getattr(model, "memory", None)
        offloaded = memory is not None and memory.mode_of(model.vae) in ("medvram", "lowvram")
        if offloaded and not o.get("live_preview_allow_lowvram_full"):
            return None
        return max(1, int(every))

    def check_limits(self, request: GenerationRequest) -> None:
        """The request's size against the limits (settings max_prompt_length, max_job_pixels); raises
        a RequestError naming the field. Checked before the job is queued: a 1 MB prompt or a 16384²
        batch would hold the worker for minutes or exhaust memory."""
        longest = self.options.get("max_prompt_length") or 0
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            length = len(getattr(request, name) or "")
            if longest and length > longest:
                raise RequestError(name, f"is {length} characters long, over the limit of {longest} "
                                         "(setting max_prompt_length)")
        native = (request.width, request.height)
        if not (request.width and request.height):  # the model's size, or the init picture's (refused if too big)
            native = default_size(request) if isinstance(request, Img2ImgRequest) else self.native_size()
        width, height = request.width or native[0], request.height or native[1]
        largest = self.options.get("max_job_pixels") or 0
        if not largest:
            return
        pixels, at_fault = width * height * request.batch_size, "width"
        if request.enable_hr:
            up = hires_target_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
            hires_pixels = max(up.upscale_to[0], width) * max(up.upscale_to[1], height) * request.batch_size
            if pixels <= largest < hires_pixels:
                at_fault = "hr_resize_x" if request.hr_resize_x or request.hr_resize_y else "hr_scale"
            pixels = max(pixels, hires_pixels)
        if at_fault == "width" and request.batch_size > 1 and width * height <= largest:
            at_fault = "batch_size"
        if pixels > largest:
            raise RequestError(at_fault, f"the job is {pixels} pixels (width x height x batch size, at the hires "
                                         f"size with hires fix), over the limit of {largest} (setting max_job_pixels)")

    def submit_txt2img(self, request: GenerationRequest, task_id: str | None = None,
                       overrides: dict | None = None, scripts: ScriptCall | None = None,
                       user: str | None = None, console_prompt: bool = False) -> Future:
        """Queue a txt2img job; `overrides` are option values for this job only; `scripts` the
        scripts to run with it (None: none, not even the AlwaysVisible ones); `user`: who asks (the
        UI's logged-in user: A1111's p.user, add_user_name_to_info); `console_prompt`: a UI job,
        whose prompt enable_console_prompts prints."""
        self.check_limits(request)
        checked = self.check_overrides(overrides)
        face_restorers.check_job({**self.options.data, **checked})
        return self.queue.submit_job("txt2img", self._job(user, console_prompt), request, checked, scripts,
                                     task_id=task_id)

    def _job(self, user: str | None, console_prompt: bool = False):
        given = {**({"user": user} if user is not None else {}), **({"console_prompt": True} if console_prompt else {})}
        return functools.partial(self._run, **given) if given else self._run

    def txt2img(self, request: GenerationRequest) -> GenerationResult:
        return self.submit_txt2img(request).result()

    def submit_img2img(self, request: Img2ImgRequest, task_id: str | None = None,
                       overrides: dict | None = None, scripts: ScriptCall | None = None,
                       user: str | None = None, console_prompt: bool = False) -> Future:
        """Queue an img2img/inpainting job; results go to the img2img output folders."""
        if not isinstance(request, Img2ImgRequest):
            raise TypeError(f"submit_img2img needs an Img2ImgRequest, got {type(request).__name__}")
        self.check_limits(request)
        checked = self.check_overrides(overrides)
        face_restorers.check_job({**self.options.data, **checked})
        return self.queue.submit_job("img2img", self._job(user, console_prompt), request, checked, scripts,
                                     task_id=task_id)

    def img2img(self, request: Img2ImgRequest) -> GenerationResult:
        return self.submit_img2img(request).result()

    def uses_distilled_guidance(self) -> bool:
        """Whether the loaded model takes a distilled guidance scale (Flux dev): the UI shows its slider."""
        model = self.models.model
        return bool(model is not None and model.family.uses_distilled_guidance(model))

    def family_samplers(self) -> tuple[str, ...] | None:
        """The samplers the loaded model's family runs (None: all of A1111's)."""
        model = self.models.model
        return model.family.sampler_names if model is not None else None

    def native_size(self) -> tuple[int, int]:
        model = self.models.model
        return model.spec.native_size if model else (512, 512)


def _token_merging(o: dict, kind: str, overrides: dict) -> dict:
    """A1111's get_token_merging_ratio: img2img takes token_merging_ratio_img2img unless the request
    overrides token_merging_ratio itself; the hires pass token_merging_ratio_hr, else the first pass's."""
    ratio = float(o.get("token_merging_ratio") or 0.0)
    if kind == "img2img" and "token_merging_ratio" not in overrides:
        ratio = float(o.get("token_merging_ratio_img2img") or 0.0) or ratio
    return {"token_merging_ratio": ratio, "token_merging_ratio_hr": float(o.get("token_merging_ratio_hr") or 0.0) or ratio}


def generation_info(request: GenerationRequest, result: GenerationResult) -> dict:
    """What samples_log_stdout prints: the job's generation info under the names of A1111's
    Processed.js() (which A1111 prints), as far as the job itself knows them."""
    width, height = result.first_pass_size or (result.width, result.height)
    return {
        "prompt": request.prompt, "all_prompts": result.prompts, "negative_prompt": request.negative_prompt,
        "all_negative_prompts": result.negative_prompts, "seed": result.seeds[0] if result.seeds else request.seed,
        "all_seeds": result.seeds, "subseed": result.subseeds[0] if result.subseeds else request.subseed,
        "all_subseeds": result.subseeds, "subseed_strength": request.subseed_strength, "width": width,
        "height": height, "sampler_name": result.sampler_name, "cfg_scale": request.cfg_scale, "steps": request.steps,
        "batch_size": request.batch_size, "sd_model_name": result.model_name, "sd_model_hash": result.model_hash,
        "sd_vae_name": result.vae_name, "sd_vae_hash": result.vae_hash, "clip_skip": result.clip_skip,
        "extra_generation_params": result.extra_generation_params, "infotexts": result.infotexts,
        "job_timestamp": result.job_timestamp,
    }
