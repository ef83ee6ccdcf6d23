"""sd-webui-controlnet's ``dw_openpose_full`` and ``animal_openpose`` run with OpenCV's dnn from the user's
ONNX files ``openpose/yolox_l.onnx``, ``openpose/dw-ll_ucoco_384.onnx`` and the AP-10K RTMPose file.

The files are tiny ONNX graphs with the real files' input and output names, shapes and layouts: the
detector reads (1, 3, 640, 640) and gives (1, 8400, 85) (the stride 8, 16 and 32 grids, 80 classes); the
pose models read (1, 3, 384, 288) / (1, 3, 256, 256) and give ``simcc_x`` / ``simcc_y`` at split ratio 2
(133 / 17 keypoints). Most give constant outputs (known boxes, known SimCC peaks), so the tests know where
the skeletons are drawn in pixels; one pose graph reads the picture (its peaks are the crop's brightest
column and row), which checks the crop and the mapping back. ``/controlnet/detect`` runs both from the
shared server's annotator folder and refuses, naming the file and folder, when a file is missing.
(Checked by hand against the extension's cv_ox_det / cv_ox_pose / wholebody / animalpose and util's
drawing, run with cv2 on the same files and on random input-dependent graphs: the same boxes, keypoints
and maps.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, checker, helper, numpy_helper, save
from PIL import Image

from modules.core import annotator_dwpose as dw
from modules.core.annotator_openpose import COLORS
from modules.core.checkpoint_file import CheckpointError
from modules.services import controlnets
from tests.api_common import decode
from tests.annotator_common import detect

GRIDS = ((8, 80), (16, 40), (32, 20))  # (stride, cells a side) of a 640x640 input: 6400 + 1600 + 400 anchors


def _model(path, input_shape, nodes, outputs, inits):
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))


def constant_onnx(path, input_shape, outputs: dict[str, np.ndarray]):
    """A graph reading ``input`` whose outputs are the given arrays (plus 0 x the input's mean)."""
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), name + "_value"))
        nodes.append(helper.make_node("Add", ["nothing", name + "_value"], [name]))
    _model(path, input_shape, nodes, [(n, list(v.shape)) for n, v in outputs.items()], inits)


