"""The core's job hooks (modules.core.job_hooks) as A1111's script hooks and callbacks.

`ScriptHooks(p, model)` is what `process_images(p)` hands to the core's `generate()`: the per-image
values go back and forth between the core and `p` (p.all_prompts, p.prompts, p.seeds, ... are the
truth the scripts edit), the batch hooks of the AlwaysVisible scripts run at the core's batch
points, the CFG, image-saved and grid callbacks get A1111's parameter objects. Parameter objects are
built only when someone listens, so a job without scripts pays nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modules import script_callbacks, scripts, shared
from modules.core.job_hooks import BatchValues, ImageValues, JobHooks

_SD_SIGMAS: torch.Tensor | None = None


def _sigma(t: torch.Tensor) -> torch.Tensor:
    """k-diffusion's sigma of a timestep on Stable Diffusion's training schedule (A1111's
    CFGDenoiserParams.sigma; the core's samplers work in timesteps)."""
    global _SD_SIGMAS
    if _SD_SIGMAS is None:
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1.0 - betas, dim=0)
        _SD_SIGMAS = (((1 - alphas) / alphas) ** 0.5).float()
    index = t.detach().float().cpu().round().clamp(0, 999).long()
    return _SD_SIGMAS[index].to(t.device)


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_image(sample) -> Image.Image:
    if isinstance(sample, Image.Image):
        return sample
    array = sample.detach().float().cpu().clamp(0, 1).numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, 2)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)


def _builtin_lora_networks():
    """A1111's built-in Lora extension's ``networks`` module (extensions-builtin/Lora, importable once the
    scripts are loaded), or None."""
    try:
        import networks
    except ImportError:
        return None
    return networks if hasattr(networks, "set_loaded") else None


