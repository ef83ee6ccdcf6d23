"""The procedural world Easel's built-in model draws: flat shapes on flat backgrounds.

Everything is generated on the fly from a seed: a *scene* (background colour, one or two
shapes with colour, size and grid position) is sampled, rendered with anti-aliasing and
described by a caption drawn from many phrasings of the same facts.

Held-out split: about 10 % of the single-shape combinations (colour, shape, background,
position) never appear in any training image; the evaluation captions are built from them,
so no evaluation caption was ever seen in training.

Data version 2 (issue 21; `sample_scene(..., **V2_SCENES)`, `caption(..., version=2)`): one, two or
three shapes, captions that always say how many ("a"/"one" only for exactly one shape), and
(colour, shape, background, count) groups held out for the counting evaluation. Version 1, what the
committed checkpoint was trained on, is drawn exactly as before. `heldout_phrasing_items` are the
scene evaluation's captions: held-out combinations in phrasings no training caption uses.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 225, 50),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "large"]
# grid cell (column, row) of each position name; 0 = left/top, 2 = right/bottom
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITION_NAMES = list(POSITIONS)
CELL_CENTRES = (0.25, 0.5, 0.75)          # fraction of the image side
SIZE_FRACTION = {"small": 0.25, "large": 0.42}
HELD_OUT_PERCENT = 10


@dataclass(frozen=True)
class Shape:
    kind: str          # circle | square | triangle
    colour: str
    size: str          # small | large
    position: str      # key of POSITIONS
    cx: float          # centre of the bounding box, fraction of the side
    cy: float
    side: float        # bounding-box side, fraction of the side


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------- held-out split
def is_held_out(colour: str, kind: str, background: str, position: str) -> bool:
    key = f"{colour}|{kind}|{background}|{position}".encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def held_out_combinations() -> list[tuple[str, str, str, str]]:
    """(colour, shape, background, position) combinations reserved for evaluation."""
    return [(c, k, b, p) for c in COLOURS for k in SHAPES for b in COLOURS if b != c
            for p in POSITION_NAMES if is_held_out(c, k, b, p)]


# ---------------------------------------------------------------- scenes
def _make_shape(rng: np.random.Generator, kind, colour, size, position) -> Shape:
    col, row = POSITIONS[position]
    side = SIZE_FRACTION[size] * rng.uniform(0.94, 1.06)
    cx = CELL_CENTRES[col] + rng.uniform(-0.03, 0.03)
    cy = CELL_CENTRES[row] + rng.uniform(-0.03, 0.03)
    return Shape(kind, colour, size, position, float(cx), float(cy), float(side))


def _overlap(a: Shape, b: Shape, margin: float = 0.03) -> bool:
    reach = (a.side + b.side) / 2 + margin
    return abs(a.cx - b.cx) < reach and abs(a.cy - b.cy) < reach


def is_held_out_count(colour: str, kind: str, background: str, count: int) -> bool:
    """(colour, shape, background, count >= 2) groups reserved for the counting evaluation
    (data version 2: no training scene holds `count` shapes of that colour and kind on that
    background)."""
    key = f"count|{colour}|{kind}|{background}|{count}".encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def held_out_counts() -> list[tuple[str, str, str, int]]:
    return [(c, k, b, n) for n in (2, 3) for c in COLOURS for k in SHAPES for b in COLOURS if b != c
            if is_held_out_count(c, k, b, n)]


def _group_counts(shapes) -> dict[tuple[str, str], int]:
    groups: dict[tuple[str, str], int] = {}
    for s in shapes:
        groups[(s.colour, s.kind)] = groups.get((s.colour, s.kind), 0) + 1
    return groups


# data version 2 (issue 21): one, two or three shapes, two or three alike more often (counting)
V2_SCENES = dict(two_shape_prob=0.3, three_shape_prob=0.2, same_prob=0.6, hold_out_counts=True, place_retries=30)


def sample_scene(rng: np.random.Generator, split: str = "train", two_shape_prob: float = 0.3,
                 three_shape_prob: float = 0.0, same_prob: float = 0.4, hold_out_counts: bool = False,
                 place_retries: int = 0) -> Scene:
    """A random scene; with split="train" no shape uses a held-out combination (and, with
    hold_out_counts, no group of alike shapes a held-out count). place_retries: a shape that lands
    on or against an earlier one is moved up to that many times before the scene is drawn again
    (else crowded three-shape scenes would rarely survive). With the defaults this draws exactly the
    scenes of data version 1."""
    while True:
        bg = COLOURS[rng.integers(len(COLOURS))]
        u = rng.random()
        n = 3 if u < three_shape_prob else 2 if u < three_shape_prob + two_shape_prob else 1
        shapes: list[Shape] = []
        same = n >= 2 and rng.random() < same_prob      # "two yellow squares"
        for i in range(n):
            if same and shapes:
                kind, colour, size = shapes[0].kind, shapes[0].colour, shapes[0].size
            else:
                kind = SHAPES[rng.integers(len(SHAPES))]
                colour = [c for c in COLOURS if c != bg][rng.integers(len(COLOURS) - 1)]
                size = SIZES[rng.integers(len(SIZES))]
            position = POSITION_NAMES[rng.integers(len(POSITION_NAMES))]
            shape = _make_shape(rng, kind, colour, size, position)
            for _ in range(place_retries if shapes else 0):
                if not any(shape.position == b.position or _overlap(shape, b) for b in shapes):
                    break
                position = POSITION_NAMES[rng.integers(len(POSITION_NAMES))]
                shape = _make_shape(rng, kind, colour, size, position)
            shapes.append(shape)
        if n >= 2 and any(a.position == b.position or _overlap(a, b)
                          for i, a in enumerate(shapes) for b in shapes[i + 1:]):
            continue
        if split == "train" and any(is_held_out(s.colour, s.kind, bg, s.position) for s in shapes):
            continue
        if split == "train" and hold_out_counts and any(
                k >= 2 and is_held_out_count(c, kind, bg, k) for (c, kind), k in _group_counts(shapes).items()):
            continue
        return Scene(bg, tuple(shapes))


def scene_for(colour, kind, background, position, size, rng: np.random.Generator) -> Scene:
    return Scene(background, (_make_shape(rng, kind, colour, size, position),))


# ---------------------------------------------------------------- rendering
def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    big = size * supersample
    img = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        cx, cy, half = s.cx * big, s.cy * big, s.side * big / 2
        box = [cx - half, cy - half, cx + half, cy + half]
        fill = PALETTE[s.colour]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:  # triangle pointing up
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return img.resize((size, size), Image.BOX)


def to_tensor_array(images: list[Image.Image]) -> np.ndarray:
    """N x 3 x H x W float32 in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return arr.transpose(0, 3, 1, 2).copy()


