"""Evaluate the built-in model through the generation function the UI uses.

    python -m modules.builtin_model.evaluate                     # full: every held-out caption
    python -m modules.builtin_model.evaluate --smoke             # CI: a handful, looser bars
    python -m modules.builtin_model.evaluate --ckpt PATH --out DIR --write-metadata

Each held-out caption (never seen in training) is generated with the UI defaults (Euler a,
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


FULL_BARS = Bars()
SMOKE_BARS = Bars(background=0.75, colour=0.6, shape=0.5, position=0.5, negative_ratio=1.5)


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
    out = {}
    for label, negative in (("without", ""), ("with", NEG_NEGATIVE)):
        images = generate_images(model, NEG_PROMPT, seed, samples, negative)
        readings = [scoring.read(im) for im in images]
        out[label] = {
            "red_circles": sum(r.colour == "red" and r.shape == "circle" for r in readings) / samples,
            "red_foreground": sum(r.colour == "red" for r in readings) / samples,
            "white_background": sum(r.background == "white" for r in readings) / samples,
            "circles": sum(r.shape == "circle" for r in readings) / samples,
            "images": images,
        }
    a, b = out["without"]["red_circles"], out["with"]["red_circles"]
    out["ratio"] = (a / b) if b else (math.inf if a else 0.0)
    return out


def evaluate(model, items: list[data.EvalItem], neg_samples: int) -> dict:
    tally = scoring.Tally()
    rows = []
    for item in items:
        image = generate_images(model, item.caption, item.seed)[0]
        reading = scoring.read(image)
        hits = tally.add(reading, item.background, item.colour, item.shape, item.position)
        rows.append((item, image, reading, hits))
    neg = negative_prompt_test(model, neg_samples)
    return {"rates": tally.rates(), "n": tally.n, "rows": rows, "negative": neg}


def check_bars(rates: dict, ratio: float, bars: Bars) -> list[str]:
    misses = []
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
    misses = check_bars(rates, neg["ratio"], bars)
    summary = {
        "checkpoint": str(ckpt.name),
        "captions": result["n"],
        "settings": "Euler a, Automatic schedule, 20 steps, CFG 7, native size, seeds 1234+i",
        **{f"{k}_accuracy": round(v, 4) for k, v in rates.items()},
        "negative_prompt_test": {
            "prompt": NEG_PROMPT, "negative_prompt": NEG_NEGATIVE, "samples_each": neg_samples,
            **{f"{label}_{k}": round(neg[label][k], 4) for label in ("without", "with")
               for k in ("red_circles", "red_foreground", "white_background", "circles")},
            "ratio": neg["ratio"] if math.isfinite(neg["ratio"]) else "inf",
        },
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
    ap.add_argument("--neg-samples", type=int, default=64)
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
    print(f"contact sheet: {s['contact_sheet']}")
    print("all bars met" if not s["bars_missed"] else "bars missed: " + "; ".join(s["bars_missed"]))
    return 0 if not s["bars_missed"] else 1


if __name__ == "__main__":
    sys.exit(main())
