"""Per-step cost of ControlNet: one and two units against none, in the same run, same model.

1. Model: ``--model sd15`` (default) reuses ``txt2img.py``'s cached full-size SD1.5-architecture
   checkpoint (random weights, built once, 2 GiB) and builds once a full-size SD1.5 ControlNet (random,
   written in the A1111/LDM layout, fp16: ``benchmarks/.cache/controlnet-sd15-random-fp16.safetensors``);
   ``--model tiny`` uses the tests' tiny SD1 checkpoint and ControlNet (seconds, for a smoke run).
   Both are loaded by Easel's own loaders (``load_checkpoint``, ``controlnet_model.load``).
2. Steps: one sampling step is one denoiser call on a CFG batch (cond + uncond) at ``--size``. The
   three variants (no unit, one unit, two units) take turns call by call, in an order that rotates each
   round, so a shared machine's load hits them alike; ``--rounds`` calls each after ``--warmup``.
3. Print the median seconds per step of each variant and the ratios to no unit.

    venv/bin/python benchmarks/controlnet.py --model tiny --rounds 5
    venv/bin/python benchmarks/controlnet.py --size 512 --rounds 10
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"


def files(model: str) -> tuple[Path, Path]:
    """(checkpoint, ControlNet) for ``model``, built once into the cache."""
    from tests.fixtures.tiny_controlnets import build_controlnet, write_controlnet

    if model == "tiny":
        from tests.fixtures.tiny_models import write_checkpoint

        ckpt = CACHE / "controlnet-bench" / "tiny-sd1.safetensors"
        cn = CACHE / "controlnet-bench" / "tiny-cn.safetensors"
        if not ckpt.is_file():
            write_checkpoint(ckpt, "sd1")
        if not cn.is_file():
            write_controlnet(cn, build_controlnet("sd1"), "ldm")
        return ckpt, cn
    from benchmarks.txt2img import UNET_CONFIG, build_checkpoint
    from diffusers import ControlNetModel, UNet2DConditionModel

    ckpt, _config_dir = build_checkpoint(CACHE)
    cn = CACHE / "controlnet-sd15-random-fp16.safetensors"
    if not cn.is_file():
        torch.manual_seed(1234)
        with torch.device("meta"):
            unet = UNet2DConditionModel(**UNET_CONFIG)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False).to_empty(device="cpu")
        for p in controlnet.parameters():
            torch.nn.init.normal_(p, std=0.02)
        write_controlnet(cn, controlnet, "ldm")
    return ckpt, cn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--size", type=int, default=256, help="picture side in pixels (default 256)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from modules.core import controlnet, controlnet_model, model_ops
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint

    ckpt, cn_path = files(args.model)
    model = load_checkpoint(ckpt, choose_policy(precision="full")[0])
    built = controlnet_model.load(cn_path, model.policy.unet_dtype)
    built.module.to(model.device)
    hint = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    units = [controlnet.ControlUnit(built, hint, weight=1.0), controlnet.ControlUnit(built, hint, weight=0.5)]
    side = args.size // model.latent_scale
    shape = (model.spec.latent_channels, side, side)
    variants = {"none": model_ops.denoiser(model)}
    residuals = {}
    for count in (1, 2):
        residuals[count] = controlnet.ControlJob(units[:count]).for_pass(model, shape)
        variants[f"{count} unit{'s' * (count > 1)}"] = model_ops.denoiser(model, residuals[count])

    g = torch.Generator().manual_seed(0)
    context = torch.randn(2, 77, model.spec.unet_config["cross_attention_dim"], generator=g).to(model.device)
    x = torch.randn(2, *shape, generator=g).to(model.device)
    t = torch.tensor([500, 500], device=model.device)
    cond = {"context": context, "control_mark": torch.tensor([1.0, 0.0], device=model.device)}
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    print(f"model {args.model}, {args.size}x{args.size}, device {model.device}, UNet {model.policy.unet_dtype}, "
          f"threads {torch.get_num_threads()}, {args.rounds} rounds (+{args.warmup} warm-up)")
    with torch.no_grad():
        for round_index in range(args.warmup + args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                variants[name](x, t, cond)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                if round_index >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(times["none"])
    print(f"{'variant':<10} {'s/step (median)':>16} {'vs none':>8}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:<10} {median:>16.4f} {median / base:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