def anchor(cx, cy, w, h, scores: dict[int, float], objectness=0.9, stride=32) -> tuple[int, np.ndarray]:
    """The anchor index and raw output row of a box centred at (cx, cy), w x h in the 640 px input."""
    offset = sum(n * n for s, n in GRIDS if s < stride)
    cells = dict(GRIDS)[stride]
    gx, gy = int(cx // stride), int(cy // stride)
    row = np.zeros(85)
    row[:4] = cx / stride - gx, cy / stride - gy, np.log(w / stride), np.log(h / stride)
    row[4] = objectness
    for cls, score in scores.items():
        row[5 + cls] = score
    return offset + gy * cells + gx, row


def write_detector(path, boxes):
    raw = np.zeros((1, 8400, 85))
    for index, row in boxes:
        raw[0, index] = row
    constant_onnx(path, [1, 3, 640, 640], {"output": raw})


def write_pose(path, size, count, peaks: dict[int, tuple[int, int, float]]):
    """A pose model whose keypoint k peaks at SimCC bins (x, y) with score s: ``peaks[k] = (x, y, s)``."""
    simcc_x, simcc_y = np.zeros((1, count, size[0] * 2)), np.zeros((1, count, size[1] * 2))
    for k, (x, y, score) in peaks.items():
        simcc_x[0, k, x], simcc_y[0, k, y] = score, score
    constant_onnx(path, [1, 3, size[1], size[0]], {"simcc_x": simcc_x, "simcc_y": simcc_y})


def write_bright_spot_pose(path, size, count):
    """A pose model that reads the crop: every keypoint's SimCC is the crop's channel mean's maximum over
    each column (x) and row (y), each bin doubled (split ratio 2): the peaks are the brightest column and row."""
    w, h = size
    nodes = [helper.make_node("Conv", ["input", "mix"], ["grey"])]
    outputs = []
    for name, axis, length in (("simcc_x", 2, w), ("simcc_y", 3, h)):
        nodes += [helper.make_node("ReduceMax", ["grey"], [name + "_max"], axes=[axis], keepdims=0),
                  helper.make_node("Reshape", [name + "_max", name + "_4d"], [name + "_col"]),
                  helper.make_node("Concat", [name + "_col", name + "_col"], [name + "_two"], axis=3),
                  helper.make_node("Reshape", [name + "_two", name + "_3d"], [name])]
        outputs.append((name, [1, count, 2 * length]))
    inits = [numpy_helper.from_array(np.full((count, 3, 1, 1), 1 / 3, np.float32), "mix")]
    for name, length in (("simcc_x", w), ("simcc_y", h)):
        inits += [numpy_helper.from_array(np.array([1, count, length, 1], np.int64), name + "_4d"),
                  numpy_helper.from_array(np.array([1, count, 2 * length], np.int64), name + "_3d")]
    _model(path, [1, 3, h, w], nodes, outputs, inits)


# a 320x256 picture letterboxes at 2x: the person's box is (128, 32)-(192, 160) in the picture; its crop
# (widened to 120x160, 288x384 px) puts picture pixel (100 + 5 i, 16 + 5 j) at SimCC bin (24 i, 24 j)
PERSON = anchor(320, 192, 128, 256, {0: 0.9})
WEAK_DUPLICATE = anchor(360, 200, 128, 256, {0: 0.5})  # the next cell, overlapping the person (IoU 0.5): suppressed
FAINT = anchor(100, 500, 64, 64, {0: 0.25})  # 0.225: over 0.1, under 0.3
DOG = anchor(520, 360, 204.8, 204.8, {16: 0.9})  # 102.4 px a side around (260, 180) in the picture


def person_bin(x, y):
    assert (x - 100) % 5 == 0 and (y - 16) % 5 == 0
    return (x - 100) * 24 // 5, (y - 16) * 24 // 5


def dog_bin(x, y):  # the dog's crop: 128x128 around (260, 180) at 256x256, bins of a quarter pixel
    return (x - 196) * 4, (y - 116) * 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators") / "openpose"
    paths = {name: folder / f"{name}.onnx" for name in ("detector", "dog_only", "nothing", "bright", "wholebody",
                                                          "animal")}
    write_detector(paths["detector"], [PERSON, WEAK_DUPLICATE, FAINT, DOG])
    write_detector(paths["dog_only"], [DOG])
    write_detector(paths["nothing"], [anchor(100, 100, 64, 64, {0: 0.1})])  # 0.09
    write_bright_spot_pose(paths["bright"], dw.WHOLEBODY_SIZE, 133)
    write_pose(paths["wholebody"], dw.WHOLEBODY_SIZE, 133, WHOLEBODY_PEAKS)
    write_pose(paths["animal"], dw.ANIMAL_SIZE, 17, ANIMAL_PEAKS)
    return paths


def _black(width=320, height=256):
    return np.zeros((height, width, 3), np.uint8)


def test_detection_decodes_the_grid_and_keeps_the_people(files):
    net = dw.network(files["detector"])
    boxes = dw.detect(net, _black())
    assert np.allclose(boxes, [[128, 32, 192, 160]], atol=1e-3)  # the duplicate and the faint one dropped
    assert np.allclose(dw.detect(net, _black(), dw.ANIMALS), [[208.8, 128.8, 311.2, 231.2]], atol=1e-3)
    # the grid: a box at the stride-8 cell (3, 2) and one in the last stride-32 cell
    index, row = anchor(28, 20, 16, 8, {0: 0.8}, stride=8)
    last, row2 = anchor(630, 630, 40, 40, {0: 0.8})
    assert (index, last) == (2 * 80 + 3, 8399)
    decoded = dw.decode_grid(np.stack([row] * 8400))
    assert np.allclose(decoded[index, :4], [28, 20, 16, 8]) and np.allclose(decoded[0, :2], [row[0] * 8, row[1] * 8])
    assert np.allclose(dw.decode_grid(np.stack([row2] * 8400))[last, :4], [630, 630, 40, 40])
    # nothing over 0.1: None, unlike detections that are not people (an empty array)
    assert dw.detect(dw.network(files["nothing"]), _black()) is None
    assert dw.detect(dw.network(files["dog_only"]), _black()).shape == (0, 4)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 99, 99], [10, 10, 109, 109], [200, 200, 260, 260], [0, 0, 99, 99.0]])
    assert dw.nms(boxes, np.array([0.5, 0.9, 0.4, 0.3]), 0.45) == [1, 2]
    assert dw.nms(boxes, np.array([0.5, 0.9, 0.4, 0.3]), 0.7) == [1, 0, 2]  # IoU(0, 1) = 0.68
    scores = np.array([[0.5, 0.05], [0.9, 0.2], [0.4, 0.0], [0.3, 0.0]])
    found = dw.detections(boxes, scores)
    assert found[:, 4:].tolist() == [[0.9, 0], [0.4, 0], [0.2, 1]]


