"""sd-webui-controlnet's ``depth_zoe`` run from the user's annotator file ``zoedepth/ZoeD_M12_N.pt``
(ZoeDepth-N: MiDaS DPT over BEiT-L/16-384 with ZoeDepth's metric-bin head, saved as ``{"model": ...}``).

The full-size network (345 million weights) is only built on the meta device, to check its names and
shapes; the files written here have the real key layout at a tiny size (the sizes are read off the
file). A hand-set state whose metric depth grows with the picture's brightness checks the orientation
through the whole network (the extension's map is inverted: near is bright); ``/controlnet/detect``
runs it from the shared server's annotator folder and refuses, naming the file and folder, when it is
missing or holds another network.
(Compared by hand with the extension's ZoeDepth over timm 0.6.13's BEiT, random weights, BEiT-B and
BEiT-L sizes, non-square pictures: the same keys and shapes, metric depth and uint8 map differences 0.0.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import annotator_zoe
from modules.core.annotator_zoe import ZoeConfig, ZoeDepthN
from modules.core.checkpoint_file import CheckpointError
from tests.api_common import decode
from tests.pictures import picture
from tests.test_annotator_teed import write_tiny_teed
from tests.annotator_common import annotators, detect

TINY = ZoeConfig(dim=32, depth=4, heads=2, mlp=64, window=4, classes=10, features=(8, 16, 32, 32), fusion=16,
                 head_mid=8, bins=8, embedding=8, seed_mlp=16, mlp_dim=8, attractors=(4, 2, 2, 1))
B = "core.core.pretrained.model."
SHAPES = {  # some of ZoeD_M12_N.pt's keys (under "model") and their shapes
    B + "cls_token": (1, 1, 1024),
    B + "patch_embed.proj.weight": (1024, 3, 16, 16),
    B + "blocks.0.gamma_1": (1024,),
    B + "blocks.0.attn.q_bias": (1024,),
    B + "blocks.0.attn.qkv.weight": (3072, 1024),
    B + "blocks.23.attn.relative_position_bias_table": (2212, 16),
    B + "blocks.23.attn.relative_position_index": (577, 577),
    B + "blocks.23.mlp.fc1.weight": (4096, 1024),
    B + "fc_norm.weight": (1024,),
    B + "head.weight": (1000, 1024),
    "core.core.pretrained.act_postprocess1.0.project.0.weight": (1024, 2048),
    "core.core.pretrained.act_postprocess1.3.weight": (256, 1024, 1, 1),
    "core.core.pretrained.act_postprocess1.4.weight": (256, 256, 4, 4),
    "core.core.pretrained.act_postprocess2.4.weight": (512, 512, 2, 2),
    "core.core.pretrained.act_postprocess3.3.weight": (1024, 1024, 1, 1),
    "core.core.pretrained.act_postprocess4.4.weight": (1024, 1024, 3, 3),
    "core.core.scratch.layer4_rn.weight": (256, 1024, 3, 3),
    "core.core.scratch.refinenet4.resConfUnit1.conv2.weight": (256, 256, 3, 3),
    "core.core.scratch.output_conv.0.weight": (128, 256, 3, 3),
    "core.core.scratch.output_conv.2.weight": (32, 128, 3, 3),
    "core.core.scratch.output_conv.4.weight": (1, 32, 1, 1),
    "conv2.weight": (256, 256, 1, 1),
    "seed_bin_regressor._net.2.weight": (64, 256, 1, 1),
    "seed_projector._net.2.weight": (128, 128, 1, 1),
    "projectors.3._net.0.weight": (128, 256, 1, 1),
    "attractors.0._net.2.weight": (16, 128, 1, 1),
    "attractors.3._net.2.weight": (1, 128, 1, 1),
    "conditional_log_binomial.mlp.0.weight": (80, 161, 1, 1),
    "conditional_log_binomial.mlp.2.weight": (4, 80, 1, 1),
    "conditional_log_binomial.log_binomial_transform.k_idx": (1, 64, 1, 1),
    "conditional_log_binomial.log_binomial_transform.K_minus_1": (1, 1, 1, 1),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is shared; a tiny network at 384 .. 512 px gains nothing from more
    yield
    torch.set_num_threads(threads)


def _meta(config: ZoeConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return ZoeDepthN(config).state_dict()


def _fixed(key: str, config: ZoeConfig) -> torch.Tensor | None:
    """The buffers the file holds that are not weights."""
    if key.endswith("relative_position_index"):
        return annotator_zoe.relative_position_index(config.window, config.window)
    if key.endswith("k_idx"):
        return torch.arange(config.bins).view(1, -1, 1, 1)
    if key.endswith("K_minus_1"):
        return torch.tensor([config.bins - 1.0]).view(1, 1, 1, 1)
    return None


def random_state(config: ZoeConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict of the real layout: weights scaled by their fan-in, layer scales and norms
    near their trained sizes, a relative position bias that matters."""
    g, state = torch.Generator().manual_seed(seed), {}
    for key, meta in _meta(config).items():
        shape, fixed = meta.shape, _fixed(key, config)
        if fixed is not None:
            state[key] = fixed
        elif key.endswith("relative_position_bias_table"):
            state[key] = torch.randn(shape, generator=g) * 0.5
        elif "gamma_" in key:
            state[key] = 0.2 + 0.1 * torch.randn(shape, generator=g)
        elif "norm" in key and len(shape) == 1:
            state[key] = float(key.endswith("weight")) + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 or key.endswith("cls_token"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        else:
            transposed = "act_postprocess1.4" in key or "act_postprocess2.4" in key  # (in, out, k, k)
            fan_in = shape[0] if transposed else int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return state


def brightness_state(config: ZoeConfig = TINY) -> dict[str, torch.Tensor]:
    """A state whose metric depth grows with the picture's brightness: BEiT's blocks off (layer scales
    0), channel 0 carries each patch's mean brightness through the first reassemble stage, the first
    fusion block and the output convolutions into the log-binomial's p; the bin centres are fixed and
    increasing (seed biases), the attractors far away (they barely move them)."""
    state = {k: _fixed(k, config) if _fixed(k, config) is not None else torch.zeros(v.shape)
             for k, v in _meta(config).items()}
    for key in state:
        if "norm" in key and key.endswith("weight"):
            state[key] = torch.ones_like(state[key])
    p, s = "core.core.pretrained.", "core.core.scratch."
    state[B + "patch_embed.proj.weight"][0] = 1.0 / (3 * config.patch ** 2)  # the patch's mean, in -1..1
    state[p + "act_postprocess1.0.project.0.weight"][0, 0] = 1.0
    state[p + "act_postprocess1.0.project.0.bias"][0] = 2.0  # GELU(1 .. 3): positive, increasing
    state[p + "act_postprocess1.3.weight"][0, 0] = 1.0
    state[p + "act_postprocess1.4.weight"][0, 0] = 1.0  # each token over its 4 x 4 pixels
    state[s + "layer1_rn.weight"][0, 0, 1, 1] = 1.0
    state[s + "refinenet1.out_conv.weight"][0, 0] = 1.0
    state[s + "output_conv.0.weight"][0, 0, 1, 1] = 1.0
    state[s + "output_conv.2.weight"][0, 0, 1, 1] = 1.0
    state[s + "output_conv.4.weight"][0, 0] = 1.0
    state["seed_bin_regressor._net.2.bias"] = torch.linspace(0.5, 8.0, config.bins)
    for i in range(len(config.attractors)):
        state[f"attractors.{i}._net.2.bias"] += 50.0
    mlp = "conditional_log_binomial.mlp."
    state[mlp + "0.weight"][0, 0] = 1.0  # from the output convolutions' channel 0
    state[mlp + "2.weight"][:2, 0, 0, 0] = torch.tensor([2.0, -2.0])
    state[mlp + "2.bias"] = torch.tensor([-4.0, 4.0, -3.0, 0.0])  # p: increasing; temperature about 3.3
    return state


def save_as_zoe(state: dict, path) -> None:
    """As the real file: {"model": state dict}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)


def _halves(width: int, height: int, vertical: bool) -> np.ndarray:
    """Dark (30) in the left (top) half, bright (220) in the other."""
    image = np.full((height, width, 3), 220, np.uint8)
    if vertical:
        image[: height // 2] = 30
    else:
        image[:, : width // 2] = 30
    return image


def test_the_network_has_the_real_files_layout():
    state = _meta(ZoeConfig())
    assert len(state) == 535 and sum(v.numel() for v in state.values() if v.is_floating_point()) == 344_816_747
    assert {k: tuple(state[k].shape) for k in SHAPES} == SHAPES
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert annotator_zoe.zoe_config(shapes, "ZoeD_M12_N.pt") == ZoeConfig()
    assert ZoeConfig().hooks == (5, 11, 17, 23) and ZoeConfig(depth=12).hooks == (2, 5, 8, 11)
    tiny = {k: tuple(v.shape) for k, v in _meta(TINY).items()}
    assert annotator_zoe.zoe_config(tiny, "tiny.pt") == TINY


def test_relative_positions_and_the_resize_as_the_original():
    index = annotator_zoe.relative_position_index(2, 3)  # timm's gen_relative_position_index((2, 3))
    assert index.shape == (7, 7) and index[0, 0] == 17 and (index[0, 1:] == 15).all() and (index[1:, 0] == 16).all()
    assert index[1, 1] == 7 and index[1, 6] == 0 and index[6, 1] == 14
    # ZoeDepth's Resize(512, 384, keep_aspect_ratio, multiple of 32, "minimal")
    assert annotator_zoe.network_size(96, 160) == (320, 512)
    assert annotator_zoe.network_size(608, 608) == (512, 512)
    assert annotator_zoe.network_size(96, 136) == (352, 512)


def test_the_depth_map_of_known_depths():
    depth = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, 101)
    mapped = annotator_zoe.depth_map(depth)[0]  # 2nd percentile 0.02 -> 255, 85th 0.85 -> 0, inverted
    assert mapped[:3].tolist() == [255, 255, 255] and mapped[85:].max() == 0
    assert mapped[43] == int((1 - (0.43 - 0.02) / 0.83) * 255.0)
    assert (np.diff(mapped.astype(int)) <= 0).all()
    assert (annotator_zoe.depth_map(np.full((4, 4), 2.5, np.float32)) == 0).all()  # flat: 0 / 0, as the extension


def test_tiny_file_loads_strictly_and_maps_depth(tmp_path):
    state = random_state()
    path = tmp_path / "ZoeD_M12_N.pt"
    save_as_zoe(state, path)
    net = annotator_zoe.build(path)
    assert net.config == TINY
    key = B + "blocks.2.attn.relative_position_bias_table"
    assert torch.equal(net.state_dict()[key], state[key])
    image = np.asarray(picture(96, 64))
    mapped = annotator_zoe.depth_map(annotator_zoe.metric_depth(net, image))
    assert mapped.shape == (64, 96) and mapped.dtype == np.uint8
    assert len(np.unique(mapped)) > 100 and mapped.max() == 255 and mapped.min() == 0
    assert 0.1 < (mapped == 0).mean() < 0.2  # above the 85th percentile (far): 0
    # the picture's mirror image gives the mirrored map (the mean of both runs)
    assert np.array_equal(annotator_zoe.depth_map(annotator_zoe.metric_depth(net, image[:, ::-1])), mapped[:, ::-1])

    # a file saved by timm >= 0.9 holds no relative_position_index: the same network
    save_as_zoe({k: v for k, v in state.items() if not k.endswith("relative_position_index")}, path)
    again = annotator_zoe.build(path)
    assert np.array_equal(annotator_zoe.depth_map(annotator_zoe.metric_depth(again, image)), mapped)

    # the head's last layers missing: refused by the strict load; the seed regressor's first: by the sizes
    save_as_zoe({k: v for k, v in state.items() if not k.startswith("conditional_log_binomial.mlp")}, path)
    with pytest.raises(CheckpointError, match=r"ZoeD_M12_N\.pt does not fit the network.*Missing key"):
        annotator_zoe.build(path)
    save_as_zoe({k: v for k, v in state.items() if not k.startswith("seed_bin_regressor._net.0")}, path)
    with pytest.raises(CheckpointError, match=r"ZoeD_M12_N\.pt lacks seed_bin_regressor\._net\.0\.weight"):
        annotator_zoe.build(path)


def test_near_is_bright_in_the_right_place():
    with torch.device("meta"):
        net = ZoeDepthN(TINY)
    net.load_state_dict(brightness_state(), assign=True)
    net.eval()
    for vertical in (False, True):
        image = _halves(96, 64, vertical)
        depth = annotator_zoe.metric_depth(net, image)
        dark, bright = (depth[:32], depth[32:]) if vertical else (depth[:, :48], depth[:, 48:])
        assert dark.max() < bright.min()  # the dark half is nearer
        mapped = annotator_zoe.depth_map(depth)
        near, far = (mapped[:24], mapped[40:]) if vertical else (mapped[:, :40], mapped[:, 56:])
        assert near.min() >= 250 and far.max() == 0
    ramp = np.zeros((64, 96, 3), np.uint8)
    ramp[:] = np.linspace(0, 255, 96).astype(np.uint8)[None, :, None]  # dark (near) on the left
    row = annotator_zoe.depth_map(annotator_zoe.metric_depth(net, ramp))[32]
    assert row[0] == 255 and row[-1] == 0 and (np.diff(row.astype(int)) <= 1).all()  # bicubic: a 1 overshoot
    assert (np.diff(row[:80:8].astype(int)) < 0).all()


_annotators = annotators


def _detect(server, image):
    return detect(server, "depth_zoe", image)


def test_detect_runs_depth_zoe_from_the_users_file(server):
    folder = _annotators(server) / "zoedepth"
    path = _annotators(server) / annotator_zoe.FILE
    image = Image.fromarray(_halves(64, 64, vertical=False))
    r = _detect(server, image)  # missing: refused, naming the file and folder
    assert r.status_code == 422
    assert "ZoeD_M12_N.pt" in r.json()["detail"] and str(folder) in r.json()["detail"]
    write_tiny_teed(path)  # another network's file under the name
    try:
        r = _detect(server, image)
        assert r.status_code == 422
        assert "depth_zoe" in r.json()["detail"] and "ZoeD_M12_N.pt" in r.json()["detail"]
        assert "not that network" in r.json()["detail"]
        save_as_zoe(brightness_state(), path)
        r = _detect(server, image)
        assert r.status_code == 200, r.text
        rgb = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        assert rgb.shape == (512, 512, 3)  # no resolution slider: 512 on the short side
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        assert rgb[:, :200, 0].min() >= 250 and rgb[:, 312:, 0].max() == 0  # the dark left half is near
    finally:
        path.unlink()
