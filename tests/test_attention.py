"""A1111's "Cross attention optimization" (option and flags) and upcast_attn: every backend gives
PyTorch's attention up to float rounding, the memory-bounded ones in slices, the choice follows
A1111's rules, and a loaded model switches backend between jobs without a reload."""

from __future__ import annotations

import argparse
import base64
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.core import attention, model_ops
from modules.core.devices import RunOptions


BACKENDS = ("sdp", "sdp-no-mem", "Doggettx", "V1", "InvokeAI", "sub-quadratic", "None")


def qkv(queries=300, keys=77, batch=2, heads=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, queries, dim, generator=g), torch.randn(batch, heads, keys, dim, generator=g),
            torch.randn(batch, heads, keys, dim, generator=g))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("keys", [77, 300])
def test_every_backend_gives_pytorchs_attention(name, keys):
    q, k, v = qkv(keys=keys)
    reference = F.scaled_dot_product_attention(q, k, v)
    got = attention.kernel(name)(q, k, v, None, q.shape[-1] ** -0.5)
    assert got.shape == reference.shape
    assert torch.allclose(got, reference, atol=1e-5), (got - reference).abs().max()


@pytest.mark.parametrize("name", ["Doggettx", "V1", "InvokeAI", "sub-quadratic", "None"])
def test_a_mask_is_applied_in_every_slice(name):
    q, k, v = qkv(queries=50, keys=40)
    mask = torch.zeros(2, 1, 50, 40)
    mask[..., 20:] = float("-inf")  # the last keys are masked out
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention.kernel(name, attention.SubQuadratic(q_chunk=7, kv_chunk=9))(q, k, v, mask, q.shape[-1] ** -0.5)
    assert torch.allclose(got, reference, atol=1e-5)


def test_sub_quadratic_chunks_queries_and_keys_with_a_running_softmax():
    q, k, v = qkv(queries=130, keys=110)
    reference = F.scaled_dot_product_attention(q, k, v)
    for settings in (attention.SubQuadratic(q_chunk=16, kv_chunk=7), attention.SubQuadratic(q_chunk=1, kv_chunk=1),
                     attention.SubQuadratic(q_chunk=1024, kv_chunk=None)):
        got = attention.kernel("sub-quadratic", settings)(q, k, v, None, q.shape[-1] ** -0.5)
        assert torch.allclose(got, reference, atol=1e-5), settings
    # large scores (a fp32 exp would overflow without the running maximum)
    got = attention.kernel("sub-quadratic", attention.SubQuadratic(q_chunk=16, kv_chunk=7))(q * 40, k * 40, v, None, 1.0)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, F.scaled_dot_product_attention(q * 40, k * 40, v, scale=1.0), atol=1e-4)


def test_invokeai_slices_scores_over_32_mb_on_the_cpu():
    q, k, v = qkv(queries=1600, keys=1600, batch=1, heads=4, dim=8)  # 41 MB of fp32 scores
    assert attention._score_bytes(q, k) > 32 * 2**20
    got = attention.kernel("InvokeAI")(q, k, v, None, 8 ** -0.5)
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v), atol=1e-5)


def test_doggettx_slices_by_the_free_memory_and_names_the_limit(monkeypatch):
    q, k, v = qkv(queries=256, keys=256)
    need = attention._score_bytes(q, k) * 2.5
    monkeypatch.setattr(attention.memory, "available_bytes", lambda device: int(need / 3))  # 4 slices
    got = attention.kernel("Doggettx")(q, k, v, None, 16 ** -0.5)
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    monkeypatch.setattr(attention.memory, "available_bytes", lambda device: int(need / 100))  # 128 slices
    with pytest.raises(attention.NotEnoughMemory, match=r"Not enough memory, use lower resolution"):
        attention.kernel("Doggettx")(q, k, v, None, 16 ** -0.5)


