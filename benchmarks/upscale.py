"""4x model upscale of one picture, tiled and untiled: time and peak memory.

1. Build (once, cached) a random-weight model with spandrel's own classes in the shape of a real
   file: ``esrgan`` is RealESRGAN_x4plus / 4x-UltraSharp's RRDB net (64 filters, 23 blocks, 4x,
   16.7 M parameters, 67 MB as a .pth), ``compact`` is realesr-general-x4v3's SRVGG net.
2. Each variant (untiled; tiled with A1111's ESRGAN_tile 192 / ESRGAN_tile_overlap 8 by default)
   runs in a fresh subprocess through Easel's own code (``modules.core.upscaler_models``: the
   weights-only read, spandrel's build, ``run``), which reports the median time of ``--repeats``
   runs after one warm-up, its peak RSS above the baseline after loading (VmHWM), and on CUDA the
   peak of allocated device memory.

    venv/bin/python benchmarks/upscale.py                  # 512x512, esrgan, tiled and untiled
    venv/bin/python benchmarks/upscale.py --smoke          # a tiny model on 64x64: checks it runs (seconds)
    venv/bin/python benchmarks/upscale.py --size 1024 --arch compact --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_CACHE = ROOT / "benchmarks" / ".cache"


def model_file(cache: Path, arch: str, smoke: bool) -> Path:
    import torch

    from modules.core import upscaler_models

    upscaler_models.spandrel_module()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    name = f"upscale-{arch}{'-smoke' if smoke else ''}-x4.pth"
    path = cache / name
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    if arch == "esrgan":
        model = ESRGAN(num_filters=8, num_blocks=1, scale=4) if smoke else ESRGAN(num_filters=64, num_blocks=23, scale=4)
    else:
        model = Compact(num_feat=8, num_conv=2, upscale=4) if smoke else Compact(num_feat=64, num_conv=32, upscale=4)
    torch.save(model.state_dict(), path)
    return path


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass


def run_one(args: argparse.Namespace) -> dict:
    """One variant in this process: load, warm up, time; peak memory of the timed runs."""
    import numpy as np
    import torch
    from PIL import Image

    from modules.core import upscaler_models

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    model = upscaler_models.build(Path(args.file))
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    tile = args.tile if args.variant == "tiled" else 0

    def once() -> Image.Image:
        return upscaler_models.run(model, image, device, half=not args.fp32, tile=tile, overlap=args.overlap)

    once()  # warm-up (kernel selection, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    baseline = _status("VmRSS")
    _reset_peak_rss()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = once()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {
        "variant": args.variant, "tile": tile, "overlap": args.overlap, "size": args.size, "out": list(out.size),
        "load_s": load_s, "median_s": statistics.median(times), "times_s": times,
        "peak_rss_above_baseline_mb": max(0, _status("VmHWM") - baseline) / 2**20,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "dtype": str(upscaler_models.run_dtype(model, device, not args.fp32)).replace("torch.", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="side of the square input picture (512)")
    parser.add_argument("--arch", choices=("esrgan", "compact"), default="esrgan")
    parser.add_argument("--tile", type=int, default=192, help="ESRGAN_tile for the tiled variant (192)")
    parser.add_argument("--overlap", type=int, default=8, help="ESRGAN_tile_overlap (8)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=("untiled", "tiled"), default=["untiled", "tiled"])
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--fp32", action="store_true", help="no fp16/bf16 on CUDA")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on 64x64: checks that it runs")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the subprocess' own variant
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    if args.smoke:
        args.size, args.tile = min(args.size, 64), min(args.tile, 32)
    file = model_file(args.cache_dir, args.arch, args.smoke)
    print(f"model: {args.arch}{' (smoke)' if args.smoke else ''} {file} ({file.stat().st_size / 2**20:.1f} MiB), "
          f"input {args.size}x{args.size}, device {args.device}")
    rows = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--file", str(file), "--size", str(args.size),
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--repeats", str(args.repeats),
               "--device", args.device, "--threads", str(args.threads)] + (["--fp32"] if args.fp32 else [])
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'variant':<9} {'tile':>5} {'dtype':>9} {'output':>11} {'median s':>9} {'peak RSS MB':>12} {'CUDA peak MB':>13}")
    for r in rows:
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
        print(f"{r['variant']:<9} {r['tile']:>5} {r['dtype']:>9} {r['out'][0]:>5}x{r['out'][1]:<5} {r['median_s']:>9.2f} "
              f"{r['peak_rss_above_baseline_mb']:>12.0f} {cuda:>13}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
