"""T2I-Adapter files -> diffusers' ``T2IAdapter``, and their features as the UNet's intra-block residuals.

**Files** (weights only, detected from the keys and shapes, as sd-webui-controlnet's model guess):

- **original TencentARC layout** (``t2iadapter_canny_sd14v1.pth``, ``t2iadapter_sketch_sd15v2.pth``, ...):
  ``conv_in`` then ``body.N.{in_conv,block1,block2}``, two resnet blocks per level (``N = 2 * level +
  block``; the extension's ``nums_rb=2``), ``in_conv`` only where the width changes (``sk=True``).
  The input is pixel-unshuffled by 8 (by 16 for SDXL: ``conv_in`` reading 256 or 768 channels, the
  extension's ``is_sdxl``). Variants diffusers' classes cannot hold (3x3 ``block2``, strided-convolution
  downsampling ``down_opt.op``, ``skep`` shortcuts) are refused with that reason.
- **original light layout** (``t2iadapter_color_sd14v1.pth``): ``body.L.{in_conv,out_conv}`` around
  ``body.L.body.N.{block1,block2}``; the last level repeats the previous width (diffusers' LightAdapter).
- **diffusers layout** (``t2i-adapter_diffusers_xl_canny.safetensors`` ...): ``adapter.conv_in`` /
  ``adapter.body.L.resnets.N`` (full, full XL) or ``adapter.body.L.{in_conv,resnets,out_conv}`` (light).

The style adapter (``t2iadapter_style_sd14v1``: ``style_embedding``, tokens from a CLIP vision model
appended to the prompt) is refused: Easel runs no CLIP vision encoder.

**Running** (the extension's hook): the adapter reads the unit's preprocessed map at the pass's size,
in [0, 1] (1-channel adapters: its first channel), once per pass; its features are added inside the
UNet's down blocks (diffusers' ``down_intrablock_additional_residuals``: after each level's last
resnet/attention, a level without attention after its downsampler, a last SDXL feature after the
middle block), each scaled by the unit's weight, or by ``weight * (0.25, 0.62, 0.825, 1.0)`` in the
prompt-first control modes; "ControlNet is more important" applies them to the conditional rows only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import T2IAdapter

from . import ldm_parts
from .checkpoint_file import CheckpointFile
from .checkpoint_shapes import Shapes, UnsupportedCheckpoint, indices, require

DIFFUSERS_PREFIX = "adapter."
SOFT_INJECTION = (0.25, 0.62, 0.825, 1.0)  # the extension's per-feature factors for the prompt-first modes
XL_UNSHUFFLED = (256, 768)  # conv_in's input channels of an SDXL adapter (1 or 3 channels, unshuffled by 16)


@dataclass
class AdapterFile:
    """A built T2I-Adapter: the module (on the CPU, in the dtype asked for) and what it fits."""

    path: Path
    family: str  # "sd1" (SD1.x/SD2.x UNets: 8x unshuffle) or "sdxl"
    layout: str  # "original" or "diffusers"
    config: dict  # T2IAdapter's
    module: T2IAdapter

    @property
    def feature_channels(self) -> list[int]:
        """The width of each feature, in the order the UNet takes them."""
        channels = list(self.config["channels"])
        return channels + [channels[-1]] if self.config["adapter_type"] == "light_adapter" else channels


def looks_like_adapter(shapes: Shapes) -> bool:
    """A T2I-Adapter's names (any layout, the style adapter's too), and no UNet/ControlNet attention."""
    keys = set(shapes)
    if any(".transformer_blocks." in k for k in keys):
        return False
    return ("style_embedding" in keys or any(k.startswith(DIFFUSERS_PREFIX) for k in keys)
            or ("conv_in.weight" in keys and any(k.startswith("body.") for k in keys))
            or "body.0.in_conv.weight" in keys)


def _unshuffle(cin: int) -> tuple[int, int]:
    """(downscale factor, picture channels) from conv_in's (or the first block's) input channels."""
    factor = 16 if cin in XL_UNSHUFFLED else 8
    if cin % (factor * factor):
        raise UnsupportedCheckpoint(f"T2I-Adapter input of {cin} channels is not a pixel-unshuffled picture")
    return factor, cin // (factor * factor)


def _config(in_channels: int, channels: list[int], blocks: int, factor: int, kind: str) -> dict:
    return {"in_channels": in_channels, "channels": channels, "num_res_blocks": blocks,
            "downscale_factor": factor, "adapter_type": kind}


def original_config(shapes: Shapes) -> tuple[str, dict]:
    """(family, T2IAdapter config) of an original-layout (TencentARC) adapter."""
    keys = set(shapes)
    if "style_embedding" in keys:
        raise UnsupportedCheckpoint("this is the T2I style adapter (CLIP vision tokens); style adapters are not "
                                    "supported (no CLIP vision encoder)")
    if "conv_in.weight" in keys:
        if any(".skep." in k for k in keys):
            raise UnsupportedCheckpoint("T2I-Adapter with 'skep' shortcuts (sk=False) is not supported")
        if any(k.endswith("down_opt.op.weight") for k in keys):
            raise UnsupportedCheckpoint("T2I-Adapter with strided-convolution downsampling (use_conv) is not supported")
        if require(shapes, "body.0.block2.weight")[2] != 1:
            raise UnsupportedCheckpoint("T2I-Adapter with 3x3 second convolutions (ksize=3) is not supported")
        blocks = indices(shapes, r"body\.(\d+)\.block1\.weight")
        if not blocks or len(blocks) % 2 or blocks != list(range(len(blocks))):
            raise UnsupportedCheckpoint("T2I-Adapter body is incomplete (two resnet blocks per level expected)")
        channels = [shapes[f"body.{2 * level}.block1.weight"][0] for level in range(len(blocks) // 2)]
        factor, picture = _unshuffle(shapes["conv_in.weight"][1])
        kind = "full_adapter_xl" if factor == 16 else "full_adapter"
        return ("sdxl" if factor == 16 else "sd1"), _config(picture, channels, 2, factor, kind)
    levels = indices(shapes, r"body\.(\d+)\.in_conv\.weight")
    if not levels or "body.0.out_conv.weight" not in keys:
        raise UnsupportedCheckpoint("T2I-Adapter file is incomplete (no conv_in or body.0.in_conv / out_conv)")
    return "sd1", _light_config(shapes, "body.{}.out_conv.weight", r"body\.0\.body\.(\d+)\.block1\.weight",
                                levels, shapes["body.0.in_conv.weight"][1])


def _light_config(shapes: Shapes, out_conv: str, resnets: str, levels: list[int], cin: int) -> dict:
    widths = [require(shapes, out_conv.format(level))[0] for level in levels]
    if len(widths) < 2 or widths[-1] != widths[-2]:
        raise UnsupportedCheckpoint("light T2I-Adapter whose last level does not repeat the previous width")
    factor, picture = _unshuffle(cin)
    return _config(picture, widths[:-1], len(indices(shapes, resnets)), factor, "light_adapter")


def diffusers_config(shapes: Shapes) -> tuple[str, dict]:
    """(family, T2IAdapter config) of a diffusers-layout adapter."""
    p = DIFFUSERS_PREFIX
    levels = indices(shapes, r"adapter\.body\.(\d+)\.")
    if f"{p}conv_in.weight" not in shapes:
        if f"{p}body.0.in_conv.weight" not in shapes:
            raise UnsupportedCheckpoint("T2I-Adapter file is incomplete (no adapter.conv_in / adapter.body.0.in_conv)")
        return "sd1", _light_config(shapes, p + "body.{}.out_conv.weight", r"adapter\.body\.0\.resnets\.(\d+)\.",
                                    levels, shapes[f"{p}body.0.in_conv.weight"][1])
    channels = [require(shapes, f"{p}body.{level}.resnets.0.block1.weight")[0] for level in levels]
    blocks = len(indices(shapes, r"adapter\.body\.0\.resnets\.(\d+)\."))
    factor, picture = _unshuffle(shapes[f"{p}conv_in.weight"][1])
    kind = "full_adapter_xl" if factor == 16 else "full_adapter"
    return ("sdxl" if factor == 16 else "sd1"), _config(picture, channels, blocks, factor, kind)


def original_to_diffusers(tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """TencentARC's names -> T2IAdapter's: ``body.{2L+N}.blockK`` -> ``adapter.body.L.resnets.N.blockK``
    (``in_conv`` to the level), light ``body.L.body.N`` -> ``adapter.body.L.resnets.N``."""
    light = config["adapter_type"] == "light_adapter"
    out = {}
    for key, value in tensors.items():
        if light:
            new = re.sub(r"^body\.(\d+)\.body\.(\d+)\.", r"body.\1.resnets.\2.", key)
        elif m := re.match(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$", key):
            level, block = divmod(int(m.group(1)), 2)
            new = (f"body.{level}.in_conv.{m.group(3)}" if m.group(2) == "in_conv"
                   else f"body.{level}.resnets.{block}.{m.group(2)}.{m.group(3)}")
        else:
            new = key
        out[DIFFUSERS_PREFIX + new] = value
    return out


def from_checkpoint(ckpt: CheckpointFile, dtype: torch.dtype = torch.float32) -> AdapterFile:
    """Build the adapter of an open checkpoint file (weights only, already read by ``ckpt``)."""
    diffusers = any(k.startswith(DIFFUSERS_PREFIX) for k in ckpt.shapes)
    family, config = (diffusers_config if diffusers else original_config)(ckpt.shapes)
    tensors = {k: ckpt.get(k, dtype) for k in ckpt.shapes}
    state = tensors if diffusers else original_to_diffusers(tensors, config)
    try:
        module = ldm_parts.build(T2IAdapter, config, state, "T2I-Adapter")
    except RuntimeError as exc:  # a tensor of another shape than the detected architecture's
        raise UnsupportedCheckpoint(f"T2I-Adapter weights do not match the detected architecture: "
                                    f"{str(exc).splitlines()[-1].strip()}") from None
    return AdapterFile(ckpt.path, family, "diffusers" if diffusers else "original", config,
                       module.eval().requires_grad_(False))


def load(path: str | Path, dtype: torch.dtype = torch.float32) -> AdapterFile:
    """Read a T2I-Adapter file (weights only) and build its module on the CPU in ``dtype``."""
    ckpt = CheckpointFile(path)
    try:
        return from_checkpoint(ckpt, dtype)
    finally:
        ckpt.close()


# -- running --------------------------------------------------------------------------------------

def injection_slots(unet, latent_h: int, latent_w: int) -> list[tuple[int, tuple[int, int]]]:
    """(channels, (h, w)) of the hidden states each feature is added to, in the order diffusers' UNet
    takes them: a level with attention before its downsampler, one without after it; then the middle."""
    slots, h, w = [], latent_h, latent_w
    for block in getattr(unet, "down_blocks", ()):
        down = getattr(block, "downsamplers", None) is not None
        half = ((h + 1) // 2, (w + 1) // 2)  # the downsampler's 3x3 stride-2 padded convolution
        attention = getattr(block, "has_cross_attention", False)
        slots.append((block.resnets[-1].out_channels, (h, w) if attention or not down else half))
        if down:
            h, w = half
    if getattr(unet, "mid_block", None) is not None:
        slots.append((unet.mid_block.resnets[-1].out_channels, (h, w)))
    return slots


def check_fits(adapter: AdapterFile, family: str, slots: list[tuple[int, tuple[int, int]]]) -> str | None:
    """Why the adapter cannot run on a UNet of ``family`` with these slots (None: it can)."""
    wanted = {"sd1": "sd1", "sd2": "sd1", "sdxl": "sdxl"}.get(family)
    widths = adapter.feature_channels
    if wanted != adapter.family or len(widths) > len(slots) or \
            any(c != slot[0] for c, slot in zip(widths, slots)):
        what = "SDXL" if adapter.family == "sdxl" else "SD1.x/SD2.x"
        return f"the T2I-Adapter '{adapter.path.name}' (features {widths}) is for {what} models"
    return None


def adapter_input(hint: torch.Tensor, adapter: AdapterFile) -> torch.Tensor:
    """The map (1, 3, H, W) in [0, 1] as the adapter reads it: 1-channel adapters take the first
    channel (the extension's ``hint[0]``); sizes not divisible by the unshuffle factor are resized up."""
    x = hint[:, :1] if adapter.config["in_channels"] == 1 else hint[:, :adapter.config["in_channels"]]
    factor = adapter.config["downscale_factor"]
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        size = (-(-h // factor) * factor, -(-w // factor) * factor)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def features(adapter: AdapterFile, hint: torch.Tensor, slots: list[tuple[int, tuple[int, int]]],
             dtype: torch.dtype) -> list[torch.Tensor]:
    """The adapter's features for one map, each at its slot's size (nearest, as the extension's
    ``aligned_adding``), in the UNet's dtype."""
    module = adapter.module
    own = next(module.parameters())
    out = module(adapter_input(hint, adapter).to(own.device, own.dtype))
    aligned = []
    for feature, (_channels, size) in zip(out, slots):
        if tuple(feature.shape[-2:]) != size:
            feature = F.interpolate(feature, size=size, mode="nearest")
        aligned.append(feature.to(dtype))
    return aligned


def scales(weight: float, control_mode: str, count: int) -> list[float]:
    """Each feature's factor: the weight ("Balanced"), or the extension's soft injection otherwise."""
    if control_mode == "Balanced":
        return [weight] * count
    return ([weight * s for s in SOFT_INJECTION] + [weight] * count)[:count]
