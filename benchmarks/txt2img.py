"""txt2img speed and load memory: Easel against diffusers' StableDiffusionPipeline, same weights.

1. Build (once, cached) a full-size SD1.5-architecture checkpoint with random weights, written as
   one fp16 .safetensors in the original LDM layout, plus a diffusers-format config folder with
   the same configs for diffusers' ``from_single_file``.
2. Load: each loader runs in a FRESH subprocess (ours: ``load_checkpoint``; reference:
   ``StableDiffusionPipeline.from_single_file``), which reports its load time, its RSS after the
   imports (baseline) and its peak RSS (VmHWM, plus sampled anon/file peaks).
3. Generate: every variant is loaded once in this process, then, per size and repetition, each
   variant makes one image (Euler a, CFG 7, same prompt and seed). The variants run interleaved,
   in an order that rotates each repetition, so machine load hits all of them alike. Phases are
   timed with forward hooks on the modules (identical for both pipelines): text encoding, the
   sampling loop (end of text encoding -> last step callback), VAE decode.
4. Print medians and the ratio ours/reference (median of the per-repetition paired ratios).

    venv/bin/python benchmarks/txt2img.py --quick
    venv/bin/python benchmarks/txt2img.py --sizes 256 512 --steps 10 --repeats 3 --modes fp32 bf16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_CACHE = ROOT / "benchmarks" / ".cache"
TOKENIZER_DIR = ROOT / "models" / "tokenizers" / "clip"
CKPT_NAME = "sd15-arch-random-fp16.safetensors"
BUILD_SEED = 1234

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus"
NEGATIVE = "blurry, low quality"
SEED = 42
CFG = 7.0

# The real SD1.5 configurations (runwayml/stable-diffusion-v1-5), written out.
UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
}
VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
CLIP_CONFIG = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "timestep_spacing": "linspace", "steps_offset": 1, "prediction_type": "epsilon",
}

GIB = 1024**3


# --------------------------------------------------------------------------------------- memory

def _status() -> dict[str, int]:
    """/proc/self/status memory lines in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


class RssSampler:
    """Polls RSS on a thread: peaks of total, anonymous and file-backed RSS since the last reset."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self._stop = threading.Event()
        self.reset()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        s = _status()
        self.peak = {k: s.get(k, 0) for k in ("VmRSS", "RssAnon", "RssFile")}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            s = _status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s.get(k, 0))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return dict(self.peak)


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


# ------------------------------------------------------------------------------ the checkpoint

def write_config_dir(config_dir: Path) -> None:
    """A local diffusers-format model folder (configs only) for ``from_single_file(config=…)``."""
    import shutil

    from transformers import CLIPTextConfig

    def dump(sub: str, name: str, data: dict) -> None:
        (config_dir / sub).mkdir(parents=True, exist_ok=True)
        (config_dir / sub / name).write_text(json.dumps(data, indent=1))

    dump("unet", "config.json", {"_class_name": "UNet2DConditionModel", **UNET_CONFIG})
    dump("vae", "config.json", {"_class_name": "AutoencoderKL", **VAE_CONFIG})
    dump("scheduler", "scheduler_config.json", {"_class_name": "EulerAncestralDiscreteScheduler", **SCHEDULER_CONFIG})
    CLIPTextConfig(**CLIP_CONFIG, architectures=["CLIPTextModel"]).save_pretrained(config_dir / "text_encoder")
    (config_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, config_dir / "tokenizer" / f.name)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (config_dir / "model_index.json").write_text(json.dumps(index, indent=1))


def build_checkpoint(cache: Path) -> tuple[Path, Path]:
    """The fp16 single file and the config folder, built once and reused."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.core.ldm_export import save_single_file, to_ldm_state_dict

    cache.mkdir(parents=True, exist_ok=True)
    path, config_dir = cache / CKPT_NAME, cache / "sd15-config"
    if not (config_dir / "model_index.json").is_file():
        write_config_dir(config_dir)
    if path.is_file():
        return path, config_dir
    print(f"building {path} (random SD1.5-architecture weights, seed {BUILD_SEED}) …", flush=True)
    started = time.perf_counter()
    torch.manual_seed(BUILD_SEED)
    # Default (PyTorch) init: small, finite values; each component goes to fp16 right away so
    # at most one fp32 component is alive.
    unet = UNet2DConditionModel(**UNET_CONFIG).half()
    vae = AutoencoderKL(**VAE_CONFIG).half()
    text = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG)).half()
    sd = to_ldm_state_dict("sd1", unet=unet, vae=vae, text_encoder=text)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"non-finite weights after the fp16 cast: {bad[:5]}")
    tmp = path.with_suffix(".tmp.safetensors")
    save_single_file(tmp, sd, metadata={"easel_benchmark": f"random SD1.5 architecture, seed {BUILD_SEED}"},
                     dtype=torch.float16)
    tmp.rename(path)
    print(f"  built in {time.perf_counter() - started:.1f}s, {gib(path.stat().st_size)} GiB", flush=True)
    return path, config_dir


