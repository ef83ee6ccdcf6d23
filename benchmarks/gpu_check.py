"""The GPU check a lent GPU machine runs (issue 16 item 7), in one go, in well under 8 minutes:

    venv/bin/python benchmarks/gpu_check.py            # or: bash benchmarks/gpu_check.sh

On random-weight models of the real full sizes, written once into benchmarks/.cache/:

1. SD1.5 at 512², 20 steps Euler a, CFG 7, fp16: Easel's it/s against diffusers'
   StableDiffusionPipeline on the same file, in the same run (bit-level agreement is checked on
   the CPU by benchmarks/txt2img.py; here the pictures' mean difference is printed);
2. the peak VRAM of an SD1.5 512² job under each memory policy (all, medvram, lowvram), with the
   owner's own account beside torch's;
3. the VAE's fp32 retry: a VAE forced to give NaN in fp16 still gives a finite picture;
4. fp8 weight storage (fp8_storage "Enable"): it/s and peak VRAM;
5. SDXL at 1024², 20 steps, fp16: Easel's it/s and peak VRAM (all and medvram);
6. whether xformers is importable.

Every section reports its own failure and the script goes on; the figures are printed as a
Markdown table for benchmarks/README.md and written as JSON to $OUT/gpu_check.json when $OUT is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / ".cache"
STEPS = 20
RESULTS: dict[str, object] = {}

SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SDXL_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
SDXL_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def _bench_module():
    spec = importlib.util.spec_from_file_location("easel_bench_txt2img", ROOT / "benchmarks" / "txt2img.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def section(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            started = time.perf_counter()
            print(f"\n== {name}", flush=True)
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the next section still runs
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
        return run
    return wrap


def _load(path: Path, policy_name: str = "all", run_options=None):
    from modules.core.devices import choose_policy
    from modules.core.memory import DeviceMemory
    from modules.core.model_loader import load_checkpoint

    policy, _ = choose_policy()
    memory = DeviceMemory.for_device(policy.device, policy_name)
    return load_checkpoint(path, policy, memory=memory, run_options=run_options), memory


def _generate(model, size: int, steps: int, seed: int = 42):
    from modules.core.job_settings import GenerationSettings
    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest

    request = GenerationRequest(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry",
                                seed=seed, steps=steps, cfg_scale=7.0, sampler_name="Euler a", width=size,
                                height=size, save_images=False)
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = generate(request, model, GenerationSettings())
    torch.cuda.synchronize()
    return time.perf_counter() - started, np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def _peak_reset():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _gib(n: float) -> float:
    return round(n / 2 ** 30, 2)


@section("SD1.5 512², ours vs diffusers (fp16)")
def sd15_speed(path: Path, config_dir: Path, bench):
    model, _ = _load(path)
    _generate(model, 512, 1)  # warm-up
    ours_s, ours_img = _generate(model, 512, STEPS)
    del model
    _peak_reset()
    pipe = bench.load_ref(path, config_dir, "fp32")
    pipe = pipe.to("cuda", torch.float16)
    generator = torch.Generator("cpu").manual_seed(42)
    pipe("warm-up", num_inference_steps=1, height=512, width=512)
    torch.cuda.synchronize()
    started = time.perf_counter()
    image = pipe("a photograph of an astronaut riding a horse", negative_prompt="blurry", num_inference_steps=STEPS,
                 guidance_scale=7.0, height=512, width=512, generator=generator).images[0]
    torch.cuda.synchronize()
    ref_s = time.perf_counter() - started
    diff = float(np.abs(ours_img - np.asarray(image.convert("RGB"), dtype=np.int16)).mean())
    RESULTS["sd15_512"] = {"ours_it_s": round(STEPS / ours_s, 2), "diffusers_it_s": round(STEPS / ref_s, 2),
                           "ratio": round(ref_s / ours_s, 2), "mean_abs_pixel_diff": round(diff, 2)}
    print(RESULTS["sd15_512"])
    del pipe


@section("SD1.5 512², peak VRAM per memory policy")
def sd15_policies(path: Path):
    rows = {}
    for name in ("all", "medvram", "lowvram"):
        _peak_reset()
        model, memory = _load(path, name)
        seconds, _ = _generate(model, 512, 4)
        rows[name] = {"torch_peak_gib": _gib(torch.cuda.max_memory_allocated()),
                      "owner_peak_gib": _gib(getattr(memory, "peak_bytes", 0) or 0),
                      "s_per_step": round(seconds / 4, 3)}
        print(name, rows[name], flush=True)
        del model, memory
    RESULTS["sd15_policies"] = rows


@section("VAE fp32 retry on NaN")
def vae_retry(path: Path):
    model, _ = _load(path)
    decoder = model.vae.decoder

    def poison(module, args, output):
        return output * float("nan") if output.dtype == torch.float16 else output

    handle = decoder.register_forward_hook(poison)
    try:
        _, image = _generate(model, 512, 2)
    finally:
        handle.remove()
    RESULTS["vae_retry"] = {"finite_picture": bool(np.isfinite(image).all()), "vae_dtype": str(next(
        model.vae.parameters()).dtype), "picture_not_black": bool(image.max() > 0)}
    print(RESULTS["vae_retry"])


@section("fp8 weight storage")
def fp8(path: Path):
    from modules.core.devices import RunOptions

    _peak_reset()
    model, _ = _load(path, run_options=RunOptions(fp8_storage="Enable"))
    _generate(model, 512, 1)
    seconds, _ = _generate(model, 512, STEPS)
    RESULTS["fp8"] = {"it_s": round(STEPS / seconds, 2), "torch_peak_gib": _gib(torch.cuda.max_memory_allocated())}
    print(RESULTS["fp8"])


def build_sdxl() -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.core.ldm_export import save_single_file, to_ldm_state_dict

    path = CACHE / "sdxl-arch-random-fp16.safetensors"
    if path.is_file():
        return path
    torch.manual_seed(1234)
    unet = UNet2DConditionModel(**SDXL_UNET).half()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=1024, scaling_factor=0.13025).half()
    clip_l = CLIPTextModel(CLIPTextConfig(**SDXL_CLIP_L)).half()
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G)).half()
    state = to_ldm_state_dict("sdxl", unet=unet, vae=vae, text_encoder=clip_l, text_encoder_2=clip_g)
    tmp = path.with_suffix(".tmp.safetensors")
    save_single_file(tmp, state, metadata={"easel_benchmark": "random SDXL architecture, seed 1234"},
                     dtype=torch.float16)
    tmp.rename(path)
    return path


@section("SDXL 1024², ours (fp16): it/s and peak VRAM")
def sdxl():
    path = build_sdxl()
    rows = {}
    for name in ("all", "medvram"):
        _peak_reset()
        model, _ = _load(path, name)
        _generate(model, 1024, 1)
        seconds, _ = _generate(model, 1024, STEPS)
        rows[name] = {"it_s": round(STEPS / seconds, 2), "torch_peak_gib": _gib(torch.cuda.max_memory_allocated())}
        print(name, rows[name], flush=True)
        del model
    RESULTS["sdxl_1024"] = rows


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine (the CPU figures come from benchmarks/txt2img.py)")
        return 2
    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = {"name": props.name, "vram_gib": _gib(props.total_memory), "torch": torch.__version__,
                         "xformers": importlib.util.find_spec("xformers") is not None}
    print(RESULTS["device"], flush=True)
    bench = _bench_module()
    path, config_dir = bench.build_checkpoint(CACHE)
    sd15_speed(path, config_dir, bench)
    sd15_policies(path)
    vae_retry(path)
    fp8(path)
    sdxl()
    print("\n" + json.dumps(RESULTS, indent=2))
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(RESULTS, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
