"""sd-webui-controlnet's ``anime_face_segment`` (``seg_anime_face``) run from the user's
``anime_face_segment/UNet.pth``: a UNet over torchvision's MobileNetV2 features 0..16 whose argmax over
seven classes is painted in the extension's colours.

A random state dict in the real layout (the keys and shapes written out here from MobileNetV2's table)
goes into the shared server's annotator folder; ``/controlnet/detect`` is compared with the network
written out here in plain functional ops and the extension's steps (its padded picture resized to 512 on
the short side with PIL's bicubic filter, 0..1 RGB, argmax, palette); a forced prediction checks the
class -> colour table; missing or foreign files are 422s naming the file. Pictures are 64 px."""

from __future__ import annotations

import cv2
import numpy as np
import requests
import torch
import torch.nn.functional as F
from PIL import Image

from modules.core import annotator_anime_face
from modules.services import controlnets
from tests.api_common import decode
from tests.pictures import b64, picture
from tests.test_annotator_teed import write_tiny_teed

# the extension's COLOR_* table, by class index
COLOURS = {"background": (255, 255, 0), "hair": (0, 0, 255), "eye": (255, 0, 0), "mouth": (255, 255, 255),
           "face": (0, 255, 0), "skin": (0, 255, 255), "clothes": (255, 0, 255)}
# torchvision's MobileNetV2 (expansion, channels, blocks, first stride), features 1..16, and their en_block
MOBILENET = ((1, 16, 1, 1, 0), (6, 24, 2, 2, 1), (6, 32, 3, 2, 2), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3),
             (6, 160, 3, 2, 4))
DECODER = {4: (96, 160), 3: (32, 192), 2: (24, 64), 1: (16, 48), 0: (7, 32)}  # de_block: (out, in)


def blocks():
    """(key prefix, in, hidden, out, stride) of each bottleneck, in order."""
    into, at = 32, {0: 1}  # en_block0.0 is the stem
    for expansion, out, count, stride, stage in MOBILENET:
        for i in range(count):
            index = at.get(stage, 0)
            at[stage] = index + 1
            yield f"en_block{stage}.{index}", into, into * expansion, out, stride if i == 0 else 1
            into = out


def layout() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of UNet.pth (batch norms' num_batches_tracked left out)."""
    shapes = {}

    def conv_bn(key, out, into, k):
        shapes[f"{key}.0.weight"] = (out, into, k, k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.1.{name}"] = (out,)

    conv_bn("en_block0.0", 32, 3, 3)
    for key, into, hidden, out, _ in blocks():
        convs = [] if hidden == into else [(hidden, into, 1)]
        convs += [(hidden, 1, 3)]
        for i, shape in enumerate(convs):
            conv_bn(f"{key}.conv.{i}", *shape)
        shapes[f"{key}.conv.{len(convs)}.weight"] = (out, hidden, 1, 1)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.conv.{len(convs) + 1}.{name}"] = (out,)
    for number, (out, into) in DECODER.items():
        shapes[f"de_block{number}.1.weight"], shapes[f"de_block{number}.1.bias"] = (out, into, 3, 3), (out,)
    return shapes


def write_tiny_unet(path, seed=0) -> dict:
    """Random weights in the real layout (batch norms near identity, He-scaled convolutions)."""
    g, state = torch.Generator().manual_seed(seed), {}
    for key, shape in layout().items():
        if key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1 + (1.0 if key.endswith(".1.weight") else 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_classes(state: dict, image: np.ndarray) -> np.ndarray:
    """The extension's AnimeFaceSegment on an (H, W, 3) picture: (H', W') class indices at 512 scale."""
    h, w = image.shape[:2]
    long = int(512 * max(h, w) / min(h, w))
    size = (long, 512) if h <= w else (512, long)
    x = torch.from_numpy(np.array(Image.fromarray(image).resize(size, Image.BICUBIC))).permute(2, 0, 1)[None] / 255.0

    def bn(x, key):
        return F.batch_norm(x, state[f"{key}.running_mean"], state[f"{key}.running_var"], state[f"{key}.weight"],
                            state[f"{key}.bias"], False, 0.0, 1e-5)

    def conv_bn(x, key, stride=1, groups=1):
        weight = state[f"{key}.0.weight"]
        return F.relu6(bn(F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups), f"{key}.1"))

    skips = [conv_bn(x, "en_block0.0", stride=2)]
    stage = 0
    for key, into, hidden, out, stride in blocks():
        now = int(key[8])
        if now != stage:
            skips.append(skips[-1])
            stage = now
        y = skips[-1]
        i = 0
        if hidden != into:
            y, i = conv_bn(y, f"{key}.conv.0"), 1
        y = conv_bn(y, f"{key}.conv.{i}", stride=stride, groups=hidden)
        y = bn(F.conv2d(y, state[f"{key}.conv.{i + 1}.weight"]), f"{key}.conv.{i + 2}")
        skips[-1] = skips[-1] + y if stride == 1 and into == out else y
    x = skips.pop()
    for number in (4, 3, 2, 1, 0):
        x = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), state[f"de_block{number}.1.weight"],
                     state[f"de_block{number}.1.bias"], padding=1)
        if number == 0:
            return torch.softmax(x, dim=1)[0].argmax(0).numpy()
        x = F.leaky_relu(F.instance_norm(x), 0.1)
        skip = skips.pop()
        x = torch.cat([F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True), skip], 1)


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


