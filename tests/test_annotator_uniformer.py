"""sd-webui-controlnet's ``segmentation`` (seg_ufade20k) run from the user's annotator file
``uniformer/upernet_global_small.pth`` (UniFormer-S with global attention, UperNet head, ADE20K's 150 classes).

The network is built from sizes read off the state dict, so the files here are tiny (widths 8..64, one
block a stage, a 16-channel head) in the real key layout, saved as mmcv saves a checkpoint
(``{"meta": ..., "state_dict": ...}``); the full-size layout is checked on the meta device. Pictures are
small; the network input is the mmseg test pipeline's (512 on the short side).
(The layout and outputs were compared by hand with the extension's UniFormer, UPerHead, FCNHead and its
inference/show_result path on random full-size weights: the same keys in the same order and shapes, and
a largest difference of 0.0 in the network input, the logits and the coloured map.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modules.core import annotator_uniformer
from modules.core.checkpoint_file import CheckpointError
from tests.api_common import decode
from tests.pictures import picture
from tests.test_annotator_teed import write_tiny_teed
from tests.annotator_common import annotators, detect, random_state as common_random_state, shapes_of

SHAPES = {  # some of upernet_global_small.pth's keys and their shapes (the original's EncoderDecoder)
    "backbone.patch_embed1.norm.weight": (64,),
    "backbone.patch_embed1.proj.weight": (64, 3, 4, 4),
    "backbone.patch_embed4.proj.weight": (512, 320, 2, 2),
    "backbone.blocks1.0.pos_embed.weight": (64, 1, 3, 3),
    "backbone.blocks1.2.norm1.running_var": (64,),
    "backbone.blocks1.0.attn.weight": (64, 1, 5, 5),
    "backbone.blocks2.3.mlp.fc1.weight": (512, 128, 1, 1),
    "backbone.blocks3.7.attn.qkv.weight": (960, 320),
    "backbone.blocks3.7.attn.qkv.bias": (960,),
    "backbone.blocks4.2.mlp.fc2.weight": (512, 2048),
    "backbone.norm3.weight": (320,),
    "decode_head.conv_seg.weight": (150, 512, 1, 1),
    "decode_head.psp_modules.3.1.conv.weight": (512, 512, 1, 1),
    "decode_head.psp_modules.3.1.bn.num_batches_tracked": (),
    "decode_head.bottleneck.conv.weight": (512, 2560, 3, 3),
    "decode_head.lateral_convs.0.conv.weight": (512, 64, 1, 1),
    "decode_head.fpn_convs.2.conv.weight": (512, 512, 3, 3),
    "decode_head.fpn_bottleneck.conv.weight": (512, 2048, 3, 3),
    "auxiliary_head.convs.0.conv.weight": (256, 320, 3, 3),
    "auxiliary_head.conv_seg.weight": (150, 256, 1, 1),
}
TINY = dict(dims=(8, 16, 32, 64), layers=(1, 1, 1, 1), hidden=(16, 32, 64, 128), channels=16, classes=150,
            aux_channels=8)
SKY = 2  # ADE20K's class 2 (sky): (6, 230, 230)


_annotators = annotators


def _detect(server, image, **extra):
    return detect(server, "segmentation", image, **extra)


def tiny_state(seed=0) -> dict[str, torch.Tensor]:
    """A random state dict of the real layout at tiny sizes: weights scaled by their fan-in, batch norms
    near identity with varied statistics, the classifier scaled up to spread the classes."""
    state = common_random_state(shapes_of(annotator_uniformer.UniFormerUperNet(**TINY)), seed)
    state["decode_head.conv_seg.weight"] *= 20
    return state


def one_class(state: dict, label: int = SKY) -> dict:
    """The state with a classifier that picks ``label`` at every pixel, whatever the picture."""
    state = dict(state)
    state["decode_head.conv_seg.weight"] = torch.zeros_like(state["decode_head.conv_seg.weight"])
    state["decode_head.conv_seg.bias"] = torch.zeros(150).index_fill_(0, torch.tensor([label]), 5.0)
    return state


def save_as_mmcv(state: dict, path) -> None:
    """As mmcv's save_checkpoint writes the real file: the state dict under "state_dict", beside "meta"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"CLASSES": [f"class{i}" for i in range(150)], "PALETTE": annotator_uniformer.PALETTE.tolist()}
    torch.save({"meta": meta, "state_dict": state}, path)


@pytest.fixture(scope="module")
def state():
    return tiny_state()


