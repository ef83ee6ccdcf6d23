"""sd-webui-controlnet's preprocessors: the picture -> the control map.

Each row has the extension's name (what API units send as ``module``), its UI label, its tags (the
control types of ``/controlnet/control_types``), its sliders (resolution, slider 1, slider 2: the
unit's ``processor_res``, ``threshold_a``, ``threshold_b``, out-of-range values replaced by the
defaults as the extension does) and the function. Functions take an (H, W, 3) uint8 RGB array (an
(H, W, 4) one, the mask as alpha, for those that accept a mask) and return an (H, W, 3) uint8 map
(``inpaint_only``, ``inpaint``: (H, W, 4)). A row without a resolution slider still gets the unit's
processor_res (``Preprocessor.resolution_range``: 64..2048, else 512, as the extension's legacy rows;
its newer rows that hide the slider ignore the value). ``recolor_*`` rows give the gray map the decoded
picture's lightness / value is taken from (``modules.core.controlnet.recolor``); the Revision rows
give the picture, which the unit encodes with ``clip_g.pth`` (``modules.core.controlnet.Revision``).

The extension's preprocessors that run a network (depth, openpose, softedge, lineart, normal, seg,
mlsd, LaMa, ...) are listed too, with ``weights``: the annotator files they read, as
``<folder>/<file>`` under the extension's ``annotator/downloads`` layout (Easel's annotator folder,
``modules.services.controlnets.annotator_dir_for``). Easel downloads nothing: asking for one whose
files are missing is refused with a message naming the files and where they go; those without a
``run`` (a network Easel does not have) are refused even with their files in place.
Those whose network Easel has run from the user's files (their ``run`` takes the files' paths as a fifth
argument): HED ``modules.core.annotator_hed``, PiDiNet ``annotator_pidinet``, M-LSD ``annotator_mlsd``,
OpenPose ``annotator_openpose`` / ``annotator_openpose_hand_face``, DW pose and animal pose
``annotator_dwpose`` (ONNX through OpenCV), lineart ``annotator_lineart`` / ``annotator_lineart_anime``,
MiDaS and Depth Anything ``annotator_depth`` (transformers' classes), LeReS ``annotator_leres``, ZoeDepth
``annotator_zoe``, TEED ``annotator_teed``, LaMa ``annotator_lama``, anime face segmentation
``annotator_anime_face``, UniFormer segmentation ``annotator_uniformer``, normal BAE ``annotator_normal_bae``,
DSINE ``annotator_normal_dsine``, insightface's detector and ArcFace (FaceID, InstantID) ``face_analysis``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from . import annotator_anime_face
from . import annotator_depth
from . import annotator_dwpose
from . import annotator_hed
from . import annotator_lama
from . import annotator_leres
from . import annotator_lineart
from . import annotator_lineart_anime
from . import annotator_mlsd
from . import annotator_normal_bae
from . import annotator_normal_dsine
from . import annotator_openpose
from . import annotator_openpose_hand_face
from . import annotator_pidinet
from . import annotator_teed
from . import annotator_uniformer
from . import annotator_zoe
from . import face_analysis
from .annotator_files import hwc3, resize_with_pad  # noqa: F401  (the extension's resizing; others import it here)


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
# the extension's hidden parameter (PreprocessorParameter(visible=False): 0.5 in [0, 1]): the resolution
# "slider" of its newer preprocessors that hide it (invert, inpaint, inpaint_only, ...), which ignore it
HIDDEN = Slider("", 0.5, 0.0, 1.0, 0.01)


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[[np.ndarray, int, float, float], np.ndarray] | None  # None: a network Easel does not have
    label: str = ""
    tags: tuple[str, ...] = ()
    resolution: Slider | None = RESOLUTION
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    priority: int = 0  # the extension's sorting_priority: higher first
    accepts_mask: bool = False
    requires_mask: bool = False
    weights: tuple[str, ...] = ()  # annotator files ("midas/dpt_hybrid-midas-501f0c75.pt") its network reads
    model_free: bool = False  # the unit needs no ControlNet model (the extension's do_not_need_model)
    # the range processor_res is checked against when the slider is hidden (``resolution`` None): the
    # extension's legacy rows keep the 64..2048 one (default 512; the unit's processor_res, or pixel
    # perfect's, reaches them), its newer rows a hidden parameter (``HIDDEN``; shuffle's says 512)
    hidden_resolution: Slider = RESOLUTION

    @property
    def resolution_range(self) -> Slider:
        """The range a unit's processor_res is settled in (shown slider or hidden one)."""
        return self.resolution or self.hidden_resolution

    @property
    def title(self) -> str:
        return self.label or self.name

    def sliders(self) -> list[Slider]:
        return [s for s in (self.resolution, self.slider_1, self.slider_2) if s is not None]

    def __call__(self, image: np.ndarray, resolution=-1, threshold_a=-1, threshold_b=-1,
                 annotator_dir: Path | None = None, exact_resolution: bool = False) -> np.ndarray:
        """The map; ``annotator_dir``: where a network's ``weights`` are (those rows only).
        ``resolution``: the unit's processor_res, settled in ``resolution_range`` as the extension's bound
        check does (a hidden slider's row too); ``exact_resolution``: as given (pixel perfect's, which
        the extension passes unchecked)."""
        res = int(resolution) if exact_resolution else int(self.resolution_range.pick(resolution))
        a = self.slider_1.pick(threshold_a) if self.slider_1 else 0.0
        b = self.slider_2.pick(threshold_b) if self.slider_2 else 0.0
        if self.run is None:
            raise ValueError(f"preprocessor {self.name} needs the annotator weights {', '.join(self.weights)}")
        if self.requires_mask and (image.ndim != 3 or image.shape[2] != 4):
            raise ValueError(f"preprocessor {self.name} needs a mask")
        rgb = image if self.accepts_mask else hwc3(image)
        if self.weights:
            if annotator_dir is None:
                raise ValueError(f"preprocessor {self.name} needs the folder of its annotator weights")
            return self.run(rgb, res, a, b, [Path(annotator_dir) / w for w in self.weights])
        return self.run(rgb, res, a, b)


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


