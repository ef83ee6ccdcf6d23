"""Peak memory of a checkpoint merge (modules.core.merge) against the sizes of its inputs.

1. Inputs: two SD1-layout checkpoints with random weights (seeds 1 and 2), written once to
   `benchmarks/.cache/merge/` and reused: `--size 200mb` (default) gives two ~200 MB float32
   .safetensors files (a widened tiny SD1: UNet 192/384 channels, 2 layers per level), `--smoke`
   two fixture-size files (~5 MB) so the script itself is checked in seconds. `--ckpt-inputs` also
   writes B as a .ckpt (memory-mapped by the reader) and merges that pair too.
2. Each merge runs in a FRESH subprocess: it imports torch and Easel, notes its RSS (baseline),
   then merges by weighted sum (M = 0.3) into a .safetensors (streamed) and into a .ckpt (the whole
   result in memory before torch.save), while a thread samples anonymous and file-backed RSS every
   10 ms. It reports the time, VmHWM (peak RSS), and the sampled peaks.
3. Printed: peak RSS above the baseline, and that over the sum of the two inputs' sizes. Loading
   both inputs whole would put that ratio at >= 1.0 (A1111 reads A, B and, for add difference, C
   whole: >= 1.5 for a three-model merge); the streamed .safetensors result stays near a few tensors.

    venv/bin/python benchmarks/merge.py --smoke
    venv/bin/python benchmarks/merge.py               # ~200 MB inputs, ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "merge"
SIZES = {  # UNet widths and depth of the generated SD1-layout inputs
    "smoke": dict(block_out_channels=(32, 64), layers_per_block=1),
    "200mb": dict(block_out_channels=(192, 384), layers_per_block=2),
}


def proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.peak_anon, self.peak_file = interval, 0, 0
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            s = proc_status()
            self.peak_anon, self.peak_file = max(self.peak_anon, s["RssAnon"]), max(self.peak_file, s["RssFile"])
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join()


def write_inputs(size: str, ckpt_inputs: bool) -> dict[str, Path]:
    """The two inputs (cached by size); B also as .ckpt when asked."""
    sys.path.insert(0, str(REPO))
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from modules.core.ldm_export import save_single_file, to_ldm_state_dict
    from tests.fixtures.tiny_models import clip_l_config, unet_config, vae_config

    CACHE.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, seed in (("a", 1), ("b", 2)):
        path = CACHE / f"{size}-{role}.safetensors"
        paths[role] = path
        if path.is_file() and (role != "b" or not ckpt_inputs or path.with_suffix(".ckpt").is_file()):
            continue
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**unet_config("sd1"), **SIZES[size]})
        vae = AutoencoderKL(**vae_config("sd1"))
        te = CLIPTextModel(clip_l_config())
        sd = to_ldm_state_dict("sd1", unet=unet, vae=vae, text_encoder=te)
        save_single_file(path, sd, dtype=torch.float32)
        if role == "b" and ckpt_inputs:
            save_single_file(path.with_suffix(".ckpt"), sd, dtype=torch.float32)
        del sd, unet, vae, te
    if ckpt_inputs:
        paths["b_ckpt"] = paths["b"].with_suffix(".ckpt")
    return paths


def child(job: dict) -> dict:
    """In a fresh process: one merge, measured."""
    sys.path.insert(0, str(REPO))
    __import__("torch")  # imported before the baseline, as the server has it

    from modules.core.merge import MergeSpec, merge, probe_result

    spec = MergeSpec(Path(job["a"]), Path(job["out"]), secondary=Path(job["b"]), multiplier=0.3)
    probe_result(spec)  # headers only: the detection's imports happen before the baseline
    base = proc_status()
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    result = merge(spec)
    seconds = time.perf_counter() - start
    sampler.stop()
    after = proc_status()
    out_bytes = result.path.stat().st_size
    result.path.unlink()
    return {"seconds": seconds, "base_rss": base["VmRSS"], "hwm": after["VmHWM"], "peak_anon": sampler.peak_anon,
            "peak_file": sampler.peak_file, "base_anon": base["RssAnon"], "base_file": base["RssFile"],
            "out_bytes": out_bytes}


def run_child(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"merge subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="fixture-size inputs: checks the script in seconds")
    parser.add_argument("--size", choices=sorted(SIZES), default="200mb")
    parser.add_argument("--ckpt-inputs", action="store_true", help="also merge with B as a .ckpt")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    size = "smoke" if args.smoke else args.size
    paths = write_inputs(size, args.ckpt_inputs)
    pairs = [("safetensors", paths["b"])] + ([("ckpt", paths["b_ckpt"])] if args.ckpt_inputs else [])
    mib = 1 << 20
    print(f"inputs ({size}): A {paths['a'].stat().st_size / mib:.1f} MiB")
    print(f"{'B':>12} {'result':>12} {'inputs MiB':>10} {'time s':>7} {'peak-base MiB':>13} {'ratio':>6} "
          f"{'anon+ MiB':>9} {'file+ MiB':>9}")
    for b_kind, b in pairs:
        inputs = paths["a"].stat().st_size + b.stat().st_size
        for fmt in ("safetensors", "ckpt"):
            r = run_child({"a": str(paths["a"]), "b": str(b), "out": str(CACHE / f"merged-{size}.{fmt}")})
            extra = r["hwm"] - r["base_rss"]
            print(f"{b_kind:>12} {fmt:>12} {inputs / mib:10.1f} {r['seconds']:7.2f} {extra / mib:13.1f} "
                  f"{extra / inputs:6.2f} {(r['peak_anon'] - r['base_anon']) / mib:9.1f} "
                  f"{(r['peak_file'] - r['base_file']) / mib:9.1f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