# ---------------------------------------------------------------- captions
_POS_PHRASES = {
    "center": ["in the center", "in the middle", "at the center", "centered"],
    "left": ["on the left", "at the left", "on the left side"],
    "right": ["on the right", "at the right", "on the right side"],
    "top": ["at the top", "on the top", "in the top middle"],
    "bottom": ["at the bottom", "on the bottom", "in the bottom middle"],
}
for _p in ["top left", "top right", "bottom left", "bottom right"]:
    _POS_PHRASES[_p] = [f"in the {_p}", f"at the {_p}", f"in the {_p} corner", f"{_p} corner"]


def _pick(rng, options):
    return options[rng.integers(len(options))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng, s: Shape, with_colour=True, with_size=True, article=True, plural=False) -> str:
    words = ([s.size] if with_size else []) + ([s.colour] if with_colour else []) + [s.kind + ("s" if plural else "")]
    if plural:
        return "two " + " ".join(words)
    if article:
        return _pick(rng, [_article(words[0]), _article(words[0]), "one"]) + " " + " ".join(words)
    return " ".join(words)


def _background_phrase(rng, bg: str) -> str:
    a = _article(bg)
    return _pick(rng, [f"on {a} {bg} background", f"on {a} {bg} background", f"on {bg}",
                       f"against {a} {bg} background", f"with {a} {bg} background", f"over {a} {bg} background"])


