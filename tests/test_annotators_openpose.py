"""sd-webui-controlnet's ``openpose`` preprocessor (the body network) run from a tiny random
``openpose/body_pose_model.pth`` in the real key layout (a plain state dict keyed by the layers' names),
compared with an independent functional reference of the network through the shared server's
``/controlnet/detect`` and a txt2img unit; the extension's reading of the maps into people and their
drawing checked exactly on heatmaps and affinity fields built by hand; a file that is not the network: a
422 naming the module and the file."""

from __future__ import annotations

import cv2
import numpy as np
import requests
import torch
import torch.nn.functional as F

from modules.core import annotator_openpose as op
from modules.core import annotator_openpose_hand_face as hf
from modules.services import controlnets
from tests.api_common import assert_error, decode
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures

BACKBONE = [("conv1_1", False), ("conv1_2", True), ("conv2_1", False), ("conv2_2", True), ("conv3_1", False),
            ("conv3_2", False), ("conv3_3", False), ("conv3_4", True), ("conv4_1", False), ("conv4_2", False),
            ("conv4_3_CPM", False), ("conv4_4_CPM", False)]  # (name, a 2x2 max pool after it)


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


def _detect(server, image, module, **extra):
    return requests.post(server.url + "/controlnet/detect", timeout=120, json={
        "controlnet_module": module, "controlnet_input_images": [b64(image)], **extra})


def _branch(stage: int, branch: int) -> list[tuple[str, int]]:
    """(name, kernel) of one stage's branch; the real file's kernels: 3, 3, 3, 1, 1 and 7 x5, 1, 1."""
    if stage == 1:
        return [(f"conv5_{i}_CPM_L{branch}", 3 if i <= 3 else 1) for i in range(1, 6)]
    return [(f"Mconv{i}_stage{stage}_L{branch}", 7 if i <= 5 else 1) for i in range(1, 8)]


def write_tiny_body(path, width=6, seed=0, heat_bias=0.0) -> dict:
    """A random body_pose_model state dict, narrow (the real file: 64 .. 512 wide, 128 in the stages);
    ``heat_bias`` is added to the last heatmaps' biases (lower: fewer parts found)."""
    g = torch.Generator().manual_seed(seed)
    state, channels = {}, 3
    for index, (name, _) in enumerate(BACKBONE):
        out = width + index % 3
        state[f"{name}.weight"] = torch.randn(out, channels, 3, 3, generator=g) * (1.5 / (channels * 9) ** 0.5)
        state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.1
        channels = out
    features, into = channels, channels
    for stage in range(1, 7):
        for branch, last in ((1, 38), (2, 19)):
            width_in = into
            for i, (name, kernel) in enumerate(_branch(stage, branch)):
                out = last if i == len(_branch(stage, branch)) - 1 else width
                state[f"{name}.weight"] = torch.randn(out, width_in, kernel, kernel, generator=g) * (
                    1.5 / (width_in * kernel * kernel) ** 0.5)
                state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.1
                width_in = out
        into = 38 + 19 + features
    state["Mconv7_stage6_L2.bias"] += heat_bias
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_body(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The body network with functional ops: ReLU after every convolution but each branch's last,
    except stage 6's heatmaps (the original's list of layers without one misses it)."""
    def conv(t, name):
        w = state[f"{name}.weight"]
        return F.conv2d(t, w, state[f"{name}.bias"], padding=w.shape[-1] // 2)

    for name, pool in BACKBONE:
        x = F.relu(conv(x, name))
        x = F.max_pool2d(x, 2, 2) if pool else x
    features, inputs = x, x
    for stage in range(1, 7):
        outs = []
        for branch in (1, 2):
            t = inputs
            layers = _branch(stage, branch)
            for i, (name, _) in enumerate(layers):
                t = conv(t, name)
                if i < len(layers) - 1 or (stage == 6 and branch == 2):
                    t = F.relu(t)
            outs.append(t)
        inputs = torch.cat([*outs, features], 1)
    return outs[0], outs[1]


# ------------------------------------------------------------------------------- maps built by hand

POINTS = [(48, 24), (48, 40), (34, 40), (28, 56), (26, 72), (62, 40), (68, 56), (70, 72), (40, 76), (38, 96),
          (38, 116), (56, 76), (58, 96), (58, 116), (40, 14), (56, 14), (28, 24), (68, 24)]  # 18 parts, (x, y)


def hand_made_maps(points, height=128, width=96, reverse=()):
    """Heatmaps with a bump (sigma 2) at each part, affinity fields pointing along each limb in a band
    1.5 px around it (``reverse``: limbs whose field points the wrong way)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    heat, pafs = np.zeros((height, width, 19)), np.zeros((height, width, 38))
    for part, point in enumerate(points):
        if point is not None:
            heat[:, :, part] = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / 8.0)
    for limb, ((a, b), (cx, cy)) in enumerate(zip(op.LIMBS, op.LIMB_FIELDS)):
        if points[a] is None or points[b] is None:
            continue
        (x0, y0), (x1, y1) = points[a], points[b]
        length = np.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        along, across = (xx - x0) * ux + (yy - y0) * uy, np.abs((xx - x0) * uy - (yy - y0) * ux)
        band = (along >= -1) & (along <= length + 1) & (across <= 1.5)
        sign = -1.0 if limb in reverse else 1.0
        pafs[:, :, cx][band], pafs[:, :, cy][band] = sign * ux, sign * uy
    return heat, pafs


