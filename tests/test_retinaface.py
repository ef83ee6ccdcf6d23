"""RetinaFace (issue 15's better face detector): facexlib's ResNet-50 file layout read weights-only,
the detection decoded as facexlib decodes it (anchors, variances, softmax, NMS, eye distance),
faces aligned by their landmarks onto the FFHQ template (a tilted face turned upright), and the
service choosing it over the Haar cascade when models/GFPGAN/detection_Resnet50_Final.pth is there.

The networks are tiny (ResNet-50's block counts at 1/16 of its widths, 8-channel heads) with random
weights; what is checked is the wiring and the arithmetic, against references written here."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from modules.core import face_restoration, retinaface
from modules.services.face_restorers import FaceRestorers, folders_for
from tests.face_models import draw_face, tiny_gfpgan, write_gfpgan

FACEXLIB_KEYS = ["body.conv1.weight", "body.bn1.running_var", "body.layer1.0.downsample.0.weight",
                 "body.layer2.3.conv3.weight", "body.layer3.5.bn2.bias", "body.layer4.2.conv1.weight",
                 "fpn.output1.0.weight", "fpn.output3.1.running_mean", "fpn.merge1.0.weight", "fpn.merge2.1.weight",
                 "ssh1.conv3X3.0.weight", "ssh2.conv5X5_1.1.bias", "ssh3.conv5X5_2.0.weight",
                 "ssh1.conv7X7_2.0.weight", "ssh2.conv7x7_3.1.weight", "ClassHead.0.conv1x1.weight",
                 "BboxHead.2.conv1x1.bias", "LandmarkHead.1.conv1x1.weight"]


def tiny_net(seed: int = 0, class_bias: tuple[float, float] | None = None) -> retinaface.RetinaFaceNet:
    torch.manual_seed(seed)
    net = retinaface.RetinaFaceNet(base=4, channels=8).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # trained-looking statistics, not 0 / 1
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        if class_bias is not None:
            for head in net.ClassHead:
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.copy_(torch.tensor(class_bias * 2))
    return net


def write(net: retinaface.RetinaFaceNet, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / retinaface.FILE_NAME
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return path


def test_the_facexlib_file_layout_loads_weights_only_and_runs_the_same(tmp_path):
    net = tiny_net()
    path = write(net, tmp_path)
    state = torch.load(path, weights_only=True)
    assert set(FACEXLIB_KEYS) <= set(state)
    loaded = retinaface.load(path)
    x = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ours, theirs in zip(loaded(x), net(x)):
            assert torch.equal(ours, theirs)
    boxes, scores, marks = loaded(x)
    anchors = sum(2 * math.ceil(72 / s) * math.ceil(88 / s) for s in (8, 16, 32))  # sizes not multiples of 32
    assert boxes.shape == (1, anchors, 4) and scores.shape == (1, anchors, 2) and marks.shape == (1, anchors, 10)
    assert torch.allclose(scores.sum(-1), torch.ones(1, anchors))


def test_other_files_are_refused_with_the_reason(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"not a torch file")
    with pytest.raises(retinaface.RetinaFaceError, match="weights-only"):
        retinaface.load(tmp_path / "a.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "b.pth")
    with pytest.raises(retinaface.RetinaFaceError, match="not RetinaFace"):
        retinaface.load(tmp_path / "b.pth")
    state = {k: v for k, v in tiny_net().state_dict().items() if "layer3.5" not in k}
    torch.save(state, tmp_path / "c.pth")
    with pytest.raises(retinaface.RetinaFaceError, match="missing"):
        retinaface.load(tmp_path / "c.pth")


def _decoded(net, rgb):
    """facexlib's detect_faces up to the threshold, written out: scale the short side up to 640, BGR
    minus the means, anchors per level / cell / size, decode with variances 0.1 and 0.2."""
    h0, w0 = rgb.shape[:2]
    scale = max(1.0, 640 / min(h0, w0))
    img = cv2.resize(rgb, (int(w0 * scale), int(h0 * scale)), interpolation=cv2.INTER_LINEAR) if scale > 1 else rgb
    h, w = img.shape[:2]
    x = torch.from_numpy(img[:, :, ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32))
    with torch.no_grad():
        loc, conf, landm = (t[0].double().numpy() for t in net(x.permute(2, 0, 1)[None]))
    anchors = []
    for sizes, step in (((16, 32), 8), ((64, 128), 16), ((256, 512), 32)):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for size in sizes:
                    anchors.append([(j + 0.5) * step / w, (i + 0.5) * step / h, size / w, size / h])
    a = np.array(anchors)
    centre = a[:, :2] + loc[:, :2] * 0.1 * a[:, 2:]
    wh = a[:, 2:] * np.exp(loc[:, 2:] * 0.2)
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], 1) * [w, h, w, h] / scale
    points = np.concatenate([a[:, :2] + landm[:, 2 * k:2 * k + 2] * 0.1 * a[:, 2:] for k in range(5)], 1)
    points = points * ([w, h] * 5) / scale
    return boxes, conf[:, 1], points


def _reference_detections(net, rgb, threshold):
    """Then the threshold, the sort, NMS 0.4 (inclusive areas) and the helper's 5 px eye filter."""
    boxes, score, points = _decoded(net, rgb)
    idx = np.where(score > threshold)[0]
    idx = idx[np.argsort(-score[idx], kind="stable")]
    kept = []
    for i in idx:
        ok = True
        for k in kept:
            xx1, yy1 = max(boxes[i, 0], boxes[k, 0]), max(boxes[i, 1], boxes[k, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[k, 2]), min(boxes[i, 3], boxes[k, 3])
            inter = max(0, xx2 - xx1 + 1) * max(0, yy2 - yy1 + 1)
            area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[k]) - inter) > 0.4:
                ok = False
                break
        if ok:
            kept.append(i)
    return [(boxes[i], score[i], points[i].reshape(5, 2)) for i in kept
            if np.hypot(*(points[i][0:2] - points[i][2:4])) >= 5]


