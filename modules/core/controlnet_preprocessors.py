"""sd-webui-controlnet's preprocessors that need no annotator weights: the picture -> the control map.

Each row has the extension's name (what API units send as ``module``), its UI label, its tags (the
control types of ``/controlnet/control_types``), its sliders (resolution, slider 1, slider 2: the
unit's ``processor_res``, ``threshold_a``, ``threshold_b``, out-of-range values replaced by the
defaults as the extension does) and the function. Functions take an (H, W, 3) uint8 RGB array (an
(H, W, 4) one, the mask as alpha, for those that accept a mask) and return an (H, W, 3) uint8 map
(``inpaint_only``: (H, W, 4)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np


@dataclass(frozen=True)
class Slider:
    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 1.0

    def api_json(self) -> dict:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}

    def pick(self, value) -> float:
        """The extension's rule: a value outside the slider's range (-1: not given) is the default."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            return self.value
        return value if self.minimum <= value <= self.maximum else self.value


RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[[np.ndarray, int, float, float], np.ndarray]
    label: str = ""
    tags: tuple[str, ...] = ()
    resolution: Slider | None = RESOLUTION
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    priority: int = 0  # the extension's sorting_priority: higher first
    accepts_mask: bool = False
    requires_mask: bool = False

    @property
    def title(self) -> str:
        return self.label or self.name

    def sliders(self) -> list[Slider]:
        return [s for s in (self.resolution, self.slider_1, self.slider_2) if s is not None]

    def __call__(self, image: np.ndarray, resolution=-1, threshold_a=-1, threshold_b=-1) -> np.ndarray:
        res = int(self.resolution.pick(resolution)) if self.resolution else 512
        a = self.slider_1.pick(threshold_a) if self.slider_1 else 0.0
        b = self.slider_2.pick(threshold_b) if self.slider_2 else 0.0
        if self.requires_mask and (image.ndim != 3 or image.shape[2] != 4):
            raise ValueError(f"preprocessor {self.name} needs a mask")
        rgb = image if self.accepts_mask else hwc3(image)
        return self.run(rgb, res, a, b)


def hwc3(x: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3); alpha composited over white."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    if x.shape[2] == 3:
        return x
    color, alpha = x[:, :, :3].astype(np.float32), x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def resize_with_pad(image: np.ndarray, resolution: int):
    """The extension's resize: the short side to ``resolution``, edges padded to multiples of 64;
    returns the padded picture and the function that cuts a result back to the unpadded size."""
    h, w = image.shape[:2]
    k = float(resolution) / float(min(h, w))
    target_h, target_w = int(np.round(h * k)), int(np.round(w * k))
    image = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    padded = np.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")

    def remove_pad(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:target_h, :target_w])

    return np.ascontiguousarray(padded), remove_pad


def _none(img, res, a, b):
    return img


def _invert(img, res, a, b):
    return 255 - img


def _canny(img, res, low, high):
    padded, remove_pad = resize_with_pad(img, res)
    return hwc3(remove_pad(cv2.Canny(padded, int(low), int(high))))


def _threshold(img, res, level, b):
    padded, remove_pad = resize_with_pad(img, res)
    out = np.zeros_like(padded)
    out[np.min(padded, axis=2) > level] = 255
    return remove_pad(out)


def _scribble_xdog(img, res, level, b):
    padded, remove_pad = resize_with_pad(img, res)
    g1 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(padded)
    out[2 * (255 - dog) > level] = 255
    return remove_pad(out)


def _lineart_standard(img, res, a, b):
    padded, remove_pad = resize_with_pad(img, res)
    x = padded.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, float(np.median(strong)) if strong.size else 16)
    intensity *= 127
    return hwc3(remove_pad(intensity.clip(0, 255).astype(np.uint8)))


def _tile_resample(img, res, rate, b):
    if rate < 1.1:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (int(w / rate), int(h / rate)), interpolation=cv2.INTER_AREA)


def _blur_gaussian(img, res, sigma, b):
    padded, remove_pad = resize_with_pad(img, res)
    return cv2.GaussianBlur(remove_pad(padded), (0, 0), float(sigma))