def _single_caption(rng, s: Shape, bg: str, keep: dict) -> str:
    pos = _pick(rng, _POS_PHRASES[s.position]) if keep["position"] else ""
    np_ = _noun_phrase(rng, s, keep["colour"], keep["size"])
    bare = _noun_phrase(rng, s, keep["colour"], keep["size"], article=False)
    if not keep["background"]:
        forms = [f"{np_} {pos}", f"{bare} {pos}", f"{pos}, {np_}" if pos else np_,
                 f"an image of {np_} {pos}"]
    else:
        bgp = _background_phrase(rng, bg)
        forms = [f"{np_} {pos} {bgp}", f"{np_} {bgp} {pos}", f"{np_} {bgp}, {pos}" if pos else f"{np_} {bgp}",
                 f"{bg} background, {bare} {pos}", f"{bg} background, {np_} {pos}",
                 f"{_article(bg)} {bg} background with {np_} {pos}", f"{pos}, {np_} {bgp}" if pos else f"{np_} {bgp}",
                 f"an image of {np_} {pos} {bgp}", f"{bare} {pos}, {bg} background"]
    return _tidy(_pick(rng, forms))


def _two_caption(rng, a: Shape, b: Shape, bg: str, keep: dict) -> str:
    bgp = _background_phrase(rng, bg) if keep["background"] else ""
    if a.kind == b.kind and a.colour == b.colour and a.size == b.size and rng.random() < 0.8:
        np_ = _noun_phrase(rng, a, keep["colour"], keep["size"], plural=True)
        if keep["position"]:
            pa, pb = _pick(rng, _POS_PHRASES[a.position]), _pick(rng, _POS_PHRASES[b.position])
            forms = [f"{np_} {bgp}, one {pa} and one {pb}", f"{np_}, one {pa} and one {pb}, {bgp}"]
        else:
            forms = [f"{np_} {bgp}", f"{bg} background, {np_}" if bgp else np_]
        return _tidy(_pick(rng, forms))
    na = _noun_phrase(rng, a, keep["colour"], keep["size"])
    nb = _noun_phrase(rng, b, keep["colour"], keep["size"])
    if keep["position"]:
        na += " " + _pick(rng, _POS_PHRASES[a.position])
        nb += " " + _pick(rng, _POS_PHRASES[b.position])
    forms = [f"{na} and {nb} {bgp}", f"{bgp}, {na} and {nb}" if bgp else f"{na} and {nb}",
             f"{bg} background, {na} and {nb}" if bgp else f"{na}, {nb}"]
    return _tidy(_pick(rng, forms))


def _fragment_caption(rng, scene: Scene) -> str:
    s = scene.shapes[0]
    return _pick(rng, [s.colour, s.kind, f"{s.colour} {s.kind}", f"{scene.background} background",
                       f"{s.size} {s.kind}", s.position, f"{s.colour} on {scene.background}"])


def _tidy(text: str) -> str:
    text = " ".join(text.replace(" ,", ",").split())
    return text.strip(" ,")


def caption(scene: Scene, rng: np.random.Generator, colour_keep: float = 0.9, version: int = 1) -> str:
    """One of many natural phrasings of the scene; some facts may be left unsaid (the shapes'
    colour is stated with probability `colour_keep`). version 2: counting captions (below)."""
    if version == 2:
        return caption_v2(scene, rng, colour_keep)
    if rng.random() < 0.05:
        return _fragment_caption(rng, scene)
    keep = {"background": rng.random() < 0.85, "position": rng.random() < 0.75,
            "size": rng.random() < 0.6, "colour": rng.random() < colour_keep}
    if len(scene.shapes) == 1:
        return _single_caption(rng, scene.shapes[0], scene.background, keep)
    return _two_caption(rng, scene.shapes[0], scene.shapes[1], scene.background, keep)


# ---------------------------------------------------------------- captions, data version 2 (issue 21)
# Every caption says how many shapes there are: "a"/"an"/"one" only ever for exactly one shape of
# that description, "two"/"three" for that many. Fragments ("red circle") only describe one-shape
# scenes. Shapes that the caption describes alike (colour or size left unsaid) are counted together
# ("two circles"), so a caption never names one shape where the picture holds two of its kind.
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def _group_phrase(rng, shapes: list[Shape], keep: dict) -> str:
    if len(shapes) == 1:
        phrase = _noun_phrase(rng, shapes[0], keep["colour"], keep["size"])
        return phrase + (" " + _pick(rng, _POS_PHRASES[shapes[0].position]) if keep["position"] else "")
    s = shapes[0]
    words = ([s.size] if keep["size"] else []) + ([s.colour] if keep["colour"] else []) + [s.kind + "s"]
    phrase = NUMBER_WORDS[len(shapes)] + " " + " ".join(words)
    if keep["position"]:
        places = [f"one {_pick(rng, _POS_PHRASES[x.position])}" for x in shapes]
        phrase += ", " + ", ".join(places[:-1]) + " and " + places[-1]
    return phrase


