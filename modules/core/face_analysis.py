"""insightface's FaceAnalysis as sd-webui-controlnet uses it, run from the user's ONNX files with OpenCV's dnn
(insightface and onnxruntime are not needed): the face preprocessors ``ip-adapter_face_id``,
``ip-adapter_face_id_plus`` (buffalo_l) and ``instant_id_face_embedding`` / ``instant_id_face_keypoints``
(antelopev2).

**Files**, where the extension's ``FaceAnalysis(name, root=<annotator models>/insightface)`` reads them
(its ``models/<name>`` folder): ``insightface/models/buffalo_l/det_10g.onnx`` + ``w600k_r50.onnx`` and
``insightface/models/antelopev2/scrfd_10g_bnkps.onnx`` + ``glintr100.onnx`` (the detection and
recognition models; the landmark and gender/age ones beside them play no part in what the extension
uses: the 5 keypoints, the box and the embedding).

**Detection** (SCRFD with keypoints: 9 outputs, strides 8/16/32, 2 anchors per position), as
``FaceAnalysis.prepare(det_size=(640, 640))`` + ``SCRFD.detect``: the picture scaled (bilinear) so that
it fits 640x640 keeping its aspect (``int`` sizes; the scale is the new height over the old), put at the
top left of a black 640x640 square, read as ``(RGB - 127.5) / 128``; per stride, the anchor centres are
the grid's (x, y) times the stride, each twice; the rows scoring at least 0.5 are kept, their box is the
centre minus / plus the distances (times the stride) and their keypoints the centre plus the distances;
all divided by the scale, then greedy NMS at IoU 0.4 (areas with the "+1" pixels), best first. The
outputs are told apart by their shapes (rows per stride; 1, 4 or 10 columns), with or without the
leading batch axis.

**Recognition** (ArcFace): the 5 keypoints mapped onto insightface's 112x112 ArcFace template by the
least-squares similarity (rotation, uniform scale, shift: skimage's ``SimilarityTransform.estimate``),
the picture warped with it (bilinear, black outside), read as ``(RGB - 127.5) / 127.5``; the output
flattened is ``face.embedding``, divided by its norm ``face.normed_embedding``.

The largest face (box area; the last of equal ones) is the one used, as the extension's
``pick_largest_face``; no face is an error.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .annotator_dwpose import OnnxNet, nms
from .annotator_files import NetworkCache, resize_with_pad
from .checkpoint_file import CheckpointError

BUFFALO_L, ANTELOPEV2 = "insightface/models/buffalo_l", "insightface/models/antelopev2"
BUFFALO_L_FILES = (f"{BUFFALO_L}/det_10g.onnx", f"{BUFFALO_L}/w600k_r50.onnx")
ANTELOPEV2_FILES = (f"{ANTELOPEV2}/scrfd_10g_bnkps.onnx", f"{ANTELOPEV2}/glintr100.onnx")

DETECTOR_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2
DETECTION_THRESHOLD, NMS_THRESHOLD = 0.5, 0.4
DETECTOR_MEAN, DETECTOR_STD = 127.5, 128.0
ARCFACE_SIZE = 112
ARCFACE_MEAN, ARCFACE_STD = 127.5, 127.5
# insightface's ArcFace template: the eyes, the nose tip, the mouth corners in a 112x112 crop
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
# InstantID's keypoints map: the keypoints' colours, the limbs (to the nose) and their half width
KEYPOINT_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
KEYPOINT_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_WIDTH, KEYPOINT_RADIUS = 4, 10


class NoFace(ValueError):
    pass


@dataclass
class Face:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in the picture's pixels
    score: float
    keypoints: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right
    embedding: np.ndarray | None = None  # (512,) ArcFace's output

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def normed_embedding(self) -> np.ndarray:
        return self.embedding / np.linalg.norm(self.embedding)


_NETWORKS = NetworkCache(4)


def network(path: Path) -> OnnxNet:
    return _NETWORKS.get(path, OnnxNet)


# --- detection (SCRFD) ---

def detector_input(image: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 RGB -> the (1, 3, size, size) float32 input and the scale of the picture in it."""
    h, w = image.shape[:2]
    if h / w > 1.0:
        new_h, new_w = size, int(size / (h / w))
    else:
        new_w, new_h = size, int(size * (h / w))
    square = np.zeros((size, size, 3), np.uint8)
    square[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    x = (square.astype(np.float32) - DETECTOR_MEAN) / DETECTOR_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), new_h / h