def test_people_are_found_and_drawn_as_the_extension_draws_them():
    heat, pafs = hand_made_maps(POINTS)
    people = op.find_people(heat, pafs)
    assert people == [[(float(x), float(y)) for x, y in POINTS]]
    canvas = op.draw_bodies(people, 128, 96)
    for (x, y), color in zip(POINTS, op.COLORS):  # the dots in the parts' colours, radius 4
        assert tuple(canvas[y, x]) == color and tuple(canvas[y + 4, x]) == color
    # a limb's middle in 0.6 of its colour: the right lower leg (9 -> 10) and the left upper arm (5 -> 6)
    for limb, (x, y) in ((8, (38, 106)), (4, (65, 48))):
        assert tuple(canvas[y, x]) == tuple(int(c * 0.6) for c in op.COLORS[limb])
    assert canvas[5, 5].max() == 0 and canvas[126, 90].max() == 0 and (canvas.max(2) > 0).mean() < 0.25
    # the ear-shoulder limbs are never drawn: between the right ear and shoulder stays black
    assert canvas[32, 31].max() == 0
    # a person with under four parts is dropped; fields pointing the wrong way join no limbs
    three = [p if i in (1, 2, 3) else None for i, p in enumerate(POINTS)]
    assert op.find_people(*hand_made_maps(three)) == []
    assert op.find_people(*hand_made_maps(POINTS, reverse=range(19))) == []
    # two people side by side: both found, each whole
    left = [(x // 2, y) for x, y in POINTS]
    right = [(x // 2 + 48, y) for x, y in POINTS]
    (h1, p1), (h2, p2) = hand_made_maps(left), hand_made_maps(right)
    found = op.find_people(np.maximum(h1, h2), p1 + p2)
    assert sorted(found) == sorted([[(float(x), float(y)) for x, y in ps] for ps in (left, right)])


def test_stride_8_maps_are_scaled_back_to_the_picture():
    """The network's maps at stride 8 of the 184-px-high padded input come back at the picture's size."""
    heat, pafs = hand_made_maps(POINTS)
    seen = []

    def net(x):  # the hand-made maps laid over the network's input (184 x 138 of it), at stride 8
        seen.append(tuple(x.shape))
        down = [torch.from_numpy(np.ascontiguousarray(m.transpose(2, 0, 1)))[None].float() for m in (pafs, heat)]
        return tuple(F.avg_pool2d(F.pad(F.interpolate(d, size=(184, 138), mode="bilinear"), (0, 6)), 8)
                     for d in down)

    big_heat, big_pafs = op.maps(net, np.zeros((128, 96, 3), np.uint8))
    assert seen == [(1, 3, 184, 144)]  # 128 x 96 scaled to 184 x 138, padded to multiples of 8
    assert big_heat.shape == (128, 96, 19) and big_pafs.shape == (128, 96, 38)
    (person,) = op.find_people(big_heat, big_pafs)
    assert all(abs(x - px) <= 2 and abs(y - py) <= 2 for (x, y), (px, py) in zip(person, POINTS))


# ------------------------------------------------------------------------------ the user's file

def test_openpose_runs_from_the_users_body_file(server, api_models):
    folder = _annotators(server) / "openpose"
    path = _annotators(server) / op.FILE
    image = picture(64, 48)
    # only the body file is asked for (the hand and face networks are not read)
    r = _detect(server, image, "openpose")
    assert r.status_code == 422 and "body_pose_model.pth" in r.json()["detail"]
    assert "facenet.pth" not in r.json()["detail"] and str(folder) in r.json()["detail"]
    state = write_tiny_body(path)
    try:
        got = _detect(server, image, "openpose", controlnet_processor_res=64)
        assert got.status_code == 200, got.text
        drawn = np.asarray(decode(got.json()["images"][0]).convert("RGB"))
        assert drawn.shape == (64, 85, 3)  # the 64-px short side, the padding cut off
        net = op.network(path)
        x = torch.rand(1, 3, 48, 40) - 0.5
        with torch.no_grad():
            for mine, ref in zip(net(x), reference_body(state, x)):
                assert mine.shape == ref.shape and torch.allclose(mine, ref, atol=1e-5)
        # the same picture through the reference network and the extension's reading of its maps
        padded = cv2.resize(np.asarray(image.convert("RGB")), (85, 64), interpolation=cv2.INTER_CUBIC)
        padded = np.pad(padded, [[0, 0], [0, 43], [0, 0]], mode="edge")  # the extension's resize_image_with_pad
        heat, pafs = op.maps(lambda t: reference_body(state, t), padded[:, :, ::-1].copy())
        assert heat.shape == (64, 128, 19) and heat.std() > 0
        people = op.find_people(heat, pafs)  # the random network's maps hold a few "people"
        assert len(people) >= 1 and np.array_equal(drawn, op.draw_bodies(people, 64, 128)[:, :85])
        assert drawn.max() == 255 and set(map(tuple, drawn.reshape(-1, 3))) <= {(0, 0, 0), *op.COLORS, *[
            tuple(int(c * 0.6) for c in color) for color in op.COLORS]}  # the parts' and limbs' colours only
        unit = {"enabled": True, "module": "openpose", "model": api_models["ldm"], "image": b64(image),
                "processor_res": 64}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))  # the unit steers the picture
        assert "Module: openpose, " in r.json()["info"]
        # a file that is not the body network: refused, naming the module and the file
        torch.save({k: v for k, v in state.items() if not k.startswith("Mconv7_stage6")}, path)
        r = _detect(server, image, "openpose")
        assert r.status_code == 422 and "body_pose_model.pth" in r.json()["detail"]
        assert "Mconv7_stage6_L1" in r.json()["detail"]
        bad = dict(state, **{"conv5_5_CPM_L2.weight": torch.zeros(18, 6, 1, 1), "conv5_5_CPM_L2.bias": torch.zeros(18)})
        torch.save(bad, path)
        assert "not 19" in _detect(server, image, "openpose").json()["detail"]
        path.write_bytes(b"PK\x03\x04 not a state dict")
        assert "module(openpose)" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        path.unlink()


# ------------------------------------------------------------------------------------ hands and face

CPM_BACKBONE = [("conv1_1", False), ("conv1_2", True), ("conv2_1", False), ("conv2_2", True), ("conv3_1", False),
                ("conv3_2", False), ("conv3_3", False), ("conv3_4", True), ("conv4_1", False), ("conv4_2", False),
                ("conv4_3", False), ("conv4_4", False), ("conv5_1", False), ("conv5_2", False),
                ("conv5_3_CPM", False)]
CPM_STAGES = [[("conv6_1_CPM", 1), ("conv6_2_CPM", 1)]] + [
    [(f"Mconv{i}_stage{s}", 7 if i <= 5 else 1) for i in range(1, 8)] for s in range(2, 7)]


def write_tiny_cpm(path, maps: int, width=5, seed=0) -> dict:
    """A random hand (22 maps) or face (71 maps) state dict in the real layout, narrow (the real files:
    64 .. 512 wide, 128 in the stages); the last biases lifted so some maps pass the thresholds."""
    g = torch.Generator().manual_seed(seed)
    state, channels = {}, 3
    for index, (name, _) in enumerate(CPM_BACKBONE):
        out = width + index % 2
        state[f"{name}.weight"] = torch.randn(out, channels, 3, 3, generator=g) * (1.5 / (channels * 9) ** 0.5)
        state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.1
        channels = out
    features, into = channels, channels
    for stage in CPM_STAGES:
        for i, (name, kernel) in enumerate(stage):
            out = maps if i == len(stage) - 1 else width
            state[f"{name}.weight"] = torch.randn(out, into, kernel, kernel, generator=g) * (
                1.5 / (into * kernel * kernel) ** 0.5)
            state[f"{name}.bias"] = torch.rand(out, generator=g) * 0.4 - 0.1
            into = out
        into = maps + features
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_cpm(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The hand / face network with functional ops: the last stage's maps."""
    def conv(t, name):
        w = state[f"{name}.weight"]
        return F.conv2d(t, w, state[f"{name}.bias"], padding=w.shape[-1] // 2)

    for name, pool in CPM_BACKBONE:
        x = F.relu(conv(x, name))
        x = F.max_pool2d(x, 2, 2) if pool else x
    features, t = x, x
    for index, stage in enumerate(CPM_STAGES):
        t = torch.cat([t, features], 1) if index else t
        for i, (name, _) in enumerate(stage):
            t = conv(t, name)
            t = F.relu(t) if i < len(stage) - 1 else t
    return t


def test_hand_and_face_boxes_and_drawing():
    parts = [(float(x), float(y)) for x, y in POINTS]
    # a hand's box: 1.5 x the longer of wrist-elbow and 0.9 elbow-shoulder, centred a third beyond the wrist
    (x, y, side, left), (x2, y2, side2, left2) = hf.hand_boxes(parts, 128, 96)
    forearm, upper = np.hypot(2, 16), np.hypot(6, 16)  # the left arm: (62,40) (68,56) (70,72)
    s = 1.5 * max(forearm, 0.9 * upper)
    assert left and not left2 and (x, y, side) == (int(70 + 0.33 * 2 - s / 2), int(72 + 0.33 * 16 - s / 2), int(s))
    assert side2 >= 20 and hf.hand_boxes(parts, 128, 96)[1][:2] == (x2, y2)
    assert hf.hand_boxes([p if i not in (4, 7) else None for i, p in enumerate(parts)], 128, 96) == []
    # the face's box: 3x the nose-eye offset (10 -> 30), 1.5x the nose-ear one (20 -> 30), twice that across
    assert hf.face_box(parts, 128, 96) == (18, 0, 60)
    assert hf.face_box([p if i < 14 else None for i, p in enumerate(parts)], 128, 96) is None
    canvas = np.zeros((64, 64, 3), np.uint8)
    joints = np.array([(0.5, 0.25)] + [(0.5 + 0.02 * i, 0.25 + 0.02 * i) for i in range(1, 21)], np.float32)
    joints[20] = (-1 / 64, -1 / 64)  # not found: not drawn
    hf.draw_hand(canvas, joints)
    assert tuple(canvas[16, 32]) == (0, 0, 255) and tuple(canvas[16 + 25, 32 + 25]) == (0, 0, 255)
    assert canvas[63, 63].max() == 0 and canvas[0, 0].max() == 0
    face = np.zeros((64, 64, 3), np.uint8)
    hf.draw_face(face, np.array([(0.25, 0.5), (0.75, 0.75), (-1 / 64, 0.5)], np.float32))
    assert tuple(face[32, 16]) == (255, 255, 255) and tuple(face[48 + 3, 48]) == (255, 255, 255)
    assert (face.max(2) > 0).sum() == 2 * 29  # two dots of radius 3 (29 px each), the third not drawn


def test_hand_joints_and_face_landmarks_from_their_maps():
    """Maps with one bump per joint where it is in the crop come back as the joints' pixels."""
    where = [(0.2 + 0.03 * k, 0.7 - 0.025 * k) for k in range(22)]  # fractions of the crop

    def bumps(x, count):
        h, w = x.shape[2] // 8, x.shape[3] // 8
        yy, xx = np.mgrid[0:h, 0:w] * 8.0
        out = [np.exp(-((xx - fx * x.shape[3]) ** 2 + (yy - fy * x.shape[2]) ** 2) / (2 * (0.05 * x.shape[3]) ** 2))
               for fx, fy in where[:count]]
        return torch.from_numpy(np.stack(out)[None]).float()

    crop = np.zeros((50, 50, 3), np.uint8)
    joints = hf.hand_joints(lambda x: bumps(x, 22), crop)
    assert joints.shape == (21, 2)
    assert np.abs(joints - np.array(where[:21]) * 50).max() <= 2
    landmarks = hf.face_landmarks(lambda x: bumps(x, 22), crop)  # (a face's 71 maps, 22 here)
    assert landmarks.shape == (22, 2) and np.abs(landmarks - np.array(where) * 50).max() <= 2
    fractions = hf.as_fractions(np.array([(0, 5), (7, 9)], np.float32), 10, 20, 100, 200)
    assert fractions.dtype == np.float32 and np.allclose(fractions, [(-1 / 200, 25 / 100), (17 / 200, 29 / 100)])


def test_openpose_hand_and_face_run_from_the_users_files(server):
    folder = _annotators(server) / "openpose"
    body, hand, face = folder / "body_pose_model.pth", folder / "hand_pose_model.pth", folder / "facenet.pth"
    image = picture(96, 128)
    r = _detect(server, image, "openpose_hand")
    assert r.status_code == 422 and "hand_pose_model.pth" in r.json()["detail"]
    assert "facenet.pth" not in r.json()["detail"]
    b_state = write_tiny_body(body, seed=17, heat_bias=-0.2)  # one "person" with a hand's box and a face's
    h_state, f_state = write_tiny_cpm(hand, 22), write_tiny_cpm(face, 71, seed=1)
    try:
        r = _detect(server, image, "openpose_face")  # the face file is enough for it
        assert r.status_code == 200, r.text
        with torch.no_grad():
            x = torch.rand(1, 3, 40, 40) - 0.5
            assert torch.allclose(hf.network(hand, hf.HAND_FILE)(x), reference_cpm(h_state, x), atol=1e-5)
        padded = cv2.resize(np.asarray(image.convert("RGB")), (512, 683), interpolation=cv2.INTER_CUBIC)
        padded = np.pad(padded, [[0, 21], [0, 0], [0, 0]], mode="edge")
        outputs = {}
        for module, (with_hand, with_face, with_body) in {
                "openpose_hand": (True, False, True), "openpose_face": (False, True, True),
                "openpose_faceonly": (False, True, False), "openpose_full": (True, True, True)}.items():
            got = np.asarray(decode(_detect(server, image, module).json()["images"][0]).convert("RGB"))
            with torch.no_grad():
                expected = hf.pose_map(lambda t: reference_body(b_state, t),
                                       (lambda t: reference_cpm(h_state, t)) if with_hand else None,
                                       (lambda t: reference_cpm(f_state, t)) if with_face else None,
                                       padded, with_body)[:683]
            assert got.shape == (683, 512, 3) and np.array_equal(got, expected), module
            outputs[module] = got
        plain = np.asarray(decode(_detect(server, image, "openpose").json()["images"][0]).convert("RGB"))
        assert plain.max() > 0 and not np.array_equal(outputs["openpose_full"], plain)
        assert not any(np.array_equal(outputs[m], plain) for m in ("openpose_hand", "openpose_face"))
        assert outputs["openpose_faceonly"].max() == 255  # white landmarks only, no body
        assert set(map(tuple, outputs["openpose_faceonly"].reshape(-1, 3))) == {(0, 0, 0), (255, 255, 255)}
        torch.save(h_state, face)  # a hand file where the face's goes: refused, naming the file
        r = _detect(server, image, "openpose_full")
        assert r.status_code == 422 and "facenet.pth" in r.json()["detail"] and "not 71" in r.json()["detail"]
    finally:
        for path in (body, hand, face):
            path.unlink()
