"""Token merging (A1111's token_merging_ratio): speed-up and picture change, same run, same weights.

    venv/bin/python benchmarks/token_merging.py                      # 512², ratios 0.3 0.5, 10 steps
    venv/bin/python benchmarks/token_merging.py --size 768 --ratios 0.5 --steps 6 --pairs 6

On the full-size SD1.5-architecture checkpoint of benchmarks/txt2img.py (random weights, built once
into benchmarks/.cache/), loaded by Easel in fp32:

1. **UNet step time**, ratio r against ratio 0 on the same input (CFG batch of 2 at the picture's
   latent size), run in alternating pairs so that both sides of a pair see the same machine load;
   the speed-up is the median of the pairs' ratios.
2. **Whole pictures**: a txt2img job (Euler a, CFG 7, seed 42) per ratio through Easel's pipeline;
   wall time, and the PSNR of each picture against the ratio-0 picture of the same run.

Random weights make no real picture, so the PSNR says how far merging moves the output of a
full-size UNet, not how a trained model's picture looks; on trained weights ToMe's paper reports
little visible change up to 0.5.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _txt2img_bench():
    spec = importlib.util.spec_from_file_location("easel_bench_txt2img", ROOT / "benchmarks" / "txt2img.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def unet_pairs(model, size: int, ratio: float, pairs: int) -> list[float]:
    from modules.core.token_merging import merging

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)
    context = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([500.0, 500.0])

    def call():
        started = time.perf_counter()
        with torch.no_grad():
            model.unet(x, t, encoder_hidden_states=context)
        return time.perf_counter() - started

    call()  # warm-up
    ratios = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {}
        for merged in order:
            with merging(model.unet, ratio if merged else 0.0):
                times[merged] = call()
        ratios.append(times[False] / times[True])
        print(f"  pair {i + 1}: plain {times[False]:.2f}s, merged {times[True]:.2f}s", flush=True)
    return ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "benchmarks" / ".cache")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    bench = _txt2img_bench()
    path, _ = bench.build_checkpoint(args.cache_dir)
    model = bench.load_ours(path, "fp32")

    from modules.core.job_settings import GenerationSettings
    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}², fp32", flush=True)
    step_rows = []
    for ratio in args.ratios:
        print(f"UNet call (CFG batch 2), ratio {ratio} vs 0:", flush=True)
        step_rows.append((ratio, statistics.median(unet_pairs(model, args.size, ratio, args.pairs))))

    request = GenerationRequest(prompt=bench.PROMPT, negative_prompt=bench.NEGATIVE, seed=bench.SEED,
                                cfg_scale=bench.CFG, steps=args.steps, sampler_name="Euler a", width=args.size,
                                height=args.size, save_images=False)
    pictures = {}
    for ratio in [0.0, *args.ratios]:
        settings = GenerationSettings(token_merging_ratio=ratio, token_merging_ratio_hr=ratio)
        started = time.perf_counter()
        result = generate(request, model, settings)
        pictures[ratio] = (time.perf_counter() - started, np.asarray(result.images[0].convert("RGB")))
        print(f"picture at ratio {ratio}: {pictures[ratio][0]:.1f}s", flush=True)

    base_time, base = pictures[0.0]
    print()
    print(f"| ratio | UNet call speed-up (median of {args.pairs} pairs) | {args.steps}-step job | job speed-up "
          "| PSNR vs ratio 0 |")
    print("|---|---|---|---|---|")
    print(f"| 0 | 1.00 | {base_time:.1f} s | 1.00 | ∞ |")
    for ratio, speedup in step_rows:
        seconds, image = pictures[ratio]
        print(f"| {ratio} | {speedup:.2f}× | {seconds:.1f} s | {base_time / seconds:.2f}× | {psnr(image, base):.1f} dB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
