"""Issue 16's engine figures in one run: model switch cached vs uncached, live-preview overhead per
method, token merging's speed-up and PSNR, and bf16's speed-up and PSNR against diffusers' fp32 pipeline,
each against its reference measured in the same run (the scripts below, one after the other, each in
its own process so one's memory does not weigh on the next), then the lines that carry the figures.

    venv/bin/python benchmarks/engine.py                 # 512x512 (about 20 minutes on 2 idle cores)
    venv/bin/python benchmarks/engine.py --size 256      # quicker
    venv/bin/python benchmarks/engine.py --log engine.log

Each part can be run alone with more options: model_switch.py, previews.py, token_merging.py, txt2img.py
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parts(size: int, steps: int) -> list[tuple[str, list[str]]]:
    return [
        ("model switch (cached vs uncached)", ["model_switch.py", "--switches", "3"]),
        ("live previews (overhead per method vs no preview)", ["previews.py", "--size", str(size), "--steps", "4",
                                                               "--repeats", "2"]),
        ("token merging (speed-up and PSNR vs ratio 0)", ["token_merging.py", "--size", str(size), "--steps",
                                                          str(steps), "--pairs", "2"]),
        ("bf16 vs diffusers' fp32 pipeline (speed-up and PSNR)", ["txt2img.py", "--sizes", str(size), "--steps",
                                                                   str(steps), "--repeats", "1", "--modes", "bf16",
                                                                   "--skip-load"]),
    ]


def figures(output: str) -> list[str]:
    """The lines of a part's output that carry its results: its markdown tables and summary lines."""
    keep = []
    for line in output.splitlines():
        if line.startswith("|") or " / ref-" in line or any(w in line for w in ("median cached switch", "PSNR",
                                                                                  "speed-up", "overhead")):
            keep.append(line)
    return keep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--log", type=Path, default=None, help="also write every part's whole output here")
    args = parser.parse_args(argv)

    summary, failed = [], 0
    log = open(args.log, "w") if args.log else None
    for title, command in parts(args.size, args.steps):
        print(f"== {title}: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        run = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]], capture_output=True, text=True)
        output = run.stdout + (f"\n{run.stderr}" if run.returncode else "")
        print(output, flush=True)
        if log:
            log.write(f"== {title}\n{output}\n")
        failed += run.returncode != 0
        summary.append((title, time.perf_counter() - started, run.returncode, figures(run.stdout)))
    if log:
        log.close()
    print("\n# Summary (each part against its reference from the same run)")
    for title, seconds, code, lines in summary:
        print(f"\n## {title} ({seconds:.0f} s{'' if code == 0 else f', FAILED with exit code {code}'})")
        print("\n".join(lines) or "(no figures)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