def _inpaint_global(img, res, a, b):
    """inpaint_global_harmonious: the same RGBA map as inpaint_only."""
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError("inpaint needs a mask (the unit's mask, or the img2img inpainting mask)")
    return img


GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)  # the recolor rows' slider


def _gamma_gray(channel: np.ndarray, gamma: float) -> np.ndarray:
    """The recolor maps: a channel in [0, 1] to the power ``gamma``, as gray RGB."""
    x = (channel.astype(np.float32) / 255.0) ** gamma
    return cv2.cvtColor((x * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def _recolor_luminance(img, res, gamma, b):
    """The extension's recolor_luminance: L of Lab, the RGB picture read as BGR (its cvtColor call)."""
    return _gamma_gray(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2LAB)[:, :, 0], gamma)


def _recolor_intensity(img, res, gamma, b):
    """The extension's recolor_intensity: V of HSV (the largest of the three channels)."""
    return _gamma_gray(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)[:, :, 2], gamma)


def _hed_edges(img, res, files, safe: bool) -> np.ndarray:
    padded, remove_pad = resize_with_pad(img, res)
    edge = annotator_hed.edges(annotator_hed.network(files[0]), padded)
    if safe:  # the extension's safe_step: three levels
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return remove_pad((edge * 255.0).clip(0, 255).astype(np.uint8))


def _hed(img, res, a, b, files):
    return hwc3(_hed_edges(img, res, files, safe=False))


def _hed_safe(img, res, a, b, files):
    return hwc3(_hed_edges(img, res, files, safe=True))


