"""sd-webui-controlnet's ``depth_leres`` and ``depth_leres++`` run from the user's annotator files
``leres/res101.pth`` (LeReS: ResNeXt-101 32x8d encoder, FTB/FFM decoder, saved as ``{"depth_model": ...}``
from a DataParallel) and ``leres/latest_net_G.pth`` (the boosting pipeline's pix2pix U-Net merge network).

The full-size layouts (712 and 21 tensors) are checked on the meta device against key names and shapes
taken from the extension's RelDepthModel('resnext101') and UnetGenerator(2, 1, 10, 64, norm 'none'); the
files the tests write have the real layout with small widths (the networks are built from the shapes).
(Compared by hand with the extension's modules on random weights: the full-size LeReS and merge networks
differ by 0.0; apply_leres with and without boost — local refinement with 6 and 7 patches included —
gives the same uint8 maps, and the Gaussian blend mask differs from generatemask by 1.3e-6.)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from modules.core import annotator_leres as leres
from modules.core.checkpoint_file import CheckpointError
from modules.services import controlnets
from tests.api_common import decode
from tests.pictures import picture
from tests.annotator_common import detect, random_state as common_random_state, shapes_of

TINY = leres.LeresSizes(stem=8, stages=((1, 8, 16, 2), (2, 8, 16, 2), (1, 16, 32, 2), (1, 16, 32, 4)),
                        top=16, mid=8, head=4)
MERGE_WIDTHS = (4, 8, 8, 8, 8)  # five levels, pix2pix's fewest
SHAPES = {  # some of res101.pth's keys (without "module.") and their shapes, from the extension's RelDepthModel
    "depth_model.encoder_modules.encoder.conv1.weight": (64, 3, 7, 7),
    "depth_model.encoder_modules.encoder.layer1.0.conv2.weight": (256, 8, 3, 3),
    "depth_model.encoder_modules.encoder.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "depth_model.encoder_modules.encoder.layer2.0.conv1.weight": (512, 256, 1, 1),
    "depth_model.encoder_modules.encoder.layer3.22.conv2.weight": (1024, 32, 3, 3),
    "depth_model.encoder_modules.encoder.layer3.22.bn3.running_var": (1024,),
    "depth_model.encoder_modules.encoder.layer4.2.conv3.weight": (2048, 2048, 1, 1),
    "depth_model.decoder_modules.conv.conv1.weight": (512, 2048, 3, 3),
    "depth_model.decoder_modules.conv.conv_branch.4.weight": (512, 512, 3, 3),
    "depth_model.decoder_modules.conv1.weight": (256, 512, 3, 3),
    "depth_model.decoder_modules.ffm2.ftb1.conv1.weight": (256, 1024, 3, 3),
    "depth_model.decoder_modules.ffm0.ftb2.conv_branch.2.running_mean": (256,),
    "depth_model.decoder_modules.outconv.adapt_conv.0.weight": (128, 256, 3, 3),
    "depth_model.decoder_modules.outconv.adapt_conv.3.bias": (1,),
}
INNER = "model.model.1." + "model.3." * 7  # latest_net_G.pth's ninth level; the tenth is innermost
MERGE_SHAPES = {
    "model.model.0.weight": (64, 2, 4, 4),
    "model.model.1.model.1.weight": (128, 64, 4, 4),
    "model.model.1.model.5.weight": (256, 64, 4, 4),
    "model.model.1.model.3.model.3.model.5.weight": (1024, 256, 4, 4),
    INNER + "model.3.model.1.weight": (512, 512, 4, 4),
    INNER + "model.3.model.3.weight": (512, 512, 4, 4),
    INNER + "model.5.weight": (1024, 512, 4, 4),
    "model.model.3.weight": (128, 1, 4, 4),
    "model.model.3.bias": (1,),
}


def random_state(net: torch.nn.Module, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights of ``net``'s layout: convolutions scaled by their fan-in, batch norms near identity."""
    return common_random_state(shapes_of(net), seed, scale)


