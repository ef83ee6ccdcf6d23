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


# ---------------------------------------------------------------- scene reading (issue 21)
# What a person would say the picture shows, read independently of `read` above (which takes the
# largest region only and classifies it by template IoU): every separate shape is found, and each
# is named from its outline alone.
#
# 1. Background: the median RGB of the border pixels, named by the nearest palette colour.
# 2. Foreground: pixels farther than FG_DISTANCE (RGB Euclidean) from that background colour;
#    8-connected regions of at least MIN_SHAPE_AREA of the picture are candidate shapes. A region
#    whose eroded core holds two solid colours (each at least MIN_SHAPE_AREA, and still there after
#    a second erosion, so a dark rim or halo is no shape) is split between them, so touching shapes
#    of different colours count as two.
# 3. Each shape's outline is measured on a 4x upsampled soft mask (the pixel's fraction of the way
#    from the background colour to the shape's core colour, thresholded at 1/2), so anti-aliased
#    64-pixel pictures give sub-pixel outlines: circularity 4*pi*A/P^2, corner count of
#    cv2.approxPolyDP(outline, CORNER_EPSILON * P), fill ratio A / bounding-box area, aspect ratio.
#    circle: circularity >= 0.85, fill 0.70..0.86, no 3- or 4-corner polygon fits
#    square: 4 corners, fill >= 0.88, circularity < 0.82
#    triangle: 3 corners, fill 0.40..0.62
#    anything else (a rounded square, a trapezoid, a blob) is "other": a person would not call it
#    a circle, a square or a triangle, so it never counts as right.
# 4. Position: the bounding-box centre in the 3 x 3 grid (borders at 0.375 and 0.625); size:
#    "small" below a third of the side, as the data set draws them.
FG_DISTANCE = 60.0
MIN_SHAPE_AREA = 0.006          # ~25 pixels at 64 x 64
CORNER_EPSILON = 0.04
UPSAMPLE = 4
SHAPE_RULES = {
    "circle": dict(circularity=(0.85, 2.0), fill=(0.70, 0.86)),
    "square": dict(corners=4, fill=(0.88, 1.01), circularity=(0.0, 0.82)),
    "triangle": dict(corners=3, fill=(0.40, 0.62)),
}


@dataclass(frozen=True)
class ShapeReading:
    shape: str                  # circle | square | triangle | other
    colour: str
    position: str
    size: str
    area: float                 # fraction of the picture
    circularity: float
    corners: int
    fill: float
    aspect: float
    box: tuple[int, int, int, int]   # x, y, w, h in pixels


@dataclass(frozen=True)
class SceneReading:
    background: str
    shapes: tuple[ShapeReading, ...] = ()

    @property
    def count(self) -> int:
        return len(self.shapes)


def nearest_colour(rgb) -> str:
    d = ((_PALETTE - np.asarray(rgb, dtype=np.float32)[None]) ** 2).sum(-1)
    return COLOURS[int(d.argmin())]


def classify_outline(circularity: float, corners: int, fill: float, aspect: float) -> str:
    """Circle, square, triangle or "other", from the outline's measurements (rules above)."""
    if not 0.8 <= aspect <= 1.25:
        return "other"
    for name, rule in SHAPE_RULES.items():
        lo, hi = rule["fill"]
        if not lo <= fill <= hi:
            continue
        if "corners" in rule and corners != rule["corners"]:
            continue
        if "circularity" in rule and not rule["circularity"][0] <= circularity < rule["circularity"][1]:
            continue
        if name == "circle" and corners in (3, 4):
            continue
        return name
    return "other"


