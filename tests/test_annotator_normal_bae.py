"""sd-webui-controlnet's ``normal_bae`` run from the user's annotator file ``normal_bae/scannet.pt``
(Bae et al.'s surface normal network: EfficientNet-B5 encoder, four-stage decoder, ``{"model": ...}``).

The network has one size (72.6 million weights), so the random state dict is built once at full size
and saved as the real file is (under ``model``, with DataParallel's ``module.`` prefix); pictures are 64 px
where the picture size is ours to choose. The extension's normal -> colour mapping is checked on known
normals and through the whole network with a last layer that predicts one known normal everywhere;
``/controlnet/detect`` answers with the file in the shared server's annotator folder and refuses,
naming the file and folder, when it is missing or holds another network.
(The layout and outputs were compared by hand with the extension's NNET and gen-efficientnet's
tf_efficientnet_b5_ap on random weights: the same keys and shapes, and a largest difference of 0.0.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import annotator_normal_bae
from modules.core.checkpoint_file import CheckpointError
from tests.api_common import decode
from tests.pictures import picture
from tests.test_annotator_teed import write_tiny_teed
from tests.annotator_common import annotators, detect, random_state as common_random_state, shapes_of

STAGE_BLOCKS = [3, 5, 5, 7, 7, 9, 3]  # EfficientNet-B5 (gen-efficientnet's tf_efficientnet_b5_ap)
SHAPES = {  # some of scannet.pt's keys (without "module.") and their shapes
    "encoder.original_model.conv_stem.weight": (48, 3, 3, 3),
    "encoder.original_model.blocks.0.0.conv_dw.weight": (48, 1, 3, 3),
    "encoder.original_model.blocks.0.0.se.conv_reduce.weight": (12, 48, 1, 1),
    "encoder.original_model.blocks.0.0.conv_pw.weight": (24, 48, 1, 1),
    "encoder.original_model.blocks.1.0.conv_pw.weight": (144, 24, 1, 1),
    "encoder.original_model.blocks.2.0.conv_dw.weight": (240, 1, 5, 5),
    "encoder.original_model.blocks.6.0.se.conv_reduce.weight": (76, 1824, 1, 1),
    "encoder.original_model.blocks.6.0.conv_pwl.weight": (512, 1824, 1, 1),
    "encoder.original_model.blocks.6.2.bn3.running_var": (512,),
    "encoder.original_model.conv_head.weight": (2048, 512, 1, 1),
    "encoder.original_model.bn2.weight": (2048,),
    "decoder.conv2.weight": (2048, 2048, 1, 1),
    "decoder.up1._net.0.weight": (1024, 2224, 3, 3),
    "decoder.up4._net.4.running_mean": (128,),
    "decoder.out_conv_res8.weight": (4, 512, 3, 3),
    "decoder.out_conv_res4.0.weight": (128, 516, 1),
    "decoder.out_conv_res2.0.weight": (128, 260, 1),
    "decoder.out_conv_res1.6.weight": (4, 128, 1),
}
FACING = (127, 127, 255)  # the colour of a normal (0, 0, 1): a surface facing the camera


_annotators = annotators


def _detect(server, image, **extra):
    return detect(server, "normal_bae", image, **extra)


def random_state(seed=0) -> dict[str, torch.Tensor]:
    """A random state dict of the real layout: convolutions scaled by their fan-in, batch norms near
    identity with varied statistics."""
    with torch.device("meta"):
        shapes = shapes_of(annotator_normal_bae.NormalBae())
    return common_random_state(shapes, seed)


def save_as_scannet(state: dict, path) -> None:
    """As the real file: {"model": state dict}, keys saved from a DataParallel ("module.")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)


def facing_everywhere(state: dict) -> dict:
    """The state with a last layer predicting (0, 0, 1) at every pixel, whatever the picture."""
    state = dict(state)
    state["decoder.out_conv_res1.6.weight"] = torch.zeros(4, 128, 1)
    state["decoder.out_conv_res1.6.bias"] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    return state


@pytest.fixture(scope="module")
def state():
    return random_state()


def test_the_network_has_the_real_files_layout():
    with torch.device("meta"):
        net = annotator_normal_bae.NormalBae()
    state = net.state_dict()
    assert len(state) == 936 and sum(v.numel() for v in state.values()) == 72_602_876
    assert {k: tuple(state[k].shape) for k in SHAPES} == SHAPES
    assert [len(stage) for stage in net.encoder.original_model.blocks] == STAGE_BLOCKS


def test_scannet_file_loads_strictly_and_maps_normals(state, tmp_path):
    path = tmp_path / "scannet.pt"
    save_as_scannet(state, path)
    net = annotator_normal_bae.build(path)
    assert torch.equal(net.state_dict()["decoder.up2._net.0.weight"], state["decoder.up2._net.0.weight"])
    image = np.asarray(picture(64, 64))
    colours = annotator_normal_bae.normal_map(net, image)
    assert colours.shape == (64, 64, 3) and colours.dtype == np.uint8
    assert len(np.unique(colours.reshape(-1, 3), axis=0)) > 500  # it depends on the picture
    normals = colours.astype(np.float64) / 255.0 * 2 - 1  # back to normals: unit length, as predicted
    assert np.abs(np.linalg.norm(normals, axis=2) - 1).max() < 0.03

    marks = ("encoder.original_model.conv_stem.weight", "decoder.out_conv_res1.6.weight")  # the rest missing
    torch.save({"model": {k: state[k] for k in marks}}, path)
    with pytest.raises(CheckpointError, match=r"scannet\.pt does not fit the network.*Missing key"):
        annotator_normal_bae.build(path)


def test_the_colours_of_known_normals(state):
    normals = np.array([[0, 0, 1], [1, 0, 0], [-1, 0, 0], [0, -1, 0], [0.5, -0.5, 0]], np.float32)
    assert annotator_normal_bae.to_colours(normals).tolist() == [
        [127, 127, 255], [255, 127, 127], [0, 127, 127], [127, 0, 127], [191, 63, 127]]
    # through the whole network: a last layer predicting (0, 0, -2) everywhere, normalised to (0, 0, -1)
    state = dict(state)
    state["decoder.out_conv_res1.6.weight"] = torch.zeros(4, 128, 1)
    state["decoder.out_conv_res1.6.bias"] = torch.tensor([0.0, 0.0, -2.0, 5.0])
    with torch.device("meta"):
        net = annotator_normal_bae.NormalBae()
    net.load_state_dict(state, assign=True)
    net.eval()
    colours = annotator_normal_bae.normal_map(net, np.asarray(picture(64, 96)))
    assert colours.shape == (96, 64, 3) and (colours == (127, 127, 0)).all()


def test_detect_runs_normal_bae_from_the_users_file(server, state):
    folder = _annotators(server) / "normal_bae"
    path = _annotators(server) / annotator_normal_bae.FILE
    r = _detect(server, picture(64, 64))  # missing: refused, naming the file and folder
    assert r.status_code == 422
    assert "scannet.pt" in r.json()["detail"] and str(folder) in r.json()["detail"]
    write_tiny_teed(path)  # another network's file under the name
    try:
        r = _detect(server, picture(64, 64))
        assert r.status_code == 422
        assert "normal_bae" in r.json()["detail"] and "scannet.pt" in r.json()["detail"]
        assert "not that network" in r.json()["detail"]
        save_as_scannet(facing_everywhere(state), path)
        r = _detect(server, picture(64, 64))
        assert r.status_code == 200, r.text
        rgb = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        # no resolution slider: 512 on the short side
        assert rgb.shape == (512, 512, 3) and (rgb == FACING).all()
    finally:
        path.unlink()