def write_res101(path, state) -> None:
    """As the real file: {"depth_model": state dict}, keys saved from a DataParallel ("module.")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"depth_model": {f"module.{k}": v for k, v in state.items()}}, path)


def write_merge(path, state) -> None:
    """As the real file: the generator's plain state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions at 1024 px: one thread is fastest and does not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators") / "leres"
    write_res101(folder / "res101.pth", random_state(leres.LeresNet(TINY), 0))
    write_merge(folder / "latest_net_G.pth", random_state(leres.MergeNet(MERGE_WIDTHS), 1, scale=0.3))
    return [folder / "res101.pth", folder / "latest_net_G.pth"]


def checkers(size: int = 448, strip: int = 128) -> np.ndarray:
    """Flat grey with a checkered strip on the left: the boosting pipeline refines patches there."""
    y, x = np.mgrid[0:size, 0:size]
    image = np.full((size, size, 3), 120, np.uint8)
    image[:, :strip][((x[:, :strip] // 8 + y[:, :strip] // 8) % 2) == 1] = 230
    image[size // 2:, :, 0] = 90
    return image


def test_the_networks_have_the_real_files_layout():
    with torch.device("meta"):
        net, merger = leres.LeresNet(), leres.MergeNet()
    state = net.state_dict()
    assert len(state) == 712 and sum(v.numel() for v in state.values()) == 115_568_177
    assert {k: tuple(state[k].shape) for k in SHAPES} == SHAPES
    encoder = net.depth_model.encoder_modules.encoder
    assert [len(getattr(encoder, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    state = merger.state_dict()
    assert len(state) == 21 and sum(v.numel() for v in state.values()) == 79_564_801
    assert {k: tuple(state[k].shape) for k in MERGE_SHAPES} == MERGE_SHAPES


def test_files_load_strictly_and_map_depth(files, tmp_path):
    net = leres.build_leres(files[0])
    assert leres.LeresSizes.of(net.state_dict()) == TINY
    assert leres.MergeNet.widths_of(leres.build_merge(files[1]).state_dict()) == (MERGE_WIDTHS, 2, 1)
    image = np.asarray(picture(128, 64))  # sides multiples of 64: no pad
    out = leres.depth_leres(image, 64, 0, 0, files[:1])
    assert out.shape == (64, 128, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 100  # min-max over the picture
    # the map is the network's depth at the picture's size, inverted: the farthest pixel black
    depth = leres.estimate(net, image, 128, 64)
    assert depth.shape == (64, 128)
    assert out[..., 0][np.unravel_index(depth.argmax(), depth.shape)] == 0
    assert out[..., 0][np.unravel_index(depth.argmin(), depth.shape)] == 255

    state = torch.load(files[0], weights_only=True)["depth_model"]
    del state["module.depth_model.decoder_modules.ffm1.ftb2.conv1.bias"]
    bad = tmp_path / "res101.pth"
    torch.save({"depth_model": state}, bad)
    with pytest.raises(CheckpointError, match=r"res101\.pth does not fit the network.*Missing key"):
        leres.build_leres(bad)
    bad.write_bytes(files[1].read_bytes())  # the merge network's file under the name
    with pytest.raises(CheckpointError, match=r"res101\.pth is not that network's state dict"):
        leres.build_leres(bad)


def test_the_sliders_remove_near_and_background_as_the_extension():
    depth = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (3, 1))  # left near, right far
    v = np.floor(np.floor(65535 * depth.astype(np.float64)) * 255 / 65535 + 0.5).astype(int)  # 16 -> 8 bits
    plain = leres.depth_to_map(depth, 0, 0)
    assert plain.dtype == np.uint8 and (plain == 255 - v).all()  # inverted: near bright
    assert plain[0, 0] == 255 and plain[0, -1] == 0
    near = leres.depth_to_map(depth, 50, 0)  # 8-bit depth up to 127 (50 % of 255, floored) -> 0 -> 255
    assert (near == np.where(v <= 127, 255, 255 - v)).all() and (near[0, :128] == 255).all()
    both = leres.depth_to_map(depth, 50, 30)  # then inverted values up to 76 (30 % of 255) -> 0
    expected = np.where(v <= 127, 255, 255 - v)
    assert (both == np.where(expected <= 76, 0, expected)).all() and (both[0, -60:] == 0).all()
    assert (leres.depth_to_map(np.ones((4, 4), np.float32), 0, 0) == 255).all()  # flat: all near


def test_boost_refines_patches_and_blends_them_into_the_base(files):
    image = checkers()
    best, share = leres.processing_resolution(image, 448, 0.2, 3, 1600)
    assert best == 448 and 0.3 < share < 0.5  # the flat right side lacks edges: R_20 is the receptive field
    factor = max(min(1, 4 * share * best / 1600), 0.2)
    big = cv2.resize(image, (round(2 * best / factor),) * 2, interpolation=cv2.INTER_CUBIC)
    patches = leres.select_patches(big, 896, factor)
    assert 4 <= len(patches) <= 10 and all(x + w < big.shape[1] * 0.8 for x, _, w, _ in patches)
    assert [w for _, _, w, _ in patches] == sorted((w for _, _, w, _ in patches), reverse=True)

    net, merger = leres.leres_network(files[0]), leres.merge_network(files[1])
    boosted = leres.estimate_boost(net, merger, image, 448)
    base = cv2.resize(leres.double_estimate(net, merger, image, 448, 448), (448, 448), interpolation=cv2.INTER_CUBIC)
    assert boosted.shape == (448, 448)
    assert np.array_equal(boosted[:, 400:], base[:, 400:])  # outside every patch: the base estimate
    assert np.abs(boosted[:, :200] - base[:, :200]).max() > 0.01  # the patches merged in
    out = leres.depth_leres_boost(image, 448, 0, 0, files)
    assert out.shape == (448, 448, 3) and out.min() == 0 and out.max() == 255
    assert np.array_equal(out[..., 0], leres.depth_to_map(boosted, 0, 0))


_detect = detect


def test_detect_runs_leres_from_the_users_files(server, files):
    folder = server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER / "leres"
    res101, merge_file = folder / "res101.pth", folder / "latest_net_G.pth"
    r = _detect(server, "depth_leres", picture(96, 64))  # missing: refused, naming the file and folder
    assert r.status_code == 422
    assert "res101.pth" in r.json()["detail"] and str(folder.parent) in r.json()["detail"]
    res101.parent.mkdir(parents=True, exist_ok=True)
    res101.write_bytes(files[0].read_bytes())
    try:
        r = _detect(server, "depth_leres++", picture(96, 64))
        assert r.status_code == 422 and "latest_net_G.pth" in r.json()["detail"]
        r = _detect(server, "depth_leres", picture(128, 64), controlnet_processor_res=64,
                    controlnet_threshold_a=20, controlnet_threshold_b=30)
        assert r.status_code == 200, r.text
        got = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        want = leres.depth_leres(np.asarray(picture(128, 64)), 64, 20, 30, files[:1])
        assert got.shape == (64, 128, 3) and np.array_equal(got, want)
        plain = leres.depth_leres(np.asarray(picture(128, 64)), 64, 0, 0, files[:1])
        near, far = plain >= 255 - 51, plain <= 76  # 8-bit depth up to 51 (20 %); inverted up to 76 (30 %)
        assert near.any() and far.any() and (got[near] == 255).all() and (got[far] == 0).all()
        assert np.array_equal(got[~near & ~far], plain[~near & ~far])
        merge_file.write_bytes(files[1].read_bytes())
        r = _detect(server, "depth_leres++", picture(96, 64), controlnet_processor_res=64)
        assert r.status_code == 200, r.text
        got = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        assert got.shape == (64, 96, 3) and np.array_equal(got, leres.depth_leres_boost(
            np.asarray(picture(96, 64)), 64, 0, 0, files))
    finally:
        res101.unlink(missing_ok=True)
        merge_file.unlink(missing_ok=True)
