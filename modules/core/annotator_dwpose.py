"""sd-webui-controlnet's ``dw_openpose_full`` and ``animal_openpose``, run from the user's ONNX files with
OpenCV's dnn module, as the extension runs them when onnxruntime is absent: ``openpose/yolox_l.onnx``
(YOLOX-L, the 80 COCO classes) finds the people (or the animals) and ``openpose/dw-ll_ucoco_384.onnx``
(DWPose, RTMPose-l on COCO-WholeBody: 133 keypoints) or
``openpose/rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx`` (RTMPose-m on AP-10K:
17 keypoints) places the keypoints in each box.

Detection, as the extension: the RGB picture (the extension feeds RGB, as here) is scaled by
``min(640 / H, 640 / W)`` (bilinear), put at the top left of a 640x640 grey (114) square and read as
0..255 floats, (1, 3, 640, 640); the output (1, 8400, 5 + classes) holds per anchor of the stride 8, 16
and 32 grids (row by row) the box's centre offset (plus the cell, times the stride), its log size (exp,
times the stride), the objectness and the class scores. A box's score per class is objectness times class
score; per class, boxes over 0.1 go through non-maximum suppression at IoU 0.45 (areas counted with the
"+1" pixels); those over 0.3 of the wanted classes (person: 0; the animals: 14..23) are kept.

Pose, as the extension: each box is widened 1.25 times around its centre, then to the model's aspect
(288x384 for DWPose, 256x256 for the animals), warped (bilinear, black outside) to the model's size,
normalised by ImageNet's mean and std in RGB, and run one at a time. The outputs ``simcc_x`` (1, K, 2 W)
and ``simcc_y`` (1, K, 2 H) give each keypoint's location as the argmax over 2 (the split ratio) and its
score as the smaller of the two maxima (a location -1 where that is not above 0); locations go back to
the picture through the box. Without any detection over 0.1 DWPose finds no one; with detections but
no person over 0.3 it reads the whole picture as one box (as the extension does).

The wholebody's 133 keypoints become OpenPose's: the neck (the shoulders' mean, shown when both score
over 0.3) is inserted as keypoint 17 and the first 18 reordered into OpenPose's body order; 24..91 are
the face's 68 landmarks (plus the body's eyes: 70), 92..112 the left hand, 113..133 the right. Keypoints
under 0.3 are not drawn. Each person is drawn on black with Easel's OpenPose drawing (body, left hand,
right hand, face). The animals' 17 keypoints are all drawn as 17 lines 5 px wide in the extension's
colours.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from .annotator_files import NetworkCache
from .annotator_openpose import draw_body
from .annotator_openpose_hand_face import draw_face, draw_hand
from .checkpoint_file import CheckpointError

DETECTOR_FILE = "openpose/yolox_l.onnx"
WHOLEBODY_FILE = "openpose/dw-ll_ucoco_384.onnx"
ANIMAL_FILE = "openpose/rtmpose-m_simcc-ap10k_pt-aic-coco_210e-256x256-7a041aa1_20230206.onnx"

DETECTOR_SIZE = (640, 640)  # (height, width)
STRIDES = (8, 16, 32)
WHOLEBODY_SIZE, ANIMAL_SIZE = (288, 384), (256, 256)  # (width, height)
SIMCC_SPLIT = 2.0
PERSON, ANIMALS = (0,), tuple(range(14, 24))  # COCO's person; bird .. giraffe
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
KEYPOINT_THRESHOLD = 0.3

# the wholebody's first 17 (COCO's) keypoints, the neck inserted at 17 -> OpenPose's body order
OPENPOSE_FROM_COCO = ((1, 17), (2, 6), (3, 8), (4, 10), (6, 7), (7, 9), (8, 12), (9, 14), (10, 16), (12, 13),
                      (13, 15), (14, 2), (15, 1), (16, 4), (17, 3))
# AP-10K's limbs (1-based keypoints) and colours, in the extension's order
ANIMAL_LIMBS = ((1, 2), (2, 3), (1, 3), (3, 4), (4, 9), (9, 10), (10, 11), (4, 6), (6, 7), (7, 8), (4, 5), (5, 15),
                (15, 16), (16, 17), (5, 12), (12, 13), (13, 14))
ANIMAL_COLORS = ((255, 255, 255), (100, 255, 100), (150, 255, 255), (100, 50, 255), (50, 150, 200), (0, 255, 255),
                 (0, 150, 0), (0, 0, 255), (0, 0, 150), (255, 50, 255), (255, 0, 255), (255, 0, 0), (150, 0, 0),
                 (255, 255, 100), (0, 150, 0), (255, 255, 0), (150, 150, 150))


class OnnxNet:
    """An ONNX file read by OpenCV's dnn module (CPU), run under a lock (a Net is not thread-safe)."""

    def __init__(self, path: Path):
        self.name = Path(path).name
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))  # OpenCV's own backend on the CPU, its default
            self.outputs = list(self.net.getUnconnectedOutLayersNames())
        except cv2.error as exc:
            detail = " ".join(str(exc).split())[-300:]
            raise CheckpointError(f"{self.name} is not an ONNX network OpenCV can read: {detail}") from None
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray, names: tuple[str, ...] = ()) -> list[np.ndarray]:
        """The outputs for a float32 NCHW input; ``names``: that order, when the file has those outputs."""
        order = list(names) if names and set(names) <= set(self.outputs) else self.outputs
        with self._lock:
            try:
                self.net.setInput(np.ascontiguousarray(x, dtype=np.float32))
                return [np.asarray(o) for o in self.net.forward(order)]
            except cv2.error as exc:
                detail = " ".join(str(exc).split())[-300:]
                raise CheckpointError(f"{self.name} does not run on a {tuple(x.shape)} input: {detail}") from None


