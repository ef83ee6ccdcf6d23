"""ControlNet units applied while sampling, as sd-webui-controlnet applies them.

A job's units (:class:`ControlUnit`: a built ControlNet, the preprocessed map, weight, guidance
range, control and resize modes) make a :class:`ControlJob`, which the layer above puts in the job's
``GenerationSettings.control``. Every sampling pass (the first one, the hires one) asks it for the
pass's :class:`UnetResiduals` (``for_pass``): the map fitted to the pass's size, then at each model
call the ControlNets' residuals, summed over the units, for the UNet's
``down_block_additional_residuals`` / ``mid_block_additional_residual``.

The extension's rules, kept here:

- **guidance range**: a unit acts while ``step / total`` (the loop's iteration over its iterations,
  A1111's sampling_step / total_sampling_steps) is within ``[guidance_start, guidance_end]``;
- **control modes**: "Balanced" scales every residual by the weight; "My prompt is more important"
  scales them by ``weight * 0.825 ** (12 - i)`` (soft injection: the shallow ones least); "ControlNet
  is more important" does that too and applies the residuals to the conditional rows only
  (classifier-free guidance then amplifies the control: CFG injection). The rows are told apart by
  the ``control_mark`` entry this module adds to the cond dicts (1 conditional, 0 unconditional);
- **resize modes** of the map: "Just Resize" stretches, "Crop and Resize" fills and crops the centre,
  "Resize and Fill" fits inside and fills the borders with the map's median border colour (an
  inpaint map's borders masked: they are generated, outpainting);
- **hires fix** (``hr_option``): with a hires pass, a unit acts in "Both", only the first pass ("Low
  res only") or only the hires one ("High res only"); a pass is the hires one when its size is nearer
  the hires size than the first size (the extension's rule). Without a hires pass every unit acts;
- **tile_colorfix** (``modules.core.controlnet_colorfix``): after the UNet, the prediction's low
  frequencies are taken from the control picture's latents (``finish``, once per model call);
- **inpaint maps** (``inpaint_only``, ``inpaint``): RGBA, the hint is ``rgb * (1 - mask) - mask`` (masked pixels -1);
- **recolor** (``recolor_luminance`` / ``recolor_intensity``): after decoding, the picture's Lab
  lightness / HSV value is replaced by the unit's gray map fitted to the picture (``recolor``);
- **T2I-Adapters** (``modules.core.t2i_adapter``): a unit whose model is an adapter gives, once per pass,
  features for the UNet's ``down_intrablock_additional_residuals``, summed over the adapter units and
  given beside the ControlNets' residuals, under the same guidance range and control modes;
- **IP-Adapters** (``modules.core.ip_adapter``): a unit whose model is an IP-Adapter carries its picture's
  image tokens (``image_tokens``: conditional, unconditional); while it is inside its guidance range the
  UNet's cross-attention layers get them, scaled by the weight, for the one model call (the
  unconditional rows the unconditional tokens); the UNet's own processors are back after each call;
- **Revision** (``revision_clipvision``, ``revision_ignore_prompt``; SDXL only, no model): a unit whose
  ``controlnet`` is a :class:`Revision` carries its picture's CLIP-G image embedding, noise-augmented
  once (the Noise Augmentation slider as the q_sample timestep of a linear 1e-4..2e-2 schedule). While
  such units act, the conditional rows' pooled embedding (SDXL's ``text_embeds``, the first 1280 of
  ``y``) is the sum of their weighted embeddings and the unconditional rows' is zero; with a
  ``revision_ignore_prompt`` unit in the job (or both prompts empty: ``ControlJob.empty_prompts``) the
  text context of every row is zero too (``UnetResiduals.mark``);
- **Reference** (``modules.core.controlnet_reference``): a unit with no model whose ``controlnet`` is a
  ``Reference`` (reference_only, reference_adain, reference_adain+attn): while it acts, its picture's
  noised latents go through the UNet before each model call and the call's self-attention / block
  statistics read them; the UNet's own processors are back after each call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from . import controlnet_colorfix, controlnet_reference, ip_adapter, t2i_adapter
from .controlnet_colorfix import ColorFix
from .controlnet_model import ControlNetFile
from .controlnet_reference import Reference
from .ip_adapter import IPAdapterFile
from .sigma_schedules import TrainingSigmas
from .t2i_adapter import AdapterFile
from .types import RequestError

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
HR_OPTIONS = ("Both", "Low res only", "High res only")  # the extension's HiResFixOption values
MARK = "control_mark"  # the cond dicts' entry telling conditional rows (1) from unconditional ones (0)
SOFT_INJECTION_BASE = 0.825  # the extension's per-block factor for the prompt-first modes


REVISION = ("revision_clipvision", "revision_ignore_prompt")


@dataclass
class Revision:
    """A Revision unit's model-free "controlnet": its module and the noise-augmented CLIP-G image
    embedding (1, width) of its picture (``revision_embedding``)."""

    module: str
    embedding: torch.Tensor

    @property
    def ignore_prompt(self) -> bool:
        return "ignore_prompt" in self.module


def revision_alphas_cumprod() -> np.ndarray:
    """The extension's revision q_sampler schedule: linear betas (sqrt-spaced) 1e-4 .. 2e-2 over 1000 steps."""
    betas = np.linspace(1e-4 ** 0.5, 2e-2 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def revision_pixels(picture: np.ndarray, size: int) -> torch.Tensor:
    """(1, 3, size, size): the extension's CLIP detector input: the picture squeezed to size x size
    (cv2 INTER_AREA, no crop), [0, 1], CLIP's mean and std."""
    from .ip_adapter import CLIP_MEAN, CLIP_STD

    squeezed = cv2.resize(np.ascontiguousarray(picture[:, :, :3]), (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(squeezed.astype(np.float32) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1))[None]


@torch.no_grad()
def revision_embedding(clip, picture: np.ndarray, noise_augmentation: float,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
    """The picture's CLIP image embedding (``image_embeds``, (1, projection width), float32 on the CPU),
    q-sampled at timestep ``int(noise_augmentation * 1000)`` (clipped to 0..999): sqrt(a) e + sqrt(1 - a)
    noise (``noise``: standard normal, drawn when not given), as the extension does once per unit."""
    param = next(clip.parameters())
    pixels = revision_pixels(picture, clip.config.image_size).to(param.device, param.dtype)
    embeds = clip(pixel_values=pixels).image_embeds.float().cpu()
    a = float(revision_alphas_cumprod()[min(max(int(noise_augmentation * 1000), 0), 999)])
    noise = torch.randn_like(embeds) if noise is None else noise.to(embeds)
    return np.float32(a ** 0.5) * embeds + np.float32((1 - a) ** 0.5) * noise


@dataclass
class ControlUnit:
    """One enabled unit, ready to run: its ControlNet or T2I-Adapter (on the device), the preprocessed
    map (H, W, 3 uint8, or H, W, 4 with the inpaint mask as alpha) and the extension's parameters."""

    controlnet: ControlNetFile | AdapterFile | IPAdapterFile | Reference | Revision
    detected_map: np.ndarray
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    resize_mode: str = "Crop and Resize"
    name: str = "ControlNet 0"  # for messages
    hr_option: str = "Both"
    colorfix: ColorFix | None = None  # tile_colorfix(+sharp)'s fix of the output's colours
    image_tokens: tuple[torch.Tensor, torch.Tensor] | None = None  # an IP-Adapter's (cond, uncond) tokens
    # inpaint_only+lama: the job's first noise carries the filled picture (the extension's HackedImageRNG)
    noise_from_map: bool = False

    def __post_init__(self):
        if self.control_mode not in CONTROL_MODES:
            raise RequestError("alwayson_scripts", f"{self.name}: unknown control_mode {self.control_mode!r}; "
                                                   f"known: {', '.join(CONTROL_MODES)}")
        if self.resize_mode not in RESIZE_MODES:
            raise RequestError("alwayson_scripts", f"{self.name}: unknown resize_mode {self.resize_mode!r}; "
                                                   f"known: {', '.join(RESIZE_MODES)}")
        if self.hr_option not in HR_OPTIONS:
            raise RequestError("alwayson_scripts", f"{self.name}: unknown hr_option {self.hr_option!r}; "
                                                   f"known: {', '.join(HR_OPTIONS)}")
        if not 0.0 <= self.guidance_start <= self.guidance_end <= 1.0:
            raise RequestError("alwayson_scripts", f"{self.name}: guidance_start ({self.guidance_start}) must be "
                                                   f"<= guidance_end ({self.guidance_end}), both within [0, 1]")
        if self.detected_map.ndim != 3 or self.detected_map.shape[2] not in (3, 4):
            raise RequestError("alwayson_scripts", f"{self.name}: the control map must be (H, W, 3 or 4)")

    def scales(self, count: int) -> list[float]:
        """The factor of each of the ControlNet's ``count`` outputs (the down ones, then the middle), or
        of the T2I-Adapter's ``count`` features."""
        if isinstance(self.controlnet, AdapterFile):
            return t2i_adapter.scales(self.weight, self.control_mode, count)
        if self.control_mode == "Balanced":
            return [self.weight] * count
        soft = [self.weight * SOFT_INJECTION_BASE ** float(12 - i) for i in range(13)]
        return (soft + [self.weight] * count)[:count]  # SDXL's 10: the first ten, as the extension

    def in_pass(self, hires: bool) -> bool:
        """Whether the unit acts in the first pass (``hires`` False) or the hires one."""
        return self.hr_option == "Both" or (self.hr_option == "High res only") == hires

    def active(self, fraction: float) -> bool:
        return self.in_range(fraction) and self.weight != 0

    def in_range(self, fraction: float) -> bool:
        return self.guidance_start <= fraction <= self.guidance_end


def fit_map(detected: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """The map at (height, width) by the extension's resize modes."""
    h, w = detected.shape[:2]
    if mode == "Just Resize":
        return _resize(detected, width, height)
    k = (max if mode == "Crop and Resize" else min)(height / h, width / w)
    new_w, new_h = max(1, int(round(w * k))), max(1, int(round(h * k)))
    resized = _resize(detected, new_w, new_h)
    if mode == "Crop and Resize":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(resized[top:top + height, left:left + width])
    borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
    out = np.empty((height, width, detected.shape[2]), dtype=detected.dtype)
    out[:] = np.median(borders, axis=0).astype(detected.dtype)
    if detected.shape[2] == 4:  # an inpaint map: the filled borders are to generate (the extension's inpaint hijack)
        out[:, :, 3] = 255
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrink = width * height < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out if out.ndim == 3 else out[:, :, None]


RECOLOR = {"recolor_luminance": "luminance", "recolor_intensity": "intensity"}  # module -> the channel kept


def recolor_feed(fitted: np.ndarray) -> np.ndarray:
    """The gray channel (H, W) uint8 the recolor finish writes: the fitted map's first channel through
    the extension's float round trip (/ 255 as the control tensor, * 255 back, truncated)."""
    x = fitted[:, :, 0].astype(np.float32) / np.float32(255.0)
    return (x * np.float32(255.0)).clip(0, 255).astype(np.uint8)


def recolor(picture: np.ndarray, feed: np.ndarray, kind: str) -> np.ndarray:
    """The extension's recolor post-processing of a decoded picture ((H, W, 3) float in [0, 1]): to
    uint8, its Lab L (``luminance``) or HSV V (``intensity``) replaced by ``feed`` ((H, W) uint8 at the
    picture's size), back to RGB in [0, 1]. A size mismatch leaves the picture as it is (the extension
    logs and skips)."""
    if kind not in ("luminance", "intensity"):
        raise ValueError(f"unknown recolor kind {kind!r}")
    if picture.shape[:2] != feed.shape[:2] or picture.ndim != 3 or picture.shape[2] != 3:
        return picture
    h = (np.asarray(picture, dtype=np.float32) * 255).clip(0, 255).astype(np.uint8)
    to, back, channel = (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0) if kind == "luminance" \
        else (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2)
    h = cv2.cvtColor(h, to)
    h[:, :, channel] = feed
    return (cv2.cvtColor(h, back).astype(np.float32) / 255.0).clip(0, 1)


def hint_tensor(fitted: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] (an inpaint map: masked pixels at -1), as the ControlNet reads it."""
    x = torch.from_numpy(np.array(fitted, dtype=np.float32)).div(255.0).permute(2, 0, 1)[None]
    if x.shape[1] == 4:
        rgb, mask = x[:, :3], (x[:, 3:4] > 0.5).float()
        x = rgb * (1 - mask) - mask
    return x


@dataclass
class ControlJob:
    """A job's units; ``for_pass`` makes each sampling pass's residual provider. ``first_height`` and
    ``hires_height``: the first pass's and the hires pass's picture heights when the job has a hires
    pass (the units' ``hr_option`` then picks the passes they act in)."""

    units: list[ControlUnit] = field(default_factory=list)
    first_height: int | None = None
    hires_height: int | None = None
    empty_prompts: bool = False  # the job's prompt and negative prompt are both empty (Revision's rule)

    def is_hires(self, height: int) -> bool:
        """The extension's rule: the pass is the hires one unless its size is nearer the first size."""
        if self.first_height is None or self.hires_height is None:
            return False
        return not abs(height - self.first_height) < abs(height - self.hires_height)

    def initial_noise(self, model, noise: torch.Tensor, encode) -> torch.Tensor:
        """The first pass's starting noise as sd-webui-controlnet makes it for ``inpaint_only+lama``: the
        VAE latents x0 of the unit's filled picture (its map's colours, fitted to the pass's size; the last
        such unit's) mixed in as the diffusion's q_sample at the last training timestep,
        sqrt(a_999) x0 + sqrt(1 - a_999) noise (about 7 % of the picture for SD). Not in the hires pass,
        whose size differs (the extension's check of the shapes). ``encode``: pixels in [-1, 1] -> the
        model's scaled latents. Other jobs: ``noise`` as it is."""
        units = [u for u in self.units if u.noise_from_map]
        if not units:
            return noise
        height, width = noise.shape[-2] * model.latent_scale, noise.shape[-1] * model.latent_scale
        if self.is_hires(height):
            return noise
        picture = fit_map(units[-1].detected_map, width, height, units[-1].resize_mode)[..., :3]
        pixels = torch.from_numpy(np.array(picture, dtype=np.float32)).div(127.5).sub(1.0).permute(2, 0, 1)[None]
        x0 = encode(pixels).to(noise.device, noise.dtype)
        a = TrainingSigmas.from_config(rescale_betas_zero_snr=bool(model.spec.zero_terminal_snr)).alphas_cumprod[999]
        return float(a) ** 0.5 * x0 + float(1 - a) ** 0.5 * noise

    def for_pass(self, model, latent_shape: tuple[int, ...]) -> "UnetResiduals | None":
        height, width = latent_shape[-2] * model.latent_scale, latent_shape[-1] * model.latent_scale
        hires = self.is_hires(height)  # without a hires pass every unit acts, whatever its hr_option
        units = [u for u in self.units if self.hires_height is None or u.in_pass(hires)]
        if not units:
            return None
        family = model.spec.family
        adapters = any(isinstance(u.controlnet, AdapterFile) for u in units)
        slots = t2i_adapter.injection_slots(model.unet, latent_shape[-2], latent_shape[-1]) if adapters else []
        for unit in units:
            cn = unit.controlnet
            if isinstance(cn, Revision):
                if family != "sdxl":
                    raise RequestError("alwayson_scripts", f"{unit.name}: Preprocessor 'revision' only supports "
                                                           f"SDXL, the checkpoint is {model.spec.label}")
            elif isinstance(cn, Reference):
                if family not in ("sd1", "sd2", "sdxl"):
                    raise RequestError("alwayson_scripts", f"{unit.name}: {cn.module} runs on SD 1.x, 2.x and "
                                                           f"SDXL models only, the checkpoint is {model.spec.label}")
            elif isinstance(cn, IPAdapterFile):
                problem = "IP-Adapters run on SD 1.x and SDXL models only" if family not in ("sd1", "sdxl") \
                    else ip_adapter.check_fits(cn, model.unet)
                if problem:
                    raise RequestError("alwayson_scripts",
                                       f"{unit.name}: {problem}, the checkpoint is {model.spec.label}")
            elif isinstance(cn, AdapterFile):
                problem = t2i_adapter.check_fits(cn, family, slots)
                if problem:
                    raise RequestError("alwayson_scripts",
                                       f"{unit.name}: {problem}, the checkpoint is {model.spec.label}")
            elif cn.family != family or cn.cross_attention_dim != model.spec.unet_config.get("cross_attention_dim"):
                raise RequestError("alwayson_scripts", f"{unit.name}: the ControlNet '{cn.path.name}' is for "
                                                       f"{cn.family.upper()} models, the checkpoint is {model.spec.label}")
        if any(u.colorfix for u in units) and model.spec.prediction_type not in ("epsilon", "v_prediction"):
            raise RequestError("alwayson_scripts", f"tile_colorfix needs an SD 1.x, 2.x or XL model, "
                                                   f"the checkpoint is {model.spec.label}")
        return UnetResiduals(model, units, width, height, slots, hires=hires, empty_prompts=self.empty_prompts)


class UnetResiduals:
    """One pass's ControlNet residuals and T2I-Adapter features: ``at_step`` before each iteration,
    ``mark`` on the cond dicts, then called with the UNet's inputs; returns the UNet's extra keyword
    arguments. ``slots``: where the UNet adds adapter features (``t2i_adapter.injection_slots``)."""

    def __init__(self, model, units: list[ControlUnit], width: int, height: int,
                 slots: list[tuple[int, tuple[int, int]]] | None = None, hires: bool = False,
                 empty_prompts: bool = False):
        self.model = model
        self.revision = [u for u in units if isinstance(u.controlnet, Revision)]
        self.empty_prompts = empty_prompts
        self.dtype = model.policy.unet_dtype
        self.units = units
        self.hints = [hint_tensor(fit_map(u.detected_map, width, height, u.resize_mode)).to(model.device, self.dtype)
                      for u in units]
        self.slots = slots if slots is not None else t2i_adapter.injection_slots(
            model.unet, height // model.latent_scale, width // model.latent_scale) \
            if any(isinstance(u.controlnet, AdapterFile) for u in units) else []
        self.features: dict[int, list[torch.Tensor]] = {}  # unit index -> its adapter's features (the map is fixed)
        self.fraction = 0.0
        self.hires = hires
        self.picture_latents: dict[int, torch.Tensor] = {}  # unit index -> its map's latents (tile_colorfix)
        self.alphas_cumprod: torch.Tensor | None = None
        self.ip_units = [u for u in units if isinstance(u.controlnet, IPAdapterFile)]
        self.injection = ip_adapter.Injection(model.unet, [u.controlnet for u in self.ip_units]) \
            if self.ip_units else None
        self.reference = controlnet_reference.ReferenceHooks(model, hires) \
            if any(isinstance(u.controlnet, Reference) for u in units) else None

    def finish(self, x: torch.Tensor, t: torch.Tensor, cond: dict, out: torch.Tensor) -> torch.Tensor:
        """The model's prediction after the units' output-side fixes (tile_colorfix); ``out`` as it is
        when no unit has one. The IP-Adapters' processors leave the UNet here, after each model call."""
        if self.injection is not None:
            self.injection.detach()
        if self.reference is not None:
            self.reference.remove()
        for index, (unit, hint) in enumerate(zip(self.units, self.hints)):
            if unit.colorfix is None:
                continue
            if index not in self.picture_latents:
                from . import model_ops  # here: it loads the model stack, which this module need not

                self.picture_latents[index] = model_ops.encode_pixels(self.model, hint[:, :3].float() * 2 - 1)
                if self.alphas_cumprod is None:
                    self.alphas_cumprod = TrainingSigmas.from_config(
                        rescale_betas_zero_snr=bool(self.model.spec.zero_terminal_snr)).alphas_cumprod
            out = controlnet_colorfix.apply(unit.colorfix, out, x, t, self.alphas_cumprod,
                                            self.model.spec.prediction_type, self.picture_latents[index],
                                            unit.weight, self.hires, cond.get(MARK))
        return out

    def at_step(self, step: int, total: int) -> None:
        self.fraction = step / max(total, 1)

    def mark(self, cond: dict, uncond: dict | None) -> tuple[dict, dict | None]:
        """The cond dicts with their ``control_mark``, and the Revision units' pooled embedding (and the
        zeroed context) while one is inside its guidance range."""
        def marked(d: dict, value: float) -> dict:
            rows = d["context"].shape[0]
            return {**d, MARK: torch.full((rows,), value, device=d["context"].device)}

        cond, uncond = marked(cond, 1.0), (marked(uncond, 0.0) if uncond is not None else None)
        acting = [u for u in self.revision if u.in_range(self.fraction)]  # the weight scales, even 0
        if not acting:
            return cond, uncond
        pooled = cond["text_embeds"]
        total = sum(u.controlnet.embedding * u.weight for u in acting)
        if total.shape[-1] != pooled.shape[-1]:
            raise RequestError("alwayson_scripts", f"{acting[0].name}: the CLIP vision embedding has width "
                                                   f"{total.shape[-1]}, the checkpoint's pooled embedding "
                                                   f"{pooled.shape[-1]} (Revision needs CLIP-G, clip_g.pth)")
        blank = self.empty_prompts or any(u.controlnet.ignore_prompt for u in self.revision)

        def revised(d: dict, positive: bool) -> dict:
            rows = d["text_embeds"].shape[0]
            embeds = total.to(d["text_embeds"]).expand(rows, -1) if positive else torch.zeros_like(d["text_embeds"])
            out = {**d, "text_embeds": embeds}
            if blank:
                out["context"] = torch.zeros_like(d["context"])
            return out

        return revised(cond, True), (revised(uncond, False) if uncond is not None else None)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
        down_sum: list[torch.Tensor] | None = None
        mid_sum: torch.Tensor | None = None
        family = self.model.family
        intrablock: list[torch.Tensor] | None = None
        for index, (unit, hint) in enumerate(zip(self.units, self.hints)):
            if not unit.active(self.fraction) or isinstance(unit.controlnet, (IPAdapterFile, Reference, Revision)):
                continue
            if isinstance(unit.controlnet, AdapterFile):
                outs = self._adapter(index, unit, hint, cond, x.shape[0])
                intrablock = outs if intrablock is None else [a + b for a, b in zip(intrablock, outs)]
                continue
            module = unit.controlnet.module
            dtype = next(module.parameters()).dtype  # the ControlNet's own (the UNet's when built for it)
            down, mid = module(
                x.to(dtype), t, encoder_hidden_states=cond["context"].to(dtype),
                controlnet_cond=hint.to(dtype).expand(x.shape[0], -1, -1, -1),
                added_cond_kwargs=family.added_cond(cond, dtype), return_dict=False)
            outs = [o.to(self.dtype) * s for o, s in zip((*down, mid), unit.scales(len(down) + 1))]
            if unit.control_mode == "ControlNet is more important":  # conditional rows only
                mark = cond.get(MARK)
                if mark is not None:
                    outs = [o * mark.to(o.device, o.dtype).view(-1, 1, 1, 1) for o in outs]
            if down_sum is None:
                down_sum, mid_sum = outs[:-1], outs[-1]
            else:
                down_sum = [a + b for a, b in zip(down_sum, outs[:-1])]
                mid_sum = mid_sum + outs[-1]
        extra = {} if down_sum is None else {"down_block_additional_residuals": tuple(down_sum),
                                             "mid_block_additional_residual": mid_sum}
        if intrablock is not None:  # a new list every call: the UNet pops it
            extra["down_intrablock_additional_residuals"] = list(intrablock)
        if self.reference is not None:  # before the IP-Adapters: the reference pass runs the bare UNet
            self.reference.run(x, t, cond, [
                (i, u.controlnet, u.weight, u.control_mode, hint) for i, (u, hint) in enumerate(zip(self.units, self.hints))
                if isinstance(u.controlnet, Reference) and u.active(self.fraction)])
        if self.injection is not None:
            self._attach_ip(cond, x.shape[0])
        return extra

    def _attach_ip(self, cond: dict, rows: int) -> None:
        """The IP-Adapters' processors on the UNet for this call, when one acts: each one's tokens per
        row (conditional rows the picture's, unconditional ones the zero embedding's), its weight, or 0
        outside its guidance range."""
        scales = [u.weight if u.active(self.fraction) else 0.0 for u in self.ip_units]
        if not any(scales):
            return
        mark = cond.get(MARK)
        tokens = []
        for unit in self.ip_units:
            positive, negative = (t.to(self.model.device, self.dtype) for t in unit.image_tokens)
            if mark is None:
                tokens.append(positive.expand(rows, -1, -1))
            else:
                keep = mark.to(positive.device, positive.dtype).view(-1, 1, 1)
                tokens.append(positive * keep + negative * (1 - keep))
        self.injection.attach(scales, tokens)

    def _adapter(self, index: int, unit: ControlUnit, hint: torch.Tensor, cond: dict, rows: int) -> list[torch.Tensor]:
        """A T2I-Adapter unit's scaled features for ``rows`` rows (computed once per pass)."""
        if index not in self.features:
            self.features[index] = t2i_adapter.features(unit.controlnet, hint, self.slots, self.dtype)
        found = self.features[index]
        outs = [f.expand(rows, -1, -1, -1) * s for f, s in zip(found, unit.scales(len(found)))]
        if unit.control_mode == "ControlNet is more important":  # conditional rows only
            mark = cond.get(MARK)
            if mark is not None:
                outs = [o * mark.to(o.device, o.dtype).view(-1, 1, 1, 1) for o in outs]
        return outs