# ---------------------------------------------------------------------------------- the loaders

def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def load_ours(path: Path, dtype: str):
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint

    policy, _ = choose_policy(precision="half" if dtype == "bf16" else "full")
    return load_checkpoint(path, policy)


def load_ref(path: Path, config_dir: Path, dtype: str):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=_dtype(dtype),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler(**SCHEDULER_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def probe_load(kind: str, path: Path, config_dir: Path, dtype: str) -> dict:
    """Runs in a fresh process: imports, baseline RSS, load, peaks. Returns a JSON-able dict."""
    if kind == "ours":
        import modules.core.model_loader  # noqa: F401  (imports torch, diffusers, transformers)
        import modules.core.devices  # noqa: F401
    else:
        import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion  # noqa: F401
        import diffusers.loaders.single_file  # noqa: F401
    gc.collect()
    base = _status()
    sampler = RssSampler(0.01)
    started = time.perf_counter()
    model = load_ours(path, dtype) if kind == "ours" else load_ref(path, config_dir, dtype)
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    after = _status()
    del model
    return {
        "kind": kind, "dtype": dtype, "load_s": seconds, "file_bytes": path.stat().st_size,
        "base_rss": base["VmRSS"], "base_hwm": base["VmHWM"],
        "hwm": after["VmHWM"], "rss_after": after["VmRSS"], "anon_after": after["RssAnon"],
        "file_after": after["RssFile"], "peak_anon": peak["RssAnon"], "peak_file": peak["RssFile"],
    }


def run_load_probes(variants: list[str], path: Path, config_dir: Path, repeats: int) -> dict[str, list[dict]]:
    """Each variant's load in fresh subprocesses, interleaved across variants."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for name in order:
            kind, dtype = name.split("-")
            cmd = [sys.executable, __file__, "--probe-load", kind, "--probe-dtype", dtype,
                   "--ckpt", str(path), "--config-dir", str(config_dir)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                raise RuntimeError(f"load probe {name} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(lines[-1])
            results[name].append(res)
            print(f"  load {name:10s} {res['load_s']:6.1f}s  peak RSS {gib(res['hwm'])} GiB "
                  f"(baseline {gib(res['base_rss'])}, peak anon {gib(res['peak_anon'])}, "
                  f"peak file-backed {gib(res['peak_file'])})", flush=True)
    return results


# --------------------------------------------------------------------------------- timing hooks

class Lockstep:
    """Runs several generations in threads, exactly one at a time, passing the turn at every UNet
    call: step k of every variant runs within seconds of step k of the others, so a burst of load
    from other processes lands on all of them. Each thread's clock only runs while it holds the turn."""

    def __init__(self, names: list[str]):
        self.live = list(names)
        self.turn = names[0]
        self.cond = threading.Condition()
        self.active = {n: 0.0 for n in names}
        self._since: dict[str, float] = {}

    def clock(self, name: str) -> float:
        return self.active[name] + (time.perf_counter() - self._since[name])

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self._since[name] = time.perf_counter()

    def pass_turn(self, name: str, finished: bool = False) -> None:
        self.active[name] += time.perf_counter() - self._since[name]
        with self.cond:
            following = self.live[(self.live.index(name) + 1) % len(self.live)]
            if finished:
                self.live.remove(name)
            self.turn = following if self.live else None
            self.cond.notify_all()

    def switch(self, name: str) -> None:
        self.pass_turn(name)
        self.wait(name)


@dataclass
class PhaseTimes:
    total: float = 0.0
    text: float = 0.0
    unet: float = 0.0
    unet_calls: int = 0
    loop: float = 0.0
    steps: list = field(default_factory=list)  # seconds of each sampling step
    vae: float = 0.0
    image: object = None

    @property
    def other(self) -> float:
        return self.total - self.text - self.loop - self.vae


class PhaseTimer:
    """Forward hooks on text encoder(s), UNet and VAE decoder, plus step marks from the pipeline.
    ``clock`` and ``before_unet`` are set per generation (the lockstep's clock and turn switch)."""

    def __init__(self, text_encoders, unet, vae):
        self.handles = []
        self._starts: dict[str, float] = {}
        self.clock = time.perf_counter
        self.before_unet = None
        self.reset()
        for te in text_encoders:
            self._hook(te, te, "text")
        self._hook(unet, unet, "unet")
        self._hook(vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder,
                   vae.decoder, "vae")

    def reset(self) -> None:
        self.sums = {"text": 0.0, "unet": 0.0, "vae": 0.0}
        self.calls = {"text": 0, "unet": 0, "vae": 0}
        self.text_end = None
        self.marks: list[float] = []

    def _hook(self, first, last, name):
        def pre(*_):
            if name == "unet" and self.before_unet is not None:
                self.before_unet()
            self._starts[name] = self.clock()

        def post(*_):
            now = self.clock()
            self.sums[name] += now - self._starts[name]
            self.calls[name] += 1
            if name == "text" and self.calls["unet"] == 0:
                self.text_end = now

        self.handles.append(first.register_forward_pre_hook(pre))
        self.handles.append(last.register_forward_hook(post))

    def mark_step(self) -> None:
        self.marks.append(self.clock())


class Variant:
    """One loaded pipeline (ours or diffusers, in one dtype) that makes timed images."""

    def __init__(self, name: str, path: Path, config_dir: Path):
        self.name = name
        self.kind, self.dtype = name.split("-")
        started = time.perf_counter()
        if self.kind == "ours":
            self.model = load_ours(path, self.dtype)
            m = self.model
            self.timer = PhaseTimer(m.text_encoders, m.unet, m.vae)
        else:
            self.model = load_ref(path, config_dir, self.dtype)
            p = self.model
            self.timer = PhaseTimer([p.text_encoder], p.unet, p.vae)
        self.load_s = time.perf_counter() - started

    @property
    def unet(self):
        return self.model.unet

    def generate(self, size: int, steps: int, clock=time.perf_counter, before_unet=None) -> PhaseTimes:
        """One image; each pipeline runs under its own no_grad, as its users get it."""
        import torch

        timer = self.timer
        timer.reset()
        timer.clock, timer.before_unet = clock, before_unet
        started = clock()
        if self.kind == "ours":
            from modules.core.pipeline import GenerationSettings, JobObserver, generate
            from modules.core.types import GenerationRequest

            class Marks(JobObserver):
                def on_step(self, step, total, latents, denoised):
                    timer.mark_step()

            request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, sampler_name="Euler a",
                                        cfg_scale=CFG, width=size, height=size, seed=SEED, save_images=False)
            image = generate(request, self.model, GenerationSettings(), Marks()).images[0]
        else:
            def on_step_end(pipe, i, t, kwargs):
                timer.mark_step()
                return kwargs

            image = self.model(
                prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG,
                width=size, height=size, generator=torch.Generator("cpu").manual_seed(SEED),
                callback_on_step_end=on_step_end,
            ).images[0]
        total = clock() - started
        # no text encoding when ours reuses the prompt's conditioning (persistent_cond_cache, as a user's
        # repeated prompt does): the loop starts with the job
        text_end = timer.text_end if timer.text_end is not None else started
        edges = [text_end, *timer.marks]
        return PhaseTimes(
            total=total, text=timer.sums["text"], unet=timer.sums["unet"], unet_calls=timer.calls["unet"],
            loop=timer.marks[-1] - text_end, steps=[b - a for a, b in zip(edges, edges[1:])],
            vae=timer.sums["vae"], image=image,
        )