def _shortest_edge(img, size):
    h, w = img.shape[:2]
    if h < w:
        new_h, new_w = size, int(round(w / h * size))
    else:
        new_h, new_w = int(round(h / w * size)), size
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)


def _color(img, res, a, b):
    img = _shortest_edge(img, res)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _noise_disk(h, w, f, rng):
    noise = rng.uniform(0, 1, size=(h // f + 2, w // f + 2)).astype(np.float32)
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-8)


def _shuffle(img, res, a, b):
    """Content shuffle: the picture warped by a smooth random flow (seeded: the same map every time)."""
    padded, remove_pad = resize_with_pad(img, res)
    h, w = padded.shape[:2]
    rng = np.random.default_rng(0)
    flow = np.stack([_noise_disk(h, w, 256, rng) * (w - 1), _noise_disk(h, w, 256, rng) * (h - 1)], axis=2)
    return remove_pad(cv2.remap(padded, flow.astype(np.float32), None, cv2.INTER_LINEAR))


def _inpaint_only(img, res, a, b):
    """RGB with the mask as alpha (255: repaint): the ControlNet inpaint protocol's input."""
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError("inpaint_only needs a mask (the unit's mask, or the img2img inpainting mask)")
    return img


PREPROCESSORS: dict[str, Preprocessor] = {}


def register(p: Preprocessor) -> Preprocessor:
    if p.name in PREPROCESSORS or any(q.title == p.title for q in PREPROCESSORS.values()):
        raise ValueError(f"preprocessor {p.name!r} is already registered")
    PREPROCESSORS[p.name] = p
    return p


for _row in (
    Preprocessor("none", _none, tags=("InstructP2P",), priority=10),
    Preprocessor("invert", _invert, label="invert (from white bg & black line)",
                 tags=("Canny", "Lineart", "Scribble", "MLSD"), resolution=None, priority=20),
    Preprocessor("canny", _canny, tags=("Canny",), priority=100,
                 slider_1=Slider("Low Threshold", 100, 1, 255), slider_2=Slider("High Threshold", 200, 1, 255)),
    Preprocessor("threshold", _threshold, tags=("Scribble",), slider_1=Slider("Binarization Threshold", 127, 0, 255)),
    Preprocessor("scribble_xdog", _scribble_xdog, tags=("Scribble", "SparseCtrl"),
                 slider_1=Slider("XDoG Threshold", 32, 1, 64)),
    Preprocessor("lineart_standard", _lineart_standard, label="lineart_standard (from white bg & black line)",
                 tags=("Lineart",), priority=50),
    Preprocessor("tile_resample", _tile_resample, tags=("Tile",), resolution=None, priority=100,
                 slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)),
    Preprocessor("blur_gaussian", _blur_gaussian, tags=("Tile",), slider_1=Slider("Sigma", 9.0, 0.01, 64.0, 0.01)),
    Preprocessor("shuffle", _shuffle, tags=("Shuffle",), priority=100),
    Preprocessor("color", _color, tags=("T2I-Adapter",)),
    Preprocessor("inpaint_only", _inpaint_only, tags=("Inpaint",), resolution=None, priority=100,
                 accepts_mask=True, requires_mask=True),
):
    register(_row)


def find(name: str) -> Preprocessor | None:
    """By name or by label (the extension accepts both)."""
    if name in PREPROCESSORS:
        return PREPROCESSORS[name]
    return next((p for p in PREPROCESSORS.values() if p.title == name), None)


def sorted_rows() -> list[Preprocessor]:
    """The extension's order: none first, then by priority and label, highest first."""
    rest = [p for p in PREPROCESSORS.values() if p.name != "none"]
    rest.sort(key=lambda p: str(p.priority).zfill(8) + p.title, reverse=True)
    return [PREPROCESSORS["none"], *rest]


def tags() -> list[str]:
    found = {t for p in PREPROCESSORS.values() for t in p.tags}
    return ["All", *sorted(found)]


def pixel_perfect_resolution(height: int, width: int, target_h: int, target_w: int, resize_mode: str) -> int:
    """The extension's pixel-perfect preprocessor resolution for a picture of (height, width)."""
    k0, k1 = target_h / height, target_w / width
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(height, width)))
