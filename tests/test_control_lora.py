"""Control-LoRA (Stability AI's ``control-lora-*-rank*.safetensors``): tiny files in the real key layout
(LDM ControlNet names, ``.up`` / ``.down`` pairs for the layers copied from the UNet, the
``lora_controlnet`` marker) for the tiny SDXL checkpoint, built on the job's UNet, applied as any
ControlNet unit, refused on SD1, through the core, the service and the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from modules.core import control_lora, controlnet, controlnet_model, controlnet_preprocessors
from modules.core.checkpoint_file import CheckpointFile
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.ldm_export import save_single_file, unet_to_ldm
from modules.core.types import RequestError
from modules.services import controlnets
from tests.api_common import BASE, decode
from tests.fixtures.tiny_controlnets import build_controlnet, controlnet_to_ldm
from tests.pictures import b64, picture
from tests.test_controlnet import _run, install_models

RANK = 4
CONTROLNET_OWN = ("input_hint_block.", "zero_convs.", "middle_block_out.")
# LDM layer -> its diffusers name, written out here rather than taken from the code under test
CONV_LAYER = ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1")
LINEAR_LAYER = ("middle_block.1.proj_in", "mid_block.attentions.0.proj_in")


def write_control_lora(path: Path, unet, *, seed: int, zero: bool = False, drop: tuple[str, ...] = ()) -> Path:
    """A Control-LoRA for ``unet`` as Stability's files are laid out: the encoder half and middle block
    under their LDM names, each linear / conv weight as ``.up`` (out, rank[, 1, 1]) + ``.down``
    (rank, in[, kh, kw]), their norms and biases and the label embedding in full, the ControlNet's own
    hint encoder / zero convolutions / middle_block_out, and the ``lora_controlnet`` marker. ``zero``:
    the ``up`` matrices and the zero convolutions are 0. ``drop``: keys left out (a broken file)."""
    g = torch.Generator().manual_seed(seed)
    base = unet_to_ldm(unet.state_dict())
    tensors: dict[str, torch.Tensor] = {"lora_controlnet": torch.zeros(1)}
    for key, value in base.items():
        if not key.startswith(("input_blocks.", "middle_block.", "label_emb.")):
            continue
        layer, _, part = key.rpartition(".")
        if part == "weight" and value.dim() >= 2 and not key.startswith("label_emb."):
            out, rest = value.shape[0], value.shape[1:]
            up = torch.zeros(out, RANK) if zero else torch.randn(out, RANK, generator=g) * 0.2
            down = torch.randn(RANK, int(np.prod(rest)), generator=g) * 0.2
            if value.dim() == 4:  # a convolution's pair: conv-shaped, as in the real files
                up, down = up.reshape(out, RANK, 1, 1), down.reshape(RANK, *rest)
            tensors[layer + ".up"], tensors[layer + ".down"] = up, down
        else:  # norms, biases, the label embedding: the trained values, slightly off the base's
            tensors[key] = value.float() + (0 if zero else 0.05 * torch.randn(value.shape, generator=g))
    own = controlnet_to_ldm(build_controlnet("sdxl", seed=seed, zero=zero))
    tensors.update({k: v for k, v in own.items() if k.startswith(CONTROLNET_OWN)})
    for key in drop:
        tensors.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_single_file(path, tensors, dtype=torch.float16)


@pytest.fixture(scope="module")
def files(sdxl, tmp_path_factory):
    root = tmp_path_factory.mktemp("control-loras")
    return {
        "live": write_control_lora(root / "control-lora-tiny-rank4.safetensors", sdxl.unet, seed=11),
        "zero": write_control_lora(root / "control-lora-tiny-zero.safetensors", sdxl.unet, seed=12, zero=True),
        "no_hint": write_control_lora(root / "control-lora-no-hint.safetensors", sdxl.unet, seed=13,
                                      drop=("input_hint_block.0.weight",)),
    }


def _unit(model, path, **kw):
    built = control_lora.build(controlnet_model.load(path), model, model.policy.unet_dtype)
    built.module.to(model.device)
    detected = controlnet_preprocessors.find("canny")(np.asarray(picture(64, 64)), 64, 50, 120)
    return controlnet.ControlUnit(built, detected, **kw)


# ------------------------------------------------------------------------------------ building

def test_a_control_lora_is_recognised_and_listed_by_its_stem(files, tmp_path):
    ckpt = CheckpointFile(files["live"])
    try:
        assert controlnet_model.describe(ckpt.shapes) == "control-lora"
    finally:
        ckpt.close()
    read = controlnet_model.load(files["live"])
    assert isinstance(read, control_lora.ControlLoraFile) and read.family == "sdxl" and read.rank == RANK
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    (folder / files["live"].name).write_bytes(files["live"].read_bytes())
    registry = controlnets.ControlNets([folder])
    [title] = registry.titles()
    assert title == f"control-lora-tiny-rank4 [{controlnets.short_hash(folder / files['live'].name)}]"
    assert registry.find("control-lora-tiny-rank4") == (title, folder / files["live"].name)


def test_the_built_controlnet_is_the_base_plus_up_down_and_the_files_tensors(sdxl, files):
    raw = CheckpointFile(files["live"])
    try:
        file = {k: raw.get(k, torch.float32) for k in raw.shapes}
    finally:
        raw.close()
    built = control_lora.build(controlnet_model.load(files["live"]), sdxl)
    assert (built.family, built.layout) == ("sdxl", "control-lora")
    state = built.module.state_dict()
    unet = {k: v.float().cpu() for k, v in sdxl.unet.state_dict().items()}
    for ldm, ours in (CONV_LAYER, LINEAR_LAYER):
        weight = unet[ours + ".weight"]
        up, down = file[ldm + ".up"], file[ldm + ".down"]
        expected = weight + (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(weight.shape)
        torch.testing.assert_close(state[ours + ".weight"], expected)
        assert not torch.equal(state[ours + ".weight"], weight)
        assert torch.equal(state[ours + ".bias"], file[ldm + ".bias"])  # the file's own tensors replace the copy's
    assert torch.equal(state["controlnet_down_blocks.0.weight"], file["zero_convs.0.0.weight"])
    assert torch.equal(state["controlnet_mid_block.bias"], file["middle_block_out.0.bias"])
    assert torch.equal(state["controlnet_cond_embedding.conv_in.weight"], file["input_hint_block.0.weight"])
    assert torch.equal(state["add_embedding.linear_1.weight"], file["label_emb.0.0.weight"])
    # what the file lacks is the base UNet's
    assert torch.equal(state["time_embedding.linear_1.weight"], unet["time_embedding.linear_1.weight"])


def test_a_zero_control_lora_leaves_the_picture_bit_identical_and_a_live_one_steers_in_range(sdxl, files, tmp_path):
    plain, plain_latents = _run(sdxl, tmp_path, steps=4)
    zero, _ = _run(sdxl, tmp_path, [_unit(sdxl, files["zero"])], steps=4)
    assert np.array_equal(zero, plain)
    controlled, _ = _run(sdxl, tmp_path, [_unit(sdxl, files["live"])], steps=4)
    assert np.abs(controlled.astype(int) - plain).max() > 8
    _, late = _run(sdxl, tmp_path, [_unit(sdxl, files["live"], guidance_start=0.5)], steps=4)
    # 4 steps: fractions 0, .25, .5, .75 -> the unit acts from the third step on
    assert torch.equal(late[0], plain_latents[0]) and torch.equal(late[1], plain_latents[1])
    assert not torch.equal(late[2], plain_latents[2]) and not torch.equal(late[3], plain_latents[3])


# ------------------------------------------------------------------------------------ the service

def _units(path: Path, **fields):
    return controlnets.units_from_args([{"enabled": True, "module": "none", "model": path.stem,
                                         "image": b64(picture(64, 64)), **fields}])


def test_the_service_builds_once_per_file_and_checkpoint(sdxl, files, tiny_checkpoints):
    from tests.conftest import _load

    registry = controlnets.ControlNets([files["live"].parent])
    job, infotext = controlnets.prepare_job(_units(files["live"]), width=64, height=64, registry=registry, model=sdxl)
    first = job.units[0].controlnet
    assert first.layout == "control-lora" and infotext["ControlNet 0"].startswith("Module: none, Model: control-lora-tiny-rank4 [")
    again, _ = controlnets.prepare_job(_units(files["live"]), width=64, height=64, registry=registry, model=sdxl)
    assert again.units[0].controlnet is first
    reloaded = _load(tiny_checkpoints.sdxl)  # the checkpoint read again: another UNet, another build
    other, _ = controlnets.prepare_job(_units(files["live"]), width=64, height=64, registry=registry, model=reloaded)
    assert other.units[0].controlnet is not first


def test_sd1_models_and_broken_files_are_refused_naming_the_unit(sd1, sdxl, files, tmp_path):
    registry = controlnets.ControlNets([files["live"].parent])
    with pytest.raises(RequestError) as refused:
        controlnets.prepare_job(_units(files["live"]), width=64, height=64, registry=registry, model=sd1)
    assert refused.value.field == "alwayson_scripts"
    assert "ControlNet 0" in refused.value.message and "for SDXL models" in refused.value.message
    assert sd1.spec.label in refused.value.message
    with pytest.raises(RequestError, match=r"ControlNet 0: .*control-lora-no-hint.*incomplete: no input_hint_block"):
        controlnets.prepare_job(_units(files["no_hint"]), width=64, height=64, registry=registry, model=sdxl)
    # a file that does not tell its family: its layers' shapes decide
    label = tuple(f"label_emb.0.{i}.{part}" for i in (0, 2) for part in ("weight", "bias"))
    plain = write_control_lora(tmp_path / "plain" / "control-lora-plain.safetensors", sdxl.unet, seed=14, drop=label)
    assert controlnet_model.load(plain).family is None
    with pytest.raises(UnsupportedCheckpoint, match=r"does not fit the UNet of the checkpoint \(SD1"):
        control_lora.build(controlnet_model.load(plain), sd1)
    truncated = tmp_path / "control-lora-cut.safetensors"
    truncated.write_bytes(files["live"].read_bytes()[:300])
    cut = controlnets.ControlNets([tmp_path])
    with pytest.raises(RequestError, match=r"ControlNet 0: .*control-lora-cut\.safetensors"):
        controlnets.prepare_job(_units(truncated), width=64, height=64, registry=cut, model=sdxl)


# ------------------------------------------------------------------------------------------ API

def _txt2img(server, units=None, **fields):
    body = {**BASE, "steps": 2, "width": 64, "height": 64, **fields}
    if units is not None:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=300)


def test_api_lists_runs_on_sdxl_and_refuses_sd1(server, files):
    titles = install_models(server, {"live": files["live"]})
    models = requests.get(server.url + "/controlnet/model_list?update=true", timeout=30).json()["model_list"]
    assert titles["live"] in models
    unit = {"enabled": True, "module": "canny", "model": "control-lora-tiny-rank4", "image": b64(picture(64, 64))}
    xl = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"}}
    plain = _txt2img(server, **xl)
    steered = _txt2img(server, [unit], **xl)
    assert plain.status_code == 200 and steered.status_code == 200, steered.text
    a, b = (np.asarray(decode(r.json()["images"][0]).convert("RGB")).astype(int) for r in (plain, steered))
    assert np.abs(a - b).max() > 8
    infotext = json.loads(steered.json()["info"])["infotexts"][0]
    assert f'ControlNet 0: "Module: canny, Model: {titles["live"]}, Weight: 1.0' in infotext
    refused = _txt2img(server, [unit])  # the server's default checkpoint: the tiny SD1
    assert refused.status_code == 422
    assert "ControlNet 0" in refused.text and "Control-LoRA" in refused.text and "SDXL" in refused.text