def caption_v2(scene: Scene, rng: np.random.Generator, colour_keep: float = 0.9) -> str:
    n = len(scene.shapes)
    if rng.random() < 0.05:
        if n == 1:
            return _fragment_caption(rng, scene)
        kinds = {s.kind for s in scene.shapes}
        return _pick(rng, [f"{scene.background} background"]
                     + ([f"{NUMBER_WORDS[n]} {scene.shapes[0].kind}s"] if len(kinds) == 1 else []))
    keep = {"background": rng.random() < 0.85, "position": rng.random() < 0.75,
            "size": rng.random() < 0.6, "colour": rng.random() < colour_keep}
    if n == 1:
        return _single_caption(rng, scene.shapes[0], scene.background, keep)
    groups: dict[tuple, list[Shape]] = {}
    for s in scene.shapes:
        key = (s.size if keep["size"] else "", s.colour if keep["colour"] else "", s.kind)
        groups.setdefault(key, []).append(s)
    parts = [_group_phrase(rng, g, keep) for g in groups.values()]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if not keep["background"]:
        return _tidy(body)
    bg = scene.background
    forms = [f"{body} {_background_phrase(rng, bg)}", f"{bg} background, {body}",
             f"{_article(bg)} {bg} background with {body}"]
    return _tidy(_pick(rng, forms))


# ---------------------------------------------------------------- held-out phrasings (issue 21)
# Caption forms no training caption (version 1 or 2) uses: the background first with "on a ...",
# extra commas between the facts, "one" before a comma-separated position, "two"/"three" after the
# background. They use only words the training captions use, in orders they never take.
def _heldout_single(rng, colour, kind, bg, position, size: str | None) -> str:
    art = _pick(rng, [_article(size or colour), "one"])
    noun = " ".join(([size] if size else []) + [colour, kind])
    pos, a = _pick(rng, _POS_PHRASES[position]), _article(bg)
    forms = [f"on {a} {bg} background, {art} {noun} {pos}",
             f"{art} {noun}, {pos}, on {a} {bg} background",
             f"{pos}, on {a} {bg} background, {art} {noun}",
             f"{bg} background, {pos}, {art} {noun}",
             f"{art} {noun}, {pos}, {bg} background"]
    return _tidy(_pick(rng, forms))


def _heldout_unplaced(rng, colour, kind, bg, size: str | None) -> str:
    art = _pick(rng, [_article(size or colour), "one"])
    noun = " ".join(([size] if size else []) + [colour, kind])
    a = _article(bg)
    return _tidy(_pick(rng, [f"on {a} {bg} background, {art} {noun}", f"{art} {noun}, on {a} {bg} background",
                             f"{art} {noun}, {bg} background"]))


def _heldout_count(rng, colour, kind, bg, count: int, size: str | None) -> str:
    noun = " ".join(([size] if size else []) + [colour, kind + "s"])
    a, num = _article(bg), NUMBER_WORDS[count]
    forms = [f"on {a} {bg} background, {num} {noun}", f"{num} {noun}, on {a} {bg} background",
             f"{num} {noun}, {bg} background"]
    return _tidy(_pick(rng, forms))


@dataclass(frozen=True)
class SceneItem:
    """A held-out caption and what a picture of it must show (position None: not stated)."""
    caption: str
    count: int
    colour: str
    shape: str
    background: str
    position: str | None
    size: str | None
    seed: int


