"""IP-Adapters with sd-webui-controlnet's contract: tiny random IP-Adapters (plain, plus, full face) in
the released layouts (``.pth``/``.bin`` nested dicts, flattened ``.safetensors``) for the tiny SD1 UNet,
a tiny random CLIP vision model in transformers' names (the extension's ``clip_h.pth``), read by the real
loaders; the image tokens through diffusers' IP-Adapter attention on the UNet's cross-attention
layers, in the core pipeline and through the API's ``alwayson_scripts.controlnet`` units."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from transformers import CLIPImageProcessor

from modules.core import controlnet, controlnet_model, ip_adapter
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.job_settings import GenerationSettings
from modules.core.pipeline import generate
from modules.core.types import GenerationRequest, RequestError
from modules.services import controlnets
from tests.api_common import assert_error
from tests.fixtures.tiny_controlnets import (CLIP_VISION, build_clip_vision, ip_adapter_state, write_clip_vision,
                                             write_ip_adapter)
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures

SMALL = dict(width=64, height=64, steps=2, cfg_scale=7.0, sampler_name="Euler", seed=77, save_images=False)


@pytest.fixture(scope="module")
def clip_model():
    return build_clip_vision()


@pytest.fixture(scope="module")
def ip_files(tmp_path_factory, clip_model):
    """{key: path}: IP-Adapters named as the released files, and the CLIP vision file."""
    root = tmp_path_factory.mktemp("ip")
    return {
        "plain": write_ip_adapter(root / "ip-adapter_sd15.pth", ip_adapter_state("plain", seed=4)),
        "plain_st": write_ip_adapter(root / "ip-adapter_sd15_st.safetensors", ip_adapter_state("plain", seed=4)),
        "plus": write_ip_adapter(root / "ip-adapter-plus_sd15.safetensors", ip_adapter_state("plus", seed=5)),
        "full": write_ip_adapter(root / "ip-adapter-full-face_sd15.bin", ip_adapter_state("full", seed=6)),
        "clip": write_clip_vision(root / "clip_vision" / "clip_h.pth", clip_model),
        "clip_st": write_clip_vision(root / "CLIP-ViT-H-14.safetensors", clip_model),
        "xl": write_ip_adapter(root / "ip-adapter_sdxl.safetensors", ip_adapter_state("plain", seed=7, family="sdxl")),
        "xl_plus": write_ip_adapter(root / "ip-adapter-plus_sdxl_vit-h.bin",
                                    ip_adapter_state("plus", seed=8, family="sdxl")),
    }


# ------------------------------------------------------------------------------------ files

def test_kinds_are_told_from_the_keys_and_shapes(ip_files):
    for key, kind, tokens in (("plain", "plain", 4), ("plain_st", "plain", 4), ("plus", "plus", 16),
                              ("full", "full", 50)):
        built = controlnet_model.load(ip_files[key])
        assert isinstance(built, ip_adapter.IPAdapterFile), key
        assert (built.kind, built.layers, built.cross_attention_dim) == (kind, 4, 64), key
        width = CLIP_VISION["projection_dim"] if kind == "plain" else CLIP_VISION["hidden_size"]
        assert built.embed_dim == width
        x = torch.randn(1, *(() if kind == "plain" else (50,)), width)
        assert built.module.image_proj(x).shape == (1, tokens, 64)
    # the plain projection is the released ImageProjModel: proj -> 4 tokens -> LayerNorm
    state = torch.load(ip_files["plain"], weights_only=True)["image_proj"]
    built = controlnet_model.load(ip_files["plain"])
    x = torch.randn(2, CLIP_VISION["projection_dim"])
    expected = torch.nn.functional.layer_norm(
        (x @ state["proj.weight"].float().T + state["proj.bias"].float()).reshape(2, 4, 64), (64,),
        state["norm.weight"].float(), state["norm.bias"].float())
    torch.testing.assert_close(built.module.image_proj(x), expected)


def test_faceid_and_broken_files_are_refused(tmp_path):
    faceid = ip_adapter_state("plain")
    faceid["image_proj"] = {"proj.0.weight": torch.zeros(1024, 512), "proj.2.weight": torch.zeros(256, 1024),
                            "norm.weight": torch.ones(64)}
    with pytest.raises(UnsupportedCheckpoint, match="FaceID"):
        controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid_sd15.bin", faceid))
    broken = ip_adapter_state("plain")
    del broken["ip_adapter"]["3.to_v_ip.weight"]
    with pytest.raises(UnsupportedCheckpoint, match="incomplete"):
        controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter_broken.safetensors", broken))


def test_clip_vision_from_the_user_files(ip_files, clip_model):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = clip_model.float()(pixel_values=x, output_hidden_states=True)
    for key in ("clip", "clip_st"):
        model = ip_adapter.load_clip_vision(ip_files[key])
        config = model.config
        assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size,
                config.projection_dim, config.hidden_act) == (32, 3, 224, 32, 24, "gelu")
        out = model(pixel_values=x, output_hidden_states=True)
        torch.testing.assert_close(out.image_embeds, reference.image_embeds, rtol=0, atol=0)
        torch.testing.assert_close(out.hidden_states[-2], reference.hidden_states[-2], rtol=0, atol=0)


def test_picture_is_prepared_as_clip_image_processor():
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                   do_convert_rgb=True)
    for size in ((96, 64), (64, 150), (300, 300), (500, 230)):
        pic = picture(*size)
        theirs = processor(images=pic, return_tensors="pt").pixel_values
        torch.testing.assert_close(ip_adapter.clip_pixels(pic, 224), theirs, rtol=0, atol=0)


def test_attention_is_diffusers_ip_adapter_attention_with_rows_picked(ip_files):
    built = controlnet_model.load(ip_files["plain"])
    attn = Attention(32, cross_attention_dim=64, heads=4, dim_head=8).eval()
    hidden, text = torch.randn(2, 16, 32), torch.randn(2, 7, 64)
    cond, uncond = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    reference = IPAdapterAttnProcessor2_0(32, 64, num_tokens=(4,), scale=0.7)
    reference.to_k_ip[0].weight.data.copy_(built.module.to_k[0].weight)
    reference.to_v_ip[0].weight.data.copy_(built.module.to_v[0].weight)
    rows = torch.cat([cond, uncond])  # row 0 conditional, row 1 unconditional
    expected = reference(attn, hidden, (text, [rows]))

    class _Unet(torch.nn.Module):  # a UNet's face as the injection reads it: one cross-attention layer
        def __init__(self):
            super().__init__()
            self.attn2 = attn
            self.config = type("C", (), {"cross_attention_dim": 64})()
            self.dtype = torch.float32

        @property
        def attn_processors(self):
            return {"attn2.processor": attn.processor}

    unet = _Unet()
    own = attn.processor
    injection = ip_adapter.Injection(unet, [built])
    injection.attach([0.7], [rows])
    with torch.no_grad():
        torch.testing.assert_close(attn(hidden, text), expected, rtol=0, atol=0)
    injection.detach()
    assert attn.processor is own
    with torch.no_grad():
        assert torch.equal(attn(hidden, text), own(attn, hidden, text))


# ---------------------------------------------------------------------------- in the pipeline

def _unit(model, ip_files, key="plain", **kw):
    built = controlnet_model.load(ip_files[key], model.policy.unet_dtype)
    built.module.to(model.device)
    clip = ip_adapter.load_clip_vision(ip_files["clip"])
    pic = picture(64, 64)
    return controlnet.ControlUnit(built, np.asarray(pic), image_tokens=ip_adapter.image_tokens(built, clip, pic), **kw)


def _run(model, tmp_path, units=()):
    settings = GenerationSettings(outdir_samples=tmp_path, outdir_grids=tmp_path,
                                  control=controlnet.ControlJob(list(units)) if units else None)
    return np.asarray(generate(GenerationRequest(prompt="a red cube", **SMALL), model, settings).images[0])


def test_units_steer_within_their_range_and_leave_the_unet_as_it_was(sd1, tmp_path, ip_files):
    own = {name: type(p) for name, p in sd1.unet.attn_processors.items()}
    plain = _run(sd1, tmp_path)
    assert np.array_equal(_run(sd1, tmp_path, [_unit(sd1, ip_files, weight=0.0)]), plain)
    assert np.array_equal(_run(sd1, tmp_path, [_unit(sd1, ip_files, guidance_start=0.75)]), plain)
    steered = _run(sd1, tmp_path, [_unit(sd1, ip_files)])
    assert np.abs(steered.astype(int) - plain).max() > 8
    for key in ("plus", "full"):
        other = _run(sd1, tmp_path, [_unit(sd1, ip_files, key)])
        assert not np.array_equal(other, plain) and not np.array_equal(other, steered), key
    both = _run(sd1, tmp_path, [_unit(sd1, ip_files), _unit(sd1, ip_files, "plus", weight=0.5)])
    assert not np.array_equal(both, steered)
    assert {name: type(p) for name, p in sd1.unet.attn_processors.items()} == own
    assert np.array_equal(_run(sd1, tmp_path), plain)


def test_sdxl_adapters_steer_the_sdxl_unet_and_others_are_refused(sdxl, tmp_path, ip_files):
    own = {name: type(p) for name, p in sdxl.unet.attn_processors.items()}
    plain = _run(sdxl, tmp_path)
    assert np.array_equal(_run(sdxl, tmp_path, [_unit(sdxl, ip_files, "xl", weight=0.0)]), plain)
    steered = _run(sdxl, tmp_path, [_unit(sdxl, ip_files, "xl")])
    assert np.abs(steered.astype(int) - plain).max() > 8
    plus = _run(sdxl, tmp_path, [_unit(sdxl, ip_files, "xl_plus")])
    assert not np.array_equal(plus, plain) and not np.array_equal(plus, steered)
    assert {name: type(p) for name, p in sdxl.unet.attn_processors.items()} == own
    with pytest.raises(RequestError, match="ip-adapter_sd15.pth' is for a UNet with 4") as info:
        _run(sdxl, tmp_path, [_unit(sdxl, ip_files)])  # the SD1 adapter
    assert info.value.field == "alwayson_scripts"


# ------------------------------------------------------------------------------------------ API

def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


@pytest.fixture(scope="module")
def api_ip(server, ip_files):
    """The IP-Adapters in the server's models/ControlNet; {key: title}."""
    folder = server.data_dir / "models" / "ControlNet"
    folder.mkdir(parents=True, exist_ok=True)
    titles = {}
    for key in ("plain", "plus"):
        target = folder / ip_files[key].name
        target.write_bytes(ip_files[key].read_bytes())
        titles[key] = f"{target.stem} [{controlnets.short_hash(target)}]"
    return titles


