"""Precision safety: A1111's NaN checks after the UNet and the VAE (--disable-nan-check), the VAE's
automatic fp32 retry (auto_vae_precision), and fp8 weight storage (fp8_storage, cache_fp16_weight)."""

import copy

import numpy as np
import pytest
import torch

from modules.core import fp8, lora, model_ops
from modules.core.devices import DevicePolicy, NansException, RunOptions, nans_message
from modules.core.memory import DeviceMemory, module_bytes
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest

CPU = torch.device("cpu")
HALF_VAE = DevicePolicy(CPU, torch.float32, torch.float32, torch.bfloat16)
FULL = DevicePolicy(CPU, torch.float32, torch.float32, torch.float32)
SMALL = dict(prompt="a red circle", width=64, height=64, steps=2, seed=11, save_images=False)


def nan_when_half(module):
    """The decoder gives NaN whenever it runs in half precision (an fp16 overflow, made certain)."""
    def hook(mod, args, out):
        return torch.full_like(out, float("nan")) if out.dtype in (torch.float16, torch.bfloat16) else out
    return module.register_forward_hook(hook)


@pytest.fixture
def half_vae_model(tiny_checkpoints):
    return load_checkpoint(tiny_checkpoints.sd1, HALF_VAE, memory=DeviceMemory("cpu", None, "all"))


def test_vae_nan_in_half_precision_retries_in_fp32_once(half_vae_model, capsys):
    model = half_vae_model
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model.vae).float()  # the same weights, in fp32
    expected = reference.decode(latents / model.vae.config.scaling_factor).sample.float()
    nan_when_half(model.vae.decoder)
    resident = model.memory.resident_bytes
    before = module_bytes(model.vae)
    pixels = model_ops.decode_pixels(model, latents)
    assert torch.isfinite(pixels).all() and torch.equal(pixels, expected)
    assert model_ops.vae_dtype(model.vae) == torch.float32  # for good, as A1111
    assert model.memory.resident_bytes == resident + module_bytes(model.vae) - before  # the owner knows
    err = capsys.readouterr().err
    assert err.count("Web UI will now convert VAE into 32-bit float and retry.") == 1
    assert "To always start with 32-bit VAE, use --no-half-vae commandline flag." in err
    # the next decode runs in fp32 straight away and says nothing
    images = model_ops.decode_latents(model, latents)
    assert "convert VAE" not in capsys.readouterr().err
    expected_u8 = ((expected / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(images[0]), expected_u8)


def test_without_auto_vae_precision_the_nans_stop_the_job(half_vae_model):
    model = half_vae_model
    model.run_options = RunOptions(auto_vae_precision=False)
    nan_when_half(model.vae.decoder)
    with pytest.raises(NansException) as caught:
        model_ops.decode_latents(model, torch.zeros(1, 4, 8, 8))
    assert str(caught.value) == (
        "A tensor with all NaNs was produced in VAE. This could be because there's not enough precision to "
        "represent the picture. Try adding --no-half-vae commandline argument to fix this. Use --disable-nan-check "
        "commandline argument to disable this check.")
    model.run_options = RunOptions(nan_check=False)  # --disable-nan-check: no check, no retry
    model_ops.decode_latents(model, torch.zeros(1, 4, 8, 8))
    assert model_ops.vae_dtype(model.vae) == torch.bfloat16


def test_unet_nans_stop_the_job_with_a1111s_message(tiny_checkpoints):
    model = load_checkpoint(tiny_checkpoints.sd1, FULL)
    handle = model.unet.conv_out.register_forward_hook(lambda m, a, out: torch.full_like(out, float("nan")))
    with pytest.raises(NansException, match=r"^A tensor with all NaNs was produced in Unet\. Use --disable-nan-check"):
        generate(GenerationRequest(**SMALL), model)
    model.run_options = RunOptions(nan_check=False)
    generate(GenerationRequest(**SMALL), model)  # the check is off: the job ends (with a black picture)
    handle.remove()
    half = nans_message("unet", True, True)
    assert "Upcast cross attention layer to float32" in half and half.endswith("to disable this check.")


def test_a1111_shim_raises_the_same_exception():
    from modules import devices

    assert devices.NansException is NansException
    with pytest.raises(NansException, match="produced in VAE"):
        devices.test_for_nans(torch.full((2, 2), float("nan")), "vae")


def test_fp8_storage_halves_unet_weights_and_computes_in_the_compute_dtype(tiny_checkpoints, sd1):
    options = RunOptions(fp8_storage="Enable")
    model = load_checkpoint(tiny_checkpoints.sd1, FULL, run_options=options)
    layers = [m for m in model.unet.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers and all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
    assert module_bytes(model.unet) < 0.5 * module_bytes(sd1.unet)
    torch.manual_seed(0)
    x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), {"context": torch.randn(1, 77, 32)}
    cond["context"] = torch.randn(1, 77, sd1.unet.config.cross_attention_dim)
    reference, stored = model_ops.denoiser(sd1)(x, t, cond), model_ops.denoiser(model)(x, t, cond)
    relative = (stored - reference).norm() / reference.norm()
    assert 0 < relative < 0.25, relative  # the same prediction, within fp8's rounding (3 mantissa bits)
    # the arithmetic runs in the input's dtype: a Linear computes what fp32 does with the rounded weight
    layer = next(m for m in layers if isinstance(m, torch.nn.Linear))
    x = torch.randn(2, layer.in_features)
    expected = torch.nn.functional.linear(x, layer.weight.float(), layer.bias)
    assert torch.equal(layer(x), expected) and layer(x).dtype == torch.float32
    # "Enable for SDXL" leaves the other families in their dtype
    sd1_kept = load_checkpoint(tiny_checkpoints.sd1, FULL, run_options=RunOptions(fp8_storage="Enable for SDXL"))
    assert next(sd1_kept.unet.parameters()).dtype == torch.float32
    assert fp8.wanted("Enable for SDXL", "sdxl") and not fp8.wanted("Disable", "sdxl")


def test_cache_fp16_weight_keeps_a_copy_in_ram(tiny_checkpoints, sd1):
    model = load_checkpoint(tiny_checkpoints.sd1, FULL, run_options=RunOptions(fp8_storage="Enable",
                                                                                cache_fp16_weight=True))
    originals = dict(sd1.unet.named_modules())
    for name, layer in model.unet.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            copy16 = getattr(layer, fp8.FP16_COPY)
            assert copy16.dtype == torch.float16 and copy16.device.type == "cpu"
            assert torch.equal(copy16, originals[name].weight.half())
            assert torch.equal(fp8.exact_weight(layer), originals[name].weight.half().float())
    lora.deactivate(model)  # nothing applied: a no-op that must not fail on fp8 weights


def test_lora_on_fp8_weights_rounds_once_from_the_fp16_copy_and_restores_exactly(tiny_checkpoints, sd1, tmp_path):
    from modules.services.loras import LoraRegistry
    from tests.fixtures.tiny_loras import _K, RANK, _T, _tensors, _write, module_of

    name = f"{_T}.attn1.to_q"
    shape = tuple(module_of(sd1, "unet", name).weight.shape)
    tensors = _tensors(torch.Generator().manual_seed(4), f"{_K}_attn1_to_q", "lora", shape, {}, float(RANK))
    _write(tmp_path / "fp8_lora.safetensors", {k: v * 10 for k, v in tensors.items()})
    job = lora.prepare("a cat <lora:fp8_lora:1>", LoraRegistry([tmp_path]).require)
    lora.activate(sd1, job)  # the exact change in fp32
    delta = module_of(sd1, "unet", name).weight.detach().clone()
    lora.deactivate(sd1)
    original = module_of(sd1, "unet", name).weight.detach()
    delta -= original
    assert delta.abs().max() > 0.01
    model = load_checkpoint(tiny_checkpoints.sd1, FULL, run_options=RunOptions(fp8_storage="Enable",
                                                                                cache_fp16_weight=True))
    layer = module_of(model, "unet", name)
    stored = layer.weight.detach().clone()
    lora.activate(model, job)
    expected = (original.half().float() + delta).to(torch.float8_e4m3fn).float()
    assert (layer.weight.float() == expected).float().mean() > 0.99  # one rounding, from the 16-bit copy
    lora.deactivate(model)
    assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))  # back bit for bit