class ScriptHooks(JobHooks):
    """The core's hook points as A1111's script hooks and callbacks, on one `p`."""

    def __init__(self, p, model):
        self.p = p
        self.runner = p.scripts
        self.model = model
        self.values: ImageValues | None = None

    # per-image values: p's lists are the truth; the core's are refreshed from them after each hook
    def _sync_job(self) -> None:
        p, v = self.p, self.values
        v.prompts, v.negative_prompts = list(p.all_prompts), list(p.all_negative_prompts)
        v.seeds, v.subseeds = [int(s) for s in p.all_seeds], [int(s) for s in p.all_subseeds]
        if v.hr_prompts is not None and getattr(p, "all_hr_prompts", None) is not None:
            v.hr_prompts, v.hr_negative_prompts = list(p.all_hr_prompts), list(p.all_hr_negative_prompts)

    def _to_p(self, b: BatchValues) -> None:
        p = self.p
        p.iteration = b.index
        p.prompts, p.negative_prompts, p.seeds, p.subseeds = b.prompts, b.negative_prompts, b.seeds, b.subseeds
        if b.hr_prompts is not None:
            p.hr_prompts, p.hr_negative_prompts = b.hr_prompts, b.hr_negative_prompts

    def _from_p(self, b: BatchValues) -> None:
        p = self.p
        b.prompts, b.negative_prompts = list(p.prompts), list(p.negative_prompts)
        b.seeds, b.subseeds = [int(s) for s in p.seeds], [int(s) for s in p.subseeds]
        if b.hr_prompts is not None and p.hr_prompts is not None:
            b.hr_prompts, b.hr_negative_prompts = list(p.hr_prompts), list(p.hr_negative_prompts)
        self._sync_job()

    def _kw(self, b: BatchValues) -> dict:
        p = self.p
        return {"batch_number": b.index, "prompts": p.prompts, "seeds": p.seeds, "subseeds": p.subseeds}

    def job_started(self, values: ImageValues) -> None:
        self.values = values
        self._sync_job()

    def batch_started(self, b: BatchValues) -> None:
        self._to_p(b)
        if self.runner is not None:
            self.runner.before_process_batch(self.p, **self._kw(b))
        self._activate_extra_networks()  # with the tags still in the prompts (A1111's order)
        self._from_p(b)

    def batch_conditioning(self, b: BatchValues) -> None:
        self._to_p(b)
        if self.runner is not None:
            self.runner.process_batch(self.p, **self._kw(b))
        self._from_p(b)

    def _activate_extra_networks(self) -> None:
        """The network types extensions registered (modules.extra_networks), activated with the
        batch's tags as A1111 does before process_batch; Easel's own LoRA/hypernet are its engine's."""
        from modules import extra_networks

        p = self.p
        networks = _builtin_lora_networks()
        if networks is not None:  # A1111's loaded_networks: the batch's LoRAs as its tags give them
            from modules.core.extra_networks import parse_loras

            networks.set_loaded(parse_loras(p.prompts[0])[1] if p.prompts else [])
        if getattr(p, "disable_extra_networks", False) or not extra_networks.extra_network_registry:
            return
        _, p.extra_network_data = extra_networks.parse_prompts(list(p.prompts))
        extra_networks.activate(p, p.extra_network_data, builtin=False)
        p.extra_networks_activated = True

    def deactivate_extra_networks(self) -> None:
        from modules import extra_networks

        if getattr(self.p, "extra_networks_activated", False):
            extra_networks.deactivate(self.p, getattr(self.p, "extra_network_data", None), builtin=False)
            self.p.extra_networks_activated = False

    # CFG callbacks (only built when someone listens)
    def cfg_denoiser(self, step, x, t, cond, uncond) -> None:
        if not script_callbacks.has("callbacks_cfg_denoiser"):
            return
        sdxl = "text_embeds" in cond
        text_cond = {"crossattn": cond["context"], "vector": cond["text_embeds"]} if sdxl else cond["context"]
        text_uncond = None
        if uncond is not None:
            text_uncond = {"crossattn": uncond["context"], "vector": uncond["text_embeds"]} if sdxl else uncond["context"]
        state = shared.state
        params = script_callbacks.CFGDenoiserParams(x, cond.get("c_concat"), _sigma(t), step, state.sampling_steps,
                                                    text_cond, text_uncond, denoiser=None)
        script_callbacks.cfg_denoiser_callback(params)
        if params.x is not x:  # A1111 lets a callback assign a new tensor
            x.copy_(params.x)
        _put_back(cond, text_cond, params.text_cond)
        if uncond is not None:
            _put_back(uncond, text_uncond, params.text_uncond)

    def cfg_denoised(self, step, x_pred) -> None:
        if not script_callbacks.has("callbacks_cfg_denoised"):
            return
        params = script_callbacks.CFGDenoisedParams(x_pred, step, shared.state.sampling_steps, self.model)
        script_callbacks.cfg_denoised_callback(params)
        if params.x is not x_pred:
            x_pred.copy_(params.x)

    def cfg_after_cfg(self, step, x_pred):
        if not script_callbacks.has("callbacks_cfg_after_cfg"):
            return x_pred
        params = script_callbacks.AfterCFGCallbackParams(x_pred, step, shared.state.sampling_steps)
        script_callbacks.cfg_after_cfg_callback(params)
        return params.x

    def extra_noise(self, noise, init_latents, noised):
        if not script_callbacks.has("callbacks_extra_noise"):
            return noise
        params = script_callbacks.ExtraNoiseParams(noise, init_latents, noised)
        script_callbacks.extra_noise_callback(params)
        return params.noise

    def start_noise(self, b: BatchValues, start):
        """A script's own start noise: ``p.start_noise(start)`` (Easel's hook point for what A1111's
        scripts did by replacing ``p.sample``, e.g. the img2img alternative test)."""
        given = getattr(self.p, "start_noise", None)
        if given is None:
            return start.noise
        noise = given(start)
        if not isinstance(noise, torch.Tensor) or noise.shape != start.noise.shape:
            raise ValueError(f"p.start_noise must return a tensor of shape {tuple(start.noise.shape)}")
        return noise.to(start.noise.device, start.noise.dtype)

    def mask_blend(self, current, generate, init, blended, final):
        if self.runner is None or not self.runner.has_hook("on_mask_blend"):
            return blended
        # A1111's names: mask = the kept area (1 - generate), nmask = the sampled area
        mba = scripts.MaskBlendArgs(current, generate, init, 1.0 - generate, blended,
                                    denoiser=None if final else self, sigma=None)
        self.runner.on_mask_blend(self.p, mba)
        return mba.blended_latent

    def before_hires(self, b: BatchValues) -> None:
        if self.runner is not None:
            self._to_p(b)
            self.runner.before_hr(self.p)

    def batch_sampled(self, b: BatchValues, latents):
        if self.runner is None or not self.runner.has_hook("post_sample"):
            return latents
        self._to_p(b)
        ps = scripts.PostSampleArgs(latents)
        self.runner.post_sample(self.p, ps)
        return ps.samples

    def batch_decoded(self, b: BatchValues, images: list[Image.Image]) -> list[Image.Image]:
        p, runner = self.p, self.runner
        self._to_p(b)
        if runner is None or not (runner.has_hook("postprocess_batch") or runner.has_hook("postprocess_batch_list")):
            return images
        samples = _to_tensor(images)
        before = samples.clone()
        runner.postprocess_batch(p, samples, batch_number=b.index)
        lo = b.index * p.batch_size
        p.prompts = p.all_prompts[lo:lo + p.batch_size]
        p.negative_prompts = p.all_negative_prompts[lo:lo + p.batch_size]
        batch_params = scripts.PostprocessBatchListArgs(list(samples))
        runner.postprocess_batch_list(p, batch_params, batch_number=b.index)
        self._from_p(b)
        if len(batch_params.images) == len(images) and all(
                isinstance(s, torch.Tensor) and s.shape == before[i].shape and torch.equal(s, before[i])
                for i, s in enumerate(batch_params.images)):
            return images  # untouched: the decoded pictures themselves, bit for bit
        return [_to_image(s) for s in batch_params.images]

    def restores_faces(self) -> bool:
        return bool(self.p.restore_faces)

    def image_ready(self, b: BatchValues, position: int, image: Image.Image) -> Image.Image:
        if self.p.restore_faces:  # A1111: faces first, then the scripts' postprocess_image
            from modules.services import face_restorers

            name = getattr(self.p, "face_restoration_model", None) or "CodeFormer"
            image = face_restorers.current().restore(image, name)
        if self.runner is None:
            return image
        self.p.batch_index = position
        pp = scripts.PostprocessImageArgs(image)
        self.runner.postprocess_image(self.p, pp)
        return pp.image

    def mask_overlay(self, b: BatchValues, position: int, overlay: Image.Image, mask: Image.Image):
        if self.runner is None or not self.runner.has_hook("postprocess_maskoverlay"):
            return overlay, mask
        self.p.batch_index = position
        ppmo = scripts.PostProcessMaskOverlayArgs(position, mask, overlay)
        self.runner.postprocess_maskoverlay(self.p, ppmo)
        return ppmo.overlay_image, ppmo.mask_for_overlay

    def image_composited(self, b: BatchValues, position: int, image: Image.Image) -> Image.Image:
        if self.runner is None or not self.runner.has_hook("postprocess_image_after_composite"):
            return image
        self.p.batch_index = position
        pp = scripts.PostprocessImageArgs(image)
        self.runner.postprocess_image_after_composite(self.p, pp)
        return pp.image

    def extra_params(self) -> dict:
        if self.p.restore_faces:
            name = getattr(self.p, "face_restoration_model", None) or "CodeFormer"
            return {"Face restoration": name, **self.p.extra_generation_params}
        return self.p.extra_generation_params

    def before_save(self, image, infotext, path, is_grid):
        if not script_callbacks.has("callbacks_before_image_saved"):
            return image, infotext
        params = script_callbacks.ImageSaveParams(image, self.p, str(path), {"parameters": infotext})
        script_callbacks.before_image_saved_callback(params)
        text = params.pnginfo.get("parameters", infotext) if isinstance(params.pnginfo, dict) else infotext
        return params.image, text

    def after_save(self, image, infotext, path, is_grid) -> None:
        if not script_callbacks.has("callbacks_image_saved"):
            return
        params = script_callbacks.ImageSaveParams(image, self.p, str(path), {"parameters": infotext})
        script_callbacks.image_saved_callback(params)

    def grid(self, images, rows, cols):
        params = script_callbacks.ImageGridLoopParams(images, cols, rows)
        script_callbacks.image_grid_callback(params)
        return list(params.imgs), int(params.rows), int(params.cols)


def _put_back(cond: dict, original, given) -> None:
    """A callback that assigned new text conditioning: the model sees it."""
    if given is original:
        return
    if isinstance(given, dict):
        if given.get("crossattn") is not None:
            cond["context"] = given["crossattn"]
        if given.get("vector") is not None and "text_embeds" in cond:
            cond["text_embeds"] = given["vector"]
    elif isinstance(given, torch.Tensor):
        cond["context"] = given


