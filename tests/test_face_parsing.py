"""Face parsing (issue 15): facexlib's ParseNet read weights-only from its file layout, its forward
checked against a functional computation written here, the paste mask built as facexlib builds it
(face classes only, two Gaussian blurs, a zeroed border, 0..1), restored faces pasted through it, the
service finding models/GFPGAN/parsing_parsenet.pth (missing or unusable: the feathered square), and
the list_hidden_files option governing the face restorers' folders.

The networks are narrow (4-8 channels, two steps down and up) with random weights; the release's
own layout is checked key by key against facexlib's ParseNet(in_size=512, out_size=512, parsing_ch=19).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.core import face_parsing, face_restoration
from modules.core.types import RequestError
from modules.services.face_restorers import FaceRestorers, folders_for
from tests.api_common import decode
from tests.face_models import draw_face, tiny_gfpgan, write_gfpgan
from tests.pictures import b64
from tests.test_face_restoration import face_area

SKIN, NECK, HAIR = 1, 14, 17


def tiny_parsenet(seed: int = 0, constant_class: int | None = None, contrast: bool = False) -> face_parsing.ParseNet:
    """Narrow random ParseNet with trained-looking batch norm statistics. ``constant_class``: that
    class wins everywhere; ``contrast``: only background and skin compete (see ``balance``)."""
    torch.manual_seed(seed)
    net = face_parsing.ParseNet(4, [(4, 8), (8, 8)], [(8, 8), (8, 8)], [(8, 8), (8, 4)]).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        head = net.out_mask_conv.conv2d
        if constant_class is not None:
            head.weight.zero_()
            head.bias.fill_(-10.0)
            head.bias[constant_class] = 10.0
        if contrast:  # every class but background and skin far behind
            head.weight[2:].zero_()
            head.bias.fill_(-1e3)
            head.bias[0], head.bias[SKIN] = 0.0, 0.0
    return net


def balance(net: face_parsing.ParseNet, face: np.ndarray) -> face_parsing.ParseNet:
    """Skin's bias set so that about half of ``face``'s pixels are skin, half background."""
    big = cv2.resize(face, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(big / 127.5 - 1).permute(2, 0, 1)[None])[0][0]
        net.out_mask_conv.conv2d.bias[SKIN] -= float((logits[SKIN] - logits[0]).median())
    return net


def write_parsenet(net: face_parsing.ParseNet, folder: Path, keep_counts: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / face_parsing.FILE_NAME
    state = {k: v for k, v in net.state_dict().items() if keep_counts or not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return path


# -- the network --------------------------------------------------------------------------------

# facexlib's ParseNet(in_size=512, out_size=512, parsing_ch=19): base 64, widths clipped to 32..256,
# 4 steps down (512 -> 32 px), 10 residual blocks, 4 up; LeakyReLU(0.2) and batch norm
RELEASE_SHAPES = {
    "encoder.0.conv2d.weight": (64, 3, 3, 3), "encoder.0.conv2d.bias": (64,),
    "encoder.1.shortcut_func.conv2d.weight": (128, 64, 3, 3), "encoder.1.shortcut_func.conv2d.bias": (128,),
    "encoder.1.conv1.conv2d.weight": (128, 64, 3, 3), "encoder.1.conv1.norm.norm.running_var": (128,),
    "encoder.2.conv2.conv2d.weight": (256, 256, 3, 3),
    "encoder.4.conv1.conv2d.weight": (256, 256, 3, 3), "encoder.4.shortcut_func.conv2d.weight": (256, 256, 3, 3),
    "body.0.conv1.norm.norm.weight": (256,), "body.9.conv2.norm.norm.running_mean": (256,),
    "decoder.0.shortcut_func.conv2d.weight": (256, 256, 3, 3), "decoder.2.conv1.conv2d.weight": (128, 256, 3, 3),
    "decoder.3.conv2.conv2d.weight": (64, 64, 3, 3), "decoder.3.shortcut_func.conv2d.bias": (64,),
    "out_img_conv.conv2d.weight": (3, 64, 3, 3), "out_mask_conv.conv2d.weight": (19, 64, 3, 3),
    "out_mask_conv.conv2d.bias": (19,),
}


def test_the_release_layout_has_facexlibs_keys_and_shapes():
    state = face_parsing.ParseNet().state_dict()
    assert all(tuple(state[k].shape) == shape for k, shape in RELEASE_SHAPES.items())
    assert not any(k.startswith("body.") and "shortcut_func" in k for k in state)  # identity shortcuts
    assert not any(k.endswith("conv2d.bias") and ".conv1." in k for k in state)  # normed: no bias
    # 2 + 4 x 14 (encoder), 10 x 12 (body), 4 x 14 (decoder), 2 + 2 (heads): 238 with the BN counters
    assert len(state) == 238 and len([k for k in state if not k.endswith("num_batches_tracked")]) == 202


def _conv(state, prefix, x, scale="none", act=False):
    """facexlib's ConvLayer, functionally: upsample, reflection pad 1, 3x3 conv, batch norm, LeakyReLU."""
    if scale == "up":
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
    x = F.conv2d(F.pad(x, [1] * 4, mode="reflect"), state[f"{prefix}.conv2d.weight"],
                 state.get(f"{prefix}.conv2d.bias"), stride=2 if scale == "down" else 1)
    if f"{prefix}.norm.norm.weight" in state:
        n = f"{prefix}.norm.norm"
        x = F.batch_norm(x, state[f"{n}.running_mean"], state[f"{n}.running_var"], state[f"{n}.weight"],
                         state[f"{n}.bias"], training=False, eps=1e-5)
    return F.leaky_relu(x, 0.2) if act else x


