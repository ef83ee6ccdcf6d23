"""Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, OmniSR, SPAN, ...) through spandrel.

spandrel recognises the architecture and its hyper-parameters from the state dict alone. This
module reads one file safely, builds the model and runs it, tiled; finding the files and naming
them is the service's job (``modules.services.upscalers``).

- ``.pth``/``.pt``/``.ckpt`` are read only with ``torch.load(weights_only=True)``: a pickle that
  would run code is refused before anything in it runs. ``.safetensors`` through safetensors.
- ``run`` is the one place a model touches the device: moved there (in fp16/bf16 where the model
  and the device support it) for the call and back to the CPU afterwards, even on an error.
- Tiles of ``tile`` pixels are cut with ``overlap`` pixels of context on every side; only each
  tile's own area of the output is kept, so neighbouring tiles meet without blending and the result
  equals the untiled one wherever the model's receptive field fits in the overlap.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from . import memory

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")
SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors")


class UpscalerFileError(ValueError):
    """A file that is not a usable upscaler model; the message says why."""


# -- spandrel import --------------------------------------------------------------------

def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """spandrel imports ``torchvision.transforms.functional`` for two architectures that are not
    upscalers (LaMa inpainting, RestoreFormer); without torchvision those two cannot run, the rest
    can. These modules stand in only while spandrel is imported."""

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchvision is not installed; this spandrel architecture needs it")

    class InterpolationMode:  # the names LaMa reads at import time
        NEAREST, BILINEAR, BICUBIC = "nearest", "bilinear", "bicubic"

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode
    functional.rotate = functional.normalize = unavailable
    root.transforms, transforms.functional = transforms, functional
    return {"torchvision": root, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


def spandrel_module():
    """``import spandrel``, also where torchvision is not installed (see ``_torchvision_stand_in``):
    requirements-nodeps.txt installs spandrel without it, since a torchvision that does not match
    the installed torch build breaks transformers as well."""
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    stand_in = _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        import spandrel
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return spandrel


# -- reading and building ---------------------------------------------------------------

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one model file (on the CPU), unwrapped from ``params_ema``/``state_dict``
    and the like; UpscalerFileError with the reason when it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in PICKLE_SUFFIXES:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise UpscalerFileError(f"{path.name}: not a model file (expected one of {', '.join(SUFFIXES)})")
    except UpscalerFileError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file, pickle refusals included
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "the file's pickle holds more than tensors (refused: only weights are loaded)"
        raise UpscalerFileError(f"{path.name}: cannot be read: {reason}") from None
    if not isinstance(state, dict):
        raise UpscalerFileError(f"{path.name}: holds a {type(state).__name__}, not a state dict")
    return spandrel_module().canonicalize_state_dict(state)


@dataclass
class UpscalerModel:
    """A built model and what spandrel detected about it."""

    descriptor: Any  # spandrel.ImageModelDescriptor
    architecture: str
    scale: int


def build(path: Path, state: dict[str, torch.Tensor] | None = None) -> UpscalerModel:
    """The model in ``path`` (or its already read ``state``) on the CPU, in eval mode, fp32."""
    spandrel = spandrel_module()
    state = read_state_dict(path) if state is None else state
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UpscalerFileError(f"{path.name}: spandrel does not recognise this model's architecture") from None
    except Exception as error:  # noqa: BLE001 - a recognised architecture with broken weights
        raise UpscalerFileError(f"{path.name}: cannot be built: {error}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerFileError(f"{path.name}: a {descriptor.architecture.name} model is not an image upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerFileError(f"{path.name}: takes {descriptor.input_channels} channels, not RGB")
    descriptor.model.eval()
    return UpscalerModel(descriptor, descriptor.architecture.name, int(descriptor.scale))


# -- running ----------------------------------------------------------------------------

def run_dtype(model: UpscalerModel, device: torch.device, half: bool) -> torch.dtype:
    """fp16 where the model supports it on CUDA, else bf16 where both do, else fp32 (the CPU)."""
    if device.type != "cuda" or not half:
        return torch.float32
    if model.descriptor.supports_half:
        return torch.float16
    if model.descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _tiles(length: int, tile: int) -> list[tuple[int, int]]:
    """(start, end) of each tile along one side; the last one ends at the edge."""
    if tile <= 0 or tile >= length:
        return [(0, length)]
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def tile_count(width: int, height: int, tile: int) -> int:
    """How many tiles an upscale of a width x height picture runs."""
    return len(_tiles(height, tile)) * len(_tiles(width, tile))


def upscale_array(model: UpscalerModel, pixels: np.ndarray, device: torch.device, dtype: torch.dtype,
                  tile: int = 0, overlap: int = 8, interrupted: Callable[[], bool] = lambda: False,
                  on_tile: Callable[[], None] = lambda: None) -> np.ndarray | None:
    """(H, W, 3) uint8 -> (H*s, W*s, 3) uint8 with the model already on ``device``; None when
    ``interrupted`` turned true between tiles. ``on_tile`` is called after each tile."""
    scale = model.scale
    height, width = pixels.shape[:2]
    source = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # uint8 (1, 3, H, W) on the CPU
    result = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    overlap = max(0, int(overlap))
    for top, bottom in _tiles(height, tile):
        for left, right in _tiles(width, tile):
            if interrupted():
                return None
            y0, y1 = max(0, top - overlap), min(height, bottom + overlap)
            x0, x1 = max(0, left - overlap), min(width, right + overlap)
            x = source[:, :, y0:y1, x0:x1].to(device=device, dtype=dtype) / 255.0
            with torch.inference_mode():
                y = model.descriptor(x)
                y = y[:, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
                y = (y.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            result[top * scale:bottom * scale, left * scale:right * scale] = y[0].permute(1, 2, 0).cpu().numpy()
            on_tile()
    return result


def run(model: UpscalerModel, image: Image.Image, device: torch.device, half: bool = True, tile: int = 0,
        overlap: int = 8, interrupted: Callable[[], bool] = lambda: False,
        on_tile: Callable[[], None] = lambda: None) -> Image.Image:
    """One native upscale of ``image`` (RGB; alpha is resized alongside). The model is on
    ``device`` only during the call. Interrupted between tiles: a Lanczos resize of the same size
    comes back, so the caller's own interrupt check ends the job."""
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    rgb = np.array(image.convert("RGB"))  # a writable copy: torch.from_numpy shares it
    dtype = run_dtype(model, device, half)
    memory.move(model.descriptor, device, dtype)  # on the device only for this call
    try:
        out = upscale_array(model, rgb, device, dtype, tile, overlap, interrupted, on_tile)
    finally:
        memory.move(model.descriptor, "cpu", torch.float32)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    size = (image.width * model.scale, image.height * model.scale)
    if out is None:
        return image.resize(size, resample=Image.Resampling.LANCZOS)
    result = Image.fromarray(out, "RGB")
    if alpha is not None:
        result.putalpha(alpha.resize(size, resample=Image.Resampling.LANCZOS))
    return result
