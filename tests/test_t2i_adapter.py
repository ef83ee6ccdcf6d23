"""T2I-Adapters with sd-webui-controlnet's contract: tiny random adapters written in TencentARC's
original ``.pth`` layout (full and light) and in diffusers' layout (SD1 and SDXL shapes), read by the
real loader into diffusers' T2IAdapter, applied inside the UNet's down blocks in the core pipeline and
through the API's ``alwayson_scripts.controlnet`` units."""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests
import torch
from diffusers import T2IAdapter

from modules.core import controlnet, controlnet_model, controlnet_preprocessors, t2i_adapter
from modules.core.checkpoint_file import CheckpointError
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.ldm_export import save_single_file
from modules.core.types import RequestError
from tests.api_common import assert_error
from tests.fixtures.tiny_controlnets import build_adapter, build_controlnet, write_adapter, write_controlnet
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, install_models
from tests.test_controlnet import _run as run_units, sdxl_inputs

SMALL = dict(width=64, height=64, steps=4, cfg_scale=7.0, sampler_name="Euler", seed=77, save_images=False)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """{key: (path, the diffusers T2IAdapter it was written from)}, named as the released files."""
    root = tmp_path_factory.mktemp("t2i") / "ControlNet"
    full, light, xl = build_adapter("sd1", seed=5), build_adapter("sd1_light", seed=6), build_adapter("sdxl", seed=7)
    canny = build_adapter("sd1", seed=8, in_channels=1)
    return {
        "full": (write_adapter(root / "t2iadapter_sketch_sd15v2.pth", full, "original"), full),
        "canny": (write_adapter(root / "t2iadapter_canny_sd14v1.pth", canny, "original"), canny),
        "light": (write_adapter(root / "t2iadapter_color_sd14v1.pth", light, "original"), light),
        "full_diffusers": (write_adapter(root / "t2i-adapter_diffusers_sd15.safetensors", full, "diffusers"), full),
        "xl": (write_adapter(root / "t2i-adapter_diffusers_xl_canny.safetensors", xl, "diffusers"), xl),
    }


# ------------------------------------------------------------------------------------ loading

