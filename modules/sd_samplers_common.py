"""A1111's `modules.sd_samplers_common`: sampler rows and the latent <-> picture helpers.

Decoding goes through the loaded model's VAE (Easel's core decodes whole batches in its pipeline;
these are for scripts that hold a latent of their own). "Approx cheap" is Easel's linear preview.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modules import shared
from modules.sd_samplers import SamplerData  # noqa: F401  (A1111 defines it here)

approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


class InterruptedException(BaseException):
    pass


def _model():
    model = shared.sd_model
    if model is None:
        raise RuntimeError("no checkpoint is loaded")
    return model


def samples_to_images_tensor(sample, approximation=None, model=None):
    """Latents (B, C, H, W) -> pictures (B, 3, H*8, W*8) in [-1, 1]."""
    if approximation == 2:
        from modules import sd_vae_approx

        return sd_vae_approx.cheap_approximation(sample).clamp(-1, 1)
    model = model or _model()
    decode = getattr(model, "decode_first_stage", None)
    if decode is None:
        raise NotImplementedError("Easel: this model does not expose decode_first_stage; pictures are decoded "
                                  "by the core pipeline (modules.core.vae)")
    with torch.no_grad():
        return decode(sample)


def single_sample_to_image(sample, approximation=None):
    x = samples_to_images_tensor(sample.unsqueeze(0), approximation)[0] * 0.5 + 0.5
    x = torch.clamp(x, 0.0, 1.0)
    x = 255.0 * np.moveaxis(x.float().cpu().numpy(), 0, 2)
    return Image.fromarray(x.astype(np.uint8))


def decode_first_stage(model, x):
    return samples_to_images_tensor(x, None, model)


def sample_to_image(samples, index=0, approximation=None):
    return single_sample_to_image(samples[index], approximation)


def samples_to_image_grid(samples, approximation=None):
    from modules import images

    return images.image_grid([single_sample_to_image(sample, approximation) for sample in samples])


def images_tensor_to_samples(image, approximation=None, model=None):
    model = model or _model()
    encode = getattr(model, "get_first_stage_encoding", None)
    if encode is None:
        raise NotImplementedError("Easel encodes pictures in its core pipeline (modules.core.vae)")
    return encode(model.encode_first_stage(image))


def store_latent(decoded):
    shared.state.current_latent = decoded


def is_sampler_using_eta_noise_seed_delta(p):
    from modules.core import samplers

    return samplers.uses_ensd(p.sampler_name, getattr(p, "eta", None) or 1.0)


def setup_img2img_steps(p, steps=None):
    """(schedule length, t_enc) for img2img, as A1111: with `img2img_fix_steps` (or `steps` given)
    the schedule is stretched so that `steps` steps run; otherwise t_enc = strength * steps."""
    strength = float(p.denoising_strength)
    if shared.opts.data.get("img2img_fix_steps") or steps is not None:
        requested = steps or p.steps
        total = int(requested / min(strength, 0.999)) if strength > 0 else 0
        return total, requested - 1
    return p.steps, int(min(strength, 0.999) * p.steps)


def apply_refiner(cfg_denoiser, sigma=None):
    """Easel switches to the refiner in its own loop (the refiner_checkpoint / refiner_switch_at fields)."""
    return False


class Sampler:
    def __init__(self, funcname):
        raise NotImplementedError("Easel's samplers run inside its own denoising loop (modules.core.denoise)")