def _nms(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """The extension's thinning: keep the pixels that are a maximum along one of four directions."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    y = np.zeros_like(x)
    for kernel in ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                   [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]):
        np.putmask(y, cv2.dilate(x, kernel=np.array(kernel, dtype=np.uint8)) == x, x)
    out = np.zeros_like(y, dtype=np.uint8)
    out[y > threshold] = 255
    return out


def _scribble_hed(img, res, a, b, files):
    lines = cv2.GaussianBlur(_nms(_hed_edges(img, res, files, safe=False), 127, 3.0), (0, 0), 3.0)
    lines[lines > 4] = 255
    lines[lines < 255] = 0
    return hwc3(lines)


def _pidinet_edges(img, res, files, safe: bool = False, sketch: bool = False) -> np.ndarray:
    padded, remove_pad = resize_with_pad(img, res)
    edge = annotator_pidinet.edges(annotator_pidinet.network(files[0]), padded)
    if sketch:  # t2ia_sketch_pidi: the edges over one half, white
        edge = (edge > 0.5).astype(np.float32)
    if safe:  # the extension's safe_step: three levels
        edge = (edge * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return remove_pad((edge * 255.0).clip(0, 255).astype(np.uint8))


def _pidinet(img, res, a, b, files):
    return hwc3(_pidinet_edges(img, res, files))


def _pidinet_safe(img, res, a, b, files):
    return hwc3(_pidinet_edges(img, res, files, safe=True))


def _pidinet_sketch(img, res, a, b, files):
    return hwc3(_pidinet_edges(img, res, files, sketch=True))


def _scribble_pidinet(img, res, a, b, files):
    lines = cv2.GaussianBlur(_nms(_pidinet_edges(img, res, files), 127, 3.0), (0, 0), 3.0)
    lines[lines > 4] = 255
    lines[lines < 255] = 0
    return hwc3(lines)


def _mlsd(img, res, value_threshold, distance_threshold, files):
    """The segments M-LSD finds in the padded picture, drawn in white on black."""
    padded, remove_pad = resize_with_pad(img, res)
    lines = annotator_mlsd.line_map(annotator_mlsd.network(files[0]), padded, value_threshold, distance_threshold)
    return hwc3(remove_pad(lines))


def _openpose(img, res, a, b, files):
    """The people's skeletons found by the body network, drawn on black at the padded size and cut back
    (only the body file is read, so only it is asked for; the extension loads the hand and face networks
    too, downloading them)."""
    padded, remove_pad = resize_with_pad(img, res)
    return remove_pad(annotator_openpose.body_map(annotator_openpose.network(files[0]), padded))


def _openpose_parts(hand: bool, face: bool, with_body: bool = True):
    """openpose_hand / _face / _faceonly / _full: the body network places the boxes the hand and face
    networks read; ``files``: the body's, then the hand's and the face's it uses (that order)."""
    def run(img, res, a, b, files):
        padded, remove_pad = resize_with_pad(img, res)
        body, rest = annotator_openpose.network(files[0]), list(files[1:])
        hand_net = annotator_openpose_hand_face.network(rest.pop(0), annotator_openpose_hand_face.HAND_FILE) \
            if hand else None
        face_net = annotator_openpose_hand_face.network(rest.pop(0), annotator_openpose_hand_face.FACE_FILE) \
            if face else None
        return remove_pad(annotator_openpose_hand_face.pose_map(body, hand_net, face_net, padded, with_body))
    return run


def _lineart(img, res, a, b, files):
    """lineart / lineart_coarse: the generator draws dark lines on white; the extension inverts it."""
    padded, remove_pad = resize_with_pad(img, res)
    return hwc3(remove_pad(255 - annotator_lineart.drawing(annotator_lineart.generator(files[0]), padded)))


def _lineart_anime(img, res, a, b, files):
    padded, remove_pad = resize_with_pad(img, res)
    drawing = annotator_lineart_anime.anime_drawing(annotator_lineart_anime.unet(files[0]), padded)
    return hwc3(remove_pad(255 - drawing))


def _lineart_anime_denoise(img, res, a, b, files):
    """manga_line's map is already white lines on black: not inverted, as the extension."""
    padded, remove_pad = resize_with_pad(img, res)
    lines = annotator_lineart_anime.manga_lines(annotator_lineart_anime.manga_network(files[0]), padded)
    return hwc3(remove_pad(lines))


PREPROCESSORS: dict[str, Preprocessor] = {}


def register(p: Preprocessor) -> Preprocessor:
    if p.name in PREPROCESSORS or any(q.title == p.title for q in PREPROCESSORS.values()):
        raise ValueError(f"preprocessor {p.name!r} is already registered")
    PREPROCESSORS[p.name] = p
    return p


for _row in (
    Preprocessor("none", _none, tags=("InstructP2P",), priority=10),
    Preprocessor("invert", _invert, label="invert (from white bg & black line)",
                 tags=("Canny", "Lineart", "Scribble", "MLSD"), resolution=None, hidden_resolution=HIDDEN,
                 priority=20),
    Preprocessor("canny", _canny, tags=("Canny",), priority=100,
                 slider_1=Slider("Low Threshold", 100, 1, 255), slider_2=Slider("High Threshold", 200, 1, 255)),
    Preprocessor("threshold", _threshold, tags=("Scribble",), slider_1=Slider("Binarization Threshold", 127, 0, 255)),
    Preprocessor("scribble_xdog", _scribble_xdog, tags=("Scribble", "SparseCtrl"),
                 slider_1=Slider("XDoG Threshold", 32, 1, 64)),
    Preprocessor("lineart_standard", _lineart_standard, label="lineart_standard (from white bg & black line)",
                 tags=("Lineart",), priority=50),
    Preprocessor("tile_resample", _tile_resample, tags=("Tile",), resolution=None, priority=100,
                 slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)),
    Preprocessor("tile_colorfix", _none, tags=("Tile",), resolution=None, slider_1=Slider("Variation", 8.0, 3.0, 32.0)),
    Preprocessor("tile_colorfix+sharp", _none, tags=("Tile",), resolution=None,
                 slider_1=Slider("Variation", 8.0, 3.0, 32.0), slider_2=Slider("Sharpness", 1.0, 0.0, 2.0, 0.01)),
    Preprocessor("blur_gaussian", _blur_gaussian, tags=("Tile",), slider_1=Slider("Sigma", 9.0, 0.01, 64.0, 0.01)),
    # the extension hides shuffle's slider (a hidden parameter saying 512: 512 unless pixel perfect)
    Preprocessor("shuffle", _shuffle, tags=("Shuffle",), priority=100, resolution=None,
                 hidden_resolution=Slider("", 512, 0.0, 1.0, 0.01)),
    Preprocessor("color", _color, tags=("T2I-Adapter",)),
    Preprocessor("inpaint_only", _inpaint_only, tags=("Inpaint",), resolution=None, hidden_resolution=HIDDEN,
                 priority=100, accepts_mask=True, requires_mask=True),
    # the extension's PreprocessorInpaint: the same RGBA map as inpaint_only, without its paste-back
    # (and what inpaint_only falls back to in img2img's inpainting, whose mask A1111 already keeps)
    Preprocessor("inpaint", _inpaint_global, label="inpaint_global_harmonious", tags=("Inpaint",), resolution=None,
                 hidden_resolution=HIDDEN, accepts_mask=True, requires_mask=True),
    Preprocessor("recolor_luminance", _recolor_luminance, tags=("Recolor",), resolution=None, priority=100,
                 slider_1=GAMMA),
    Preprocessor("recolor_intensity", _recolor_intensity, tags=("Recolor",), resolution=None, slider_1=GAMMA),
    # model-free: the picture as it is; the UNet reads it (modules.core.controlnet_reference)
    Preprocessor("reference_only", _none, tags=("Reference",), resolution=None, model_free=True, priority=100,
                 slider_1=Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0, 0.01)),
    Preprocessor("reference_adain", _none, tags=("Reference",), resolution=None, model_free=True,
                 slider_1=Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0, 0.01)),
    Preprocessor("reference_adain+attn", _none, tags=("Reference",), resolution=None, model_free=True,
                 slider_1=Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0, 0.01)),
):
    register(_row)


