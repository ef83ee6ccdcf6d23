"""Faces found offline, with OpenCV's frontal-face Haar cascade (Viola-Jones), in numpy.

opencv-python-headless 5 no longer has ``cv2.CascadeClassifier`` nor ships the cascade files, so
the cascade file is shipped in the repo (``models/facedetect``, Intel's BSD-style licence in its
header) and evaluated here the way OpenCV's ``detectMultiScale`` does: the picture is shrunk by
1.1 per scale, a 24x24 window slides over it (2 px apart, 1 px once shrunk more than 2x), a window
is a face when it passes every boosted stage (feature sums from integral images, normalised by the
window's standard deviation), and overlapping hits are grouped (``minNeighbors``) like OpenCV's
``groupRectangles``. Where ``cv2.CascadeClassifier`` exists (OpenCV 4, or the contrib build) it is
used instead: same file, same answers, faster.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class _Stage:
    threshold: float
    rects: np.ndarray  # (K, 3, 4) int: x, y, w, h of each weak classifier's feature rectangles
    weights: np.ndarray  # (K, 3) float: each rectangle's weight (0 where a feature has two)
    node_thresholds: np.ndarray  # (K,)
    leaves: np.ndarray  # (K, 2): value below the threshold, value above


@dataclass(frozen=True)
class Cascade:
    path: Path
    size: tuple[int, int]  # window width, height
    stages: tuple[_Stage, ...]


def _numbers(text: str | None) -> list[float]:
    return [float(v) for v in (text or "").split()]


@lru_cache(maxsize=4)
def load_cascade(path: Path) -> Cascade:
    """A stump-based HAAR cascade in OpenCV's (new) XML format."""
    root = ET.parse(str(path)).getroot().find("cascade")
    if root is None or (root.findtext("featureType") or "").strip() != "HAAR":
        raise ValueError(f"{path.name}: not a HAAR cascade in OpenCV's format")
    width, height = int(root.findtext("width")), int(root.findtext("height"))
    features = []
    for feature in root.find("features"):
        if (feature.findtext("tilted") or "0").strip() not in ("", "0"):
            raise ValueError(f"{path.name}: tilted features are not supported")
        rects = [_numbers(r.text) for r in feature.find("rects")]
        features.append(rects + [[0, 0, 0, 0, 0.0]] * (3 - len(rects)))
    table = np.asarray(features, dtype=np.float64)  # (F, 3, 5)
    stages = []
    for stage in root.find("stages"):
        nodes, leaves = [], []
        for weak in stage.find("weakClassifiers"):
            node = _numbers(weak.findtext("internalNodes"))
            if len(node) != 4:
                raise ValueError(f"{path.name}: only stump (depth 1) cascades are supported")
            nodes.append(node)
            leaves.append(_numbers(weak.findtext("leafValues")))
        nodes_a = np.asarray(nodes)
        chosen = table[nodes_a[:, 2].astype(int)]
        stages.append(_Stage(float(stage.findtext("stageThreshold")), chosen[:, :, :4].astype(np.int64),
                             chosen[:, :, 4], nodes_a[:, 3], np.asarray(leaves)))
    return Cascade(path, (width, height), tuple(stages))


def _windows_passing(gray: np.ndarray, cascade: Cascade, step: int) -> np.ndarray:
    """(N, 2) top-left corners (x, y) of the windows of ``gray`` that pass every stage."""
    win_w, win_h = cascade.size
    h, w = gray.shape
    if h < win_h or w < win_w:
        return np.zeros((0, 2), np.int64)
    values = gray.astype(np.float64)
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = values.cumsum(0).cumsum(1)
    squares = np.zeros((h + 1, w + 1))
    squares[1:, 1:] = (values * values).cumsum(0).cumsum(1)
    ys, xs = np.meshgrid(np.arange(0, h - win_h + 1, step), np.arange(0, w - win_w + 1, step), indexing="ij")
    x, y = xs.ravel(), ys.ravel()

    def box_sum(table, x0, y0, bw, bh):
        return table[y0 + bh, x0 + bw] - table[y0, x0 + bw] - table[y0 + bh, x0] + table[y0, x0]

    # OpenCV's normalisation: the window less a 1 px border
    area = (win_w - 2) * (win_h - 2)
    total = box_sum(integral, x + 1, y + 1, win_w - 2, win_h - 2)
    square = box_sum(squares, x + 1, y + 1, win_w - 2, win_h - 2)
    norm = area * square - total * total
    norm = np.where(norm > 0, np.sqrt(np.maximum(norm, 0)), 1.0)
    for stage in cascade.stages:
        if x.size == 0:
            break
        rx, ry, rw, rh = (stage.rects[:, :, i][:, :, None] for i in range(4))  # (K, 3, 1)
        sums = box_sum(integral, x[None, None, :] + rx, y[None, None, :] + ry, rw, rh)  # (K, 3, N)
        value = (sums * stage.weights[:, :, None]).sum(1) / norm[None, :]  # (K, N)
        score = np.where(value < stage.node_thresholds[:, None], stage.leaves[:, :1], stage.leaves[:, 1:]).sum(0)
        keep = score >= stage.threshold
        x, y, norm = x[keep], y[keep], norm[keep]
    return np.stack([x, y], axis=1)