def anchor_centres(stride: int, size: int = DETECTOR_SIZE) -> np.ndarray:
    """(cells * ANCHORS, 2) x, y of each anchor, row by row, each position's anchors together."""
    cells = size // stride
    ys, xs = np.mgrid[:cells, :cells]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, ANCHORS, axis=0)


def split_outputs(outputs: list[np.ndarray], size: int = DETECTOR_SIZE) -> list[tuple[np.ndarray, ...]]:
    """Per stride, (scores (N, 1), box distances (N, 4), keypoint distances (N, 10)) from the outputs in
    any order, told apart by their shapes."""
    flat = [np.asarray(o, np.float32).reshape(-1, o.shape[-1]) for o in outputs]
    out = []
    for stride in STRIDES:
        rows = (size // stride) ** 2 * ANCHORS
        found = {}
        for o in flat:
            if o.shape[0] == rows and o.shape[1] in (1, 4, 10):
                found.setdefault(o.shape[1], o)
        if len(found) != 3:
            shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
            raise CheckpointError(f"not an SCRFD detector with keypoints (strides 8/16/32, 2 anchors): "
                                  f"outputs {shapes} for a {size}x{size} input")
        out.append((found[1], found[4], found[10]))
    return out


def decode(outputs: list[np.ndarray], scale: float, threshold: float = DETECTION_THRESHOLD,
           size: int = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (N, 4), scores (N,), keypoints (N, 5, 2)) in the picture's pixels, before NMS."""
    boxes, scores, points = [], [], []
    for stride, (score, box, kps) in zip(STRIDES, split_outputs(outputs, size)):
        centres = anchor_centres(stride, size)
        keep = score[:, 0] >= threshold
        c, d, k = centres[keep], box[keep] * stride, kps[keep] * stride
        boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
        points.append(np.tile(c, (1, 5)).reshape(-1, 5, 2) + k.reshape(-1, 5, 2))
        scores.append(score[keep, 0])
    return (np.concatenate(boxes) / scale, np.concatenate(scores), np.concatenate(points) / scale)


def detect_faces(net: OnnxNet, image: np.ndarray) -> list[Face]:
    """The faces of an (H, W, 3) uint8 RGB picture, best score first."""
    x, scale = detector_input(image)
    boxes, scores, points = decode(net(x), scale)
    return [Face(boxes[i], float(scores[i]), points[i]) for i in nms(boxes, scores, NMS_THRESHOLD)]


# --- recognition (ArcFace) ---

def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) least-squares similarity (rotation, uniform scale, shift) taking ``src`` points onto ``dst``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    zs = (src[:, 0] - src[:, 0].mean()) + 1j * (src[:, 1] - src[:, 1].mean())
    zd = (dst[:, 0] - dst[:, 0].mean()) + 1j * (dst[:, 1] - dst[:, 1].mean())
    z = np.sum(np.conj(zs) * zd) / np.sum(np.abs(zs) ** 2)  # scale * e^(i angle)
    a, b = z.real, z.imag
    rot = np.array([[a, -b], [b, a]])
    shift = dst.mean(0) - rot @ src.mean(0)
    return np.concatenate([rot, shift[:, None]], axis=1)


def aligned_crop(image: np.ndarray, keypoints: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """insightface's ``norm_crop``: the face warped onto the ArcFace template, (size, size, 3)."""
    template = ARCFACE_TEMPLATE * (size / 112.0)
    return cv2.warpAffine(image, similarity(keypoints, template), (size, size), borderValue=0.0)


def embed(net: OnnxNet, crop: np.ndarray) -> np.ndarray:
    x = (crop.astype(np.float32) - ARCFACE_MEAN) / ARCFACE_STD
    out = net(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))[0]
    return np.asarray(out, np.float32).reshape(-1)