_MIDAS = (annotator_depth.MIDAS_FILE,)
_OPENPOSE = ("openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth")
_HED, _PIDINET = (annotator_hed.FILE,), (annotator_pidinet.FILE,)
CLIP_VISION_H = "clip_vision/clip_h.pth"  # the extension's image encoders for the IP-Adapters: ViT-H/14,
CLIP_VISION_G = "clip_vision/clip_g.pth"  # ViT-bigG/14
NOISE_AUGMENTATION = Slider("Noise Augmentation", 0.0, 0.0, 1.0, 0.01)  # the Revision rows' slider
_LERES_SLIDERS = dict(slider_1=Slider("Remove Near %", 0, 0, 100, 0.1),
                      slider_2=Slider("Remove Background %", 0, 0, 100, 0.1))


def _clip_picture(img, res, a, b, files):
    """The IP-Adapter preprocessors' map: the picture itself, which the unit encodes with the CLIP
    vision file (``files``) when it runs (``modules.services.controlnets``)."""
    return img


def _padded(network_map: Callable[[np.ndarray, list[Path], float], np.ndarray]):
    """A preprocessor running ``network_map(padded picture, files, slider 1)`` on the extension's
    resize_with_pad of the picture, cut back to the unpadded size (the depth networks)."""
    def run(img, res, a, b, files):
        padded, remove_pad = resize_with_pad(img, res)
        return hwc3(remove_pad(network_map(padded, files, a)))
    return run