_NETWORKS = NetworkCache(3)


def network(path: Path) -> OnnxNet:
    """The ONNX network of ``path``, kept while the file is unchanged (the last three files)."""
    return _NETWORKS.get(path, OnnxNet)


# --- detection (YOLOX) ---

def letterbox(image: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 -> the (1, 3, h, w) float32 input (scaled into the top left of grey 114) and the scale."""
    ratio = min(size[0] / image.shape[0], size[1] / image.shape[1])
    scaled = cv2.resize(image, (int(image.shape[1] * ratio), int(image.shape[0] * ratio)),
                        interpolation=cv2.INTER_LINEAR)
    square = np.full((size[0], size[1], 3), 114, np.uint8)
    square[:scaled.shape[0], :scaled.shape[1]] = scaled
    return np.ascontiguousarray(square.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def decode_grid(raw: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> np.ndarray:
    """(anchors, 5 + C) raw outputs -> centre x, y and width, height in input pixels (the rest as is)."""
    cells, strides = [], []
    for stride in STRIDES:
        xs, ys = np.meshgrid(np.arange(size[1] // stride), np.arange(size[0] // stride))
        cells.append(np.stack([xs, ys], axis=2).reshape(-1, 2))
        strides.append(np.full((cells[-1].shape[0], 1), stride))
    cells, strides = np.concatenate(cells), np.concatenate(strides)
    if raw.shape[0] != cells.shape[0]:
        raise ValueError(f"{raw.shape[0]} anchors, not the {cells.shape[0]} of a {size[1]}x{size[0]} input")
    out = raw.astype(np.float32)  # kept in float32 as the extension keeps it (boxes, scores and NMS too)
    out[:, :2] = (out[:, :2] + cells) * strides
    out[:, 2:4] = np.exp(out[:, 2:4]) * strides
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (areas with the "+1" pixels); the kept indices, best first."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = rest[overlap <= threshold]
    return keep


def detections(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.45, least: float = 0.1) -> np.ndarray | None:
    """Per class (in class order), the boxes scoring over ``least`` left by NMS: (N, 6) rows of x0, y0, x1,
    y1, score, class; None when no box of any class scores over ``least``."""
    found = []
    for cls in range(scores.shape[1]):
        mask = scores[:, cls] > least
        if not mask.any():
            continue
        kept_boxes, kept_scores = boxes[mask], scores[mask, cls]
        keep = nms(kept_boxes, kept_scores, iou)
        found.append(np.concatenate([kept_boxes[keep], kept_scores[keep, None], np.full((len(keep), 1), cls)], 1))
    return np.concatenate(found) if found else None


def detect(net: OnnxNet, image: np.ndarray, classes: tuple[int, ...] = PERSON) -> np.ndarray | None:
    """The (N, 4) x0, y0, x1, y1 boxes in the picture's pixels of the wanted classes scoring over 0.3 (maybe
    none); None when nothing at all scores over 0.1."""
    x, ratio = letterbox(image)
    raw = net(x)[0]
    if raw.ndim != 3 or raw.shape[0] != 1 or raw.shape[2] < 6:
        raise CheckpointError(f"{net.name} gives {tuple(raw.shape)}, not a YOLOX detector's (1, anchors, 5 + classes)")
    try:
        out = decode_grid(raw[0])
    except ValueError as exc:
        raise CheckpointError(f"{net.name}: {exc}") from None
    centre, size = out[:, :2], out[:, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) / ratio
    found = detections(boxes, out[:, 4:5] * out[:, 5:])
    if found is None:
        return None
    return found[(found[:, 4] > 0.3) & np.isin(found[:, 5], classes), :4]


# --- pose (RTMPose / DWPose, SimCC) ---

def box_frame(box: np.ndarray, size: tuple[int, int], padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """A box's centre and its (w, h) span: ``padding`` times the box, widened to ``size``'s w / h aspect."""
    box = np.asarray(box, dtype=np.float64)
    centre = (box[:2] + box[2:4]) * 0.5
    w, h = (box[2:4] - box[:2]) * padding
    aspect = size[0] / size[1]
    return centre, (np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h]))


def warp_matrix(centre: np.ndarray, span: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine map of the span around ``centre`` onto a (w, h) ``size`` picture (no rotation), from
    three float32 point pairs: the centres, a point half a width above, and the second turned a quarter
    round the first (computed in float32, as the extension does)."""
    def three(mid, half):
        points = np.zeros((3, 2), np.float32)
        points[0], points[1] = mid, np.asarray(mid) + (0.0, -half)
        towards = points[0] - points[1]
        points[2] = points[1] + np.array([-towards[1], towards[0]], np.float32)
        return points

    return cv2.getAffineTransform(three(centre, span[0] * 0.5), three((size[0] * 0.5, size[1] * 0.5), size[0] * 0.5))