def test_the_network_has_the_real_files_layout():
    with torch.device("meta"):
        net = annotator_uniformer.UniFormerUperNet()
    state = net.state_dict()
    assert len(state) == 414
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == 51_536_748
    assert {k: tuple(state[k].shape) for k in SHAPES} == SHAPES
    assert [len(getattr(net.backbone, f"blocks{i}")) for i in range(1, 5)] == [3, 4, 8, 3]
    assert [net.backbone.blocks3[0].attn.heads, net.backbone.blocks4[0].attn.heads] == [5, 8]
    assert annotator_uniformer.sizes(state) == dict(
        dims=[64, 128, 320, 512], layers=[3, 4, 8, 3], hidden=[256, 512, 1280, 2048], channels=512,
        classes=150, aux_channels=256, bias=True, in_chans=3)


def test_the_ade20k_palette():
    palette = annotator_uniformer.PALETTE
    assert palette.shape == (150, 3) and palette.dtype == np.uint8
    assert palette[[0, 1, 2, 149]].tolist() == [[120, 120, 120], [180, 120, 120], [6, 230, 230], [92, 0, 255]]
    assert annotator_uniformer.paint(np.array([[0, 2], [149, 150]])).tolist() == [
        [[120, 120, 120], [6, 230, 230]], [[92, 0, 255], [0, 0, 0]]]  # past the palette: black


def test_the_mmseg_test_pipeline_input():
    image = np.asarray(picture(48, 32))  # 32 x 48: 512 / 32 = 16 < 2048 / 48
    x = annotator_uniformer.network_input(image)
    assert tuple(x.shape) == (1, 3, 512, 768)
    wide = annotator_uniformer.network_input(np.zeros((10, 50, 3), np.uint8))  # 2048 / 50 < 512 / 10
    assert tuple(wide.shape) == (1, 3, 410, 2048)  # int(10 * 40.96 + 0.5)
    # channels swapped (the RGB picture goes in as BGR), ImageNet mean and std in 0..255
    flat = annotator_uniformer.network_input(np.full((16, 16, 3), (10, 120, 250), np.uint8))[0, :, 0, 0]
    expected = (np.array([250, 120, 10]) - annotator_uniformer.MEAN) / annotator_uniformer.STD
    assert np.allclose(flat.numpy(), expected, atol=1e-6)


def test_tiny_file_loads_and_paints_each_pixel_with_its_class(state, tmp_path):
    path = tmp_path / "upernet_global_small.pth"
    save_as_mmcv(state, path)
    net = annotator_uniformer.build(path)
    assert annotator_uniformer.sizes(state)["dims"] == [8, 16, 32, 64]
    assert torch.equal(net.state_dict()["backbone.blocks3.0.attn.qkv.weight"], state["backbone.blocks3.0.attn.qkv.weight"])
    image = np.asarray(picture(96, 64))
    colours = annotator_uniformer.segment(net, image)
    assert colours.shape == (64, 96, 3) and colours.dtype == np.uint8
    # each pixel: the palette colour of the class of highest probability (the logits resized to the
    # network input and then to the picture, as mmseg's whole inference)
    with torch.no_grad():
        x = annotator_uniformer.network_input(image)
        logits = F.interpolate(net(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
        classes = F.softmax(logits, dim=1).argmax(dim=1)[0].numpy()
    assert len(np.unique(classes)) > 3  # it depends on the picture
    assert np.array_equal(colours, annotator_uniformer.PALETTE[classes])

    marks = ("backbone.patch_embed1.proj.weight", "backbone.patch_embed2.proj.weight",
             "backbone.patch_embed3.proj.weight", "backbone.patch_embed4.proj.weight", "decode_head.conv_seg.weight")
    save_as_mmcv({k: state[k] for k in marks}, path)  # the rest missing
    with pytest.raises(CheckpointError, match=r"upernet_global_small\.pth does not fit the network.*Missing key"):
        annotator_uniformer.build(path)


def test_detect_runs_segmentation_from_the_users_file(server, state):
    folder = _annotators(server) / "uniformer"
    path = _annotators(server) / annotator_uniformer.FILE
    r = _detect(server, picture(64, 64))  # missing: refused, naming the file and folder
    assert r.status_code == 422
    assert "upernet_global_small.pth" in r.json()["detail"] and str(folder) in r.json()["detail"]
    write_tiny_teed(path)  # another network's file under the name
    try:
        r = _detect(server, picture(64, 64))
        assert r.status_code == 422
        assert "seg_ufade20k" in r.json()["detail"] and "upernet_global_small.pth" in r.json()["detail"]
        assert "not that network" in r.json()["detail"]
        save_as_mmcv(one_class(state), path)
        r = _detect(server, picture(96, 64), controlnet_processor_res=64)
        assert r.status_code == 200, r.text
        rgb = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        assert rgb.shape == (64, 96, 3) and (rgb == (6, 230, 230)).all()  # sky everywhere
    finally:
        path.unlink()