def _ip_unit(title, **kw):
    return {"enabled": True, "module": "ip-adapter_clip_sd15", "model": title, "image": b64(picture(64, 64)), **kw}


def test_api_missing_clip_vision_file_is_named_with_its_folder(server, api_ip):
    (_annotators(server) / "clip_vision" / "clip_h.pth").unlink(missing_ok=True)
    r = _txt2img(server, [_ip_unit(api_ip["plain"])])
    message = assert_error(r, "alwayson_scripts")
    assert r.status_code == 422 and "clip_h.pth" in message and str(_annotators(server) / "clip_vision") in message
    assert str(server.data_dir / "models" / "clip_vision") in message  # ComfyUI's folder serves too
    r = _txt2img(server, [_ip_unit(api_ip["plain"], module="ip-adapter_clip_sdxl")])  # the ViT-bigG encoder
    message = assert_error(r, "alwayson_scripts")
    assert "clip_g.pth" in message and "CLIP-ViT-bigG-14" in message


def test_api_lists_ip_adapters(server, api_ip):
    models = requests.get(server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert set(api_ip.values()) <= set(models)
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    assert set(api_ip.values()) <= set(types["IP-Adapter"]["model_list"])
    assert "ip-adapter_clip_h" in types["IP-Adapter"]["module_list"]  # the label, as the extension lists


def test_api_ip_adapter_units(server, api_ip, api_models, ip_files):  # noqa: F811 - fixture
    target = _annotators(server) / "clip_vision" / "clip_h.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(ip_files["clip"].read_bytes())
    plain = _pixels(_txt2img(server))
    unit = _ip_unit(api_ip["plain"])
    assert np.array_equal(_pixels(_txt2img(server, [{**unit, "weight": 0}])), plain)
    # 2 steps: fractions 0 and 0.5; a range starting at 0.75 never acts
    assert np.array_equal(_pixels(_txt2img(server, [{**unit, "guidance_start": 0.75}])), plain)
    r = _txt2img(server, [unit])
    steered = _pixels(r)
    assert np.abs(steered.astype(int) - plain).max() > 8
    assert f"Module: ip-adapter_clip_sd15, Model: {api_ip['plain']}, Weight: 1.0" in r.json()["info"]
    assert np.array_equal(_pixels(_txt2img(server)), plain)  # the UNet's own attention is back
    plus = _pixels(_txt2img(server, [_ip_unit(api_ip["plus"])]))
    assert not np.array_equal(plus, plain) and not np.array_equal(plus, steered)
    net = {"enabled": True, "module": "invert", "model": api_models["ldm"], "image": b64(picture(64, 64))}
    only_net = _pixels(_txt2img(server, [net]))
    both = _pixels(_txt2img(server, [unit, net]))
    assert not np.array_equal(both, only_net) and not np.array_equal(both, steered)
    r = _txt2img(server, [{**unit, "module": "invert"}])  # an IP-Adapter needs the CLIP preprocessor
    assert "ip-adapter_clip_sd15" in assert_error(r, "alwayson_scripts")
    # ComfyUI's file in models/clip_vision serves too (the same encoder: the same picture)
    comfy = server.data_dir / "models" / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    comfy.parent.mkdir(parents=True, exist_ok=True)
    comfy.write_bytes(ip_files["clip_st"].read_bytes())
    target.unlink()
    try:
        assert np.array_equal(_pixels(_txt2img(server, [unit])), steered)
    finally:
        target.write_bytes(ip_files["clip"].read_bytes())
        comfy.unlink()


def test_a_failing_unet_call_still_gives_the_layers_back(sd1, ip_files):
    unit = _unit(sd1, ip_files)
    own = {name: p for name, p in sd1.unet.attn_processors.items()}
    injection = ip_adapter.Injection(sd1.unet, [unit.controlnet])
    injection.attach([1.0], [unit.image_tokens[0]])
    assert any(isinstance(p, IPAdapterAttnProcessor2_0) for p in sd1.unet.attn_processors.values())
    with pytest.raises(RuntimeError):  # latents of the wrong channel count: the UNet raises inside
        sd1.unet(torch.zeros(1, 3, 8, 8, dtype=sd1.unet.dtype), 1, encoder_hidden_states=torch.zeros(1, 77, 64))
    assert sd1.unet.attn_processors == own