def crop(image: np.ndarray, box, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box's normalised (1, 3, h, w) float32 input, its centre and span."""
    centre, span = box_frame(box, size)
    warped = cv2.warpAffine(image, warp_matrix(centre, span, size), (int(size[0]), int(size[1])),
                            flags=cv2.INTER_LINEAR)
    x = (warped - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32), centre, span


def simcc_peaks(simcc_x: np.ndarray, simcc_y: np.ndarray, split: float = SIMCC_SPLIT):
    """(K, 2 W), (K, 2 H) -> (K, 2) locations in the model's pixels and (K,) scores: the argmaxes over
    ``split``, the smaller maximum as the score, the location -1 / split where the score is not above 0."""
    locs = np.stack([simcc_x.argmax(1), simcc_y.argmax(1)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    locs[scores <= 0.0] = -1
    return locs / split, scores


def estimate(net: OnnxNet, image: np.ndarray, boxes: np.ndarray, size: tuple[int, int]):
    """The keypoints (N, K, 2) in the picture's pixels and scores (N, K) in each box (no box: the picture)."""
    if len(boxes) == 0:
        boxes = np.array([[0, 0, image.shape[1], image.shape[0]]])
    points, scores = [], []
    for box in boxes:
        x, centre, span = crop(image, box, size)
        outs = net(x, ("simcc_x", "simcc_y"))
        if len(outs) != 2 or outs[0].ndim != 3 or outs[1].ndim != 3 or outs[0].shape[:2] != outs[1].shape[:2]:
            raise CheckpointError(f"{net.name} gives {[tuple(o.shape) for o in outs]}, not an RTMPose "
                                  f"model's simcc_x (1, K, {int(size[0] * SIMCC_SPLIT)}) and simcc_y "
                                  f"(1, K, {int(size[1] * SIMCC_SPLIT)})")
        locs, score = simcc_peaks(outs[0][0], outs[1][0])
        points.append(locs / np.array(size) * span + centre - span / 2)
        scores.append(score)
    return np.array(points), np.array(scores)


# --- DWPose: 133 keypoints -> OpenPose's body, hands and face ---

def to_openpose(points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, 133, 2), (N, 133) -> (N, 134, 3) x, y, score: the neck inserted at 17, the body in OpenPose's order."""
    info = np.concatenate([points, scores[..., None]], axis=-1)
    neck = info[:, [5, 6]].mean(axis=1)
    neck[:, 2] = ((info[:, 5, 2] > KEYPOINT_THRESHOLD) & (info[:, 6, 2] > KEYPOINT_THRESHOLD)).astype(int)
    info = np.insert(info, 17, neck, axis=1)
    openpose, coco = zip(*OPENPOSE_FROM_COCO)
    info[:, list(openpose)] = info[:, list(coco)]
    return info


def _part(rows: np.ndarray) -> list[tuple[float, float] | None]:
    return [(float(x), float(y)) if s >= KEYPOINT_THRESHOLD else None for x, y, s in rows]


def people(info: np.ndarray) -> list[dict[str, list[tuple[float, float] | None]]]:
    """Per person: ``body`` (18), ``left_hand``, ``right_hand`` (21), ``face`` (68 and the body's eyes) in
    pixels, None where under 0.3 (a hand or face with none shown is left out: an empty list)."""
    found = []
    for row in info:
        body = _part(row[:18])
        face = _part(row[24:92])
        person = {"body": body, "left_hand": _part(row[92:113]), "right_hand": _part(row[113:134]),
                  "face": face + [body[14], body[15]] if any(p is not None for p in face) else []}
        for key in ("left_hand", "right_hand"):
            if all(p is None for p in person[key]):
                person[key] = []
        found.append(person)
    return found


def _fractions(points: list[tuple[float, float] | None], height: int, width: int) -> np.ndarray:
    """Pixels -> fractions of the picture for Easel's hand and face drawing; -1 where not shown."""
    return np.array([(-1.0, -1.0) if p is None else (p[0] / width, p[1] / height) for p in points]).reshape(-1, 2)


def draw_people(found: list[dict], height: int, width: int) -> np.ndarray:
    """Each person's body, left hand, right hand and face on a black (height, width, 3) uint8 canvas."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for person in found:
        draw_body(canvas, person["body"])
        for key in ("left_hand", "right_hand"):
            if person[key]:
                draw_hand(canvas, _fractions(person[key], height, width))
        if person["face"]:
            draw_face(canvas, _fractions(person["face"], height, width))
    return canvas


def wholebody(detector: OnnxNet, pose: OnnxNet, image: np.ndarray) -> list[dict]:
    """The people of an (H, W, 3) uint8 RGB picture (see ``people``)."""
    boxes = detect(detector, image, PERSON)
    if boxes is None:
        return []
    return people(to_openpose(*estimate(pose, image, boxes, WHOLEBODY_SIZE)))


def dw_openpose_full(image: np.ndarray, files: list[Path], _slider: float = 0.0) -> np.ndarray:
    """``dw_openpose_full``: ``files`` the detector's and DWPose's; the people drawn on black."""
    return draw_people(wholebody(network(files[0]), network(files[1]), image), *image.shape[:2])


# --- animals (AP-10K) ---

def animals(detector: OnnxNet, pose: OnnxNet, image: np.ndarray) -> np.ndarray:
    """(N, 17, 2) keypoints in pixels of the animals (COCO classes 14..23) in an RGB picture."""
    boxes = detect(detector, image, ANIMALS)
    if boxes is None or len(boxes) == 0:
        return np.zeros((0, 17, 2))
    return estimate(pose, image, boxes, ANIMAL_SIZE)[0]


def draw_animals(found: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each animal's 17 limbs as 5 px lines in the extension's colours on a black canvas."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for points in found:
        for (a, b), color in zip(ANIMAL_LIMBS, ANIMAL_COLORS):
            p, q = points[a - 1], points[b - 1]
            cv2.line(canvas, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), color, 5)
    return canvas


def animal_openpose(image: np.ndarray, files: list[Path], _slider: float = 0.0) -> np.ndarray:
    """``animal_openpose``: ``files`` the detector's and the AP-10K model's; the animals drawn on black."""
    return draw_animals(animals(network(files[0]), network(files[1]), image), *image.shape[:2])
