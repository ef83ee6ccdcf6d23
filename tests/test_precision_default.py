"""The CPU's default precision: bf16 where the CPU computes it natively, fp32 elsewhere and whenever
a flag asks for it (issue 16: bf16 measured at 47.9 dB PSNR from fp32 on full-size SD1.5 weights at
about 2x fp32's speed; benchmarks/README.md). The suite itself runs in fp32 (tests/conftest.py), so the
real probe is taken from there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modules.core.devices import choose_policy
from tests.api_common import decode
from tests.conftest import REAL_CPU_NATIVE_BF16
from tests.server import run_server

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's precision rules")


def _dtypes(policy):
    return policy.unet_dtype, policy.text_dtype, policy.vae_dtype


def test_native_bf16_cpu_defaults_to_bf16_and_the_flags_keep_fp32():
    bf16, fp32 = torch.bfloat16, torch.float32
    policy, notes = choose_policy(native_bf16=True)
    assert _dtypes(policy) == (bf16, bf16, bf16)
    assert any("in bf16 (the CPU has native bf16; --precision full keeps fp32)" in n for n in notes)
    assert _dtypes(choose_policy(native_bf16=False)[0]) == (fp32, fp32, fp32)
    assert _dtypes(choose_policy(precision="full", native_bf16=True)[0]) == (fp32, fp32, fp32)
    assert _dtypes(choose_policy(no_half=True, native_bf16=True)[0]) == (fp32, fp32, fp32)
    assert _dtypes(choose_policy(no_half_vae=True, native_bf16=True)[0]) == (bf16, bf16, fp32)
    # --precision half asks for bf16 on any CPU
    policy, notes = choose_policy(precision="half", native_bf16=False)
    assert _dtypes(policy) == (bf16, bf16, bf16) and any("(--precision half)" in n for n in notes)


def test_the_probe_reads_what_the_kernel_reports():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if not flags:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert REAL_CPU_NATIVE_BF16() == any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))


def test_a_server_without_precision_flags_takes_the_cpus_choice(tiny_checkpoints, tmp_path):
    native = REAL_CPU_NATIVE_BF16()
    with run_server(tmp_path / "data", tiny_checkpoints.checkpoints_dir, "--api", "--precision", "autocast") as server:
        r = server.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                                   "seed": 1})
        assert r.status_code == 200, r.text
        picture = decode(r.json()["images"][0])
        log = server.output()
    assert picture.size == (64, 64)
    expected = "UNet bf16, text encoder bf16, VAE bf16" if native else "UNet fp32, text encoder fp32, VAE fp32"
    assert expected in log, log[-2000:]


def test_bf16_cpu_models_compute_in_channels_last(tiny_checkpoints):
    """oneDNN's bf16 convolutions are faster on channels-last tensors (benchmarks/README.md: the 512x512
    generation at 2.04x diffusers' fp32 pipeline); fp32 keeps diffusers' layout, for identical pictures."""
    from modules.core.model_loader import load_checkpoint
    from modules.core.pipeline import GenerationSettings, generate
    from modules.core.types import GenerationRequest

    half = load_checkpoint(tiny_checkpoints.sd1, choose_policy(precision="half")[0])
    full = load_checkpoint(tiny_checkpoints.sd1, choose_policy(precision="full")[0])
    for model, layout in ((half, torch.channels_last), (full, torch.contiguous_format)):
        for module in (model.unet.conv_in, model.vae.decoder.conv_in):
            assert module.weight.is_contiguous(memory_format=layout)
            assert module.weight.is_contiguous() == (layout == torch.contiguous_format)
    request = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=3, save_images=False)
    pictures = [generate(request, m, GenerationSettings(save_grid=False)).images[0] for m in (half, full)]
    assert pictures[0].size == pictures[1].size == (64, 64)