def test_the_choice_follows_a1111s_rules():
    def flags(*names):
        return attention.flagged(argparse.Namespace(**{n: True for n in names}))

    assert attention.choose("Automatic") == "sdp"  # Easel's default (A1111: Doggettx on CUDA, InvokeAI on the CPU)
    assert attention.choose("Automatic", flags("opt_split_attention")) == "Doggettx"
    # several flags: A1111's priority order (sdp-no-mem 80 over sdp 70 over the splits)
    assert attention.choose("Automatic", flags("opt_split_attention_v1", "opt_sdp_attention",
                                               "opt_sdp_no_mem_attention")) == "sdp-no-mem"
    assert attention.choose("Automatic", flags("xformers")) == "sdp"  # xformers does not run here
    assert attention.choose("Automatic", flags("xformers"), xformers_ready=True) == "xformers"
    # the setting wins over the flags; --disable-opt-split-attention wins over both
    assert attention.choose("V1 - original v1", flags("opt_split_attention")) == "V1"
    assert attention.choose("InvokeAI", disabled=True) == "None"
    assert attention.choose("None") == "None"
    assert attention.choose("xformers") == "sdp"
    assert attention.flagged(argparse.Namespace(opt_sub_quad_attention=True, opt_split_attention=True)) == \
        ("sub-quadratic", "Doggettx")


def test_the_flags_are_parsed_with_a1111s_names():
    from modules.cmd_args import parse_args
    from modules.cmd_args_compat import note_for

    opts = parse_args(["--opt-sub-quad-attention", "--sub-quad-q-chunk-size", "256", "--sub-quad-kv-chunk-size",
                       "64", "--sub-quad-chunk-threshold", "50", "--opt-split-attention-invokeai"])
    assert attention.flagged(opts) == ("sub-quadratic", "InvokeAI")
    assert attention.sub_quadratic_settings(opts) == attention.SubQuadratic(256, 64, 50)
    for flag in ("--opt-split-attention", "--opt-sub-quad-attention", "--opt-split-attention-v1",
                 "--opt-split-attention-invokeai", "--opt-sdp-attention", "--opt-sdp-no-mem-attention",
                 "--disable-opt-split-attention", "--sub-quad-q-chunk-size"):
        assert not note_for(flag), flag  # honoured: no "ignored" line at start


def test_a_loaded_unet_gives_the_same_prediction_with_every_backend(tiny_checkpoints, sd1):
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 500.0])
    cond = {"context": torch.randn(2, 77, sd1.unet.config.cross_attention_dim)}
    denoise = model_ops.denoiser(sd1)
    try:
        reference = denoise(x, t, cond)
        for name in BACKENDS:
            assert attention.install(sd1.unet, name, upcast=name == "V1") > 0
            got = denoise(x, t, cond)
            assert torch.allclose(got, reference, atol=1e-4), (name, (got - reference).abs().max())
        options = RunOptions(attention="InvokeAI")
        assert attention.apply(sd1.unet, "sd1", options, half=False) is True
        assert attention.apply(sd1.unet, "sd1", options, half=False) is False  # already there
        assert attention.apply(sd1.unet, "flux", options, half=False) is False  # not a UNet family
    finally:
        attention.install(sd1.unet, "sdp")


def test_the_setting_switches_the_running_servers_attention(server):
    job = {"prompt": "a red square", "steps": 3, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}

    def picture():
        answer = server.post("/sdapi/v1/txt2img", json=job)
        assert answer.status_code == 200, answer.text
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"), dtype=np.int16)

    choices = server.get("/sdapi/v1/options").json()
    assert choices["cross_attention_optimization"] == "Automatic" and choices["upcast_attn"] is False
    reference = picture()
    try:
        for title in ("sub-quadratic", "V1 - original v1", "None"):
            assert server.post("/sdapi/v1/options", json={"cross_attention_optimization": title}).status_code == 200
            assert np.abs(picture() - reference).max() <= 2, title
        bad = server.post("/sdapi/v1/options", json={"cross_attention_optimization": "Flash 9000"})
        assert bad.status_code == 422 and "cross_attention_optimization" in bad.text
        # per request, as A1111's override_settings
        answer = server.post("/sdapi/v1/txt2img", json={**job, "override_settings": {"upcast_attn": True}})
        assert answer.status_code == 200
    finally:
        server.post("/sdapi/v1/options", json={"cross_attention_optimization": "Automatic"})
