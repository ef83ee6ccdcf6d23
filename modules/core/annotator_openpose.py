"""The OpenPose body network of sd-webui-controlnet's ``openpose`` preprocessor, run from the user's
``openpose/body_pose_model.pth`` (CMU's OpenPose body model as ported by Hzzone's pytorch-openpose; CMU's
licence allows non-commercial use only), and the extension's reading of its maps into people and their
drawing on black.

The file is a plain state dict whose keys are the layers' names: the VGG-like backbone ``conv1_1`` ..
``conv4_4_CPM`` (3x3 convolutions, ReLU after each, a 2x2 max pool after ``conv1_2``, ``conv2_2`` and
``conv3_4``), stage 1's two branches ``conv5_1_CPM_L1`` .. ``conv5_5_CPM_L1`` (part affinity fields, 38
channels) and ``..._L2`` (19 heatmaps: 18 parts and the background), and stages 2..6's ``Mconv1_stageN_L1``
.. ``Mconv7_stageN_L1`` / ``_L2``, each stage reading both branches' maps and the backbone's features.
Every convolution has a ReLU except each branch's last, but for stage 6's heatmaps: the original lists
``Mconv7_stage6_L1`` twice among the layers without one, so its heatmaps pass a ReLU, and so do Easel's.
The widths come from the file's shapes (the real file: 64 .. 512 in the backbone, 128 in the stages).

Detection, as the extension's single-scale run: the BGR picture is scaled so its height is 184 px, padded
right and down with grey to multiples of 8, read as ``x / 256 - 0.5``; the maps (stride 8) are scaled back
8x (Lanczos), cut to the unpadded part and resized to the picture (area or Lanczos, channel by channel).
A part's candidates are the local maxima (four neighbours) of its heatmap smoothed by a Gaussian of sigma
3 over 0.1; a limb's candidate pairs are scored by the affinity field along ten points of the segment,
the best pairs kept greedily, and the limbs joined into people, dropping those with under four parts or
a mean score under 0.4. Each person is drawn as seventeen limbs (ellipses four pixels wide in 0.6 of the
limb's colour) and eighteen dots (radius four), in the original's colours.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from .annotator_files import NetworkCache, load_named
from .checkpoint_file import CheckpointError, CheckpointFile

FILE = "openpose/body_pose_model.pth"  # under the annotator folder, as the extension's annotator/downloads
BACKBONE = ("conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2", "conv3_3",
            "conv3_4", "pool", "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM")
PAFS, PARTS = 38, 19  # the two branches' channels: 19 limbs' (x, y) fields; 18 parts and the background


def stage_layers(stage: int, branch: int) -> list[str]:
    """The convolutions of one stage's branch (1: affinity fields, 2: heatmaps)."""
    if stage == 1:
        return [f"conv5_{i}_CPM_L{branch}" for i in range(1, 6)]
    return [f"Mconv{i}_stage{stage}_L{branch}" for i in range(1, 8)]


def layer_names() -> list[str]:
    names = [n for n in BACKBONE if n != "pool"]
    return names + [n for stage in range(1, 7) for branch in (1, 2) for n in stage_layers(stage, branch)]


def _relu_after(name: str) -> bool:
    """Each branch's last convolution has no ReLU, except stage 6's heatmaps (the original's list of
    such layers names ``Mconv7_stage6_L1`` twice and never ``Mconv7_stage6_L2``)."""
    last = name.startswith("conv5_5_CPM") or name.startswith("Mconv7_")
    return not last or name == "Mconv7_stage6_L2"


class BodyPose(torch.nn.Module):
    """The body network; ``shapes``: each layer's (out, in, k, k). Its keys are the file's."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        for name in layer_names():
            out, into, size = shapes[name][:3]
            self.add_module(name, torch.nn.Conv2d(into, out, size, padding=size // 2))

    def _run(self, names, x: torch.Tensor) -> torch.Tensor:
        for name in names:
            if name == "pool":
                x = F.max_pool2d(x, 2, 2)
            else:
                x = getattr(self, name)(x)
                x = F.relu(x) if _relu_after(name) else x
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, H, W) BGR as x / 256 - 0.5 -> the affinity fields and the heatmaps at stride 8."""
        features = self._run(BACKBONE, x)
        x = features
        for stage in range(1, 7):
            pafs, heat = self._run(stage_layers(stage, 1), x), self._run(stage_layers(stage, 2), x)
            x = torch.cat([pafs, heat, features], 1)
        return pafs, heat


