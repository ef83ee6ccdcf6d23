"""The hooks a job hands to the sampling loop (modules.core.denoise.DenoiseHooks) for each pass."""

from __future__ import annotations

from . import denoise, model_ops
from .job_hooks import JobHooks
from .job_settings import JobObserver


class LoopHooks(denoise.DenoiseHooks):
    """The sampling loop's hooks for one pass: progress and stop requests to the job's observer, a
    "Full" live preview decoded with the model's own VAE when due (on the job's thread), the layer
    above's CFG hooks (A1111's on_cfg_* callbacks) and img2img's inpainting blend."""

    def __init__(self, observer: JobObserver, job_hooks: JobHooks | None = None, preview_model=None):
        self.observer = observer
        self.job_hooks = job_hooks  # the layer above's CFG hooks (A1111's on_cfg_* callbacks)
        self.stopped = False
        self.blend = None  # img2img inpainting: keeps the unmasked area on the init image's path
        self.preview_model = preview_model  # whose VAE decodes a "Full" live preview

    def cfg_denoiser(self, step, x, t, cond, uncond):
        if self.job_hooks is not None:
            self.job_hooks.cfg_denoiser(step, x, t, cond, uncond)

    def cfg_denoised(self, step, x_pred):
        if self.job_hooks is not None:
            self.job_hooks.cfg_denoised(step, x_pred)

    def cfg_after_cfg(self, step, x_pred):
        return x_pred if self.job_hooks is None else self.job_hooks.cfg_after_cfg(step, x_pred)

    def extra_noise(self, noise, init_latents, noised):
        return noise if self.job_hooks is None else self.job_hooks.extra_noise(noise, init_latents, noised)

    def after_step(self, step, next_timestep, latents):
        return latents if self.blend is None else self.blend(step, next_timestep, latents)

    def step_end(self, step, total, latents, denoised):
        self.observer.on_step(step, total, latents, denoised)
        if self.preview_model is not None and self.observer.full_preview_due(step):
            shown = denoised if denoised is not None else latents
            rows = shown if self.observer.full_preview_all_rows else shown[:1]
            self.observer.on_full_preview(model_ops.decode_latents(self.preview_model, rows))

    def should_stop(self) -> bool:
        if self.observer.interrupted() or self.observer.skipped():
            self.stopped = True
        return self.stopped
