"""sd-webui-controlnet's Reference preprocessors (reference_only, reference_adain, reference_adain+attn):
no model, the unit's picture guides the tiny UNets' self-attention / block statistics. Core jobs on
the tiny SD1 / SDXL checkpoints, one transformer block checked by hand, and the API's units."""

from __future__ import annotations

import re

import numpy as np
import requests
import torch

from modules.core import controlnet, controlnet_preprocessors, controlnet_reference
from modules.core.controlnet_reference import Reference
from modules.core.job_settings import GenerationSettings, JobObserver
from modules.core.pipeline import generate
from modules.core.types import GenerationRequest
from tests.api_common import BASE, decode
from tests.pictures import b64, picture

SMALL = dict(width=64, height=64, steps=3, cfg_scale=7.0, sampler_name="Euler", seed=77, save_images=False)


def _run(model, tmp_path, units=(), **overrides) -> np.ndarray:
    settings = GenerationSettings(outdir_samples=tmp_path, outdir_grids=tmp_path,
                                  control=controlnet.ControlJob(list(units)) if units else None)
    result = generate(GenerationRequest(prompt="a red cube", **{**SMALL, **overrides}), model, settings, JobObserver())
    return np.asarray(result.images[0]).astype(int)


def _unit(module="reference_only", fidelity=0.5, **kw) -> controlnet.ControlUnit:
    detected = controlnet_preprocessors.find(module)(np.asarray(picture(64, 64)))
    return controlnet.ControlUnit(Reference(module, fidelity), detected, **kw)


def _processors(unet) -> dict:
    return dict(unet.attn_processors)


def test_rows_have_the_extension_names_and_slider():
    for name in controlnet_reference.NAMES:
        row = controlnet_preprocessors.find(name)
        assert row.tags == ("Reference",) and row.resolution is None
        assert row.slider_1.api_json() == {"name": "Style Fidelity (only for Balanced mode)", "value": 0.5,
                                           "min": 0.0, "max": 1.0, "step": 0.01}
        image = np.asarray(picture(40, 24))
        assert np.array_equal(row(image), image)  # the picture as it is: the UNet reads it


def test_reference_only_weight_range_fidelity_and_cleanup(sd1, tmp_path):
    before = _processors(sd1.unet)
    plain = _run(sd1, tmp_path)
    assert np.array_equal(_run(sd1, tmp_path, [_unit(weight=0.0)]), plain)
    assert np.array_equal(_run(sd1, tmp_path, [_unit(guidance_start=0.9, guidance_end=1.0)]), plain)  # steps 0-2 of 3
    referenced = _run(sd1, tmp_path, [_unit()])
    assert np.abs(referenced - plain).max() > 8
    assert np.array_equal(_run(sd1, tmp_path, [_unit()]), referenced)  # the reference's noise is seeded
    faithful = _run(sd1, tmp_path, [_unit(fidelity=1.0)])
    assert np.abs(faithful - referenced).max() > 2
    prompt_first = _run(sd1, tmp_path, [_unit(control_mode="My prompt is more important")])  # fidelity 0
    assert np.array_equal(prompt_first, _run(sd1, tmp_path, [_unit(fidelity=0.0)]))
    assert np.array_equal(_run(sd1, tmp_path, [_unit(control_mode="ControlNet is more important")]), faithful)
    # the UNet's own processors are back, with no hooks: the next plain job is the plain one
    assert _processors(sd1.unet) == before
    assert not sd1.unet._forward_hooks
    assert np.array_equal(_run(sd1, tmp_path), plain)


def test_adain_variants_change_the_picture_and_leave_no_hooks(sd1, tmp_path):
    plain = _run(sd1, tmp_path)
    adain = _run(sd1, tmp_path, [_unit("reference_adain")])
    both = _run(sd1, tmp_path, [_unit("reference_adain+attn")])
    only = _run(sd1, tmp_path, [_unit("reference_only")])
    assert np.abs(adain - plain).max() > 8 and np.abs(both - plain).max() > 8
    assert not np.array_equal(both, adain) and not np.array_equal(both, only)
    assert np.array_equal(_run(sd1, tmp_path, [_unit("reference_adain", weight=0.0)]), plain)
    assert not any(m._forward_hooks for m in sd1.unet.modules())
    assert np.array_equal(_run(sd1, tmp_path), plain)


def test_sdxl_reference_runs(sdxl, tmp_path):
    plain = _run(sdxl, tmp_path)
    assert np.abs(_run(sdxl, tmp_path, [_unit()]) - plain).max() > 2
    assert np.array_equal(_run(sdxl, tmp_path), plain)


def test_style_fidelity_follows_the_extension_rules():
    ref = Reference("reference_only", 0.5)
    assert controlnet_reference.fidelity(ref, "Balanced", sdxl=False, hires=False) == 0.5
    assert controlnet_reference.fidelity(ref, "Balanced", sdxl=True, hires=False) == 0.125  # SDXL: cubed
    assert controlnet_reference.fidelity(ref, "Balanced", sdxl=False, hires=True) == 0.0
    assert controlnet_reference.fidelity(ref, "My prompt is more important", sdxl=False, hires=False) == 0.0
    assert controlnet_reference.fidelity(ref, "ControlNet is more important", sdxl=True, hires=True) == 1.0
    assert controlnet_reference.fidelity(Reference("reference_only", 3.0), "Balanced", False, False) == 1.0