def build(path: Path) -> BodyPose:
    """The network of a body_pose_model file (CheckpointError when it is not one)."""
    name = Path(path).name
    file = CheckpointFile(path)
    try:
        shapes = dict(file.shapes)
        names = layer_names()
        missing = [n for n in names if len(shapes.get(f"{n}.weight", ())) != 4 or f"{n}.bias" not in shapes]
        if missing:
            raise CheckpointError(f"{name} is not an OpenPose body state dict (conv1_1 .. conv4_4_CPM, "
                                  f"conv5_*_CPM_L1/L2, Mconv*_stage2..6_L1/L2): it lacks {', '.join(missing[:3])}")
        weights = {n: shapes[f"{n}.weight"] for n in names}
        _check_widths(name, weights)
        net = BodyPose(weights)
        state = {k: file.get(k, torch.float32) for k in net.state_dict()}
    finally:
        file.close()
    return load_named(net, state, name)


def _check_widths(name: str, weights: dict[str, tuple[int, ...]]) -> None:
    """Each layer must read what the one before gives, and the branches end in 38 and 19 channels."""
    def expect(layer: str, channels: int) -> None:
        if weights[layer][1] != channels or weights[layer][2] != weights[layer][3]:
            raise CheckpointError(f"{name}: {layer}.weight is {weights[layer]}, expected {channels} input "
                                  f"channels and a square kernel")

    channels = 3
    for layer in (n for n in BACKBONE if n != "pool"):
        expect(layer, channels)
        channels = weights[layer][0]
    features = channels
    for stage in range(1, 7):
        ends = []
        for branch, out in ((1, PAFS), (2, PARTS)):
            width = channels
            for layer in stage_layers(stage, branch):
                expect(layer, width)
                width = weights[layer][0]
            if width != out:
                raise CheckpointError(f"{name}: {stage_layers(stage, branch)[-1]} gives {width} channels, not {out}")
            ends.append(width)
        channels = sum(ends) + features


_NETWORKS = NetworkCache()


def network(path: Path) -> BodyPose:
    """The built network of ``path``, kept while the file is unchanged (the last two files)."""
    return _NETWORKS.get(path, build)


def resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """The original's resize rule: area when shrinking (by the sum of the sides), else Lanczos."""
    shrink = (height + width) / (x.shape[0] + x.shape[1]) < 1
    return cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)