def _annotator(name: str, tags: tuple[str, ...], weights: tuple[str, ...], label: str = "", priority: int = 0,
               resolution: bool = True, run=None, **kw) -> Preprocessor:
    """A row of the extension's preprocessors that run a network from its annotator files (no ``run``:
    a network Easel does not have). ``resolution``: whether the extension shows the slider."""
    return Preprocessor(name, run, label=label, tags=tags, priority=priority, weights=weights,
                        resolution=RESOLUTION if resolution else None, **kw)


# the extension's names, labels, tags, sliders and annotator files (annotator/*/__init__.py's model_dir and names)
for _row in (
    _annotator("depth", ("Depth",), _MIDAS, label="depth_midas", priority=100,
               run=_padded(annotator_depth.depth_midas)),
    _annotator("depth_leres", ("Depth",), ("leres/res101.pth",), **_LERES_SLIDERS, run=annotator_leres.depth_leres),
    _annotator("depth_leres++", ("Depth",), ("leres/res101.pth", "leres/latest_net_G.pth"), **_LERES_SLIDERS,
               run=annotator_leres.depth_leres_boost),
    _annotator("depth_zoe", ("Depth",), (annotator_zoe.FILE,), resolution=False,
               run=_padded(annotator_zoe.depth_zoe)),
    _annotator("depth_anything", ("Depth",), (annotator_depth.DEPTH_ANYTHING_FILE,), resolution=False,
               run=_padded(annotator_depth.depth_anything)),
    _annotator("depth_anything_v2", ("Depth",), (annotator_depth.DEPTH_ANYTHING_V2_FILE,), resolution=False,
               run=_padded(annotator_depth.depth_anything_v2)),
    _annotator("normal_map", ("NormalMap",), _MIDAS, label="normal_midas",
               slider_1=Slider("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01),
               run=_padded(annotator_depth.normal_midas)),
    _annotator("normal_bae", ("NormalMap",), (annotator_normal_bae.FILE,), priority=100, resolution=False,
               run=_padded(annotator_normal_bae.normal_bae)),
    _annotator("normal_dsine", ("NormalMap",), (annotator_normal_dsine.FILE,), slider_1=Slider("Fov", 60, 0, 360, 0.1),
               slider_2=Slider("Iterations", 5, 1, 20, 1), run=annotator_normal_dsine.normal_dsine),
    _annotator("openpose", ("OpenPose",), (annotator_openpose.FILE,), run=_openpose),
    _annotator("openpose_face", ("OpenPose",), _OPENPOSE[::2], resolution=False, run=_openpose_parts(False, True)),
    _annotator("openpose_faceonly", ("OpenPose",), _OPENPOSE[::2], resolution=False,
               run=_openpose_parts(False, True, with_body=False)),
    _annotator("openpose_full", ("OpenPose",), _OPENPOSE, priority=100, run=_openpose_parts(True, True)),
    _annotator("openpose_hand", ("OpenPose",), _OPENPOSE[:2], resolution=False, run=_openpose_parts(True, False)),
    _annotator("dw_openpose_full", ("OpenPose",), ("openpose/yolox_l.onnx", "openpose/dw-ll_ucoco_384.onnx"),
               run=_padded(annotator_dwpose.dw_openpose_full)),
    _annotator("animal_openpose", ("OpenPose",), (
        "openpose/yolox_l.onnx", "openpose/rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"),
               run=_padded(annotator_dwpose.animal_openpose)),
    _annotator("densepose", ("OpenPose",), ("densepose/densepose_r50_fpn_dl.torchscript",),
               label="densepose (pruple bg & purple torso)"),
    _annotator("densepose_parula", ("OpenPose",), ("densepose/densepose_r50_fpn_dl.torchscript",),
               label="densepose_parula (black bg & blue torso)"),
    _annotator("hed", ("SoftEdge",), _HED, label="softedge_hed", run=_hed),
    _annotator("hed_safe", ("SoftEdge",), _HED, label="softedge_hedsafe", run=_hed_safe),
    _annotator("pidinet", ("SoftEdge",), _PIDINET, label="softedge_pidinet", priority=100, resolution=False,
               run=_pidinet),
    _annotator("pidinet_safe", ("SoftEdge",), _PIDINET, label="softedge_pidisafe", resolution=False,
               run=_pidinet_safe),
    _annotator("softedge_teed", ("SoftEdge",), (annotator_teed.FILE,), slider_1=Slider("Safe Steps", 2, 0, 10, 1),
               run=_padded(annotator_teed.softedge_teed)),
    # the extension's anyline shows its resolution slider at 1280
    Preprocessor("softedge_anyline", _padded(annotator_teed.softedge_anyline), tags=("SoftEdge",),
                 weights=(annotator_teed.FILE_MTEED,), resolution=Slider("Resolution", 1280, 64, 2048, 8),
                 slider_1=Slider("Safe Steps", 2, 0, 10, 1)),
    _annotator("scribble_hed", ("Scribble", "SparseCtrl"), _HED, run=_scribble_hed),
    _annotator("pidinet_scribble", ("Scribble", "SparseCtrl"), _PIDINET, label="scribble_pidinet", priority=100,
               resolution=False, run=_scribble_pidinet),
    _annotator("pidinet_sketch", ("T2I-Adapter",), _PIDINET, label="t2ia_sketch_pidi", resolution=False,
               run=_pidinet_sketch),
    _annotator("lineart", ("Lineart",), (annotator_lineart.FILE,), label="lineart_realistic", resolution=False,
               run=_lineart),
    _annotator("lineart_coarse", ("Lineart",), (annotator_lineart.FILE_COARSE,), resolution=False, run=_lineart),
    _annotator("lineart_anime", ("Lineart",), (annotator_lineart_anime.FILE_ANIME,), resolution=False,
               run=_lineart_anime),
    _annotator("lineart_anime_denoise", ("Lineart",), (annotator_lineart_anime.FILE_MANGA,), resolution=False,
               run=_lineart_anime_denoise),
    _annotator("mlsd", ("MLSD",), (annotator_mlsd.FILE,), priority=100, run=_mlsd,
               slider_1=Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
               slider_2=Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01)),
    _annotator("segmentation", ("Segmentation",), (annotator_uniformer.FILE,), label="seg_ufade20k",
               run=_padded(annotator_uniformer.segmentation)),
    _annotator("oneformer_ade20k", ("Segmentation",), ("oneformer/250_16_swin_l_oneformer_ade20k_160k.pth",),
               label="seg_ofade20k", priority=100, resolution=False),
    _annotator("oneformer_coco", ("Segmentation",), ("oneformer/150_16_swin_l_oneformer_coco_100ep.pth",),
               label="seg_ofcoco", resolution=False),
    _annotator("anime_face_segment", ("Segmentation",), (annotator_anime_face.FILE,), label="seg_anime_face",
               run=_padded(annotator_anime_face.anime_face_segment)),
    _annotator("inpaint_only+lama", ("Inpaint",), (annotator_lama.FILE,), resolution=False, hidden_resolution=HIDDEN,
               accepts_mask=True, requires_mask=True, run=annotator_lama.preprocess),
    _annotator("ip-adapter_clip_sd15", ("IP-Adapter",), (CLIP_VISION_H,), label="ip-adapter_clip_h", priority=100,
               resolution=False, run=_clip_picture),
    _annotator("ip-adapter_clip_sdxl", ("IP-Adapter",), (CLIP_VISION_G,), label="ip-adapter_clip_g",
               resolution=False, run=_clip_picture),
    _annotator("ip-adapter_clip_sdxl_plus_vith", ("IP-Adapter",), (CLIP_VISION_H,), resolution=False,
               run=_clip_picture),
    # SDXL Revision: no model; the unit's picture through clip_g.pth (modules.core.controlnet.Revision)
    _annotator("revision_clipvision", ("Revision",), (CLIP_VISION_G,), priority=100, resolution=False,
               run=_clip_picture, model_free=True, slider_1=NOISE_AUGMENTATION),
    _annotator("revision_ignore_prompt", ("Revision",), (CLIP_VISION_G,), resolution=False,
               run=_clip_picture, model_free=True, slider_1=NOISE_AUGMENTATION),
):
    register(_row)