# --- the extension's uses ---

def largest(faces: list[Face]) -> Face:
    if not faces:
        raise NoFace("Insightface: No face found in image.")
    return max(enumerate(faces), key=lambda f: (f[1].area, f[0]))[1]


_LAST: dict[tuple, Face] = {}
_LAST_LOCK = threading.Lock()


def _key(image: np.ndarray, files: list[Path]) -> tuple:
    stats = tuple((str(p), Path(p).stat().st_mtime_ns) for p in files)
    return (hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(), image.shape, stats)


def analyze(image: np.ndarray, files: list[Path]) -> Face:
    """The largest face of an (H, W, 3) uint8 RGB picture, with its embedding when ``files`` has the
    recognition file after the detector. The last few answers are kept (a unit's picture analysed by the
    preprocessor, then for its tokens)."""
    image = np.ascontiguousarray(image[:, :, :3])
    key = _key(image, files)
    with _LAST_LOCK:
        if key in _LAST:
            return _LAST[key]
    face = largest(detect_faces(network(files[0]), image))
    if len(files) > 1:
        face.embedding = embed(network(files[1]), aligned_crop(image, face.keypoints))
    with _LAST_LOCK:
        _LAST[key] = face
        while len(_LAST) > 4:
            _LAST.pop(next(iter(_LAST)))
    return face


def face_id_embedding(image: np.ndarray, files: list[Path]) -> np.ndarray:
    """``ip-adapter_face_id``'s (1, 512) embedding: the largest face's normed embedding (buffalo_l)."""
    return analyze(image, files).normed_embedding[None].astype(np.float32)


def draw_keypoints(height: int, width: int, keypoints: np.ndarray) -> np.ndarray:
    """InstantID's keypoints map: on black, the four limbs from the eyes and mouth corners to the nose as
    ellipses (half width 4) in the first point's colour, dimmed to 0.6, then each point a filled circle
    (radius 10) in its colour."""
    out = np.zeros((height, width, 3))
    kps = np.asarray(keypoints, np.float64)
    for a, b in KEYPOINT_LIMBS:
        (x0, y0), (x1, y1) = kps[a], kps[b]
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        polygon = cv2.ellipse2Poly((int((x0 + x1) / 2), int((y0 + y1) / 2)), (int(length / 2), STICK_WIDTH),
                                   int(angle), 0, 360, 1)
        out = cv2.fillConvexPoly(out, polygon, KEYPOINT_COLORS[a])
    out = (out * 0.6).astype(np.uint8)
    for (x, y), color in zip(kps, KEYPOINT_COLORS):
        out = cv2.circle(out, (int(x), int(y)), KEYPOINT_RADIUS, color, -1)
    return out


def instant_id(image: np.ndarray, resolution: int, files: list[Path]) -> tuple[Face, np.ndarray, callable]:
    """InstantID's analysis: the largest face of the picture resized with pad to ``resolution`` (antelopev2);
    (face, padded picture, remove_pad)."""
    padded, remove_pad = resize_with_pad(np.ascontiguousarray(image[:, :, :3]), resolution)
    return analyze(padded, files), padded, remove_pad


def instant_id_keypoints(image: np.ndarray, resolution: int, files: list[Path]) -> np.ndarray:
    """``instant_id_face_keypoints``'s map (H, W, 3) uint8 at the resized picture's size."""
    face, padded, remove_pad = instant_id(image, resolution, files[:1])
    return remove_pad(draw_keypoints(padded.shape[0], padded.shape[1], face.keypoints))


def instant_id_embedding(image: np.ndarray, resolution: int, files: list[Path]) -> np.ndarray:
    """``instant_id_face_embedding``'s (512,) embedding (not normed, as the extension gives it)."""
    return instant_id(image, resolution, files)[0].embedding