def _outline(soft: np.ndarray) -> tuple[float, float, int, float, float, tuple[int, int, int, int]] | None:
    """Measurements of the largest outline in a soft (0..1) mask, upsampled UPSAMPLE times."""
    h, w = soft.shape
    big = cv2.resize(soft.astype(np.float32), (w * UPSAMPLE, h * UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    binary = (big >= 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(c))
    perimeter = float(cv2.arcLength(c, True))
    if area <= 0 or perimeter <= 0:
        return None
    x, y, bw, bh = cv2.boundingRect(c)
    corners = len(cv2.approxPolyDP(c, CORNER_EPSILON * perimeter, True))
    circularity = 4 * np.pi * area / perimeter ** 2
    return area / UPSAMPLE ** 2, circularity, corners, area / float(bw * bh), bw / float(bh), (x, y, bw, bh)


def read_scene(image: Image.Image | np.ndarray) -> SceneReading:
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.float32)
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    distance = np.sqrt(((rgb - bg_rgb) ** 2).sum(-1))
    mask = (distance > FG_DISTANCE).astype(np.uint8)
    min_area = MIN_SHAPE_AREA * h * w
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    labels = quantise(rgb)
    shapes = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            continue
        region = comp == i
        # the core: one pixel layer less, at the picture's edge too (its rim pixels blend colours)
        core = cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8),
                         borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        if core.sum() < 4:
            core = region
        counts = np.bincount(labels[core], minlength=len(COLOURS))
        counts[COLOURS.index(background)] = 0
        # a second colour makes a second shape only where it is solid (not a rim or halo a few pixels wide)
        solid = [int(k) for k in np.argsort(-counts) if counts[k] >= min_area and cv2.erode(
            (core & (labels == k)).astype(np.uint8), np.ones((3, 3), np.uint8)).sum() >= min_area / 2]
        colours = solid if solid else [int(counts.argmax())]
        if len(colours) <= 1:
            parts = [(region, rgb[core].reshape(-1, 3))]
        else:  # touching shapes of different colours: each pixel goes to the nearer core colour
            cores = np.stack([np.median(rgb[core & (labels == k)], axis=0) for k in colours])
            nearest = ((rgb[:, :, None, :] - cores[None, None]) ** 2).sum(-1).argmin(-1)
            parts = []
            for j in range(len(colours)):
                sub = (region & (nearest == j)).astype(np.uint8)
                m, sub_comp, sub_stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
                for q in range(1, m):
                    if sub_stats[q, cv2.CC_STAT_AREA] >= min_area:
                        part = sub_comp == q
                        parts.append((part, rgb[part & core].reshape(-1, 3) if (part & core).any()
                                      else rgb[part].reshape(-1, 3)))
        for part, core_pixels in parts:
            shapes.append(_read_shape(rgb, part, core_pixels, bg_rgb, h, w))
    shapes = [s for s in shapes if s is not None]
    shapes.sort(key=lambda s: -s.area)
    return SceneReading(background, tuple(shapes))


def _read_shape(rgb, part: np.ndarray, core_pixels: np.ndarray, bg_rgb, h: int, w: int) -> ShapeReading | None:
    core_rgb = np.median(core_pixels, axis=0)
    colour = nearest_colour(core_rgb)
    ys, xs = np.nonzero(part)
    y0, y1, x0, x1 = max(ys.min() - 2, 0), min(ys.max() + 3, h), max(xs.min() - 2, 0), min(xs.max() + 3, w)
    crop = rgb[y0:y1, x0:x1]
    axis = core_rgb - bg_rgb
    soft = np.clip(((crop - bg_rgb) @ axis) / max(float(axis @ axis), 1.0), 0.0, 1.0)
    # only this shape's pixels (and their anti-aliased rim) count, not a neighbour inside the crop
    keep = cv2.dilate(part[y0:y1, x0:x1].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    measured = _outline(np.where(keep, soft, 0.0))
    if measured is None:
        return None
    area, circularity, corners, fill, aspect, (bx, by, bw, bh) = measured
    bx, by, bw, bh = x0 + bx / UPSAMPLE, y0 + by / UPSAMPLE, bw / UPSAMPLE, bh / UPSAMPLE
    cx, cy = (bx + bw / 2) / w, (by + bh / 2) / h
    grid = tuple(0 if c < 0.375 else 2 if c > 0.625 else 1 for c in (cx, cy))
    return ShapeReading(classify_outline(circularity, corners, fill, aspect), colour, _CELL_BY_GRID[grid],
                        "small" if max(bw, bh) / w < 0.335 else "large", area / (h * w), round(circularity, 3),
                        corners, round(fill, 3), round(aspect, 3),
                        (int(round(bx)), int(round(by)), int(round(bw)), int(round(bh))))


def judge(reading: SceneReading, count: int, colour: str, shape: str, background: str,
          position: str | None = None, size: str | None = None) -> dict[str, bool]:
    """What a person would tick for a caption asking for `count` `colour` `shape`s: the number of
    separate shapes; every shape drawn has the asked outline / colour (and at least one is drawn);
    the background; the position of the largest shape (one-shape captions that state one); the
    size (when stated). `all` needs count, shape, colour, background and position."""
    shapes = reading.shapes
    hits = {"count": reading.count == count,
            "shape": bool(shapes) and all(s.shape == shape for s in shapes),
            "colour": bool(shapes) and all(s.colour == colour for s in shapes),
            "background": reading.background == background}
    if position is not None:
        hits["position"] = bool(shapes) and shapes[0].position == position
    if size is not None:
        hits["size"] = bool(shapes) and all(s.size == size for s in shapes)
    hits["all"] = all(v for k, v in hits.items() if k != "size")
    return hits


@dataclass
class SceneTally:
    """Accuracies of `judge` over scored images; each key over the items it applies to."""
    hits: dict = None
    totals: dict = None

    def __post_init__(self):
        self.hits, self.totals = {}, {}

    def add(self, hits: dict[str, bool]) -> None:
        for k, v in hits.items():
            self.hits[k] = self.hits.get(k, 0) + int(v)
            self.totals[k] = self.totals.get(k, 0) + 1

    def rates(self) -> dict[str, float]:
        return {k: self.hits[k] / self.totals[k] for k in self.totals}
