"""The OpenPose hand and face networks of sd-webui-controlnet's ``openpose_hand``, ``openpose_face``,
``openpose_faceonly`` and ``openpose_full``, run from the user's ``openpose/hand_pose_model.pth`` and
``openpose/facenet.pth`` on the boxes the body's parts give, and their drawing (CMU's OpenPose models;
non-commercial use only).

Both files are plain state dicts of the same convolutional pose machine: a backbone ``conv1_1`` ..
``conv5_3_CPM`` (3x3, ReLU after each, 2x2 max pools after ``conv1_2``, ``conv2_2``, ``conv3_4``), stage 1
``conv6_1_CPM``, ``conv6_2_CPM`` and stages 2..6 ``Mconv1_stageN`` .. ``Mconv7_stageN`` reading the last
stage's maps and the backbone's features; every convolution has a ReLU but ``conv6_2_CPM`` and the
``Mconv7``. The hand's gives 22 maps (21 joints and the background), the face's 71 (70 landmarks and the
background). The widths come from the file's shapes.

As the extension: a hand's box is square beyond the wrist (from the shoulder, elbow and wrist), at least
20 px; the crop, blurred (sigma 0.8), runs at 184, 368, 552 and 736 px and its maps are averaged at
128 px; each joint is the maximum of its map inside the strongest blob of the smoothed map over 0.05. The
face's box is square around the nose (from the eyes and ears); the crop runs at 384 px, the maps are
scaled back bilinearly and every map's maximum over 0.05 is a landmark. The keypoints are kept as
fractions of the picture in float32, as the extension keeps them, and drawn from those.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .annotator_files import NetworkCache
from .annotator_openpose import draw_body, find_people, maps, resize
from .checkpoint_file import CheckpointError, CheckpointFile

HAND_FILE, FACE_FILE = "openpose/hand_pose_model.pth", "openpose/facenet.pth"
BACKBONE = ("conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2", "conv3_3",
            "conv3_4", "pool", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM")
MAPS = {HAND_FILE: 22, FACE_FILE: 71}
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))


def _stages() -> list[list[str]]:
    return [["conv6_1_CPM", "conv6_2_CPM"]] + [[f"Mconv{i}_stage{s}" for i in range(1, 8)] for s in range(2, 7)]


class PoseMachine(torch.nn.Module):
    """The hand or face network; ``shapes``: each layer's weight shape. Its keys are the file's."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        for name in [n for n in BACKBONE if n != "pool"] + [n for stage in _stages() for n in stage]:
            out, into, size = shapes[name][:3]
            self.add_module(name, torch.nn.Conv2d(into, out, size, padding=size // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) BGR as x / 256 - 0.5 -> the last stage's maps at stride 8."""
        for name in BACKBONE:
            x = F.max_pool2d(x, 2, 2) if name == "pool" else F.relu(getattr(self, name)(x))
        features, x = x, x
        for index, stage in enumerate(_stages()):
            if index:
                x = torch.cat([x, features], 1)
            for name in stage:
                x = getattr(self, name)(x)
                x = x if name in ("conv6_2_CPM", stage[-1]) else F.relu(x)
        return x


def build(path: Path, kind: str) -> PoseMachine:
    """The network of a hand (``kind`` HAND_FILE) or face (FACE_FILE) file; CheckpointError otherwise."""
    name, maps = Path(path).name, MAPS[kind]
    file = CheckpointFile(path)
    try:
        names = [n for n in BACKBONE if n != "pool"] + [n for stage in _stages() for n in stage]
        shapes = {n: file.shapes.get(f"{n}.weight", ()) for n in names}
        missing = [n for n in names if len(shapes[n]) != 4 or f"{n}.bias" not in file.shapes]
        if missing:
            raise CheckpointError(f"{name} is not an OpenPose {'hand' if kind == HAND_FILE else 'face'} state "
                                  f"dict (conv1_1 .. conv5_3_CPM, conv6_*_CPM, Mconv*_stage2..6): it lacks "
                                  f"{', '.join(missing[:3])}")
        channels, features = 3, 0
        for layer in names:
            if layer.startswith("Mconv1_"):  # a stage reads the last stage's maps and the features
                channels += features
            if layer == "conv6_1_CPM":
                features = channels
            if shapes[layer][1] != channels or shapes[layer][2] != shapes[layer][3]:
                raise CheckpointError(f"{name}: {layer}.weight is {shapes[layer]}, expected {channels} input "
                                      f"channels and a square kernel")
            channels = shapes[layer][0]
            if layer in ("conv6_2_CPM", "Mconv7_stage6") and channels != maps:
                raise CheckpointError(f"{name}: {layer} gives {channels} maps, not {maps}")
        net = PoseMachine(shapes)
        state = {k: file.get(k, torch.float32) for k in net.state_dict()}
    finally:
        file.close()
    net.load_state_dict(state)
    return net.eval()


_NETWORKS = NetworkCache(4)


def network(path: Path, kind: str) -> PoseMachine:
    """The built network of ``path``, kept while the file is unchanged (the last four files)."""
    return _NETWORKS.get(path, lambda p: build(p, kind), kind)


def _input(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)[None]).astype(np.float32) / 256 - 0.5)