@torch.no_grad()
def maps(net: BodyPose, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 BGR -> the heatmaps (H, W, 19) and affinity fields (H, W, 38), float64."""
    h, w = bgr.shape[:2]
    scale = 0.5 * 368 / h  # the original's one scale (0.5) of a 368-px box
    small = resize(bgr, int(w * scale), int(h * scale))
    sh, sw = small.shape[:2]
    padded = np.pad(small, [[0, -sh % 8], [0, -sw % 8], [0, 0]], constant_values=128)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None]).astype(np.float32) / 256 - 0.5)
    pafs, heat = net(x)

    def back(out: torch.Tensor) -> np.ndarray:
        planes = []
        for plane in out[0].numpy():
            big = resize(plane, plane.shape[1] * 8, plane.shape[0] * 8)[:sh, :sw]
            planes.append(resize(big, w, h))
        return np.stack(planes, axis=2).astype(np.float64)

    return back(heat), back(pafs)


# the limbs (pairs of parts, 0-based: 0 nose, 1 neck, 2..4 right arm, 5..7 left arm, 8..10 right leg,
# 11..13 left leg, 14/15 eyes, 16/17 ears) and their affinity fields' (x, y) channels, in the original's order
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
LIMB_FIELDS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
               (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
PEAK_THRESHOLD, FIELD_THRESHOLD, SAMPLES = 0.1, 0.05, 10


def _peaks(heat: np.ndarray) -> list[list[tuple[int, int, float, int]]]:
    """Per part, its candidates (x, y, score, id) in row order; ids count on across the parts."""
    found, count = [], 0
    for part in range(18):
        raw = heat[:, :, part]
        smooth = gaussian_filter(raw, sigma=3)
        around = np.pad(smooth, 1)  # zero outside the picture
        keep = ((smooth >= around[:-2, 1:-1]) & (smooth >= around[2:, 1:-1]) & (smooth >= around[1:-1, :-2])
                & (smooth >= around[1:-1, 2:]) & (smooth > PEAK_THRESHOLD))
        ys, xs = np.nonzero(keep)
        found.append([(int(x), int(y), float(raw[y, x]), count + i) for i, (y, x) in enumerate(zip(ys, xs))])
        count += len(ys)
    return found


def _limb_pairs(a: list, b: list, field: np.ndarray, height: int) -> list[tuple[int, int, float]]:
    """The pairs (candidate id in a, in b, score) of one limb, best first, each candidate used once."""
    scored = []
    for i, (xa, ya, _, _) in enumerate(a):
        for j, (xb, yb, _, _) in enumerate(b):
            dx, dy = xb - xa, yb - ya
            norm = max(0.001, math.sqrt(dx * dx + dy * dy))
            cols = [int(round(v)) for v in np.linspace(xa, xb, num=SAMPLES)]
            rows = [int(round(v)) for v in np.linspace(ya, yb, num=SAMPLES)]
            along = field[rows, cols, 0] * (dx / norm) + field[rows, cols, 1] * (dy / norm)
            score = sum(along.tolist()) / SAMPLES + min(0.5 * height / norm - 1, 0)
            if np.count_nonzero(along > FIELD_THRESHOLD) > 0.8 * SAMPLES and score > 0:
                scored.append((i, j, score))
    scored.sort(key=lambda s: s[2], reverse=True)
    pairs, used_a, used_b = [], set(), set()
    for i, j, score in scored:
        if i not in used_a and j not in used_b:
            pairs.append((a[i][3], b[j][3], score))
            used_a.add(i)
            used_b.add(j)
            if len(pairs) >= min(len(a), len(b)):
                break
    return pairs


def find_people(heat: np.ndarray, pafs: np.ndarray) -> list[list[tuple[float, float] | None]]:
    """The people in (H, W, 19) heatmaps and (H, W, 38) affinity fields: per person, its 18 parts'
    (x, y) in pixels, None where not found."""
    peaks = _peaks(heat)
    candidates = [c for part in peaks for c in part]
    scores = [c[2] for c in candidates]
    people = np.zeros((0, 20))  # per person: the parts' candidate ids (-1: none), the score, the part count
    for k, ((pa, pb), channels) in enumerate(zip(LIMBS, LIMB_FIELDS)):
        if not peaks[pa] or not peaks[pb]:
            continue
        for ida, idb, score in _limb_pairs(peaks[pa], peaks[pb], pafs[:, :, list(channels)], heat.shape[0]):
            rows = [r for r in range(len(people)) if people[r, pa] == ida or people[r, pb] == idb][:2]
            if len(rows) == 2 and not np.any((people[rows[0], :18] >= 0) & (people[rows[1], :18] >= 0)):
                first, second = people[rows[0]], people[rows[1]]  # two disjoint people: merge them
                first[:18] += second[:18] + 1
                first[18:] += second[18:]
                first[18] += score
                people = np.delete(people, rows[1], 0)
            elif rows:
                person = people[rows[0]]
                if len(rows) == 2 or person[pb] != idb:
                    person[pb] = idb
                    person[19] += 1
                    person[18] += scores[idb] + score
            elif k < 17:
                row = -np.ones(20)
                row[pa], row[pb], row[19] = ida, idb, 2
                row[18] = scores[ida] + scores[idb] + score
                people = np.vstack([people, row])
    kept = [p for p in people if not (p[19] < 4 or p[18] / p[19] < 0.4)]
    return [[None if p[i] < 0 else (float(candidates[int(p[i])][0]), float(candidates[int(p[i])][1]))
             for i in range(18)] for p in kept]


def draw_body(canvas: np.ndarray, parts: list[tuple[float, float] | None]) -> None:
    """One person's seventeen limbs and eighteen dots on an (H, W, 3) uint8 RGB canvas, as the extension
    draws them (from the parts' coordinates over the canvas's size, as it keeps them)."""
    height, width = canvas.shape[:2]
    points = [None if p is None else (p[0] / width, p[1] / height) for p in parts]
    for (a, b), color in zip(LIMBS[:17], COLORS):
        if points[a] is None or points[b] is None:
            continue
        ys = np.array([points[a][0], points[b][0]]) * float(width)
        xs = np.array([points[a][1], points[b][1]]) * float(height)
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(ys)), int(np.mean(xs))), (int(length / 2), 4), int(angle),
                                   0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for point, color in zip(points, COLORS):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), 4, color, thickness=-1)


def draw_bodies(people: list[list[tuple[float, float] | None]], height: int, width: int) -> np.ndarray:
    """The people drawn on a black (height, width, 3) uint8 RGB canvas."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for parts in people:
        draw_body(canvas, parts)
    return canvas


def body_map(net: BodyPose, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the people's skeletons drawn on black at the picture's size."""
    heat, pafs = maps(net, np.ascontiguousarray(image[:, :, ::-1]))
    return draw_bodies(find_people(heat, pafs), *image.shape[:2])