def test_original_layouts_map_onto_diffusers_adapter(adapters):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for key, kind, family in (("full", "full_adapter", "sd1"), ("light", "light_adapter", "sd1"),
                              ("full_diffusers", "full_adapter", "sd1"), ("xl", "full_adapter_xl", "sdxl"),
                              ("canny", "full_adapter", "sd1")):
        path, source = adapters[key]
        built = controlnet_model.load(path)
        assert isinstance(built, t2i_adapter.AdapterFile) and isinstance(built.module, T2IAdapter)
        assert (built.family, built.config["adapter_type"]) == (family, kind), key
        assert built.layout == ("diffusers" if path.suffix == ".safetensors" else "original")
        # a T2IAdapter of diffusers' own, built from the very tensors, gives the same features
        reference = T2IAdapter(**built.config)
        reference.load_state_dict(source.state_dict())
        picture_in = x[:, :built.config["in_channels"]]
        for ours, theirs in zip(built.module(picture_in), reference(picture_in)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert controlnet_model.load(adapters["canny"][0]).config["in_channels"] == 1  # conv_in reads 64 = 1 x 8 x 8


def test_foreign_and_unsupported_adapter_files_are_refused_with_the_reason(tmp_path, adapters):
    original = torch.load(adapters["full"][0], weights_only=True)
    cases = {
        "style": ({"style_embedding": torch.zeros(1, 8, 16), "proj": torch.zeros(16, 8)}, "style adapter"),
        "skep": ({**original, "body.0.skep.weight": torch.zeros(32, 32, 1, 1)}, "skep"),
        "use_conv": ({**original, "body.2.down_opt.op.weight": torch.zeros(32, 32, 3, 3)}, "use_conv"),
        "ksize3": ({**original, "body.0.block2.weight": torch.zeros(32, 32, 3, 3)}, "ksize=3"),
        "odd": ({k: v for k, v in original.items() if not k.startswith("body.3.")}, "incomplete"),
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(tensors, path)
        with pytest.raises(UnsupportedCheckpoint, match=message):
            controlnet_model.load(path)
    truncated = save_single_file(tmp_path / "t.safetensors",
                                 {"adapter.body.0.resnets.0.block1.weight": torch.zeros(2, 2)})
    with pytest.raises(UnsupportedCheckpoint, match="T2I-Adapter"):
        controlnet_model.load(truncated)


def test_a_pickle_bomb_adapter_is_refused_unopened(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "t2iadapter_bomb_sd14v1.pth"
    torch.save({"conv_in.weight": _Bomb(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        controlnet_model.load(path)
    assert not marker.exists()


class _Bomb:
    """Unpickling it would create a file: full unpickling runs code; weights-only loading refuses."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")


# ---------------------------------------------------------------------------- in the pipeline

def _run(model, tmp_path, units=(), **overrides):
    return run_units(model, tmp_path, units, SMALL, **overrides)


def _unit(model, path, module="invert", **kw):
    built = controlnet_model.load(path, model.policy.unet_dtype)
    built.module.to(model.device)
    detected = controlnet_preprocessors.find(module)(np.asarray(picture(64, 64)))
    return controlnet.ControlUnit(built, detected, **kw)


def test_weight_zero_is_bit_identical_and_an_adapter_steers(sd1, tmp_path, adapters):
    plain, _ = _run(sd1, tmp_path)
    unweighted, _ = _run(sd1, tmp_path, [_unit(sd1, adapters["full"][0], weight=0.0)])
    steered, _ = _run(sd1, tmp_path, [_unit(sd1, adapters["full"][0])])
    coloured, _ = _run(sd1, tmp_path, [_unit(sd1, adapters["light"][0], module="color")])
    assert np.array_equal(unweighted, plain)
    assert np.abs(steered.astype(int) - plain).max() > 8
    assert np.abs(coloured.astype(int) - plain).max() > 8


def test_features_go_into_the_down_blocks_as_diffusers_adapter_pipeline(sd1, adapters):
    unit = _unit(sd1, adapters["full"][0], weight=0.5)
    residuals = controlnet.ControlJob([unit]).for_pass(sd1, (4, 8, 8))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(sd1.device)
    t = torch.tensor([500, 500], device=sd1.device)
    cond = {"context": torch.randn(2, 77, sd1.spec.unet_config["cross_attention_dim"]).to(sd1.device)}
    extra = residuals(x, t, cond)
    assert set(extra) == {"down_intrablock_additional_residuals"}
    hint = controlnet.hint_tensor(unit.detected_map).to(sd1.device)
    expected = [f * 0.5 for f in unit.controlnet.module(hint)]  # the map at the job's size, once
    for got, want in zip(extra["down_intrablock_additional_residuals"], expected):
        assert got.shape[0] == 2
        torch.testing.assert_close(got, want.expand_as(got).to(got.dtype))
    # diffusers' UNet adds them in its down blocks: the prediction moves
    unet = sd1.unet
    plain = unet(x, t, encoder_hidden_states=cond["context"]).sample
    steered = unet(x, t, encoder_hidden_states=cond["context"], **residuals(x, t, cond)).sample
    assert (steered - plain).abs().max() > 1e-3


def test_adapter_acts_only_inside_its_guidance_range(sd1, tmp_path, adapters):
    _, plain = _run(sd1, tmp_path)
    unit = _unit(sd1, adapters["full"][0], guidance_start=0.5)
    calls = []
    unit.controlnet.module.register_forward_hook(lambda *a: calls.append(1))
    _, late = _run(sd1, tmp_path, [unit])
    # 4 steps: fractions 0, .25, .5, .75 -> the features count at the last two, computed once for the pass
    assert len(calls) == 1
    assert torch.equal(late[0], plain[0]) and torch.equal(late[1], plain[1])
    assert not torch.equal(late[2], plain[2]) and not torch.equal(late[3], plain[3])


def test_adapter_and_controlnet_combine(sd1, tmp_path, adapters):
    cn = build_controlnet("sd1", seed=1)
    cn_path = write_controlnet(tmp_path / "cn.safetensors", cn, "ldm")
    adapter, net = _unit(sd1, adapters["full"][0]), _unit(sd1, cn_path, module="canny")
    residuals = controlnet.ControlJob([adapter, net]).for_pass(sd1, (4, 8, 8))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(sd1.device)
    t = torch.tensor([300, 300], device=sd1.device)
    cond = {"context": torch.randn(2, 77, sd1.spec.unet_config["cross_attention_dim"]).to(sd1.device)}
    both = residuals(x, t, cond)
    assert {"down_intrablock_additional_residuals", "down_block_additional_residuals",
            "mid_block_additional_residual"} == set(both)
    only_net = controlnet.ControlJob([net]).for_pass(sd1, (4, 8, 8))(x, t, cond)
    torch.testing.assert_close(both["mid_block_additional_residual"], only_net["mid_block_additional_residual"])
    pictures = [_run(sd1, tmp_path, units, steps=2)[0] for units in ([], [adapter], [net], [adapter, net])]
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(pictures[i], pictures[j]), (i, j)


def test_control_modes_scale_and_pick_rows_as_the_extension(sd1, adapters):
    prompt = _unit(sd1, adapters["full"][0], weight=0.5, control_mode="My prompt is more important")
    assert prompt.scales(4) == pytest.approx([0.125, 0.31, 0.4125, 0.5])
    assert _unit(sd1, adapters["full"][0], weight=0.5).scales(4) == [0.5] * 4
    unit = _unit(sd1, adapters["full"][0], control_mode="ControlNet is more important")
    residuals = controlnet.ControlJob([unit]).for_pass(sd1, (4, 8, 8))
    context = torch.randn(1, 77, sd1.spec.unet_config["cross_attention_dim"]).to(sd1.device)
    cond, uncond = residuals.mark({"context": context}, {"context": context})
    batched = {"context": torch.cat([context, context]),
               "control_mark": torch.cat([cond["control_mark"], uncond["control_mark"]])}
    out = residuals(torch.zeros(2, 4, 8, 8, device=sd1.device), torch.tensor([500, 500], device=sd1.device), batched)
    for feature in out["down_intrablock_additional_residuals"]:
        assert feature[0].abs().sum() > 0 and torch.all(feature[1] == 0)  # the unconditional row gets none
    balanced = controlnet.ControlJob([_unit(sd1, adapters["full"][0])]).for_pass(sd1, (4, 8, 8))(
        torch.zeros(2, 4, 8, 8, device=sd1.device), torch.tensor([500, 500], device=sd1.device), batched)
    torch.testing.assert_close(out["down_intrablock_additional_residuals"][0][0],
                               balanced["down_intrablock_additional_residuals"][0][1] * 0.25)


def test_sdxl_adapter_steers_the_sdxl_unet_and_families_are_checked(sd1, sdxl, adapters):
    from modules.core import model_ops

    with pytest.raises(RequestError, match="SDXL models"):
        controlnet.ControlJob([_unit(sd1, adapters["xl"][0])]).for_pass(sd1, (4, 8, 8))
    with pytest.raises(RequestError, match="SD1.x/SD2.x models"):
        controlnet.ControlJob([_unit(sdxl, adapters["full"][0])]).for_pass(sdxl, (4, 8, 8))
    residuals = controlnet.ControlJob([_unit(sdxl, adapters["xl"][0])]).for_pass(sdxl, (4, 8, 8))
    g, cond, x, t = sdxl_inputs(sdxl)
    features = residuals(x, t, cond)["down_intrablock_additional_residuals"]
    assert [tuple(f.shape[1:]) for f in features] == [(32, 4, 4), (64, 4, 4), (128, 2, 2), (128, 2, 2)]
    plain = model_ops.denoiser(sdxl)(x, t, cond)
    steered = model_ops.denoiser(sdxl, residuals)(x, t, residuals.mark(cond, None)[0])
    assert (steered - plain).abs().max() > 1e-3
    # 72 px is no multiple of the XL adapter's 16: the map is resized up, the features fit the UNet's 5, 5, 3, 3
    odd = controlnet.ControlJob([_unit(sdxl, adapters["xl"][0])]).for_pass(sdxl, (4, 9, 9))
    x9 = torch.randn(1, 4, 9, 9, generator=g).to(sdxl.device)
    assert [f.shape[-1] for f in odd(x9, t, cond)["down_intrablock_additional_residuals"]] == [5, 5, 3, 3]
    assert not torch.equal(model_ops.denoiser(sdxl, odd)(x9, t, cond), model_ops.denoiser(sdxl)(x9, t, cond))


# ------------------------------------------------------------------------------------------ API

@pytest.fixture(scope="module")
def api_adapters(server, adapters):
    """The adapter files in the server's models/ControlNet; {key: title}."""
    return install_models(server, {key: adapters[key][0] for key in ("full", "canny", "light", "xl")})


def test_api_lists_adapters_by_the_extension_names_and_types(server, api_adapters):
    models = requests.get(server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert set(api_adapters.values()) <= set(models)
    assert all(re.fullmatch(r"\S+ \[[0-9a-f]{8}\]", title) for title in api_adapters.values())
    types = requests.get(server.url + "/controlnet/control_types", timeout=30).json()["control_types"]
    t2i = types["T2I-Adapter"]["model_list"]
    assert {api_adapters["full"], api_adapters["canny"], api_adapters["light"]} <= set(t2i)
    assert api_adapters["canny"] in types["Canny"]["model_list"]
    assert api_adapters["full"] in types["Scribble"]["model_list"]  # "sketch", as the extension's filters
    assert "color" in types["T2I-Adapter"]["module_list"]


def test_api_adapter_units(server, api_adapters):
    image = b64(picture(64, 64))
    plain = _pixels(_txt2img(server))
    unit = {"enabled": True, "module": "invert", "model": api_adapters["full"], "image": image}
    assert np.array_equal(_pixels(_txt2img(server, [{**unit, "weight": 0}])), plain)
    # 2 steps: fractions 0 and 0.5; a range starting at 0.75 never acts
    assert np.array_equal(_pixels(_txt2img(server, [{**unit, "guidance_start": 0.75}])), plain)
    r = _txt2img(server, [unit])
    steered = _pixels(r)
    assert np.abs(steered.astype(int) - plain).max() > 8
    line = re.search(r'ControlNet 0: \\?"([^"\\]*)', r.json()["info"]).group(1)
    assert line.startswith(f"Module: invert, Model: {api_adapters['full']}, Weight: 1.0, Resize Mode: Crop and Resize")
    canny = _pixels(_txt2img(server, [{**unit, "module": "canny", "model": "t2iadapter_canny_sd14v1"}]))
    assert not np.array_equal(canny, plain) and not np.array_equal(canny, steered)
    both = _pixels(_txt2img(server, [unit, {"enabled": True, "module": "color", "model": api_adapters["light"],
                                            "image": image}]))
    assert not np.array_equal(both, steered)
    batch = _txt2img(server, [unit], batch_size=2)
    # the batch's first picture is the single one's, up to the rounding of a batched UNet call (a
    # missing adapter on any picture of the batch differs by far more: see `steered` above)
    assert batch.status_code == 200 and np.abs(_pixels(batch).astype(int) - steered).max() <= 2
    assert_error(_txt2img(server, [{**unit, "model": api_adapters["xl"]}]), "alwayson_scripts")


def test_api_adapter_and_controlnet_units_combine(server, api_adapters):
    folder = server.data_dir / "models" / "ControlNet"
    cn_path = write_controlnet(folder / "tiny-cn-for-t2i.safetensors", build_controlnet("sd1", seed=4), "ldm")
    image = b64(picture(64, 64))
    adapter = {"enabled": True, "module": "invert", "model": api_adapters["full"], "image": image}
    net = {"enabled": True, "module": "canny", "model": cn_path.stem, "image": image}
    only_adapter, only_net = _pixels(_txt2img(server, [adapter])), _pixels(_txt2img(server, [net]))
    r = _txt2img(server, [adapter, net])
    both = _pixels(r)
    assert not np.array_equal(both, only_adapter) and not np.array_equal(both, only_net)
    assert "ControlNet 0" in r.json()["info"] and "ControlNet 1" in r.json()["info"]


def test_api_refuses_a_pickle_bomb_adapter_and_runs_nothing(server, api_adapters, tmp_path):
    folder = server.data_dir / "models" / "ControlNet"
    marker = tmp_path / "ran"
    torch.save({"conv_in.weight": _Bomb(str(marker))}, folder / "t2iadapter_bomb_sd14v1.pth")
    models = requests.get(server.url + "/controlnet/model_list", timeout=30).json()["model_list"]
    assert any(m.startswith("t2iadapter_bomb_sd14v1 [") for m in models)  # listed: listing opens nothing
    samples = server.data_dir / "outputs" / "txt2img-images"
    before = sorted(samples.rglob("*.png")) if samples.exists() else []
    r = _txt2img(server, [{"enabled": True, "module": "invert", "model": "t2iadapter_bomb_sd14v1",
                           "image": b64(picture(64, 64))}], save_images=True)
    message = assert_error(r, "alwayson_scripts")
    assert "refused" in message and "t2iadapter_bomb_sd14v1.pth" in message
    assert not marker.exists()
    assert (sorted(samples.rglob("*.png")) if samples.exists() else []) == before  # no picture was made