def _distance(a, b) -> float:
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)


def hand_boxes(parts, height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) of the hands' square boxes from a body's parts in pixels (left first)."""
    boxes = []
    for shoulder, elbow, wrist, left in ((5, 6, 7, True), (2, 3, 4, False)):
        if any(parts[i] is None for i in (shoulder, elbow, wrist)):
            continue
        (x1, y1), (x2, y2), (x3, y3) = parts[shoulder], parts[elbow], parts[wrist]
        side = 1.5 * max(_distance((x3, y3), (x2, y2)), 0.9 * _distance((x2, y2), (x1, y1)))
        x = max(x3 + 0.33 * (x3 - x2) - side / 2, 0)
        y = max(y3 + 0.33 * (y3 - y2) - side / 2, 0)
        side = min(width - x if x + side > width else side, height - y if y + side > height else side)
        if side >= 20:
            boxes.append((int(x), int(y), int(side), left))
    return boxes


def face_box(parts, height: int, width: int) -> tuple[int, int, int] | None:
    """(x, y, side) of the face's box from a body's parts in pixels, None without one (under 20 px)."""
    nose = parts[0]
    if nose is None or all(parts[i] is None for i in (14, 15, 16, 17)):
        return None
    side = 0.0
    for index, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        if parts[index] is not None:
            side = max(side, factor * max(abs(nose[0] - parts[index][0]), abs(nose[1] - parts[index][1])))
    x, y = max(nose[0] - side, 0), max(nose[1] - side, 0)
    across = width - x if x + side > width else side * 2  # the original tests x + side, then takes 2 sides
    down = height - y if y + side > height else side * 2
    side = min(across, down)
    return (int(x), int(y), int(side)) if side >= 20 else None


@torch.no_grad()
def hand_joints(net: PoseMachine, crop: np.ndarray) -> np.ndarray:
    """(21, 2) joints (x, y) in a BGR crop's pixels; (0, 0) where a joint's map has nothing over 0.05."""
    h, w = crop.shape[:2]
    blurred = cv2.GaussianBlur(crop, (0, 0), 0.8)
    average = np.zeros((128, 128, 22))
    for size in (184, 368, 552, 736):
        scaled = resize(blurred, size, size)
        padded = np.pad(scaled, [[0, -size % 8], [0, -size % 8], [0, 0]], constant_values=128)
        planes = []
        for plane in net(_input(padded))[0].numpy():
            big = resize(plane, plane.shape[1] * 8, plane.shape[0] * 8)[:size, :size]
            planes.append(resize(big, 128, 128))
        average += np.stack(planes, axis=2) / 4
    joints = []
    for part in range(21):
        raw = average[:, :, part]
        blobs, count = ndimage.label(ndimage.gaussian_filter(raw, sigma=3) > 0.05, structure=np.ones((3, 3)))
        if count == 0:
            joints.append((0, 0))
            continue
        strongest = int(np.argmax([raw[blobs == i].sum() for i in range(1, count + 1)])) + 1
        kept = np.where(blobs == strongest, raw, 0.0)
        y, x = np.unravel_index(int(np.argmax(kept)), kept.shape)
        joints.append((int(float(x) * float(w) / 128.0), int(float(y) * float(h) / 128.0)))
    return np.array(joints, dtype=np.float32)


@torch.no_grad()
def face_landmarks(net: PoseMachine, crop: np.ndarray) -> np.ndarray:
    """(N, 2) landmarks (x, y) in a BGR crop's pixels: each map's maximum where it is over 0.05."""
    h, w = crop.shape[:2]
    x = torch.from_numpy(resize(crop, 384, 384)).permute(2, 0, 1) / 256.0 - 0.5
    planes = F.interpolate(net(x[None]), (h, w), mode="bilinear", align_corners=True)[0].numpy()
    points = []
    for plane in planes:
        ys, xs = np.nonzero(plane > 0.05)
        if len(ys):
            best = int(np.argmax(plane[ys, xs]))
            points.append((xs[best], ys[best]))
    return np.array(points, dtype=np.float32).reshape(-1, 2)


def as_fractions(points: np.ndarray, x: int, y: int, height: int, width: int) -> np.ndarray:
    """Crop pixels -> float32 fractions of the picture; -1 / side where a coordinate is 0 (not found)."""
    out = points.astype(np.float32)
    out[:, 0] = np.where(out[:, 0] < 1e-6, -1, out[:, 0] + x) / float(width)
    out[:, 1] = np.where(out[:, 1] < 1e-6, -1, out[:, 1] + y) / float(height)
    return out


def _hsv_colour(hue: float) -> tuple[float, float, float]:
    """matplotlib's hsv_to_rgb of (hue, 1, 1), times 255."""
    i = math.floor(hue * 6.0)
    f = hue * 6.0 - i
    q, t = 1.0 - f, 1.0 - (1.0 - f)
    rgb = [(1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q)][i % 6]
    return tuple(c * 255 for c in rgb)


