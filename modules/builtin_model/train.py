"""Train Easel's built-in model from a seed, on the CPU.

    python -m modules.builtin_model.train --seed 0                 # everything (77 min on 2 cores)
    python -m modules.builtin_model.train --stage vae              # one stage at a time:
    python -m modules.builtin_model.train --stage latents          #   vae -> latents -> unet -> export
    python -m modules.builtin_model.train --stage unet [--resume]
    python -m modules.builtin_model.train --stage export [--out PATH]

Stages write into --run-dir (default train_runs/seed<seed>/); the export stage writes the
single-file checkpoint (A1111/LDM layout) and its .json metadata entry.

Recipe: (1) a VAE on procedural images (L1 + MSE weighted toward shape pixels, a tiny KL), in two
cosine cycles; its latent space is then shifted and rescaled (folded into quant_conv /
post_quant_conv) so that SD's 0.18215 gives unit-variance latents; (2) a pool of training scenes is
encoded once; (3) UNet and CLIP text encoder are trained jointly from scratch with epsilon MSE on SD's
scaled_linear schedule (min-SNR-5 weighting with a floor, so the high-noise steps count), captions
re-drawn each step, 10 % replaced by "" for CFG. The training noise adds coarse (4x4, 2x2, 1x1)
components to white noise: without them the shapes' latents leak through SD's last timesteps and
the model learns to place shapes where the noise suggests instead of where the prompt says. A
training-only head on the text encoder's pooled state predicts the positions a caption states,
which makes position words distinct early. A short refine phase follows (refine_steps): more
captions leave the colour unsaid and the 1x1 coarse noise is dropped, which sharpens the shapes
(in the evaluation, shape accuracy rose from 85 % to 91 %). EMA weights are exported.

Issue 21 switches (defaults keep the committed recipe): --data-version 2 trains on one-to-three-shape
scenes with counting captions (dataset.V2_SCENES, dataset.caption_v2); --vae-edge-weight W adds
W * (edge map)^2 to the VAE's pixel weights so outlines and corners of small shapes are kept. The VAE
logs its reconstructions read by scoring.read_scene (count; outline by kind and size).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import architecture as arch
from . import dataset as data

DEFAULTS = dict(
    vae_steps=2000, vae_batch=16, vae_lr=1e-3, vae_shape_weight=10.0,
    vae_refine_steps=2500, vae_refine_lr=6e-4, vae_refine_shape_weight=20.0,
    pool_size=40000,
    unet_steps=9000, unet_batch=32, unet_lr=5e-4, warmup=300, ema_decay=0.999,
    caption_dropout=0.1, min_snr_gamma=5.0, low_snr_floor=0.25, text_aux_weight=0.3,
    coarse_noise=(0.5, 0.5, 0.2), colour_keep=0.9,
    refine_steps=1500, refine_coarse_noise=(0.5, 0.5, 0.0), refine_colour_keep=0.6,
    data_version=1, vae_edge_weight=0.0, vae_norm_images=2048,
)
# data_version 2 (issue 21): one, two or three shapes per scene with counting captions
# (dataset.V2_SCENES, dataset.caption_v2); vae_edge_weight > 0 weights the pixels where the picture
# changes sharply (outlines, most of all corners) in the VAE loss, so small squares keep their corners.
# vae_norm_images: how many pictures measure the latent statistics after each VAE phase (a multiple of 128;
# the tests use fewer).
SCENE_KWARGS: dict = {}


def scene_kwargs(version: int) -> dict:
    return dict(data.V2_SCENES) if version == 2 else {}
ROOT = arch.ROOT


def log(run_dir: Path, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(run_dir / "train.log", "a") as f:
        f.write(line + "\n")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_images(rng: np.random.Generator, n: int, with_weights: bool = False, shape_weight: float = 10.0,
                 boost_small: bool = False, edge_weight: float = 0.0):
    scenes = [data.sample_scene(rng, "train", **SCENE_KWARGS) for _ in range(n)]
    images = [data.render(s, arch.NATIVE_SIZE) for s in scenes]
    x = torch.from_numpy(data.to_tensor_array(images))
    if not with_weights:
        return x
    # shapes cover a small share of the pixels: weight every pixel that is not pure background
    bg = np.stack([np.asarray(im) == np.array(data.PALETTE[s.background], np.uint8) for s, im in zip(scenes, images)])
    shape = (~bg.all(-1)).astype(np.float32)
    # small shapes are the hard part: each image's shape pixels weigh at least ~400 pixels' worth
    boost = np.clip(400.0 / np.maximum(shape.sum(axis=(1, 2), keepdims=True), 1.0), 1.0, 4.0) if boost_small else 1.0
    w = 1.0 + (shape_weight * boost - 1.0) * shape
    if edge_weight:
        w = w + edge_weight * edge_map(images)
    return x, torch.from_numpy(w)[:, None]  # dtype as before (float64 with boost_small): same numbers


def edge_map(images) -> np.ndarray:
    """N x H x W in 0..1: how far each pixel is from its blurred neighbourhood, squared and scaled
    per image, so outlines weigh and corners (which differ most from their surroundings) weigh most."""
    import cv2
    out = []
    for im in images:
        a = np.asarray(im, dtype=np.float32)
        e = np.abs(a - cv2.GaussianBlur(a, (5, 5), 1.0)).sum(-1)
        e = (e / max(float(e.max()), 1.0)) ** 2
        out.append(e)
    return np.stack(out)


@torch.no_grad()
def reconstruction_accuracy(vae, n: int = 48, seed: int = 777) -> dict:
    """Score VAE reconstructions of fixed one-shape scenes with the pixel scorer."""
    from . import scoring
    rng = np.random.default_rng(seed)
    tally, scenes = scoring.Tally(), []
    for _ in range(n):
        c = data.COLOURS[rng.integers(8)]
        b = [x for x in data.COLOURS if x != c][rng.integers(7)]
        scenes.append(data.scene_for(c, data.SHAPES[rng.integers(3)], b, data.POSITION_NAMES[rng.integers(9)],
                                     data.SIZES[rng.integers(2)], rng))
    x = torch.from_numpy(data.to_tensor_array([data.render(s) for s in scenes]))
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    pixels = ((rec / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for s, im in zip(scenes, pixels):
        sh = s.shapes[0]
        tally.add(scoring.read(im), s.background, sh.colour, sh.kind, sh.position)
    return {k: round(v, 3) for k, v in tally.rates().items()}


@torch.no_grad()
def scene_reconstruction(vae, n: int = 64, seed: int = 778) -> dict:
    """VAE reconstructions of one-to-three-shape scenes read by scoring.read_scene: the share with
    the right number of shapes, and of shapes read as their own outline, by kind and size."""
    from . import scoring
    rng = np.random.default_rng(seed)
    scenes = [data.sample_scene(rng, "eval", **data.V2_SCENES) for _ in range(n)]
    x = torch.from_numpy(data.to_tensor_array([data.render(s) for s in scenes]))
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    pixels = ((rec / 2 + 0.5).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    counted, hits = 0, {}
    for s, im in zip(scenes, pixels):
        r = scoring.read_scene(im)
        counted += r.count == len(s.shapes)
        for q in s.shapes:
            found = [g for g in r.shapes if g.position == q.position]
            key = f"{q.kind}/{q.size}"
            a, b = hits.get(key, (0, 0))
            hits[key] = (a + int(bool(found) and found[0].shape == q.kind), b + 1)
    return {"count": round(counted / n, 3), **{k: round(a / b, 2) for k, (a, b) in sorted(hits.items())}}


# ---------------------------------------------------------------- stage 1: VAE
def _vae_phase(vae, rng, run_dir: Path, name: str, steps: int, lr: float, shape_weight: float, batch: int,
               boost_small: bool, edge_weight: float = 0.0) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    started, running = time.time(), 0.0
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 100)
        x, w = batch_images(rng, batch, True, shape_weight, boost_small, edge_weight)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        err = rec - x
        loss = ((err.abs() + err.pow(2)) * w).sum() / (w.sum() * 3) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % 50 == 0:
            log(run_dir, f"vae {name} step {step + 1}/{steps} loss {running / 50:.4f} "
                         f"elapsed {time.time() - started:.0f}s")
            running = 0.0
        if (step + 1) % 250 == 0 or step + 1 == steps:
            vae.eval()
            log(run_dir, f"vae {name} step {step + 1} reconstructions read back: {reconstruction_accuracy(vae)}"
                         f"; by outline and count: {scene_reconstruction(vae)}")
            vae.train()
    vae.eval()


def train_vae(args, run_dir: Path) -> None:
    """Phase A: from scratch; phase B: a second cosine cycle that weights shape pixels (small
    shapes most) harder. The latent space is normalised after each phase; phase A's result is
    kept so phase B can be rerun alone."""
    torch.manual_seed(args.seed)
    started = time.time()
    phase_a = run_dir / "vae_phase_a.safetensors"
    vae = arch.build_vae()
    if phase_a.exists():
        vae.load_state_dict(load_file(str(phase_a)))
        log(run_dir, "vae phase A loaded from " + phase_a.name)
    else:
        rng = np.random.default_rng([args.seed, 1])
        with torch.no_grad():  # start with a nearly deterministic posterior (std ~0.05)
            vae.quant_conv.bias[arch.LATENT_CHANNELS:] = -6.0
        _vae_phase(vae, rng, run_dir, "A", args.vae_steps, args.vae_lr, args.vae_shape_weight, args.vae_batch, False,
                   args.vae_edge_weight)
        normalise_latents(vae, rng, run_dir, args.vae_norm_images)
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(phase_a))
    if args.vae_refine_steps:
        torch.manual_seed(args.seed + 4)
        rng = np.random.default_rng([args.seed, 4])
        _vae_phase(vae, rng, run_dir, "B", args.vae_refine_steps, args.vae_refine_lr,
                   args.vae_refine_shape_weight, args.vae_batch, True, args.vae_edge_weight)
        normalise_latents(vae, rng, run_dir, args.vae_norm_images)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(run_dir / "vae.safetensors"))
    log(run_dir, f"vae done in {time.time() - started:.0f}s")


@torch.no_grad()
def normalise_latents(vae, rng: np.random.Generator, run_dir: Path, n: int = 2048) -> None:
    """Shift and scale the latent space so that 0.18215 * latent has zero mean, unit variance
    per channel. Folded into quant_conv (mean rows; logvar shifted by 2 ln k) and
    post_quant_conv (inverse), so the decoder's output is unchanged."""
    means = torch.cat([vae.encode(batch_images(rng, 128)).latent_dist.mean for _ in range(n // 128)])
    mu = means.mean(dim=(0, 2, 3))
    std = means.std(dim=(0, 2, 3))
    k = (1.0 / arch.VAE_SCALING_FACTOR) / std
    c = arch.LATENT_CHANNELS
    q, pq = vae.quant_conv, vae.post_quant_conv
    w_post = pq.weight.clone()
    q.weight[:c] *= k.view(-1, 1, 1, 1)
    q.bias[:c] = k * (q.bias[:c] - mu)
    q.bias[c:] += 2 * torch.log(k)
    pq.bias += (w_post[:, :, 0, 0] @ mu)
    pq.weight /= k.view(1, -1, 1, 1)
    check = torch.cat([vae.encode(batch_images(rng, 128)).latent_dist.mean
                       for _ in range(max(1, n // 512))]) * arch.VAE_SCALING_FACTOR
    log(run_dir, f"latents raw mean {mu.tolist()} std {std.tolist()} -> scaled mean "
                 f"{check.mean(dim=(0, 2, 3)).tolist()} std {check.std(dim=(0, 2, 3)).tolist()}")


def load_vae(run_dir: Path):
    vae = arch.build_vae()
    vae.load_state_dict(load_file(str(run_dir / "vae.safetensors")))
    return vae.eval().requires_grad_(False)


# ---------------------------------------------------------------- stage 2: latent pool
@torch.no_grad()
def encode_pool(args, run_dir: Path) -> None:
    vae = load_vae(run_dir)
    rng = np.random.default_rng([args.seed, 2])
    scenes, chunks, started = [], [], time.time()
    for i in range(0, args.pool_size, 250):
        batch = [data.sample_scene(rng, "train", **SCENE_KWARGS) for _ in range(min(250, args.pool_size - i))]
        x = torch.from_numpy(data.to_tensor_array([data.render(s, arch.NATIVE_SIZE) for s in batch]))
        chunks.append(vae.encode(x).latent_dist.mean * arch.VAE_SCALING_FACTOR)
        scenes.extend(batch)
    save_file({"latents": torch.cat(chunks).contiguous()}, str(run_dir / "pool.safetensors"))
    with open(run_dir / "pool_scenes.pkl", "wb") as f:
        pickle.dump(scenes, f)
    log(run_dir, f"encoded {len(scenes)} scenes in {time.time() - started:.0f}s")


# ---------------------------------------------------------------- stage 3: UNet + text encoder
class Ema:
    def __init__(self, modules, decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    def state_dicts(self, modules) -> list[dict]:
        # shadow tensors follow the order of parameters(); map them back to state-dict keys
        out, i = [], 0
        for m in modules:
            sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, _ in m.named_parameters():
                sd[name] = self.shadow[i].clone()
                i += 1
            out.append(sd)
        return out


class Tokens:
    """Caption -> 77 token ids exactly as SD1 pads them (BOS, words, EOS, <|endoftext|> ...)."""

    def __init__(self):
        self.tokenizer = arch.load_tokenizer()
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        rows = []
        for c in captions:
            if c not in self.cache:
                self.cache[c] = self.tokenizer(c, padding="max_length", max_length=77, truncation=True).input_ids
            rows.append(self.cache[c])
        return torch.tensor(rows, dtype=torch.long)


def training_noise(x0: torch.Tensor, coarse: tuple[float, ...]) -> torch.Tensor:
    """White noise plus upsampled coarse noise (4x4, 2x2, 1x1 grids for coarse[0], [1], [2]).

    At SD's last timestep a shape's latent still shows through the noise (sqrt(alphas_cumprod[999])
    = 0.07 of its amplitude, over a few latent pixels), so a model trained on white noise learns to
    read where a shape is from the noise and, when sampling from pure noise, puts shapes at random
    places whatever the prompt says. Extra coarse noise hides that leak, so where a shape goes has to
    come from the text. Sampling still starts from plain white noise.
    """
    noise = torch.randn_like(x0)
    b, c, h, w = x0.shape
    for strength, grid in zip(coarse, (4, 2, 1)):
        if strength:
            low = torch.randn(b, c, min(grid, h), min(grid, w))
            noise = noise + strength * F.interpolate(low, size=(h, w), mode="nearest")
    return noise


def train_unet(args, run_dir: Path) -> None:
    torch.manual_seed(args.seed + 3)
    rng = np.random.default_rng([args.seed, 3])
    latents = load_file(str(run_dir / "pool.safetensors"))["latents"]
    with open(run_dir / "pool_scenes.pkl", "rb") as f:
        scenes = pickle.load(f)
    unet, te = arch.build_unet().train(), arch.build_text_encoder().train()
    modules = [unet, te]
    # training-only head: which positions the caption states, read from the text encoder's
    # pooled (EOS) state. It makes position words distinct in the text states early, which
    # the UNet's cross-attention needs before it can learn where to draw; not exported.
    aux = torch.nn.Linear(arch.TEXT_CONFIG["hidden_size"], len(data.POSITION_NAMES))
    params = [p for m in modules for p in m.parameters()] + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01, fused=True)
    ema = Ema(modules, args.ema_decay)
    tokens = Tokens()
    alphas = arch.alphas_cumprod()
    start_step = 0
    ckpt = run_dir / "unet_train_state.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"]); te.load_state_dict(state["te"]); aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["opt"])
        ema.shadow = state["ema"]
        start_step = state["step"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log(run_dir, f"resumed at step {start_step}")

    started, running = time.time(), 0.0
    total = args.unet_steps + args.refine_steps
    end = min(total, args.stop_after or total)
    for step in range(start_step, end):
        # main phase, then a short refine phase: more captions without a colour and no 1x1 coarse
        # noise, its LR continuing the cosine over both phases (it also sharpens the shapes)
        refine = step >= args.unet_steps
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total if refine else args.unet_steps, args.unet_lr, args.warmup)
        colour_keep = args.refine_colour_keep if refine else args.colour_keep
        idx = rng.integers(len(scenes), size=args.unet_batch)
        captions = ["" if rng.random() < args.caption_dropout else data.caption(scenes[i], rng, colour_keep, args.data_version)
                    for i in idx]
        x0 = latents[torch.from_numpy(idx)]
        t = torch.randint(0, 1000, (args.unet_batch,))
        noise = training_noise(x0, args.refine_coarse_noise if refine else args.coarse_noise)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        text = te(tokens(captions))
        pred = unet(xt, t, text.last_hidden_state).sample
        snr = alphas[t] / (1 - alphas[t])
        # min-SNR-gamma, with a floor: x0-space weight clamp(snr, floor, gamma). The floor keeps the
        # high-noise steps, where only the text says where a shape goes, from counting for nothing.
        weight = torch.clamp(snr, min=args.low_snr_floor, max=args.min_snr_gamma) / snr
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        if args.text_aux_weight:
            stated = torch.tensor([[p in data.stated_positions(c) for p in data.POSITION_NAMES] for c in captions],
                                  dtype=torch.float32)
            loss = loss + args.text_aux_weight * F.binary_cross_entropy_with_logits(aux(text.pooler_output), stated)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        running += loss.item()
        done = step + 1
        if done % 50 == 0:
            el = time.time() - started
            log(run_dir, f"unet step {done}/{total} loss {running / 50:.4f} "
                         f"elapsed {el:.0f}s ({(done - start_step) / el:.2f} it/s)")
            running = 0.0
        if done % args.save_every == 0 or done == end:
            save_unet(run_dir, modules, ema, opt, done, rng, aux)
    log(run_dir, f"unet done in {time.time() - started:.0f}s")


def save_unet(run_dir: Path, modules, ema: Ema, opt, step: int, rng, aux) -> None:
    unet_sd, te_sd = ema.state_dicts(modules)
    tmp = run_dir / "ema.safetensors.tmp"
    save_file({**{"unet." + k: v.contiguous() for k, v in unet_sd.items()},
               **{"te." + k: v.contiguous() for k, v in te_sd.items()}}, str(tmp),
              metadata={"step": str(step)})
    os.replace(tmp, run_dir / "ema.safetensors")
    state = {"unet": modules[0].state_dict(), "te": modules[1].state_dict(), "opt": opt.state_dict(),
             "aux": aux.state_dict(), "ema": ema.shadow, "step": step, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
    torch.save(state, run_dir / "unet_train_state.pt.tmp")
    os.replace(run_dir / "unet_train_state.pt.tmp", run_dir / "unet_train_state.pt")


def load_trained(run_dir: Path):
    """(unet, text_encoder, vae) from a run directory, EMA weights, eval mode."""
    sd = load_file(str(run_dir / "ema.safetensors"))
    unet, te = arch.build_unet(), arch.build_text_encoder()
    unet.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("unet.")})
    te.load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("te.")})
    return unet.eval().requires_grad_(False), te.eval().requires_grad_(False), load_vae(run_dir)


# ---------------------------------------------------------------- stage 4: export
def export(args, run_dir: Path) -> Path:
    from . import export as exporter

    unet, te, vae = load_trained(run_dir)
    steps = load_file_metadata(run_dir / "ema.safetensors").get("step", "?")
    recipe = {k: getattr(args, k) for k in DEFAULTS} | {"seed": args.seed, "unet_steps_done": steps}
    times = _stage_times(run_dir)
    out = exporter.export_checkpoint(unet, te, vae, Path(args.out), recipe, times)
    diffs = exporter.verify_roundtrip(out, unet, te, vae)
    log(run_dir, f"exported {out} ({out.stat().st_size / 2**20:.1f} MiB); reloaded outputs differ by at most "
                 + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return out


def load_file_metadata(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def _stage_times(run_dir: Path) -> dict:
    p = run_dir / "stage_times.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _record_time(run_dir: Path, stage: str, seconds: float, add: bool = False) -> None:
    times = _stage_times(run_dir)
    times[stage] = round(seconds + (times.get(stage, 0.0) if add else 0.0), 1)
    (run_dir / "stage_times.json").write_text(json.dumps(times, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", choices=["all", "vae", "latents", "unet", "export"], default="all")
    ap.add_argument("--run-dir", default=None, help="scratch directory (default train_runs/seed<seed>)")
    ap.add_argument("--out", default=str(ROOT / "models" / "Stable-diffusion" / "easel-shapes-v1.safetensors"))
    ap.add_argument("--resume", action="store_true", help="continue the unet stage from its last save")
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--stop-after", type=int, default=0,
                    help="stop the unet stage after this many steps (the LR schedule still spans --unet-steps)")
    ap.add_argument("--threads", type=int, default=2)
    for k, v in DEFAULTS.items():
        if isinstance(v, tuple):
            ap.add_argument("--" + k.replace("_", "-"), type=float, nargs=len(v), default=v)
        else:
            ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)  # fixed, so results do not depend on the machine's load
    SCENE_KWARGS.clear()
    SCENE_KWARGS.update(scene_kwargs(args.data_version))
    run_dir = Path(args.run_dir or ROOT / "train_runs" / f"seed{args.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(run_dir, f"args {vars(args)}")
    stages = ["vae", "latents", "unet", "export"] if args.stage == "all" else [args.stage]
    fns = {"vae": train_vae, "latents": encode_pool, "unet": train_unet, "export": export}
    for stage in stages:
        t0 = time.time()
        fns[stage](args, run_dir)
        if stage != "export":
            _record_time(run_dir, stage, time.time() - t0, add=stage == "unet" and args.resume)


if __name__ == "__main__":
    main()
