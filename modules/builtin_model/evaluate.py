"""Evaluate the built-in model through the generation function the UI uses.

    python -m modules.builtin_model.evaluate                     # full: every held-out caption
    python -m modules.builtin_model.evaluate --smoke             # CI: a handful, looser bars
    python -m modules.builtin_model.evaluate --ckpt PATH --out DIR --write-metadata

Each held-out caption (never seen in training) is generated with the UI defaults (DPM++ 2M,
Automatic schedule, 20 steps, CFG 7, native size, fixed seeds) and read back by
`scoring.read`. Then the negative-prompt test: "a circle on a white background" with and
without the negative prompt "red"; red circles must become at least 3x rarer.
Prints the accuracies, writes results.json and contact_sheet.png into --out.

Scene evaluation (issue 21; `--scenes only` runs it alone): held-out *phrasings* (word orders, extra
commas, "on a ... background" first, "one"/"two"/"three"; data.heldout_phrasing_items) generated with
Euler a and DPM++ 2M at 20 steps, CFG 7, read back by `scoring.read_scene` (every separate shape,
each named from its outline) and judged for count, shape, colour, background and position; bars in
SCENE_BARS. Writes scenes.json and scene_sheet.png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import architecture as arch
from . import dataset as data
from . import scoring

DEFAULT_CKPT = arch.ROOT / "models" / "Stable-diffusion" / "easel-shapes-v1.safetensors"
DEFAULT_OUT = arch.ROOT / "outputs" / "builtin_model_eval"
NEG_PROMPT, NEG_NEGATIVE = "a circle on a white background", "red"


@dataclass(frozen=True)
class Bars:
    background: float = 0.95
    colour: float = 0.90
    shape: float = 0.80
    position: float = 0.85
    negative_ratio: float = 3.0
    negative_colour: str = "red"  # "red": the test; "dominant": the colour the prompt alone draws most
    img2img_iou: float = 0.8
    inpaint_changed: float = 0.9


FULL_BARS = Bars()
SMOKE_BARS = Bars(background=0.75, colour=0.6, shape=0.5, position=0.5, negative_ratio=1.5, negative_colour="dominant",
                  img2img_iou=0.6, inpaint_changed=0.75)


def load_model(path: Path):
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint

    return load_checkpoint(path, choose_policy(precision="full")[0])


def generate_images(model, prompt: str, seed: int, count: int = 1, negative: str = "",
                    sampler: str | None = None) -> list[Image.Image]:
    """The UI's txt2img with its defaults (or another sampler); `count` images with seeds seed, seed+1, ..."""
    from modules.core.pipeline import GenerationSettings, generate
    from modules.core.types import GenerationRequest

    images = []
    extra = {"sampler_name": sampler} if sampler else {}
    while len(images) < count:
        n = min(8, count - len(images))
        request = GenerationRequest(prompt=prompt, negative_prompt=negative, seed=seed + len(images),
                                    batch_size=n, save_images=False, steps=20, cfg_scale=7.0, **extra)
        images.extend(generate(request, model, GenerationSettings(save_grid=False, return_grid=False)).images)
    return images


def negative_prompt_test(model, samples: int, seed: int = 5000) -> dict:
    """The issue's test (negative prompt "red": red circles must become rarer), plus the same with the
    colour the prompt alone draws most often as the negative prompt, which shows whether negative
    prompts work even when the model rarely draws red circles unprompted."""
    def colour_shares(images):
        readings = [scoring.read(im) for im in images]
        return readings, {c: sum(r.colour == c for r in readings) / samples for c in data.COLOURS}

    out = {"without": {"images": generate_images(model, NEG_PROMPT, seed, samples)}}
    readings, shares = colour_shares(out["without"]["images"])
    out["without"].update(red_circles=sum(r.colour == "red" and r.shape == "circle" for r in readings) / samples,
                          red_foreground=shares["red"], circles=sum(r.shape == "circle" for r in readings) / samples,
                          white_background=sum(r.background == "white" for r in readings) / samples, shares=shares)
    dominant = max(shares, key=shares.get)
    for label, negative in (("with", NEG_NEGATIVE), ("with_dominant", dominant)):
        images = generate_images(model, NEG_PROMPT, seed, samples, negative)
        readings, after = colour_shares(images)
        out[label] = {"negative": negative, "images": images, "shares": after,
                      "red_circles": sum(r.colour == "red" and r.shape == "circle" for r in readings) / samples,
                      "red_foreground": after["red"], "circles": sum(r.shape == "circle" for r in readings) / samples,
                      "white_background": sum(r.background == "white" for r in readings) / samples}

    def ratio(a, b):
        return (a / b) if b else (math.inf if a else 0.0)

    out["ratio"] = ratio(out["without"]["red_circles"], out["with"]["red_circles"])
    out["dominant"] = dominant
    out["dominant_ratio"] = ratio(shares[dominant], out["with_dominant"]["shares"][dominant])
    return out


