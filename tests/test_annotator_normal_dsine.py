"""sd-webui-controlnet's ``normal_dsine`` run from the user's annotator file ``normal_dsine/dsine.pt``
(Bae and Davison's DSINE: EfficientNet-B5 encoder, decoder with ray encodings, ConvGRU refinement by
rotating neighbours' normals, convex upsampling; ``{"model": ...}``).

The network has one size (72.7 million weights), so the random state dict is built once at full size and
saved as the real file is (under ``model``, with DataParallel's ``module.`` prefix); pictures are 64 px at
resolution 64. The normal -> colour mapping is checked on known normals and through the whole network
with heads predicting one known normal and no rotation; the sliders (Fov, Iterations) and the extension's
sizing (DSINE's centring pads of the unresized picture) are checked on outcomes; ``/controlnet/detect``
answers with the file in the shared server's annotator folder and refuses, naming the file and folder,
when it is missing or holds another network.
(The layout and outputs were compared by hand with the dsine package's DSINE (sdbds/DSINE 2024.03.23, as
the extension installs it) over gen-efficientnet's tf_efficientnet_b5_ap on random weights: the same 918
keys and shapes; the encoder's outputs equal, the maps within 4e-5 (float rounding of the rotations),
uint8 maps within 1.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import annotator_normal_dsine
from modules.core.checkpoint_file import CheckpointError
from tests.api_common import decode
from tests.pictures import picture
from tests.test_annotator_teed import write_tiny_teed
from tests.annotator_common import annotators, detect, random_state as common_random_state, shapes_of

SHAPES = {  # some of dsine.pt's keys (without "module.") and their shapes
    "encoder.original_model.conv_stem.weight": (48, 3, 3, 3),
    "encoder.original_model.blocks.6.2.bn3.running_var": (512,),
    "encoder.original_model.conv_head.weight": (2048, 512, 1, 1),
    "encoder.original_model.bn2.weight": (2048,),
    "decoder.conv2.weight": (2048, 2050, 1, 1),
    "decoder.up1._net.0.weight": (1024, 2226, 3, 3),
    "decoder.up1._net.1.weight": (1024,),
    "decoder.up2._net.3.weight": (512, 512, 3, 3),
    "decoder.normal_head.4.weight": (3, 128, 1, 1),
    "decoder.feature_head.0.weight": (128, 514, 3, 3),
    "decoder.hidden_head.4.bias": (64,),
    "gru.convz.weight": (64, 130, 5, 5),
    "gru.convq.bias": (64,),
    "prob_head.4.weight": (25, 64, 1, 1),
    "xy_head.4.weight": (50, 64, 1, 1),
    "angle_head.0.weight": (64, 66, 3, 3),
    "up_prob_head.4.weight": (576, 64, 1, 1),
}
FACING = (127, 127, 255)  # the colour of a normal (0, 0, 1): a surface facing the camera
TILTED = (204, 127, 229)  # the colour of (0.6, 0, 0.8)


_annotators = annotators


def _detect(server, image, **extra):
    return detect(server, "normal_dsine", image, **extra)


def random_state(seed=0) -> dict[str, torch.Tensor]:
    """A random state dict of the real layout: convolutions scaled by their fan-in, norms near identity."""
    with torch.device("meta"):
        shapes = shapes_of(annotator_normal_dsine.DSINE())
    return common_random_state(shapes, seed)


def save_as_dsine(state: dict, path) -> None:
    """As the real file: {"model": state dict}, keys saved from a DataParallel ("module.")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)


def predicting(state: dict, normal) -> dict:
    """The state with a normal head predicting ``normal`` (before normalising) everywhere and an angle
    head predicting no rotation (sigmoid(-40) * pi), whatever the picture and sliders."""
    state = dict(state)
    state["decoder.normal_head.4.weight"] = torch.zeros(3, 128, 1, 1)
    state["decoder.normal_head.4.bias"] = torch.tensor(normal, dtype=torch.float32)
    state["angle_head.4.weight"] = torch.zeros(25, 64, 1, 1)
    state["angle_head.4.bias"] = torch.full((25,), -40.0)
    return state


def _net(state) -> annotator_normal_dsine.DSINE:
    with torch.device("meta"):
        net = annotator_normal_dsine.DSINE()
    net.load_state_dict(state, assign=True)
    return net.eval()


@pytest.fixture(scope="module")
def state():
    return random_state()