def generate_lockstep(variants: list[Variant], size: int, steps: int) -> dict[str, PhaseTimes]:
    """One image from each variant, interleaved step by step (see Lockstep)."""
    gc.collect()
    lock = Lockstep([v.name for v in variants])
    results: dict[str, PhaseTimes] = {}
    errors: list[BaseException] = []

    def work(v: Variant) -> None:
        lock.wait(v.name)
        try:
            results[v.name] = v.generate(size, steps, clock=lambda: lock.clock(v.name),
                                         before_unet=lambda: lock.switch(v.name))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            lock.pass_turn(v.name, finished=True)

    threads = [threading.Thread(target=work, args=(v,), name=v.name) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ----------------------------------------------------------------------------------- the report

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def image_check(img) -> str:
    import numpy as np

    a = np.asarray(img).astype(np.float32)
    return f"mean {a.mean():.1f} std {a.std():.1f}"


def image_diff(a, b) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a).astype(np.float32) - np.asarray(b).astype(np.float32)).mean())


def image_psnr(a, b) -> float:
    """PSNR (dB) of picture a against b (0-255; inf when identical): the bf16-default bar is 30 dB."""
    import math

    import numpy as np

    mse = float(((np.asarray(a).astype(np.float64) - np.asarray(b).astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


PAIRS = {"fp32": [("ours-fp32", "ref-fp32")], "bf16": [("ours-bf16", "ref-bf16"), ("ours-bf16", "ref-fp32")]}


def print_tables(results: dict, sizes, steps: int, pairs) -> None:
    print("\n== generation (medians over repetitions; s/step = sampling loop / steps, loop = end of text encoding"
          " -> last step; other = noise, scheduler set-up, image conversion;"
          " non-UNet = loop time outside UNet calls: CFG, casts, scheduler step, callbacks)")
    print(f"{'size':>5} {'variant':10} {'s/step':>7} {'unet/call':>9} {'loop':>7} {'text':>6} {'vae':>6} {'other':>6} {'total':>7} {'non-UNet ms/step':>16}")
    for size in sizes:
        for name, r in results[size].items():
            print(f"{size:>5} {name:10} {med([x.loop for x in r]) / steps:7.3f} "
                  f"{med([x.unet / max(1, x.unet_calls) for x in r]):9.3f} {med([x.loop for x in r]):7.2f} "
                  f"{med([x.text for x in r]):6.2f} {med([x.vae for x in r]):6.2f} {med([x.other for x in r]):6.2f} "
                  f"{med([x.total for x in r]):7.2f} {1000 * med([(x.loop - x.unet) / steps for x in r]):16.1f}")
    print("\n== ratio ours/reference (<1: ours faster). per-step: median over every (repetition, step) of the paired"
          " step-time ratio; loop/total/text/vae: median of per-repetition ratios")
    print(f"{'size':>5} {'pair':24} {'per-step':>8} {'loop':>6} {'total':>6} {'text':>6} {'vae':>6}   image mean |Δ| (0-255), PSNR")
    for size in sizes:
        for a, b in pairs:
            ra, rb = results[size][a], results[size][b]
            n = min(len(ra), len(rb))

            def ratio(f):
                return med([f(ra[i]) / f(rb[i]) for i in range(n)])

            step_ratios = [x / y for i in range(n) for x, y in zip(ra[i].steps, rb[i].steps)]
            diff = image_diff(ra[0].image, rb[0].image)
            print(f"{size:>5} {a + ' / ' + b:24} {med(step_ratios):8.3f} {ratio(lambda x: x.loop):6.3f} "
                  f"{ratio(lambda x: x.total):6.3f} {ratio(lambda x: x.text):6.3f} {ratio(lambda x: x.vae):6.3f}   {diff:.2f}, "
                  f"{image_psnr(ra[0].image, rb[0].image):.1f} dB")


def print_load_table(probes: dict[str, list[dict]]) -> None:
    print("\n== load, each in a fresh process (medians); file = the fp16 checkpoint's size")
    print(f"{'variant':10} {'load s':>7} {'baseline':>8} {'peak RSS':>8} {'peak-base':>9} {'peak/file':>9} "
          f"{'(peak-base)/file':>16} {'peak anon':>9} {'peak file-backed':>16} {'RSS after':>9}   (GiB)")
    for name, runs in probes.items():
        fsize = runs[0]["file_bytes"]
        hwm, base = med([r["hwm"] for r in runs]), med([r["base_rss"] for r in runs])
        print(f"{name:10} {med([r['load_s'] for r in runs]):7.1f} {gib(base):>8} {gib(hwm):>8} {gib(hwm - base):>9} "
              f"{hwm / fsize:9.2f} {(hwm - base) / fsize:16.2f} {gib(med([r['peak_anon'] for r in runs])):>9} "
              f"{gib(med([r['peak_file'] for r in runs])):>16} {gib(med([r['rss_after'] for r in runs])):>9}")


# ----------------------------------------------------------------------------------------- main

def run_mode(variants: list[Variant], args) -> dict:
    """Warm-up, then ``repeats`` lockstep rounds per size; the first variant rotates per round."""
    gc.collect()
    sampler = RssSampler()
    names = [v.name for v in variants]
    by_name = {v.name: v for v in variants}
    results: dict = {}
    for size in args.sizes:
        results[size] = {n: [] for n in names}
        if not args.no_warmup:
            w = generate_lockstep(variants, size, 1)
            print(f"  warm-up {size}: " + ", ".join(f"{n} {w[n].total:.1f}s" for n in names), flush=True)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            got = generate_lockstep([by_name[n] for n in order], size, args.steps)
            for name in order:
                t = got[name]
                results[size][name].append(t)
                print(f"  {size} rep {r} {name:10s} total {t.total:6.1f}s  loop {t.loop:6.1f}s "
                      f"({t.loop / args.steps:.2f}s/step, unet {t.unet / max(1, t.unet_calls):.2f}s/call × {t.unet_calls})  "
                      f"text {t.text:.2f}s  vae {t.vae:.2f}s  other {t.other:.2f}s  image {image_check(t.image)}", flush=True)
    results["peak"] = sampler.stop()["VmRSS"]
    return results


def _norm(value):
    """Config values as comparable plain data: tuples as lists, (1, 1, 1, 1) as 1."""
    if isinstance(value, (list, tuple)):
        value = list(value)
        return value[0] if value and all(v == value[0] for v in value) and isinstance(value[0], int) else value
    return value


def variants_for(modes: list[str]) -> list[str]:
    names = []
    for mode in modes:
        for a, b in PAIRS[mode]:
            for n in (a, b):
                if n not in names:
                    names.append(n)
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="timed generations per variant and size")
    ap.add_argument("--modes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--quick", action="store_true", help="256 only, 1 repetition, 1 load probe each")
    ap.add_argument("--load-repeats", type=int, default=2, help="fresh-process load probes per variant")
    ap.add_argument("--no-warmup", action="store_true", help="skip the 1-step warm-up generation per size")
    ap.add_argument("--skip-load", action="store_true", help="skip the fresh-process load probes")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    # internal: one load probe in this (fresh) process
    ap.add_argument("--probe-load", choices=["ours", "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--probe-dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--config-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.probe_load:
        print(json.dumps(probe_load(args.probe_load, args.ckpt, args.config_dir, args.probe_dtype)), flush=True)
        return 0
    if args.quick:
        args.sizes, args.repeats, args.load_repeats = [256], 1, 1

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path, config_dir = build_checkpoint(args.cache_dir)
    names = variants_for(args.modes)
    print(f"checkpoint {path} ({gib(path.stat().st_size)} GiB fp16); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"sizes {args.sizes}, {args.steps} steps Euler a, CFG {CFG}, {args.repeats} repetitions; variants {names}",
          flush=True)

    probes = {}
    if not args.skip_load:
        print("\nload probes (fresh subprocesses):", flush=True)
        probes = run_load_probes(names, path, config_dir, args.load_repeats)

    # One mode at a time, so at most its variants (<= ~10 GiB in fp32) are in memory at once.
    loaded: dict[str, Variant] = {}
    results: dict[str, dict[int, dict[str, list[PhaseTimes]]]] = {}
    memory: dict[str, tuple[int, int]] = {}
    for mode in args.modes:
        names = variants_for([mode])
        for name in [n for n in loaded if n not in names]:
            del loaded[name]
        gc.collect()
        print(f"\n[{mode}] loading {names} in this process …", flush=True)
        for name in names:
            if name not in loaded:
                loaded[name] = Variant(name, path, config_dir)
                print(f"  {name:10s} loaded in {loaded[name].load_s:.1f}s, RSS now {gib(_status()['VmRSS'])} GiB", flush=True)
        ours32, ref32 = loaded.get("ours-fp32"), loaded.get("ref-fp32")
        if ours32 and ref32:
            a, b = dict(ours32.unet.config), dict(ref32.unet.config)
            differ = {k: (a.get(k), b.get(k)) for k in set(a) | set(b)
                      if not k.startswith("_") and _norm(a.get(k)) != _norm(b.get(k))}
            print(f"  UNet config keys that differ ours vs diffusers: {differ or 'none'}", flush=True)
        del ours32, ref32  # or the next mode would keep a dropped variant alive
        results[mode] = run_mode([loaded[n] for n in names], args)
        memory[mode] = (_status()["VmRSS"], results[mode].pop("peak"))

    if probes:
        print_load_table(probes)
    for mode in args.modes:
        print(f"\n######## mode {mode}")
        print_tables(results[mode], args.sizes, args.steps, PAIRS[mode])
        print(f"process RSS with the {mode} variants loaded: {gib(memory[mode][0])} GiB, "
              f"peak while generating {gib(memory[mode][1])} GiB")
    fsize = path.stat().st_size
    print(f"\nRSS target: peak at load ≤ 1.3 × file = {gib(1.3 * fsize)} GiB. fp32 weights alone are 2 × the fp16 "
          f"file ({gib(2 * fsize)} GiB), so the fp32 loads cannot meet it; bf16 weights are 1 × the file.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