def _block(state, prefix, x, scale):
    shortcut = _conv(state, f"{prefix}.shortcut_func", x, scale) if f"{prefix}.shortcut_func.conv2d.weight" in state else x
    y = _conv(state, f"{prefix}.conv1", x, "up" if scale == "up" else "none", act=True)
    return shortcut + _conv(state, f"{prefix}.conv2", y, "down" if scale == "down" else "none")


def reference_forward(state, x):
    count = lambda part: len({k.split(".")[1] for k in state if k.startswith(part + ".")})  # noqa: E731
    feat = _conv(state, "encoder.0", x)
    for i in range(1, count("encoder")):
        feat = _block(state, f"encoder.{i}", feat, "down")
    body = feat
    for i in range(count("body")):
        body = _block(state, f"body.{i}", body, "none")
    x = feat + body
    for i in range(count("decoder")):
        x = _block(state, f"decoder.{i}", x, "up")
    return _conv(state, "out_mask_conv", x), _conv(state, "out_img_conv", x)


@pytest.mark.parametrize("keep_counts", [False, True])
def test_the_file_loads_weights_only_and_computes_facexlibs_forward(tmp_path, keep_counts):
    net = tiny_parsenet(seed=1)
    path = write_parsenet(net, tmp_path, keep_counts)
    loaded = face_parsing.load(path)
    state = torch.load(path, weights_only=True)
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        mask, picture = loaded(x)
        ref_mask, ref_picture = reference_forward(state, x)
    assert mask.shape == (1, 19, 48, 64) and picture.shape == (1, 3, 48, 64)
    assert torch.allclose(mask, ref_mask, atol=1e-5) and torch.allclose(picture, ref_picture, atol=1e-5)
    assert [tuple(b.conv1.conv2d.weight.shape[:2][::-1]) for b in loaded.encoder[1:]] == [(4, 8), (8, 8)]


class Bomb:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_other_files_are_refused_with_the_reason(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"not a torch file")
    with pytest.raises(face_parsing.FaceParsingError, match="a.pth: cannot be read"):
        face_parsing.load(tmp_path / "a.pth")
    marker = tmp_path / "ran"
    with open(tmp_path / "b.pth", "wb") as file:
        pickle.dump({"encoder.0.conv2d.weight": Bomb(marker)}, file)
    with pytest.raises(face_parsing.FaceParsingError, match="refused"):
        face_parsing.load(tmp_path / "b.pth")
    assert not marker.exists()
    torch.save({"body.conv1.weight": torch.zeros(4, 3, 7, 7)}, tmp_path / "c.pth")  # RetinaFace, say
    with pytest.raises(face_parsing.FaceParsingError, match="not facexlib's ParseNet"):
        face_parsing.load(tmp_path / "c.pth")
    state = tiny_parsenet().state_dict()
    torch.save({k: v for k, v in state.items() if "body.1.conv2" not in k}, tmp_path / "d.pth")
    with pytest.raises(face_parsing.FaceParsingError, match="missing"):
        face_parsing.load(tmp_path / "d.pth")
    wrong = dict(state, **{"out_mask_conv.conv2d.weight": torch.zeros(11, 4, 3, 3),
                           "out_mask_conv.conv2d.bias": torch.zeros(11)})
    torch.save(wrong, tmp_path / "e.pth")
    with pytest.raises(face_parsing.FaceParsingError, match="11 classes"):
        face_parsing.load(tmp_path / "e.pth")


# -- the mask -----------------------------------------------------------------------------------

