"""Read back what an image of the procedural world shows, from its pixels alone.

Background: the palette colour most pixels of the border are closest to.
Foreground: the largest connected region of non-background pixels; its colour is the most
common palette colour inside it (rim pixels eroded away).
Shape: the region is compared with an ideal circle, square and up-pointing triangle
inscribed in its bounding box; the best intersection-over-union wins.
Position: the bounding-box centre, in a 3 x 3 grid with borders at 0.375 and 0.625.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .dataset import COLOURS, PALETTE, POSITIONS, SHAPES

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
_CELL_BY_GRID = {v: k for k, v in POSITIONS.items()}
MIN_AREA_FRACTION = 0.004  # ~16 pixels at 64 x 64


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    size: str | None = None
    shape_scores: tuple[float, ...] = ()

    @property
    def found(self) -> bool:
        return self.colour is not None


def quantise(rgb: np.ndarray) -> np.ndarray:
    """H x W palette indices (nearest palette colour)."""
    d = ((rgb[:, :, None, :].astype(np.float32) - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs + 0.5) / w          # 0..1 across the box
    v = (ys + 0.5) / h
    circle = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    square = np.ones((h, w), bool)
    triangle = np.abs(u - 0.5) <= 0.5 * v
    return {"circle": circle, "square": square, "triangle": triangle}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def read(image: Image.Image | np.ndarray) -> Reading:
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    h, w = rgb.shape[:2]
    labels = quantise(rgb)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    bg = int(np.bincount(border, minlength=len(COLOURS)).argmax())
    mask = (labels != bg).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return Reading(COLOURS[bg])
    best = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    if stats[best, cv2.CC_STAT_AREA] < MIN_AREA_FRACTION * h * w:
        return Reading(COLOURS[bg])
    region = comp == best

    core = cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    inside = labels[core] if core.sum() >= 4 else labels[region]
    counts = np.bincount(inside, minlength=len(COLOURS))
    counts[bg] = 0
    colour = COLOURS[int(counts.argmax())]

    x0, y0, bw, bh = (int(stats[best, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                     cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    box = region[y0:y0 + bh, x0:x0 + bw]
    scores = tuple(_iou(box, t) for t in _templates(bh, bw).values())
    shape = SHAPES[int(np.argmax(scores))]

    cx, cy = (x0 + bw / 2) / w, (y0 + bh / 2) / h
    grid = tuple(0 if c < 0.375 else 2 if c > 0.625 else 1 for c in (cx, cy))
    size = "small" if max(bw, bh) / w < 0.335 else "large"
    return Reading(COLOURS[bg], colour, shape, _CELL_BY_GRID[grid], size, scores)


@dataclass
class Tally:
    """Running accuracies over scored images."""
    n: int = 0
    background: int = 0
    colour: int = 0
    shape: int = 0
    position: int = 0
    all_four: int = 0

    def add(self, reading: Reading, background: str, colour: str, shape: str, position: str) -> dict:
        hits = {"background": reading.background == background, "colour": reading.colour == colour,
                "shape": reading.shape == shape, "position": reading.position == position}
        self.n += 1
        for k, v in hits.items():
            setattr(self, k, getattr(self, k) + int(v))
        self.all_four += int(all(hits.values()))
        return hits

    def rates(self) -> dict[str, float]:
        keys = ("background", "colour", "shape", "position", "all_four")
        return {k: getattr(self, k) / self.n if self.n else 0.0 for k in keys}