def test_the_network_has_the_real_files_layout():
    with torch.device("meta"):
        state = annotator_normal_dsine.DSINE().state_dict()
    assert len(state) == 918 and sum(v.numel() for v in state.values()) == 72_737_611
    assert {k: tuple(state[k].shape) for k in SHAPES} == SHAPES
    assert len([k for k in state if k.startswith("encoder.original_model.")]) == 852  # normal_bae's B5


def test_dsine_file_loads_strictly_maps_normals_and_follows_the_sliders(state, tmp_path):
    path = tmp_path / "dsine.pt"
    save_as_dsine(state, path)
    net = annotator_normal_dsine.build(path)
    assert torch.equal(net.state_dict()["gru.convz.weight"], state["gru.convz.weight"])
    image = np.asarray(picture(64, 64))
    colours = annotator_normal_dsine.normal_map(net, image, 64, 60.0, 2)
    assert colours.shape == (64, 64, 3) and colours.dtype == np.uint8
    assert len(np.unique(colours.reshape(-1, 3), axis=0)) > 500  # it depends on the picture
    normals = colours.astype(np.float64) / 255.0 * 2 - 1  # back to normals: unit length, as predicted
    assert np.abs(np.linalg.norm(normals, axis=2) - 1).max() < 0.03
    wide = annotator_normal_dsine.normal_map(net, image, 64, 120.0, 2)  # Fov
    once = annotator_normal_dsine.normal_map(net, image, 64, 60.0, 1)  # Iterations
    assert wide.shape == once.shape == (64, 64, 3)
    assert np.abs(colours.astype(int) - wide).mean() > 1 and np.abs(colours.astype(int) - once).mean() > 1

    marks = ("encoder.original_model.conv_stem.weight", "gru.convq.weight")  # the rest missing
    torch.save({"model": {k: state[k] for k in marks}}, path)
    with pytest.raises(CheckpointError, match=r"dsine\.pt does not fit the network.*Missing key"):
        annotator_normal_dsine.build(path)


def test_the_colours_of_known_normals(state):
    normals = np.array([[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, -1, 0], [0.5, -0.5, 0]], np.float32)
    assert annotator_normal_dsine.to_colours(normals).tolist() == [
        [127, 127, 255], [255, 127, 127], [0, 127, 127], [127, 0, 127], [191, 63, 127]]
    # through the whole network (initial normal, ray ReLU, refinement, convex upsampling): (3, 0, 4) -> (0.6, 0, 0.8)
    # a picture whose sides are not multiples of 32 is cut at DSINE's centring pads of its own size:
    # 70 x 100 resized to 64 x 91 (padded 64 x 128), cut from row 13, column 14, to at most 64 x 91
    net = _net(predicting(state, (3.0, 0.0, 4.0)))
    colours = annotator_normal_dsine.normal_map(net, np.asarray(picture(100, 70)), 64, 90.0, 2)
    assert colours.shape == (51, 91, 3) and (np.abs(colours.astype(int) - TILTED) <= 1).all()


def test_intrinsics_and_pads_as_dsine_computes_them():
    k = annotator_normal_dsine.intrinsics(60.0, 100, 200)  # focal: half the longer side / tan(fov / 2)
    assert torch.allclose(k, torch.tensor([[173.2051, 0, 99.5], [0, 173.2051, 49.5], [0, 0, 1]]))
    assert annotator_normal_dsine.centring_pads(70, 100) == (14, 13)  # to 128 x 96, centred
    assert annotator_normal_dsine.centring_pads(64, 96) == (0, 0)


def test_detect_runs_normal_dsine_from_the_users_file(server, state):
    folder = _annotators(server) / "normal_dsine"
    path = _annotators(server) / annotator_normal_dsine.FILE
    r = _detect(server, picture(64, 64), controlnet_processor_res=64)  # missing: refused, naming file and folder
    assert r.status_code == 422
    assert "dsine.pt" in r.json()["detail"] and str(folder) in r.json()["detail"]
    write_tiny_teed(path)  # another network's file under the name
    try:
        r = _detect(server, picture(64, 64), controlnet_processor_res=64)
        assert r.status_code == 422
        assert "normal_dsine" in r.json()["detail"] and "dsine.pt" in r.json()["detail"]
        assert "not that network" in r.json()["detail"]
        save_as_dsine(predicting(state, (0.0, 0.0, 1.0)), path)
        r = _detect(server, picture(64, 64), controlnet_processor_res=64, controlnet_threshold_a=45,
                    controlnet_threshold_b=2)
        assert r.status_code == 200, r.text
        rgb = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        assert rgb.shape == (64, 64, 3) and (rgb == FACING).all()
    finally:
        path.unlink()