def test_detections_are_decoded_and_suppressed_as_facexlib_does():
    net = tiny_net(seed=3)
    with torch.no_grad():  # the eyes 8 tenths of an anchor apart: the 5 px filter drops the small anchors
        for head in net.LandmarkHead:
            head.conv1x1.bias.copy_(torch.tensor([-4.0, 0, 4.0, 0, 0, 0, 0, 0, 0, 0] * 2))
    rgb = np.asarray(draw_face((88, 72), center=(44, 36), scale=0.3))
    threshold = float(np.quantile(_decoded(net, rgb)[1], 0.99))  # a random net: its top 1 %, then NMS
    ours = retinaface.detect(net, rgb, threshold=threshold)
    reference = _reference_detections(net, rgb, threshold)
    assert len(ours) == len(reference) > 3
    for found, (box, score, points) in zip(ours, reference):
        assert np.allclose(found.box, box, atol=1e-2) and abs(found.score - score) < 1e-5
        assert np.allclose(found.landmarks, points, atol=1e-2)


def _turned(points: np.ndarray, degrees: float, centre, scale: float) -> np.ndarray:
    t = math.radians(degrees)
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (points - 256) @ rotation.T * scale + centre


def test_a_tilted_face_is_turned_onto_the_ffhq_template():
    landmarks = _turned(face_restoration.FFHQ_TEMPLATE_512, 30, (150, 120), 0.25)
    face = face_restoration.Face((0, 0, 1, 1), (0, 0, 1), tuple(map(tuple, landmarks.tolist())))
    matrix = face_restoration._to_crop(face, 512)
    mapped = np.c_[landmarks, np.ones(5)] @ matrix.T
    assert np.allclose(mapped, face_restoration.FFHQ_TEMPLATE_512, atol=1e-3)
    assert math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])) == pytest.approx(-30, abs=0.01)
    # the region that may change: the turned 128 px square's bounding box (128 * (cos + sin) wide)
    left, top, right, bottom = face_restoration.crop_region(face, 400, 300, 512)
    assert right - left == pytest.approx(128 * (math.cos(math.pi / 6) + math.sin(math.pi / 6)), abs=2)
    assert left <= landmarks[:, 0].min() and right >= landmarks[:, 0].max()


def test_an_aligned_face_is_restored_inside_its_turned_crop_only():
    torch.manual_seed(0)
    model = face_restoration.FaceModel("GFPGAN", tiny_gfpgan().eval(), 64)
    picture = draw_face((200, 160), center=(100, 80), scale=0.6)
    landmarks = _turned(face_restoration.FFHQ_TEMPLATE_512, 20, (100, 80), 0.2)
    face = face_restoration.Face((60, 40, 80, 80), (60, 40, 80), tuple(map(tuple, landmarks.tolist())))
    out = face_restoration.restore(picture, model, [face], torch.device("cpu"))
    before, after = np.asarray(picture).astype(int), np.asarray(out).astype(int)
    left, top, right, bottom = face_restoration.crop_region(face, 200, 160, model.size)
    outside = np.ones((160, 200), bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(before[outside], after[outside])
    assert np.abs(before - after)[top:bottom, left:right].mean() > 2  # the random model repainted it


def test_the_service_lets_retinaface_find_the_faces_when_its_file_is_there(tmp_path):
    models = tmp_path / "models"
    write_gfpgan(models)
    lines = []
    service = FaceRestorers(folders_for(object(), models), log=lines.append)
    picture = draw_face((256, 256))
    assert len(service.find_faces(picture)) == 1  # no detector file: the Haar cascade's face
    assert service.restore(picture, "GFPGAN") is not picture

    # a detector that sees no face anywhere: its answer rules, the picture is left alone
    write(tiny_net(class_bias=(20.0, -20.0)), models / "GFPGAN")
    assert service.find_faces(picture) == []
    assert service.restore(picture, "GFPGAN") is picture
    assert service.candidates("GFPGAN")[0].name == "GFPGANv1.4.pth"  # the detector is no restorer

    # one that sees faces everywhere: aligned faces, each with its five landmarks
    write(tiny_net(class_bias=(-20.0, 20.0)), models / "GFPGAN")
    faces = service.find_faces(picture)
    assert faces and all(f.landmarks is not None and len(f.landmarks) == 5 for f in faces)

    # an unusable file: named once in the console, the Haar cascade finds the face again
    (models / "GFPGAN" / retinaface.FILE_NAME).write_bytes(b"\x80\x04garbage")
    assert len(service.find_faces(picture)) == 1 and len(service.find_faces(picture)) == 1
    assert sum(retinaface.FILE_NAME in line for line in lines) == 1
    assert not any("GFPGANv1.4" in line for line in lines)