def test_upcast_sampling_runs_attention_in_fp32_for_half_weights(tiny_checkpoints, sd1):
    from modules.core.attention import AttentionProcessor

    half = DevicePolicy(CPU, torch.bfloat16, torch.bfloat16, torch.float32)
    plain = load_checkpoint(tiny_checkpoints.sd1, half)
    upcast = load_checkpoint(tiny_checkpoints.sd1, half, run_options=RunOptions(upcast_sampling=True))
    full = load_checkpoint(tiny_checkpoints.sd1, FULL, run_options=RunOptions(upcast_sampling=True))

    def upcasting(model):
        return [isinstance(m.processor, AttentionProcessor) and m.processor.upcast
                for n, m in model.unet.named_modules() if n.endswith((".attn1", ".attn2"))]

    assert upcasting(upcast) and all(upcasting(upcast))
    assert not any(upcasting(plain)) and not any(upcasting(full))  # fp32: nothing to do
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    cond = {"context": torch.randn(1, 77, sd1.unet.config.cross_attention_dim)}
    reference = model_ops.denoiser(sd1)(x, t, cond)
    got_plain, got_upcast = model_ops.denoiser(plain)(x, t, cond), model_ops.denoiser(upcast)(x, t, cond)
    assert not torch.equal(got_plain, got_upcast) and got_upcast.dtype == torch.float32
    assert (got_upcast - reference).norm() / reference.norm() < 0.05


def test_fp8_jobs_say_so_in_the_infotext_and_a_job_override_applies_to_that_job_only(tiny_checkpoints, server):
    """A1111's "FP8 weight" / "Cache FP16 weight for LoRA" keys while the UNet is stored in fp8; through
    the API, override_settings' fp8_storage reloads the model for that job only, and pasting the infotext
    sets it again."""
    import json

    import requests

    model = load_checkpoint(tiny_checkpoints.sd1, FULL, run_options=RunOptions(fp8_storage="Enable",
                                                                                cache_fp16_weight=True))
    request = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, seed=3, save_images=False)
    text = generate(request, model, GenerationSettings()).infotexts[0]
    assert "FP8 weight: Enable, Cache FP16 weight for LoRA: True" in text

    body = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 3}

    def job(**extra) -> str:
        r = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**body, **extra}, timeout=300)
        assert r.status_code == 200, r.text
        return json.loads(r.json()["info"])["infotexts"][0]

    with_fp8 = job(override_settings={"fp8_storage": "Enable"})
    assert "FP8 weight: Enable, Cache FP16 weight for LoRA: False" in with_fp8
    assert "FP8 weight" not in job()  # the next job: the setting's own value, the model reloaded without
    assert "FP8 weight: Enable" in job(infotext=with_fp8)  # the pasted key sets it for that job
    assert "FP8 weight" not in job()