def _foreground(image: Image.Image) -> "np.ndarray":
    """Pixels whose palette colour is not the border's (the background)."""
    labels = scoring.quantise(np.asarray(image.convert("RGB")))
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return labels != np.bincount(border).argmax()


def _img2img(model, init: Image.Image, prompt: str, seed: int, strength: float, mask: Image.Image | None = None):
    from modules.core.pipeline import GenerationSettings, generate
    from modules.core.types import Img2ImgRequest

    request = Img2ImgRequest(prompt=prompt, init_images=[init], mask=mask, denoising_strength=strength,
                             inpainting_fill=1, seed=seed, save_images=False)
    return generate(request, model, GenerationSettings(save_grid=False, return_grid=False)).images[0]


def _colour_mask(image: Image.Image, colour: str) -> "np.ndarray":
    return scoring.quantise(np.asarray(image.convert("RGB"))) == data.COLOURS.index(colour)


def _iou(a, b) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def img2img_layout_test(model, items: list[data.EvalItem], strength: float = 0.3) -> dict:
    """img2img of a rendered held-out scene with its own caption; the layout is kept when the shape's
    pixels (those of its colour) in the output overlap those of the input (IoU). Also reported: the
    IoU of everything that is not background, which also counts the faint rims the model draws."""
    rng = np.random.default_rng(99)
    ious, ious_any, pairs = [], [], []
    for item in items:
        scene = data.scene_for(item.colour, item.shape, item.background, item.position, data.SIZES[rng.integers(2)], rng)
        init = data.render(scene)
        out = _img2img(model, init, item.caption, item.seed, strength)
        ious.append(_iou(_colour_mask(init, item.colour), _colour_mask(out, item.colour)))
        ious_any.append(_iou(_foreground(init), _foreground(out)))
        pairs.append((init, out))
    return {"strength": strength, "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
            "share_iou_0.8": float(np.mean([x >= 0.8 for x in ious])),
            "mean_iou_not_background": float(np.mean(ious_any)), "pairs": pairs}


