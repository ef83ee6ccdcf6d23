"""A1111's `modules.processing`: the mutable `p` extensions read and write, `process_images(p)`
and `Processed`, as a façade over the core's one `generate()`.

`process_images(p)` runs on the GPU worker (called elsewhere, it queues itself there and waits):

1. AlwaysVisible scripts' `before_process`; `p.override_settings` applied to `shared.opts` for the
   call (and to the job's settings);
2. the checkpoint loaded (`override_settings["sd_model_checkpoint"]` or the selected one), the
   size filled in when unset, `p.all_prompts` / `all_negative_prompts` / `all_seeds` /
   `all_subseeds` (and `all_hr_prompts`) set up as A1111 does, then the scripts' `process`;
3. `p` becomes a core request (GenerationRequest / Img2ImgRequest) and `generate()` runs with
   `ScriptHooks` (modules.processing_hooks), which map the core's hook points onto A1111's batch
   hooks, CFG callbacks, postprocess hooks, save callbacks and grid callback
   (modules.core.job_hooks has the order);
4. a `Processed` (grid first when there is one), then the scripts' `postprocess`.

Steps 2-4 are modules.processing_run. The core never imports these modules.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from modules import shared
from modules.core import infotext as core_infotext
from modules.core import rng as core_rng
from modules.core.types import GenerationResult
from modules.core.version import VERSION

opt_C = 4  # noqa: N816 - A1111's names
opt_f = 8


def get_fixed_seed(seed):
    """A1111's name for the core's rule: None, "", -1 or text that is not a number -> a random seed.
    Anything else (a list of seeds, as prompt matrix sets) passes through, as in A1111."""
    if seed is None or isinstance(seed, (str, int)):
        return core_rng.fix_seed(seed)
    return seed


def fix_seed(p) -> None:
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def program_version() -> str | None:
    return VERSION


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image: Any = None
    comments: dict = None

    scripts_value: Any = field(default=None, init=False)
    script_args_value: Any = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)
    sampler: Any = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    paste_to: tuple | None = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: Any = field(default=None, init=False)
    uc: Any = field(default=None, init=False)
    rng: Any = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    color_corrections: list = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    batch_index: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    user: str = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)
    clip_skip: int = field(default=None, init=False)

    def __post_init__(self):
        if self.sampler_index is not None:
            print("sampler_index argument for StableDiffusionProcessing does not do anything; use sampler_name",
                  file=sys.stderr)
        self.comments = self.comments or {}
        if self.styles is None:
            self.styles = []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or []
        self.refiner_checkpoint_info = None
        if not self.seed_enable_extras:
            self.subseed = -1
            self.subseed_strength = 0
            self.seed_resize_from_h = 0
            self.seed_resize_from_w = 0

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass  # A1111: always the loaded model

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text):
        self.comments[text] = 1

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError("Easel samples in its core; call process_images(p)")

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio_hr if for_hr else self.token_merging_ratio

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(f"Received a different number of prompts ({len(self.all_prompts)}) and negative "
                               f"prompts ({len(self.all_negative_prompts)})")
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
                                     for x in self.all_negative_prompts]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def parse_extra_network_prompts(self):
        from modules.core import extra_networks

        parsed = [extra_networks.parse_loras(x) for x in self.prompts]
        self.prompts = [text for text, _refs in parsed]
        self.extra_network_data = {"lora": [ref for ref in parsed[0][1]]} if parsed else {}
        return self.extra_network_data

    def save_samples(self) -> bool:
        state = shared.state
        return bool(shared.opts.samples_save and not self.do_not_save_samples
                    and not state.interrupted and not state.skipped)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str = None

    hr_checkpoint_info: dict = field(default=None, init=False)
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    truncate_x: int = field(default=0, init=False)
    truncate_y: int = field(default=0, init=False)
    applied_old_hires_behavior_to: tuple = field(default=None, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: Any = field(default=None, init=False)
    hr_uc: Any = field(default=None, init=False)
    all_hr_prompts: list = field(default=None, init=False)
    all_hr_negative_prompts: list = field(default=None, init=False)
    hr_prompts: list = field(default=None, init=False)
    hr_negative_prompts: list = field(default=None, init=False)
    hr_extra_network_data: list = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.firstphase_width != 0 or self.firstphase_height != 0:
            self.hr_upscale_to_x = self.width
            self.hr_upscale_to_y = self.height
            self.width = self.firstphase_width
            self.height = self.firstphase_height

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        count = len(self.all_prompts)
        self.all_hr_prompts = self.hr_prompt if isinstance(self.hr_prompt, list) else count * [self.hr_prompt]
        self.all_hr_negative_prompts = (self.hr_negative_prompt if isinstance(self.hr_negative_prompt, list)
                                        else count * [self.hr_negative_prompt])
        self.all_hr_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_hr_prompts]
        self.all_hr_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
                                        for x in self.all_hr_negative_prompts]


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Any = None
    force_task_id: str = None

    image_mask: Any = field(default=None, init=False)
    nmask: Any = field(default=None, init=False)
    image_conditioning: Any = field(default=None, init=False)
    init_img_hash: str = field(default=None, init=False)
    mask_for_overlay: Any = field(default=None, init=False)
    init_latent: Any = field(default=None, init=False)
    start_noise: Any = field(default=None, init=False)  # Easel: a script's start noise, fn(StartNoise) -> Tensor

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = shared.opts.initial_noise_multiplier

    @property
    def mask_blur(self):
        if self.mask_blur_x == self.mask_blur_y:
            return self.mask_blur_x
        return None

    @mask_blur.setter
    def mask_blur(self, value):
        if isinstance(value, int):
            self.mask_blur_x = value
            self.mask_blur_y = value


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None,
                 all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None,
                 comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = getattr(p, "face_restoration_model", None) if p.restore_faces else None
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.sd_vae_name = p.sd_vae_name
        self.sd_vae_hash = p.sd_vae_hash
        self.seed_resize_from_w = p.seed_resize_from_w
        self.seed_resize_from_h = p.seed_resize_from_h
        self.denoising_strength = getattr(p, "denoising_strength", None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles = p.styles
        self.job_timestamp = shared.state.job_timestamp
        self.clip_skip = p.clip_skip if p.clip_skip is not None else shared.opts.CLIP_stop_at_last_layers
        self.token_merging_ratio = p.token_merging_ratio
        self.token_merging_ratio_hr = p.token_merging_ratio_hr
        self.eta = p.eta
        self.ddim_discretize = p.ddim_discretize
        self.s_churn = p.s_churn
        self.s_tmin = p.s_tmin
        self.s_tmax = p.s_tmax
        self.s_noise = p.s_noise
        self.s_min_uncond = p.s_min_uncond
        self.sampler_noise_scheduler_override = getattr(p, "sampler_noise_scheduler_override", None)
        self.prompt = self.prompt if not isinstance(self.prompt, list) else self.prompt[0]
        self.negative_prompt = self.negative_prompt if not isinstance(self.negative_prompt, list) else self.negative_prompt[0]
        self.seed = int(self.seed if not isinstance(self.seed, list) else self.seed[0]) if self.seed is not None else -1
        self.subseed = (int(self.subseed if not isinstance(self.subseed, list) else self.subseed[0])
                        if self.subseed is not None else -1)
        self.is_using_inpainting_conditioning = p.is_using_inpainting_conditioning
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info]
        self.version = program_version()
        self.extra_images = []
        self.result: GenerationResult | None = None  # the core's result of the process_images call

    def js(self) -> str:
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0],
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "restore_faces": self.restore_faces,
            "face_restoration_model": self.face_restoration_model,
            "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name,
            "sd_vae_hash": self.sd_vae_hash,
            "seed_resize_from_w": self.seed_resize_from_w,
            "seed_resize_from_h": self.seed_resize_from_h,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "styles": self.styles,
            "job_timestamp": self.job_timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.is_using_inpainting_conditioning,
            "version": self.version,
        }
        return json.dumps(obj, default=str)

    def infotext(self, p: StableDiffusionProcessing, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio_hr if for_hr else self.token_merging_ratio


def _uses_step_noise(sampler_name: str, eta: float | None = None) -> bool:
    """A1111's is_sampler_using_eta_noise_seed_delta (eta: the job's, else the eta_ancestral option)."""
    from modules.core import samplers

    if eta is None:
        eta = getattr(shared.opts, "eta_ancestral", 1.0) if shared.opts is not None else 1.0
    return samplers.uses_ensd(sampler_name, 1.0 if eta is None else eta)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    """A1111's infotext of one picture of `p` (the same keys and order the core writes)."""
    from modules.core.infotext import plain_number

    if index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts or [p.negative_prompt]
    opts = shared.opts
    clip_skip = p.clip_skip if p.clip_skip is not None else opts.CLIP_stop_at_last_layers
    seed = p.all_seeds[0] if use_main_prompt else all_seeds[index]
    subseed = p.all_subseeds[0] if use_main_prompt else all_subseeds[index]
    denoising = getattr(p, "denoising_strength", None)
    if isinstance(p, StableDiffusionProcessingTxt2Img) and not p.enable_hr:
        denoising = None
    overrides = p.override_settings or {}  # the job's own values, as the core's infotext has them
    ensd = overrides.get("eta_noise_seed_delta", opts.eta_noise_seed_delta) or 0
    randn_source = overrides.get("randn_source", opts.randn_source)
    ngms = p.s_min_uncond if p.s_min_uncond is not None else overrides.get("s_min_uncond", opts.data.get("s_min_uncond"))
    params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        # the schedule type the last process_images resolved (the core writes it), else the asked one
        "Schedule type": getattr(p, "resolved_scheduler", None) or p.scheduler or None,
        "CFG scale": plain_number(p.cfg_scale),
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": seed,
        "Face restoration": (getattr(p, "face_restoration_model", None) or opts.face_restoration_model) if p.restore_faces else None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts.add_model_hash_to_info else None,
        "Model": p.sd_model_name if opts.add_model_name_to_info else None,
        "Variation seed": None if not p.subseed_strength else subseed,
        "Variation seed strength": None if not p.subseed_strength else p.subseed_strength,
        "Seed resize from": (None if (p.seed_resize_from_w or 0) <= 0 or (p.seed_resize_from_h or 0) <= 0
                             else f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"),
        "Denoising strength": denoising,
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "ENSD": ensd if ensd and _uses_step_noise(p.sampler_name, getattr(p, "eta", None)) else None,
        "RNG": randn_source if randn_source != "GPU" else None,  # A1111's default source goes unnamed
        "NGMS": ngms or None,
        "Tiling": "True" if p.tiling else None,
        **p.extra_generation_params,
        "Version": program_version() if opts.add_version_to_infotext else None,
    }
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    return core_infotext.build_infotext(prompt, negative or "", params)