def _group(boxes: list[Box], min_neighbors: int, eps: float = 0.2) -> list[Box]:
    """OpenCV's ``groupRectangles``: cluster similar boxes, keep clusters of more than
    ``min_neighbors``, average them, drop a cluster's box lying inside a stronger one."""
    if min_neighbors <= 0 or not boxes:
        return list(boxes)
    parent = list(range(len(boxes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        for j in range(i):
            b = boxes[j]
            delta = eps * (min(a[2], b[2]) + min(a[3], b[3])) * 0.5
            if (abs(a[0] - b[0]) <= delta and abs(a[1] - b[1]) <= delta
                    and abs(a[0] + a[2] - b[0] - b[2]) <= delta and abs(a[1] + a[3] - b[1] - b[3]) <= delta):
                parent[find(i)] = find(j)
    clusters: dict[int, list[Box]] = {}
    for i, box in enumerate(boxes):
        clusters.setdefault(find(i), []).append(box)
    averaged = []
    for members in clusters.values():
        n = len(members)
        if n <= min_neighbors:
            continue
        sums = np.asarray(members, dtype=np.float64).sum(0) / n
        averaged.append((tuple(int(round(v)) for v in sums), n))
    result = []
    for i, (r1, n1) in enumerate(averaged):
        inside = False
        for j, (r2, n2) in enumerate(averaged):
            dx, dy = int(r2[2] * eps), int(r2[3] * eps)
            if (i != j and (n2 > max(3, n1) or n1 < 3) and r1[0] >= r2[0] - dx and r1[1] >= r2[1] - dy
                    and r1[0] + r1[2] <= r2[0] + r2[2] + dx and r1[1] + r1[3] <= r2[1] + r2[3] + dy):
                inside = True
                break
        if not inside:
            result.append(r1)
    return result


def detect(gray: np.ndarray, cascade: Cascade, scale_factor: float = 1.1, min_neighbors: int = 5,
           min_size: int = 24) -> list[Box]:
    """Faces in a grayscale uint8 picture, as (x, y, w, h) boxes, largest first."""
    if hasattr(cv2, "CascadeClassifier"):
        classifier = cv2.CascadeClassifier(str(cascade.path))
        if not classifier.empty():
            found = classifier.detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                                minSize=(min_size, min_size))
            return sorted((tuple(int(v) for v in box) for box in found), key=lambda b: -b[2] * b[3])
    win_w, win_h = cascade.size
    height, width = gray.shape
    hits: list[Box] = []
    factor = 1.0
    while True:
        scaled_w, scaled_h = int(round(width / factor)), int(round(height / factor))
        if scaled_w < win_w or scaled_h < win_h:
            break
        window = (int(round(win_w * factor)), int(round(win_h * factor)))
        if min(window) >= min_size:
            small = gray if factor == 1.0 else cv2.resize(gray, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)
            for x, y in _windows_passing(small, cascade, 1 if factor > 2 else 2):
                hits.append((int(round(x * factor)), int(round(y * factor)), window[0], window[1]))
        factor *= scale_factor
        if math.isclose(factor, 0):
            break
    return sorted(_group(hits, min_neighbors), key=lambda b: -b[2] * b[3])