def heldout_phrasing_items(limit: int | None = None, seed: int = 2100) -> list[SceneItem]:
    """One caption per held-out (colour, shape, background, position) combination, one per
    held-out (colour, shape, background, count) group, and about a third of the combinations again
    without their position, each in a held-out phrasing; deterministic."""
    rng = np.random.default_rng(seed)
    items = []
    for c, k, b, p in held_out_combinations():
        size = SIZES[rng.integers(2)] if rng.random() < 0.5 else None
        items.append(SceneItem(_heldout_single(rng, c, k, b, p, size), 1, c, k, b, p, size, seed + len(items)))
    for c, k, b, n in held_out_counts():
        size = "small" if n == 3 else (SIZES[rng.integers(2)] if rng.random() < 0.3 else None)
        items.append(SceneItem(_heldout_count(rng, c, k, b, n, size), n, c, k, b, None, size, seed + len(items)))
    # one shape, its place left to the model (the issue's own prompts): does it draw exactly one?
    rng = np.random.default_rng([seed, 1])
    for c, k, b, p in held_out_combinations():
        if rng.random() < 0.35:
            size = SIZES[rng.integers(2)] if rng.random() < 0.3 else None
            items.append(SceneItem(_heldout_unplaced(rng, c, k, b, size), 1, c, k, b, None, size, seed + len(items)))
    if limit is not None and limit < len(items):
        idx = np.random.default_rng(seed + 1).choice(len(items), size=limit, replace=False)
        items = [items[i] for i in sorted(idx)]
    return items


def caption_template(text: str) -> str:
    """A caption with its facts replaced by slots (C colour, K shape, S size, P position, A a/an/one,
    N two/three), to compare phrasings rather than facts."""
    t = " " + text + " "
    for phrases in sorted({q for v in _POS_PHRASES.values() for q in v}, key=len, reverse=True):
        t = t.replace(f" {phrases} ", " P ").replace(f" {phrases},", " P,")
    t = re.sub(r"\b(" + "|".join(COLOURS) + r")\b", "C", t)
    t = re.sub(r"\b(circle|square|triangle)s\b", "Ks", t)
    t = re.sub(r"\b(circle|square|triangle)\b", "K", t)
    t = re.sub(r"\b(small|large)\b", "S", t)
    t = re.sub(r"\b(a|an|one)\b", "A", t)
    t = re.sub(r"\b(two|three)\b", "N", t)
    return " ".join(t.split())


_CORNER = re.compile(r"\b(top|bottom) (left|right)\b")
_EDGE_MIDDLE = re.compile(r"\b(top|bottom) middle\b")
_SINGLE = [(re.compile(r"\bleft\b"), "left"), (re.compile(r"\bright\b"), "right"),
           (re.compile(r"\btop\b"), "top"), (re.compile(r"\bbottom\b"), "bottom"),
           (re.compile(r"\b(center|middle|centered)\b"), "center")]


def stated_positions(text: str) -> set[str]:
    """The position names a caption states ("in the top middle" -> top, "centered" -> center)."""
    found = set()
    for pattern, name in ((_CORNER, None), (_EDGE_MIDDLE, None)):
        for m in pattern.finditer(text):
            found.add(m.group(0) if name is None and pattern is _CORNER else m.group(1))
        text = pattern.sub(" ", text)
    for pattern, name in _SINGLE:
        if pattern.search(text):
            found.add(name)
    return found


def full_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of a one-shape scene that states colour, shape, background and position."""
    keep = {"background": True, "position": True, "colour": True, "size": rng.random() < 0.5}
    return _single_caption(rng, scene.shapes[0], scene.background, keep)


# ---------------------------------------------------------------- evaluation split
@dataclass(frozen=True)
class EvalItem:
    caption: str
    colour: str
    shape: str
    background: str
    position: str
    seed: int


def evaluation_items(limit: int | None = None, seed: int = 1234) -> list[EvalItem]:
    """One fully specified caption per held-out combination, deterministic."""
    rng = np.random.default_rng(seed)
    items = []
    for i, (c, k, b, p) in enumerate(held_out_combinations()):
        scene = scene_for(c, k, b, p, SIZES[rng.integers(2)], rng)
        items.append(EvalItem(full_caption(scene, rng), c, k, b, p, seed + i))
    if limit is not None and limit < len(items):
        idx = np.random.default_rng(seed + 1).choice(len(items), size=limit, replace=False)
        items = [items[i] for i in sorted(idx)]
    return items