def _blur_matrix(n: int) -> np.ndarray:
    """Gaussian blur (101 taps, sigma 11) as an n x n matrix, edges reflected without repeating the
    edge pixel (OpenCV's default border)."""
    taps = np.exp(-((np.arange(101) - 50) ** 2) / (2 * 11.0 ** 2))
    taps /= taps.sum()
    matrix = np.zeros((n, n))
    for i in range(n):
        for t, k in enumerate(range(i - 50, i + 51)):
            j = -k if k < 0 else 2 * (n - 1) - k if k >= n else k
            matrix[i, j] += taps[t]
    return matrix


def test_the_mask_is_built_as_facexlib_builds_it():
    for cls in range(19):  # the classes left out give nothing, the others the full face
        mask = face_parsing.mask_from_classes(np.full((512, 512), cls), 512)
        assert mask.max() == (0.0 if cls in (0, NECK, 16, HAIR, 18) else pytest.approx(1.0))
    rng = np.random.default_rng(0)
    classes = np.repeat(np.repeat(rng.integers(0, 19, (16, 16)), 32, 0), 32, 1)
    mask = face_parsing.mask_from_classes(classes, 512)
    keep = ~np.isin(classes, (0, 14, 16, 17, 18))
    blur = _blur_matrix(512)
    expected = blur @ (blur @ (keep * 255.0) @ blur.T) @ blur.T / 255
    expected[:10], expected[-10:], expected[:, :10], expected[:, -10:] = 0, 0, 0, 0
    assert mask.dtype == np.float64 and mask.shape == (512, 512)
    assert np.abs(mask - expected).max() < 1e-5
    assert (mask[:10] == 0).all() and (mask[:, -10:] == 0).all() and 0 <= mask.min() and mask.max() <= 1
    small = face_parsing.mask_from_classes(classes, 64)  # resized to the restorer's crop
    assert small.shape == (64, 64) and np.abs(small - cv2.resize(expected, (64, 64))).max() < 1e-5


def test_the_face_is_parsed_at_512_px_scaled_to_minus_one_one():
    face = np.asarray(draw_face(64))
    net = balance(tiny_parsenet(seed=4, contrast=True), face)
    big = cv2.resize(face, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(big / 127.5 - 1).permute(2, 0, 1)[None])[0]
    classes = face_parsing.face_classes(net, face)
    assert np.array_equal(classes, logits.argmax(1)[0].numpy())
    assert set(np.unique(classes)) == {0, SKIN}  # a real mix: the mask below is not trivial
    assert np.array_equal(face_parsing.face_mask(net, face), face_parsing.mask_from_classes(classes, 64))


# -- pasting --------------------------------------------------------------------------------------