def inpainting_half_test(model, n: int, seed: int = 8000, blur: int = 4) -> dict:
    """A shape on the left; the right half is masked and the prompt asks for another shape on the
    right. The left half (beyond the mask-blur band) must come back unchanged, pixel for pixel;
    the right half must change, and should now hold the new shape's colour."""
    rng = np.random.default_rng(seed)
    side = arch.NATIVE_SIZE
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 2, 0, side, side))
    keep_cols = slice(0, side // 2 - int(2.5 * blur + 0.5) - 1)  # A1111's blur kernel reaches 2.5 * blur
    kept, changed, coloured, pairs = 0, 0, 0, []
    for i in range(n):
        bg, c1, c2 = (data.COLOURS[j] for j in rng.choice(len(data.COLOURS), 3, replace=False))
        k1, k2 = data.SHAPES[rng.integers(3)], data.SHAPES[rng.integers(3)]
        init = data.render(data.scene_for(c1, k1, bg, "left", "small", rng))
        out = _img2img(model, init, f"a {c2} {k2} on the right on a {bg} background", seed + i, 1.0, mask)
        a, b = np.asarray(init).astype(int), np.asarray(out).astype(int)
        kept += int(np.abs(a[:, keep_cols] - b[:, keep_cols]).max() == 0)
        changed += int(np.abs(a[:, side // 2:] - b[:, side // 2:]).mean() > 4)
        right = scoring.read(out.crop((side // 2, 0, side, side)))
        coloured += int(right.colour == c2)
        pairs.append((init, out))
    return {"n": n, "left_half_unchanged": kept / n, "right_half_changed": changed / n,
            "right_half_new_colour": coloured / n, "pairs": pairs}


def evaluate(model, items: list[data.EvalItem], neg_samples: int) -> dict:
    tally = scoring.Tally()
    rows = []
    for item in items:
        image = generate_images(model, item.caption, item.seed)[0]
        reading = scoring.read(image)
        hits = tally.add(reading, item.background, item.colour, item.shape, item.position)
        rows.append((item, image, reading, hits))
    neg = negative_prompt_test(model, neg_samples)
    edit_items = items[: max(8, len(items) // 4)]
    return {"rates": tally.rates(), "n": tally.n, "rows": rows, "negative": neg,
            "img2img": img2img_layout_test(model, edit_items),
            "inpaint": inpainting_half_test(model, len(edit_items))}


# ---------------------------------------------------------------- scene evaluation (issue 21)
SCENE_SAMPLERS = ("Euler a", "DPM++ 2M")
SCENE_BARS = {"count": 0.90, "shape": 0.90, "colour": 0.95, "background": 0.95, "position": 0.90}


def scene_evaluation(model, items: list[data.SceneItem], samplers=SCENE_SAMPLERS, log: Path | None = None) -> dict:
    """Held-out phrasings (data.heldout_phrasing_items) generated with each sampler at 20 steps,
    CFG 7, and read back by scoring.read_scene: what a person would count and name. Items go in
    turn through every sampler (so a run cut short still compares them); `log` gets one JSON line
    per picture as it is read."""
    rows = {sampler: [] for sampler in samplers}
    for n, item in enumerate(items, 1):
        for sampler in samplers:
            image = generate_images(model, item.caption, item.seed, sampler=sampler)[0]
            reading = scoring.read_scene(image)
            hits = scoring.judge(reading, item.count, item.colour, item.shape, item.background,
                                 item.position, item.size)
            rows[sampler].append((item, image, reading, hits))
            if log is not None:
                with open(log, "a") as f:
                    f.write(json.dumps({"sampler": sampler, "item": asdict(item), "hits": hits,
                                        "read": [asdict(s) for s in reading.shapes],
                                        "background": reading.background}) + "\n")
        if n % 10 == 0:
            print(f"  {n}/{len(items)} captions generated", file=sys.stderr, flush=True)
    return {sampler: summarise_scene_rows(r) for sampler, r in rows.items()}


def summarise_scene_rows(rows: list) -> dict:
    tally, by_count, drawn = scoring.SceneTally(), {}, {}
    shapes = {k: {} for k in data.SHAPES}
    for item, _, reading, hits in rows:
        tally.add(hits)
        by_count.setdefault(item.count, scoring.SceneTally()).add(hits)
        key = f"{item.count}->{min(reading.count, 4)}"
        drawn[key] = drawn.get(key, 0) + 1
        for sh in reading.shapes:
            shapes[item.shape][sh.shape] = shapes[item.shape].get(sh.shape, 0) + 1
    return {"rates": tally.rates(), "by_count": {n: t.rates() for n, t in sorted(by_count.items())},
            "counts_asked_to_drawn": dict(sorted(drawn.items())), "shapes_asked_to_read": shapes, "rows": rows}


def scene_misses(scenes: dict, bars: dict = SCENE_BARS) -> list[str]:
    return [f"{sampler}: {k} {res['rates'][k]:.1%} < {bar:.0%}" for sampler, res in scenes.items()
            for k, bar in bars.items() if res["rates"].get(k, 1.0) < bar]


def scene_sheet(scenes: dict, path: Path, cols: int = 12, scale: int = 2) -> Path:
    font = ImageFont.load_default()
    side = arch.NATIVE_SIZE * scale
    cell_w, cell_h = side + 8, side + 8 + 52
    rows = [(sampler, r) for sampler, res in scenes.items() for r in res["rows"]]
    sheet = Image.new("RGB", (cols * cell_w, math.ceil(len(rows) / cols) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (sampler, (item, image, reading, hits)) in enumerate(rows):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        ok = hits["all"]
        draw.rectangle([x + 1, y + 1, x + side + 6, y + side + 6], fill=(40, 160, 60) if ok else (200, 40, 40))
        sheet.paste(image.resize((side, side), Image.NEAREST), (x + 4, y + 4))
        read = ",".join(f"{s.colour[:3]} {s.shape[:3]}" for s in reading.shapes[:3]) or "none"
        for j, line in enumerate(_wrap(f"[{sampler}] {item.caption}", 22)[:3] + [f"read: {read}"]):
            draw.text((x + 4, y + side + 8 + j * 11), line, fill=(0, 0, 0) if j < 3 else (0, 0, 160), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def check_bars(rates: dict, ratio: float, bars: Bars, i2i: dict | None = None, inpaint: dict | None = None) -> list[str]:
    misses = []
    if i2i is not None and i2i["mean_iou"] < bars.img2img_iou:
        misses.append(f"img2img mean shape-pixel IoU {i2i['mean_iou']:.2f} < {bars.img2img_iou}")
    if inpaint is not None:
        if inpaint["left_half_unchanged"] < 1.0:
            misses.append(f"inpainting changed the unmasked half in {1 - inpaint['left_half_unchanged']:.0%} of cases")
        if inpaint["right_half_changed"] < bars.inpaint_changed:
            misses.append(f"inpainting changed the masked half in only {inpaint['right_half_changed']:.0%}")
    for key in ("background", "colour", "shape", "position"):
        if rates[key] < getattr(bars, key):
            misses.append(f"{key} {rates[key]:.1%} < {getattr(bars, key):.0%}")
    if ratio < bars.negative_ratio:
        misses.append(f"negative-prompt ratio {ratio:.2f} < {bars.negative_ratio}")
    return misses


# ---------------------------------------------------------------- contact sheet
def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def contact_sheet(result: dict, path: Path, cols: int = 10, scale: int = 2) -> Path:
    font = ImageFont.load_default()
    side = arch.NATIVE_SIZE * scale
    cell_w, text_h = side + 8, 52
    tiles = []
    for item, image, reading, hits in result["rows"]:
        ok = all(hits.values())
        wrong = ",".join(k[:3] for k, v in hits.items() if not v)
        tiles.append((image, item.caption, (40, 160, 60) if ok else (200, 40, 40), "" if ok else "x " + wrong))
    neg = result["negative"]
    for label in ("without", "with"):
        tiles.extend([None] * (-len(tiles) % cols))  # each negative-test set starts a row
        for image in neg[label]["images"][:cols]:
            tiles.append((image, f"{NEG_PROMPT} | neg: {'red' if label == 'with' else '-'}", (90, 90, 90), ""))
    for key, label in (("img2img", "img2img, denoising 0.3"), ("inpaint", "inpaint right half")):
        tiles.extend([None] * (-len(tiles) % cols))  # input/output pairs
        for before, after in result.get(key, {}).get("pairs", [])[: cols // 2]:
            tiles.extend([(before, "input", (90, 90, 90), ""), (after, label, (60, 60, 160), "")])
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * (side + 8 + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        if tile is None:
            continue
        image, caption, border, note = tile
        x, y = (i % cols) * cell_w, (i // cols) * (side + 8 + text_h)
        draw.rectangle([x + 1, y + 1, x + side + 6, y + side + 6], fill=border)
        sheet.paste(image.resize((side, side), Image.NEAREST), (x + 4, y + 4))
        lines = _wrap(caption, 22)[:3] + ([note] if note else [])
        for j, line in enumerate(lines):
            draw.text((x + 4, y + side + 8 + j * 11), line, fill=(200, 0, 0) if line == note else (0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---------------------------------------------------------------- main
def run_scenes(model, out: Path, limit: int | None = None, samplers=SCENE_SAMPLERS) -> dict:
    """The scene evaluation alone; writes scenes.json and scene_sheet.png into `out`."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "scene_rows.jsonl").unlink(missing_ok=True)
    items = data.heldout_phrasing_items(limit)
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))]  # a cut-short run is a fair sample
    scenes = scene_evaluation(model, items, samplers, out / "scene_rows.jsonl")
    summary = {"captions": len(next(iter(scenes.values()))["rows"]),
               "settings": "held-out phrasings, 20 steps, CFG 7, native size, seeds 2100+i; read by scoring.read_scene",
               "samplers": {s: {"rates": {k: round(v, 4) for k, v in r["rates"].items()},
                                "by_count": {n: {k: round(v, 4) for k, v in t.items()} for n, t in r["by_count"].items()},
                                "counts_asked_to_drawn": r["counts_asked_to_drawn"],
                                "shapes_asked_to_read": r["shapes_asked_to_read"]} for s, r in scenes.items()},
               "bars": SCENE_BARS, "bars_missed": scene_misses(scenes), "seconds": round(time.time() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    summary["sheet"] = str(scene_sheet(scenes, out / "scene_sheet.png"))
    for sampler, r in scenes.items():  # the pictures, to read again without generating them again
        folder = out / "scene_images" / sampler.replace(" ", "_").replace("+", "p")
        folder.mkdir(parents=True, exist_ok=True)
        for i, (_, image, _, _) in enumerate(r["rows"]):
            image.save(folder / f"{i:03d}.png")
    (out / "scenes.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_scenes(s: dict) -> None:
    print(f"held-out phrasings: {s['captions']} captions")
    for sampler, r in s["samplers"].items():
        print(f"  {sampler:<9} " + "  ".join(f"{k} {v:.1%}" for k, v in r["rates"].items()))
        for n, t in r["by_count"].items():
            print(f"    asked {n}: " + "  ".join(f"{k} {v:.1%}" for k, v in t.items()))
        print(f"    shapes counted (asked->drawn): {r['counts_asked_to_drawn']}")
        print(f"    outlines read (asked: read): {r['shapes_asked_to_read']}")
    print(f"scene sheet: {s['sheet']}")
    print("scene bars met" if not s["bars_missed"] else "scene bars missed: " + "; ".join(s["bars_missed"]))


def run(ckpt: Path, out: Path, limit: int | None, neg_samples: int, bars: Bars, write_metadata: bool) -> dict:
    started = time.time()
    model = load_model(ckpt)
    items = data.evaluation_items(limit)
    result = evaluate(model, items, neg_samples)
    rates, neg = result["rates"], result["negative"]
    ratio = neg["ratio"] if bars.negative_colour == "red" else neg["dominant_ratio"]
    misses = check_bars(rates, ratio, bars, result["img2img"], result["inpaint"])
    i2i, inp = result["img2img"], result["inpaint"]
    summary = {
        "checkpoint": str(ckpt.name),
        "captions": result["n"],
        "settings": "DPM++ 2M, Automatic schedule (Karras), 20 steps, CFG 7, native size, seeds 1234+i",
        **{f"{k}_accuracy": round(v, 4) for k, v in rates.items()},
        "negative_prompt_test": {
            "prompt": NEG_PROMPT, "negative_prompt": NEG_NEGATIVE, "samples_each": neg_samples,
            **{f"{label}_{k}": round(neg[label][k], 4) for label in ("without", "with")
               for k in ("red_circles", "red_foreground", "white_background", "circles")},
            "colour_shares_without": {k: round(v, 4) for k, v in neg["without"]["shares"].items() if v},
            "colour_shares_with_red": {k: round(v, 4) for k, v in neg["with"]["shares"].items() if v},
            "dominant_colour": neg["dominant"],
            "colour_shares_with_dominant_as_negative": {k: round(v, 4) for k, v in neg["with_dominant"]["shares"].items() if v},
            "dominant_ratio": neg["dominant_ratio"] if math.isfinite(neg["dominant_ratio"]) else "inf",
            "ratio": neg["ratio"] if math.isfinite(neg["ratio"]) else "inf",
        },
        "img2img_test": {"denoising_strength": i2i["strength"], "images": len(i2i["pairs"]),
                         **{k: round(i2i[k], 4) for k in ("mean_iou", "min_iou", "share_iou_0.8", "mean_iou_not_background")}},
        "inpainting_test": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in inp.items() if k != "pairs"},
        "bars": asdict(bars),
        "bars_missed": misses,
        "seconds": round(time.time() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    summary["contact_sheet"] = str(contact_sheet(result, out / "contact_sheet.png"))
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    if write_metadata:
        entry_path = ckpt.with_suffix(".json")
        entry = json.loads(entry_path.read_text()) if entry_path.exists() else {}
        entry["evaluation"] = {k: v for k, v in summary.items() if k != "contact_sheet"}
        entry_path.write_text(json.dumps(entry, indent=2) + "\n")
    summary["rows"] = result["rows"]
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--limit", type=int, default=None, help="number of held-out captions (default: all)")
    ap.add_argument("--neg-samples", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="a handful of prompts with looser bars (CI)")
    ap.add_argument("--write-metadata", action="store_true", help="store the figures in the checkpoint's .json")
    ap.add_argument("--scenes", choices=["with", "only", "skip"], default="with",
                    help="the held-out-phrasing scene evaluation (counts, outlines; Euler a and DPM++ 2M): "
                         "with the rest (default; skipped with --smoke), only it, or skip it")
    args = ap.parse_args(argv)
    scene_summary = None
    if args.scenes != "skip" and not (args.smoke and args.scenes == "with"):
        scene_summary = run_scenes(load_model(args.ckpt), args.out, args.limit)
        print_scenes(scene_summary)
        if args.scenes == "only":
            return 0 if not scene_summary["bars_missed"] else 1
    limit, neg, bars = (args.limit or 12, 16, SMOKE_BARS) if args.smoke else (args.limit, args.neg_samples, FULL_BARS)
    s = run(args.ckpt, args.out, limit, neg, bars, args.write_metadata)
    print(f"held-out captions: {s['captions']}")
    for key in ("background", "colour", "shape", "position", "all_four"):
        print(f"  {key:<11} {s[key + '_accuracy']:.1%}")
    n = s["negative_prompt_test"]
    print(f"negative prompt '{NEG_NEGATIVE}' on '{NEG_PROMPT}' ({n['samples_each']} seeds): red circles "
          f"{n['without_red_circles']:.1%} -> {n['with_red_circles']:.1%} (ratio {n['ratio']}); "
          f"red foreground {n['without_red_foreground']:.1%} -> {n['with_red_foreground']:.1%}")
    i, p = s["img2img_test"], s["inpainting_test"]
    print(f"img2img at denoising {i['denoising_strength']} ({i['images']} images): shape-pixel IoU with the input "
          f"mean {i['mean_iou']:.2f}, min {i['min_iou']:.2f}, {i['share_iou_0.8']:.0%} at >= 0.8 "
          f"(all non-background pixels: mean {i['mean_iou_not_background']:.2f})")
    print(f"inpainting the right half ({p['n']} images): left half unchanged {p['left_half_unchanged']:.0%}, "
          f"right half changed {p['right_half_changed']:.0%}, new colour there {p['right_half_new_colour']:.0%}")
    print(f"colours drawn without a negative prompt: {n['colour_shares_without']}; with 'red': "
          f"{n['colour_shares_with_red']}; with '{n['dominant_colour']}': {n['colour_shares_with_dominant_as_negative']} "
          f"(ratio {n['dominant_ratio']})")
    print(f"contact sheet: {s['contact_sheet']}")
    print("all bars met" if not s["bars_missed"] else "bars missed: " + "; ".join(s["bars_missed"]))
    return 0 if not s["bars_missed"] and not (scene_summary and scene_summary["bars_missed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
