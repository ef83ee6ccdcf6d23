"""The UNet's attention backends (A1111's "Cross attention optimization"), side by side with
diffusers' own attention processor (AttnProcessor2_0, PyTorch's SDPA), on the shapes of SD1.5's
largest self-attention layer (8 heads of 40, 4096 tokens at 512 px, 9216 at 768 px; batch 2:
cond and uncond).

Each backend runs in a fresh subprocess (its peak memory is its own): the time of one attention
call (median of --repeats, after one warm-up) and the peak memory the call added (CUDA: the
allocator's peak; CPU: the process's peak RSS, VmHWM, above what it held before the call), and the
largest difference from the reference output.

    venv/bin/python benchmarks/attention.py                      # 512 px, CPU or the GPU
    venv/bin/python benchmarks/attention.py --sizes 512 768 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("diffusers", "sdp", "sdp-no-mem", "Doggettx", "V1", "InvokeAI", "sub-quadratic", "None")


def _vm_hwm() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def run_one(backend: str, size: int, repeats: int, device: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from modules.core import attention

    torch.manual_seed(0)
    tokens = (size // 8) ** 2
    layer = Attention(query_dim=320, heads=8, dim_head=40).to(device).eval()
    x = torch.randn(2, tokens, 320, device=device)
    with torch.no_grad():
        layer.set_processor(AttnProcessor2_0())
        reference = layer(x)
        if backend != "diffusers":
            layer.set_processor(attention.AttentionProcessor(backend))
        layer(x)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            _reset_hwm()
            before = _vm_hwm()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = layer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _vm_hwm()) - before
    times.sort()
    return {"backend": backend, "size": size, "seconds": times[len(times) // 2], "peak_mb": max(peak, 0) / 2**20,
            "max_diff": float((out - reference).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.repeats, device)))
        return
    print(f"{'size':>5} {'backend':<14} {'time (s)':>9} {'peak (MB)':>10} {'max |Δ|':>9}")
    for size in args.sizes:
        for backend in BACKENDS:
            command = [sys.executable, __file__, "--one", backend, str(size), "--repeats", str(args.repeats)]
            if args.device:
                command += ["--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{size:>5} {backend:<14} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{size:>5} {backend:<14} {r['seconds']:>9.3f} {r['peak_mb']:>10.0f} {r['max_diff']:>9.1e}")


if __name__ == "__main__":
    main()