def _detect(server, image, **extra):
    return requests.post(server.url + "/controlnet/detect", timeout=120, json={
        "controlnet_module": "anime_face_segment", "controlnet_input_images": [b64(Image.fromarray(np.asarray(image)))],
        **extra})


def _map(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.json()["images"][0]).convert("RGB"))


def test_the_network_has_the_real_files_layout():
    """torchvision's MobileNetV2 features 0..16 under en_block0..4 and the decoder de_block4..0."""
    with torch.device("meta"):
        state = annotator_anime_face.AnimeFaceUNet().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert shapes == layout()
    assert shapes["en_block4.2.conv.0.0.weight"] == (960, 160, 1, 1) and len(shapes) == 250
    assert [tuple(c) for c in annotator_anime_face.PALETTE] == list(COLOURS.values())


def test_seg_anime_face_paints_the_unets_classes(server, tmp_path):
    folder = _annotators(server) / "anime_face_segment"
    path = folder / "UNet.pth"
    r = _detect(server, picture(64, 64), controlnet_processor_res=64)  # missing: refused, naming file and folder
    assert r.status_code == 422
    assert "UNet.pth" in r.json()["detail"] and str(folder) in r.json()["detail"]
    state = write_tiny_unet(path)
    try:
        image = np.asarray(picture(96, 64))  # 64 on the short side: padded to 128 x 64, seen at 1024 x 512
        seg = _map(_detect(server, image, controlnet_processor_res=64))
        assert seg.shape == (64, 96, 3)
        padded = np.pad(image, [[0, 0], [0, 32], [0, 0]], mode="edge")
        classes = cv2.resize(reference_classes(state, padded).astype(np.uint8), (128, 64),
                             interpolation=cv2.INTER_NEAREST)[:, :96]
        assert np.array_equal(seg, np.array(list(COLOURS.values()), np.uint8)[classes])
        colours = {tuple(c) for c in seg.reshape(-1, 3)}
        assert colours <= set(COLOURS.values()) and len(colours) >= 3
        listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()["module_detail"]
        assert listed["anime_face_segment"]["sliders"][0]["name"] == "Resolution"

        # a forced prediction: the last convolution outputs one class everywhere
        forced = dict(state, **{"de_block0.1.weight": torch.zeros(7, 32, 3, 3), "de_block0.1.bias": torch.zeros(7)})
        torch.save(forced, tmp_path / "UNet.pth")
        net = annotator_anime_face.build(tmp_path / "UNet.pth")
        for index, (name, colour) in enumerate(COLOURS.items()):
            with torch.no_grad():
                net.de_block0[1].bias.copy_(torch.eye(7)[index] * 10)
            painted = annotator_anime_face.segment(net, image[:, :64])
            assert painted.shape == (64, 64, 3) and (painted == colour).all(), name
        torch.save(dict(forced, **{"de_block0.1.bias": torch.eye(7)[5] * 10}), path)  # skin, through the server
        seg = _map(_detect(server, image, controlnet_module="seg_anime_face", controlnet_processor_res=64))
        assert seg.shape == (64, 96, 3) and (seg == COLOURS["skin"]).all()

        write_tiny_teed(path)  # another network's file under UNet.pth's name
        r = _detect(server, image, controlnet_processor_res=64)
        assert r.status_code == 422
        assert "UNet.pth" in r.json()["detail"] and "seg_anime_face" in r.json()["detail"]
        assert "not that network's state dict" in r.json()["detail"]
        torch.save({k: v for k, v in state.items() if not k.startswith("de_block0.")}, path)  # a part missing
        assert "UNet.pth" in _detect(server, image, controlnet_processor_res=64).json()["detail"]
        torch.save(dict(state, **{"de_block1.1.weight": torch.zeros(16, 40, 3, 3)}), path)  # a wrong shape
        r = _detect(server, image, controlnet_processor_res=64)
        assert r.status_code == 422 and "does not fit the network" in r.json()["detail"]
    finally:
        path.unlink()
