"""Live preview cost per method against the sampling step it rides on, in one run.

1. The full-size SD1.5-architecture checkpoint of ``txt2img.py`` (random weights, real LDM layout,
   fp16 file, built once into ``benchmarks/.cache``), loaded as the engine loads it.
2. The step: a txt2img job of ``--steps`` Euler steps at ``--size`` (CFG 7), its per-step time the
   median of the gaps between the observer's step callbacks (the first step left out).
3. Each preview method on the last step's latents of that job, ``--repeats`` times (median):
   "Approx cheap" (the latent-to-RGB map), "Approx NN" (A1111's model.pt architecture, real size,
   random weights), "TAESD" (the tiny autoencoder's decoder, real size, random weights) and "Full"
   (the model's own VAE decode of one picture, as the job's thread does it).
4. The table: each method's time and its share of the step; with ``show_progress_every_n_steps``
   = N the overhead per step is that share / N. The issue's target: at most 10 % with TAESD or
   Approx cheap at N = 1.

    venv/bin/python benchmarks/previews.py --size 512 --steps 4 --precision half
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.txt2img import DEFAULT_CACHE, build_checkpoint  # noqa: E402

APPROX_NN_SHAPES = [(8, 4, 7), (16, 8, 5), (32, 16, 3), (64, 32, 3), (32, 64, 3), (16, 32, 3), (8, 16, 3), (3, 8, 3)]


def _approx_nn(folder: Path):
    import torch

    from modules.core import approx_nn

    torch.manual_seed(0)
    state = {}
    for i, (out_ch, in_ch, k) in enumerate(APPROX_NN_SHAPES, 1):
        state[f"conv{i}.weight"] = torch.randn(out_ch, in_ch, k, k) * 0.1
        state[f"conv{i}.bias"] = torch.zeros(out_ch)
    torch.save(state, folder / "model.pt")
    return approx_nn.load(approx_nn.model_path(folder, "sd1"))


def _taesd():
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny().decoder.eval()


class _Timed:
    """The job's observer: the time of each step callback."""

    def __init__(self):
        from modules.core.job_settings import JobObserver

        self.base = JobObserver()
        self.times: list[float] = []
        self.latents = None

    def __getattr__(self, name):
        return getattr(self.base, name)

    def begin_batch(self, *args):
        pass

    def on_step(self, step, total, latents, denoised):
        self.times.append(time.perf_counter())
        self.latents = (denoised if denoised is not None else latents).detach().clone()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("full", "half"), default="half")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from modules.core import approx_nn, model_ops, taesd
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint
    from modules.core.pipeline import generate
    from modules.core.preview import latent_preview
    from modules.core.types import GenerationRequest
    from modules.core.job_settings import GenerationSettings

    path, _config = build_checkpoint(args.cache_dir)
    policy, _ = choose_policy(precision=args.precision)
    print(f"checkpoint {path.name}, {policy.describe()}, {torch.get_num_threads()} threads", flush=True)
    model = load_checkpoint(path, policy)

    observer = _Timed()
    request = GenerationRequest(prompt="a lighthouse on a cliff at dusk", negative_prompt="blurry", steps=args.steps,
                                sampler_name="Euler", cfg_scale=7.0, width=args.size, height=args.size, seed=42)
    started = time.perf_counter()
    generate(request, model, GenerationSettings(), observer, None)
    gaps = [b - a for a, b in zip(observer.times, observer.times[1:])]
    step = statistics.median(gaps) if gaps else observer.times[0] - started
    print(f"job: {args.steps} steps at {args.size}², {time.perf_counter() - started:.1f} s; step {step:.2f} s "
          f"(median of {len(gaps)} gaps)", flush=True)

    latents = observer.latents[:1]
    with tempfile.TemporaryDirectory() as tmp:
        nn_model = _approx_nn(Path(tmp))
        decoder = _taesd()
        methods = {
            "Approx cheap": lambda: latent_preview(latents, model.family.preview_factors),
            "Approx NN": lambda: approx_nn.decode(nn_model, latents),
            "TAESD": lambda: taesd.decode(decoder, latents),
            "Full": lambda: model_ops.decode_latents(model, latents)[0],
        }
        rows = []
        for name, render in methods.items():
            times = []
            with torch.inference_mode():
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    picture = render()
                    times.append(time.perf_counter() - t0)
            cost = statistics.median(times)
            rows.append((name, cost, picture.size))
            print(f"  {name}: {cost * 1000:.1f} ms, {picture.size[0]}x{picture.size[1]}", flush=True)

    print()
    print(f"| method | preview | picture | share of a {step:.2f} s step (every step) | every 10 steps |")
    print("|---|---:|---|---:|---:|")
    for name, cost, size in rows:
        print(f"| {name} | {cost * 1000:.1f} ms | {size[0]}x{size[1]} | {cost / step:.1%} | {cost / step / 10:.2%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