def test_the_crop_and_simcc_decoding_map_back_to_the_picture(files):
    image = _black()
    image[140:143, 170:173] = 255  # a white 3x3 spot centred at (171, 141) inside the person's box
    bright = dw.network(files["bright"])
    points, scores = dw.estimate(bright, image, np.array([[128, 32, 192, 160]]), dw.WHOLEBODY_SIZE)
    assert points.shape == (1, 133, 2) and scores.shape == (1, 133)
    assert np.abs(points[0] - (171, 141)).max() <= 1.5 and (scores > 2.0).all()
    # the box -> centre and span, widened to the model's aspect and mapped to 288x384
    centre, span = dw.box_frame(np.array([128, 32, 192, 160]), dw.WHOLEBODY_SIZE)
    assert centre.tolist() == [160, 96] and span.tolist() == [120, 160]
    assert np.allclose(dw.warp_matrix(centre, span, dw.WHOLEBODY_SIZE), [[2.4, 0, -240], [0, 2.4, -38.4]], atol=1e-4)
    # SimCC: argmax / 2, the smaller maximum as the score, -1 / 2 where it is not above 0
    locs, vals = dw.simcc_peaks(np.array([[0, 3, 1.0, 0], [0, 0, 0, -1]]), np.array([[0.5, 0, 0], [-1, -2, -3]]))
    assert locs.tolist() == [[0.5, 0.0], [-0.5, -0.5]] and vals.tolist() == [0.5, -1]
    # detections that are not people: DWPose reads the whole picture (as the extension does)
    found = dw.wholebody(dw.network(files["dog_only"]), bright, image)
    assert len(found) == 1 and all(abs(x - 171) <= 1.5 and abs(y - 141) <= 1.5 for x, y in found[0]["body"])
    assert dw.wholebody(dw.network(files["nothing"]), bright, image) == []


# COCO-wholebody keypoints (0-based) -> picture pixels on the person's 5 px lattice
BODY = {0: (160, 41), 1: (165, 36), 2: (155, 36), 3: (170, 41), 4: (150, 41), 5: (180, 71), 6: (140, 71),
        7: (190, 101), 8: (130, 101), 9: (195, 126), 10: (125, 126), 11: (175, 131), 12: (145, 131),
        13: (175, 156), 14: (145, 156)}  # ankles 15, 16: not found