# ---- running -------------------------------------------------------------------------------------

def _on_worker(engine) -> bool:
    return threading.current_thread() is getattr(engine.queue, "_thread", None)


def process_images(p: StableDiffusionProcessing) -> Processed:
    engine = shared.engine
    if engine is None:
        raise RuntimeError("process_images needs a running Easel server (modules.shared.bind was not called)")
    if not _on_worker(engine):  # another thread (an extension's route): queue it behind the others
        kind = "img2img" if isinstance(p, StableDiffusionProcessingImg2Img) else "txt2img"
        return engine.queue.submit(f"{kind} (extension)", process_images, p).result()
    if p.scripts is not None:
        p.scripts.before_process(p)
    engine.check_overrides(p.override_settings)  # the options' checks and the command line's locks, first
    stored = {k: shared.opts.data.get(k) for k in p.override_settings if k in shared.opts.data}
    try:
        for key, value in p.override_settings.items():  # visible to extensions for this call (A1111)
            if key in engine.options.defs or key in engine.options.data:
                shared.opts.data[key] = value
        return process_images_inner(p)  # looked up at call time: extensions wrap it (A1111)
    finally:
        if p.override_settings_restore_afterwards:
            for key, value in stored.items():
                shared.opts.data[key] = value


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """process_images' work after before_process and the override settings (A1111's name, which
    extensions such as ControlNet replace with a wrapper of their own)."""
    from modules import processing_run  # imports this module: imported here, at call time

    return processing_run.run(p, shared.engine)


def create_binary_mask(image, round=True):  # noqa: A002 - A1111's argument name
    """A mask picture -> "L": a picture with transparency gives its alpha channel (thresholded at
    128 to 0/255 when `round`), any other its grey values (A1111 1.6+)."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.getchannel("A")
        return alpha.point(lambda x: 255 if x > 128 else 0) if round else alpha
    return image.convert("L")


def __getattr__(name: str):
    # the request translation and result collection live in processing_run (imported late: it
    # imports this module); these names are reachable here too
    if name in ("to_request", "from_request", "collect_results", "describe_model"):
        from modules import processing_run

        return getattr(processing_run, name)
    raise AttributeError(f"module 'modules.processing' has no attribute '{name}'")


def images_tensor_to_samples(*args, **kwargs):
    raise NotImplementedError("Easel encodes images in its core (modules.core.pipeline.encode_pixels)")
