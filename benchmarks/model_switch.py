"""Checkpoint switch time, cached in RAM (A1111's sd_checkpoints_limit) against read from the file.

1. The full-size SD1.5-architecture checkpoint of ``txt2img.py`` (random weights, the real LDM
   layout, fp16 single file, 1.99 GiB; built once into ``benchmarks/.cache``) and a second name for
   it (a symbolic link: a different checkpoint to the cache, the same bytes on disk).
2. Uncached: a ``ModelCache`` with the default limit of 1 switches A -> B -> A ...: every switch
   releases the current model and reads the other file (from the OS page cache after the first read,
   which is the favourable case for reading).
3. Cached: a ``ModelCache`` with ``limit=2`` reads both once, then switches A -> B -> A ...: every
   switch reuses the model in RAM.
4. Both run in this one process, one after the other, and the medians are printed side by side.

    venv/bin/python benchmarks/model_switch.py --switches 4 --precision half
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


def rss_gib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def switches(cache, infos, count: int) -> list[float]:
    times = []
    for _ in range(count):
        info = infos[1] if str(cache.info.filename) == str(infos[0].filename) else infos[0]  # the other one
        started = time.perf_counter()
        cache.load(info)
        times.append(time.perf_counter() - started)
        print(f"    -> {info.name}: {times[-1]:.2f}s (RSS {rss_gib():.2f} GiB)", flush=True)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=4, help="timed switches per variant")
    parser.add_argument("--precision", choices=("full", "half"), default="half",
                        help="half: bf16 weights on the CPU (two models fit a small machine); full: fp32")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)

    from modules.core.devices import choose_policy
    from modules.services.checkpoints import CheckpointInfo
    from modules.services.model_cache import ModelCache, release_memory

    path, _config = build_checkpoint(args.cache_dir)
    other = args.cache_dir / "sd15-arch-random-fp16-b.safetensors"
    if not other.exists():
        other.symlink_to(path.name)
    infos = [CheckpointInfo(path, "A", "A"), CheckpointInfo(other, "B", "B")]
    policy, _ = choose_policy(precision=args.precision)
    print(f"checkpoint {path} ({path.stat().st_size / 2**30:.2f} GiB), {policy.describe()}", flush=True)

    print("uncached (sd_checkpoints_limit = 1): every switch reads the file", flush=True)
    cache = ModelCache(policy, limit=1)
    cache.load(infos[0])  # the first read warms the page cache; not timed
    uncached = switches(cache, infos, args.switches)
    reads_uncached = cache.file_loads
    cache.unload()
    del cache
    release_memory()

    print("cached (sd_checkpoints_limit = 2): both read once, then every switch reuses the model in RAM", flush=True)
    cache = ModelCache(policy, limit=2)
    cache.load(infos[0])
    cache.load(infos[1])
    cached = switches(cache, infos, args.switches)
    reads_cached = cache.file_loads
    cache.unload()

    a, b = statistics.median(uncached), statistics.median(cached)
    print()
    print("| switch | median | min | max | files read |")
    print("|---|---|---|---|---|")
    print(f"| uncached (limit 1) | {a:.2f} s | {min(uncached):.2f} s | {max(uncached):.2f} s | {reads_uncached} |")
    print(f"| cached (limit 2) | {b * 1000:.1f} ms | {min(cached) * 1000:.1f} ms | {max(cached) * 1000:.1f} ms "
          f"| {reads_cached} |")
    print(f"median cached switch {b * 1000:.1f} ms vs {a:.1f} s uncached ({args.switches} switches each, same process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