LEFT_HAND = {91 + i: (200 + 5 * (i % 3), 136 + 5 * (i // 3)) for i in range(21)}
FACE = {23 + 30: (160, 46)}  # one landmark (nose tip)
WHOLEBODY_PEAKS = {k: (*person_bin(*p), 0.9) for part in (BODY, LEFT_HAND, FACE) for k, p in part.items()}
WHOLEBODY_PEAKS[117] = (*person_bin(215, 171), 0.25)  # a right-hand joint under 0.3: no right hand


def test_wholebody_becomes_openpose_and_is_drawn(files):
    found = dw.wholebody(dw.network(files["detector"]), dw.network(files["wholebody"]), _black())
    assert len(found) == 1
    person = found[0]
    as_openpose = {0: 0, 2: 6, 3: 8, 4: 10, 5: 5, 6: 7, 7: 9, 8: 12, 9: 14, 11: 11, 12: 13, 14: 2, 15: 1,
                   16: 4, 17: 3}  # OpenPose index: COCO index
    for openpose, coco in as_openpose.items():
        assert np.allclose(person["body"][openpose], BODY[coco], atol=1e-3), openpose
    assert np.allclose(person["body"][1], (160, 71), atol=1e-3)  # the neck: the shoulders' mean
    assert person["body"][10] is None and person["body"][13] is None  # the ankles
    assert np.allclose(person["left_hand"], [LEFT_HAND[91 + i] for i in range(21)], atol=1e-3)
    assert person["right_hand"] == []
    assert len(person["face"]) == 70 and sum(p is not None for p in person["face"]) == 3  # + the eyes
    assert np.allclose(person["face"][30], (160, 46), atol=1e-3) and person["face"][68:] == person["body"][14:16]

    canvas = dw.dw_openpose_full(_black(), [files["detector"], files["wholebody"]])
    assert canvas.shape == (256, 320, 3) and canvas.dtype == np.uint8
    assert tuple(canvas[71, 160]) == COLORS[1] and tuple(canvas[71, 140]) == COLORS[2]  # neck, right shoulder
    assert tuple(canvas[126, 125]) == COLORS[4] and tuple(canvas[156, 175]) == COLORS[12]  # wrist, left knee
    assert tuple(canvas[71, 150]) == tuple(int(c * 0.6) for c in COLORS[0])  # the neck -> right shoulder limb
    assert tuple(canvas[146, 205]) == (0, 0, 255)  # a left-hand joint (drawn over the body)
    assert tuple(canvas[46, 160]) == (255, 255, 255)  # the face landmark
    assert not canvas[200:, :].any() and not canvas[:, 230:].any()  # no ankles, no right hand


# AP-10K keypoints (1-based as the extension's limbs) -> picture pixels on the dog's 25 px lattice
DOG_POINTS = {1: (240, 130), 2: (270, 130), 3: (255, 150), 4: (255, 170), 5: (255, 225), 6: (230, 180),
              7: (225, 200), 8: (220, 220), 9: (280, 180), 10: (285, 200), 11: (290, 220), 12: (235, 225),
              13: (230, 235), 14: (225, 240), 15: (275, 225), 16: (280, 235), 17: (285, 240)}
ANIMAL_PEAKS = {k - 1: (*dog_bin(*p), 0.9) for k, p in DOG_POINTS.items()}


def test_animals_are_found_and_drawn(files):
    net, pose = dw.network(files["detector"]), dw.network(files["animal"])
    points = dw.animals(net, pose, _black())
    assert np.allclose(points, [[DOG_POINTS[k] for k in range(1, 18)]], atol=1e-3)
    canvas = dw.animal_openpose(_black(), [files["detector"], files["animal"]])
    assert tuple(canvas[130, 255]) == (255, 255, 255)  # eye - eye: limb 1, white
    assert tuple(canvas[175, 242]) == (0, 0, 255)  # neck (4) - left shoulder (6): limb 8
    assert tuple(canvas[198, 255]) == (255, 0, 255)  # neck - tail root (5): limb 11
    assert tuple(canvas[240, 225]) == (150, 150, 150)  # the last limb (13 - 14)
    assert not canvas[:125].any() and not canvas[:, :215].any()
    assert not dw.animal_openpose(_black(), [files["nothing"], files["animal"]]).any()
    people_only = files["detector"].parent / "people_only.onnx"
    write_detector(people_only, [PERSON])
    assert not dw.animal_openpose(_black(), [people_only, files["animal"]]).any()


def test_files_of_another_kind_are_refused(files, tmp_path):
    with pytest.raises(CheckpointError, match=r"wholebody\.onnx: 133 anchors, not the 8400 of a 640x640 input"):
        dw.detect(dw.network(files["wholebody"]), _black())
    with pytest.raises(CheckpointError, match=r"detector\.onnx gives .* not an RTMPose model's simcc_x"):
        dw.estimate(dw.network(files["detector"]), _black(), np.zeros((0, 4)), dw.WHOLEBODY_SIZE)
    garbage = tmp_path / "yolox_l.onnx"
    garbage.write_bytes(b"not a network" * 10)
    with pytest.raises(CheckpointError, match=r"yolox_l\.onnx is not an ONNX network OpenCV can read"):
        dw.network(garbage)


def _detect(server, module, image):
    return detect(server, module, image, controlnet_processor_res=256)


def test_detect_runs_dwpose_and_animal_pose_from_the_users_files(server, files):
    folder = server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER / "openpose"
    picture = Image.fromarray(_black(320, 256))  # 256 on the short side: the picture as it is (no padding)
    written = [folder / "yolox_l.onnx", folder / "dw-ll_ucoco_384.onnx", folder / Path(dw.ANIMAL_FILE).name]
    try:
        r = _detect(server, "dw_openpose_full", picture)  # missing: refused, naming the files and folder
        assert r.status_code == 422, r.text
        assert "yolox_l.onnx" in r.json()["detail"] and str(folder) in r.json()["detail"]
        folder.mkdir(parents=True, exist_ok=True)
        written[0].write_bytes(files["detector"].read_bytes())
        r = _detect(server, "animal_openpose", picture)
        assert r.status_code == 422 and f"put {written[2].name} in {folder}" in r.json()["detail"]
        assert "put yolox_l.onnx" not in r.json()["detail"]  # that one is there
        written[1].write_bytes(b"garbage")
        r = _detect(server, "dw_openpose_full", picture)
        assert r.status_code == 422 and "dw-ll_ucoco_384.onnx is not an ONNX network" in r.json()["detail"]
        written[1].write_bytes(files["wholebody"].read_bytes())
        written[2].write_bytes(files["animal"].read_bytes())
        r = _detect(server, "dw_openpose_full", picture)
        assert r.status_code == 200, r.text
        rgb = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        assert rgb.shape == (256, 320, 3) and tuple(rgb[71, 160]) == COLORS[1] and tuple(rgb[46, 160]) == (255,) * 3
        r = _detect(server, "animal_openpose", picture)
        assert r.status_code == 200, r.text
        rgb = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        assert tuple(rgb[130, 255]) == (255, 255, 255) and tuple(rgb[240, 225]) == (150, 150, 150)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