def draw_hand(canvas: np.ndarray, joints: np.ndarray) -> None:
    """A hand's twenty bones (2 px, hues round the circle) and joints (blue dots, radius 4)."""
    height, width = canvas.shape[:2]
    pixels = [(int(x * width), int(y * height)) for x, y in joints]
    for index, (a, b) in enumerate(HAND_EDGES):
        (x1, y1), (x2, y2) = pixels[a], pixels[b]
        if x1 > 0.01 and y1 > 0.01 and x2 > 0.01 and y2 > 0.01:
            cv2.line(canvas, (x1, y1), (x2, y2), _hsv_colour(index / float(len(HAND_EDGES))), thickness=2)
    for x, y in pixels:
        if x > 0.01 and y > 0.01:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, landmarks: np.ndarray) -> None:
    """The face's landmarks as white dots, radius 3."""
    height, width = canvas.shape[:2]
    for x, y in landmarks:
        x, y = int(x * width), int(y * height)
        if x > 0.01 and y > 0.01:
            cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)


def pose_map(body: torch.nn.Module, hand: PoseMachine | None, face: PoseMachine | None, image: np.ndarray,
             with_body: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> each person's body (``with_body``), hands (with ``hand``: left, then right)
    and face (with ``face``) drawn on black at the picture's size; the body network always runs, its parts
    place the hands' and face's boxes."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    height, width = bgr.shape[:2]
    canvas = np.zeros((height, width, 3), np.uint8)
    for parts in find_people(*maps(body, bgr)):
        if with_body:
            draw_body(canvas, parts)
        for x, y, side, _ in hand_boxes(parts, height, width) if hand is not None else ():
            draw_hand(canvas, as_fractions(hand_joints(hand, bgr[y:y + side, x:x + side]), x, y, height, width))
        box = face_box(parts, height, width) if face is not None else None
        if box is not None:
            x, y, side = box
            draw_face(canvas, as_fractions(face_landmarks(face, bgr[y:y + side, x:x + side]), x, y, height, width))
    return canvas