def test_a_face_is_pasted_through_its_parsing_mask():
    model = face_restoration.FaceModel("GFPGAN", tiny_gfpgan().eval(), 64)
    picture = draw_face((200, 160), center=(100, 80), scale=0.6)
    face = face_restoration.Face((60, 40, 80, 80), (60, 40, 80))
    torch.manual_seed(7)  # GFPGAN's noise: the same restored face in each run
    to_crop = face_restoration._to_crop(face, 64)
    crop = cv2.warpAffine(np.asarray(picture), to_crop, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    restored = face_restoration._run_net(model, crop, torch.device("cpu"), 0.5)
    parser = balance(tiny_parsenet(seed=6, contrast=True), restored)  # coherent face / background areas
    torch.manual_seed(7)
    parsed = np.asarray(face_restoration.restore(picture, model, [face], torch.device("cpu"), parser=parser)).astype(int)
    torch.manual_seed(7)
    square = np.asarray(face_restoration.restore(picture, model, [face], torch.device("cpu"))).astype(int)
    mask = cv2.warpAffine(face_parsing.face_mask(parser, restored), cv2.invertAffineTransform(to_crop), (200, 160),
                          flags=cv2.INTER_LINEAR, borderValue=0)
    before = np.asarray(picture).astype(int)
    pasted = cv2.warpAffine(restored, cv2.invertAffineTransform(to_crop), (200, 160), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT101).astype(int)
    expected = before * (1 - mask[..., None]) + pasted * mask[..., None]
    assert np.abs(parsed - expected).max() <= 1  # everywhere: the blend by the parsing mask
    unmasked = mask < 1e-3  # a change under half a level: the pixel stays as it was
    changed_square = np.abs(square - before).sum(-1) > 0
    assert (unmasked & changed_square).sum() > 100  # the square paste changes pixels the mask leaves out
    assert np.array_equal(parsed[unmasked], before[unmasked])  # the parsed paste leaves them alone
    full = mask > 0.999  # where the mask is 1, the restored face itself
    assert full.sum() > 100 and np.abs(parsed[full] - pasted[full]).max() <= 1


# -- the service --------------------------------------------------------------------------------

def test_the_service_finds_the_parsing_file_beside_the_gfpgan_models(tmp_path):
    models = tmp_path / "models"
    write_gfpgan(models)
    lines = []
    service = FaceRestorers(folders_for(object(), models), log=lines.append)
    picture = draw_face((256, 256))
    assert service.parser() is None and service.restore(picture, "GFPGAN") is not picture  # no file: the square

    write_parsenet(tiny_parsenet(constant_class=0), models / "GFPGAN")  # all background: nothing pasted
    net = service.parser()
    assert net is not None and service.parser() is net  # loaded once
    assert len(service.find_faces(picture)) == 1
    out = service.restore(picture, "GFPGAN")
    assert np.array_equal(np.asarray(out), np.asarray(picture))
    assert next(net.parameters()).device.type == "cpu"
    assert [p.name for p in service.candidates("GFPGAN")] == ["GFPGANv1.4.pth"]  # no restorer

    (models / "GFPGAN" / face_parsing.FILE_NAME).write_bytes(b"\x80\x04garbage")  # unusable: named once
    assert service.parser() is None and service.parser() is None
    assert not np.array_equal(np.asarray(service.restore(picture, "GFPGAN")), np.asarray(picture))
    assert sum(face_parsing.FILE_NAME in line for line in lines) == 1


def test_list_hidden_files_governs_the_face_restorer_folders(tmp_path):
    models = tmp_path / "models"
    hidden = write_gfpgan(models, name=".old/GFPGANv1.4.pth")
    options = {"list_hidden_files": True}
    service = FaceRestorers(folders_for(object(), models), options, log=lambda _line: None)
    assert service.candidates("GFPGAN") == [hidden]
    options["list_hidden_files"] = False
    assert service.candidates("GFPGAN") == []
    with pytest.raises(RequestError, match="GFPGANv1.4.pth"):
        service.check("GFPGAN")
    visible = write_gfpgan(models, name="mine/.model.pth")  # a dot file in a plain folder is listed
    assert service.candidates("GFPGAN") == [visible]


# -- through the API of the shared server -------------------------------------------------------

@pytest.fixture
def served(server):
    """A tiny GFPGAN in the server's models/GFPGAN; the parsing file and the model removed afterwards."""
    folder = server.data_dir / "models" / "GFPGAN"
    paths = [write_gfpgan(server.data_dir / "models"), folder / face_parsing.FILE_NAME]
    yield server, folder
    for path in paths:
        path.unlink(missing_ok=True)


def _extras(server, image: Image.Image) -> np.ndarray:
    r = server.post("/sdapi/v1/extra-single-image", json={"image": b64(image), "upscaler_1": "None", "gfpgan_visibility": 1})
    assert r.status_code == 200, r.text
    return np.asarray(decode(r.json()["image"]).convert("RGB")).astype(int)


def test_api_restored_faces_follow_the_parsing_mask(served):
    server, folder = served
    image = draw_face((400, 256), center=(120, 128))
    before = np.asarray(image).astype(int)
    inside = face_area(image)  # the crop of the face the Haar cascade finds
    columns, rows = np.flatnonzero(inside.any(0)), inside.any(1)
    left, right = columns[0], columns[-1]
    square = _extras(server, image)  # no parsing file: the feathered square
    change = np.abs(square - before).sum(-1)
    assert change[inside].mean() > 5 and change[~inside].sum() == 0
    feathered_edge = change[rows, left + 8].mean() / change[rows, (left + right) // 2].mean()

    path = write_parsenet(tiny_parsenet(constant_class=HAIR), folder)  # all hair: the mask is 0 everywhere
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert np.array_equal(_extras(server, image), before)

    path = write_parsenet(tiny_parsenet(constant_class=SKIN), folder)  # all skin: 1 but at the border
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    parsed = np.abs(_extras(server, image) - before).sum(-1)
    assert parsed[~inside].sum() == 0 and parsed[inside].mean() > 5  # still inside the crop only
    parsed_edge = parsed[rows, left + 8].mean() / parsed[rows, (left + right) // 2].mean()
    assert parsed_edge > 2 * feathered_edge  # no feathering: close to the crop's edge it is pasted in full


def test_api_list_hidden_files_off_hides_a_restorer_in_a_dot_folder(server):
    path = write_gfpgan(server.data_dir / "models", name=".hidden/model.pth")
    body = {"image": b64(draw_face(256)), "upscaler_1": "None", "gfpgan_visibility": 1}
    try:
        assert server.post("/sdapi/v1/extra-single-image", json=body).status_code == 200
        assert server.post("/sdapi/v1/options", json={"list_hidden_files": False}).status_code == 200
        r = server.post("/sdapi/v1/extra-single-image", json=body)
        assert r.status_code == 422 and "GFPGANv1.4.pth" in r.text
    finally:
        server.post("/sdapi/v1/options", json={"list_hidden_files": True})
        path.unlink()