# the extension's face rows (insightface's FaceAnalysis: modules.core.face_analysis). The embedding rows give
# the picture as their map once a face is found in it; a unit's IP-Adapter reads the embedding
# (modules.services.controlnets); instant_id_face_keypoints gives InstantID's keypoints map.
def _face_id(img, res, a, b, files):
    face_analysis.face_id_embedding(img, files[:2])
    return img


def _instant_id_embedding(img, res, a, b, files):
    face_analysis.instant_id_embedding(img, res, files)
    return img


def _instant_id_keypoints(img, res, a, b, files):
    return face_analysis.instant_id_keypoints(img, res, files)


for _row in (
    _annotator("ip-adapter_face_id", ("IP-Adapter",), face_analysis.BUFFALO_L_FILES, resolution=False, run=_face_id),
    _annotator("ip-adapter_face_id_plus", ("IP-Adapter",), (*face_analysis.BUFFALO_L_FILES, CLIP_VISION_H),
               resolution=False, run=_face_id),
    _annotator("instant_id_face_embedding", ("Instant-ID",), face_analysis.ANTELOPEV2_FILES, resolution=False,
               run=_instant_id_embedding),
    _annotator("instant_id_face_keypoints", ("Instant-ID",), face_analysis.ANTELOPEV2_FILES[:1], resolution=False,
               run=_instant_id_keypoints),
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
