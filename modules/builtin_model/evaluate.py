"""Evaluate the built-in model through the generation function the UI uses.

    python -m modules.builtin_model.evaluate                     # full: every held-out caption
    python -m modules.builtin_model.evaluate --smoke             # CI: a handful, looser bars
    python -m modules.builtin_model.evaluate --ckpt PATH --out DIR --write-metadata

Each held-out caption (never seen in training) is generated with the UI defaults (DPM++ 2M,
Automatic schedule, 20 steps, CFG 7, native size, fixed seeds) and read back by
`scoring.read`. Then the negative-prompt test: "a circle on a white background" with and
without the negative prompt "red"; red circles must become at least 3x rarer.
Prints the accuracies, writes results.json and contact_sheet.png into --out.
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
import torch
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

    return load_checkpoint(path, choose_policy()[0])


def generate_images(model, prompt: str, seed: int, count: int = 1, negative: str = "") -> list[Image.Image]:
    """The UI's txt2img with its defaults; `count` images with seeds seed, seed+1, ..."""
    from modules.core.pipeline import GenerationSettings, generate
    from modules.core.types import GenerationRequest

    images = []
    while len(images) < count:
        n = min(8, count - len(images))
        request = GenerationRequest(prompt=prompt, negative_prompt=negative, seed=seed + len(images),
                                    batch_size=n, save_images=False)
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
    args = ap.parse_args(argv)
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
    return 0 if not s["bars_missed"] else 1


if __name__ == "__main__":
    sys.exit(main())