class _FakeHooks:
    """What a processor reads from its ReferenceHooks: the mode, weight, fidelity, unconditional rows."""

    def __init__(self):
        self.mode, self.weight, self.style, self.uncond_rows = controlnet_reference._IDLE, 1.0, 0.0, None


def _attention(attn, x, keys):
    """attn1 by hand: softmax(q k^T / sqrt(d)) v per head, then the output projection."""
    heads = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(keys), attn.to_v(keys)

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return attn.to_out[1](attn.to_out[0](out))


@torch.no_grad()
def test_attention_mix_on_one_block_matches_the_hand_computation(sd1):
    attn, threshold = controlnet_reference.self_attention_layers(sd1.unet)[0]
    assert threshold == 0.0
    width = attn.to_q.in_features
    gen = torch.Generator().manual_seed(3)
    dtype, device = attn.to_q.weight.dtype, attn.to_q.weight.device
    x = torch.randn(2, 6, width, generator=gen).to(device, dtype)  # row 0 conditional, row 1 unconditional
    ref = torch.randn(2, 5, width, generator=gen).to(device, dtype)
    hooks = _FakeHooks()
    processor = controlnet_reference._SelfAttention(hooks, attn.processor, threshold)
    hooks.mode, hooks.style = controlnet_reference._WRITE, 0.3
    processor(attn, ref)  # the reference pass keeps its input
    hooks.mode, hooks.uncond_rows = controlnet_reference._READ, torch.tensor([False, True], device=device)
    mixed = processor(attn, x)
    joined = _attention(attn, x, torch.cat([x, ref], dim=1))
    plain = _attention(attn, x, x)
    assert (joined - plain).abs().max() > 1e-2  # the reference's tokens matter
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(mixed[0], joined[0], **tol)  # conditional: [x, ref] keys and values
    torch.testing.assert_close(mixed[1], 0.3 * plain[1] + 0.7 * joined[1], **tol)  # fidelity blends the other
    assert processor.bank == []  # read once, then emptied
    hooks.mode = controlnet_reference._WRITE
    hooks.weight = 0.0  # no layer is below weight 0: nothing kept
    processor(attn, ref)
    assert processor.bank == []


def test_weight_picks_the_widest_layers_first(sd1):
    layers = controlnet_reference.self_attention_layers(sd1.unet)
    widths = [attn.to_q.in_features for attn, _ in layers]
    assert widths == sorted(widths, reverse=True)
    assert [t for _, t in layers] == [i / len(layers) for i in range(len(layers))]
    blocks = controlnet_reference.adain_blocks(sd1.unet, sdxl=False)
    assert blocks[0] == (sd1.unet.mid_block, 0.0)


# ------------------------------------------------------------------------------------------ API

def _txt2img(server, units=None):
    body = {**BASE, "steps": 2}
    if units is not None:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=300)


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.json()["images"][0]).convert("RGB")).astype(int)


def test_api_reference_unit_without_a_model(server):
    modules = requests.get(server.url + "/controlnet/module_list", timeout=30).json()
    for name in controlnet_reference.NAMES:
        assert name in modules["module_list"]
        assert modules["module_detail"][name]["sliders"] == [
            {"name": "Style Fidelity (only for Balanced mode)", "value": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}]
        assert modules["module_detail"][name]["model_free"] is True  # the extension's do_not_need_model
    assert modules["module_detail"]["canny"]["model_free"] is False
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["Reference"]["default_option"] == "reference_only"
    image = b64(picture(64, 64))
    plain = _pixels(_txt2img(server))
    unit = {"enabled": True, "module": "reference_only", "model": "None", "image": image, "threshold_a": 0.7}
    r = _txt2img(server, [unit])
    referenced = _pixels(r)
    assert np.abs(referenced - plain).max() > 8
    line = re.search(r'ControlNet 0: \\?"([^"\\]*)', r.json()["info"]).group(1)
    assert line.startswith("Module: reference_only, Model: None, Weight: 1.0") and "Threshold A: 0.7" in line
    assert np.array_equal(_pixels(_txt2img(server, [{**unit, "weight": 0}])), plain)
    assert np.array_equal(_pixels(_txt2img(server)), plain)


@torch.no_grad()
def test_inpainting_unet_reference_pass_gets_an_empty_mask_and_the_picture(sd1_inpainting):
    model, unet = sd1_inpainting, sd1_inpainting.unet
    dtype, device = model.policy.unet_dtype, model.device
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=gen).to(device)
    masked = torch.randn(2, 5, 8, 8, generator=gen).to(device)  # mask + masked picture latents
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen).to(device)
    cond = {"context": context, "control_mark": torch.tensor([1.0, 0.0], device=device)}
    t = torch.tensor(500.0, device=device)

    def call():
        return unet(torch.cat([x, masked], dim=1).to(dtype), t, encoder_hidden_states=context.to(dtype)).sample

    before = _processors(unet)
    plain = call()
    hooks = controlnet_reference.ReferenceHooks(model)
    hint = torch.from_numpy(np.asarray(picture(64, 64), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    hooks.run(x, t, cond, [(0, Reference("reference_adain+attn"), 1.0, "Balanced", hint)])
    referenced = call()
    assert (referenced - plain).abs().max() > 1e-3
    assert _processors(unet) == before and not any(m._forward_hooks for m in unet.modules())
    assert torch.equal(call(), plain)
