"""sd-webui-controlnet's face preprocessors (insightface's FaceAnalysis from the user's ONNX files, run with
OpenCV's dnn) and the IP-Adapter FaceID models.

The ONNX files are tiny graphs with the real files' names, folders, input and output names and shapes:
the SCRFD detector (``det_10g.onnx`` / ``scrfd_10g_bnkps.onnx``: (1, 3, 640, 640) in, nine outputs: the
scores, box and keypoint distances of the stride 8, 16 and 32 grids, 2 anchors per position) gives
constant outputs holding known faces (one suppressed by NMS, one under the threshold, a smaller one
scoring higher than the largest); the ArcFace recogniser (``w600k_r50.onnx`` / ``glintr100.onnx``:
(1, 3, 112, 112) in, (1, 512) out) gives 512 chosen values of its input, so the embedding shows the
aligned crop and its normalisation. The FaceID adapters are tiny ones in the released layout
(``image_proj``: MLPProjModelFaceId / ProjModelFaceIdPlus; ``ip_adapter``: to_k_ip / to_v_ip and the
LoRA tensors) for the tiny SD1 UNet, run through the API's txt2img units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from onnx import TensorProto, checker, helper, numpy_helper, save
from PIL import Image

from modules.core import controlnet_model, controlnet_preprocessors, face_analysis as fa, ip_adapter
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.services import controlnets
from tests.api_common import assert_error, decode
from tests.fixtures.tiny_controlnets import build_clip_vision, ip_adapter_layer_widths, write_clip_vision, write_ip_adapter
from tests.fixtures.tiny_models import unet_config
from tests.pictures import b64
from tests.test_controlnet import _pixels, _txt2img

CROSS = unet_config("sd1")["cross_attention_dim"]
# the real files' output names (det_10g.onnx), in the file's order: scores, boxes, keypoints per stride
DET_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
PICTURE_W, PICTURE_H = 320, 240  # scaled by 2 into the detector's 640x640 (640x480 at the top)
# face A (the largest) in the picture's pixels: box and the 5 keypoints, an exact similarity of the
# ArcFace template (so the alignment is known): scale 1/0.9, rotated 8 degrees, shifted
_ANGLE, _SCALE = np.deg2rad(8.0), 0.9
M_TRUE = np.array([[_SCALE * np.cos(_ANGLE), -_SCALE * np.sin(_ANGLE), -40.0],
                   [_SCALE * np.sin(_ANGLE), _SCALE * np.cos(_ANGLE), -12.0]])  # picture -> crop
KPS_A = ((fa.ARCFACE_TEMPLATE - M_TRUE[:, 2]) @ np.linalg.inv(M_TRUE[:, :2]).T).astype(np.float64)
BOX_A = np.array([48.0, 24.0, 128.0, 120.0])
BOX_C = np.array([232.0, 32.0, 248.0, 48.0])  # smaller, scoring higher


def _save(path: Path, nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def constant_onnx(path, input_shape, outputs: dict[str, np.ndarray]):
    """A graph reading ``input.1`` whose outputs are the given arrays (plus 0 x the input's mean)."""
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"v{name}"))
        nodes.append(helper.make_node("Add", ["nothing", f"v{name}"], [name]))
    return _save(Path(path), nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, input_shape)],
                 [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in outputs.items()],
                 inits)


def _anchor(stride: int, box_input, kps_input, score: float, anchor: int = 0):
    """(stride, row, score, box distances, keypoint distances) of a face whose box and keypoints are
    given in the 640 px input, at the grid cell holding the box's centre."""
    box_input, kps_input = np.asarray(box_input, float), np.asarray(kps_input, float)
    cells = 640 // stride
    gx, gy = int((box_input[0] + box_input[2]) / 2 // stride), int((box_input[1] + box_input[3]) / 2 // stride)
    c = np.array([gx, gy]) * stride
    d = np.concatenate([c - box_input[:2], box_input[2:] - c]) / stride
    k = (kps_input - c).reshape(-1) / stride
    return stride, (gy * cells + gx) * 2 + anchor, score, d, k


FACES = [
    _anchor(32, BOX_A * 2, KPS_A * 2, 0.9, anchor=1),  # A
    _anchor(16, BOX_A * 2 + [2, 2, -2, -2], KPS_A * 2, 0.8),  # over A: suppressed
    _anchor(8, BOX_C * 2, np.tile((BOX_C[:2] + BOX_C[2:]), (5, 1)), 0.95),  # C: all keypoints at its centre
    _anchor(8, [10, 300, 60, 360], np.zeros((5, 2)) + 30, 0.49),  # under 0.5: dropped
]


def write_detector(path, faces=FACES, batched=False):
    outs = {}
    for i, stride in enumerate(fa.STRIDES):
        rows = (640 // stride) ** 2 * 2
        score, box, kps = np.zeros((rows, 1)), np.zeros((rows, 4)), np.zeros((rows, 10))
        for s, row, sc, d, k in faces:
            if s == stride:
                score[row, 0], box[row], kps[row] = sc, d, k
        for name, value in zip(DET_OUTPUTS[i::3], (score, box, kps)):
            outs[name] = value[None] if batched else value
    order = list(DET_OUTPUTS[::-1]) if batched else list(DET_OUTPUTS)  # any order: told apart by shapes
    return constant_onnx(path, [1, 3, 640, 640], {n: outs[n] for n in order})


PICKED = np.random.default_rng(5).choice(3 * 112 * 112, 512, replace=False)


def write_recognizer(path):
    """ArcFace's face: (1, 3, 112, 112) -> (1, 512), here 512 chosen values of the input (channel-major)."""
    nodes = [helper.make_node("Reshape", ["input.1", "shape"], ["flat"]),
             helper.make_node("Gather", ["flat", "picked"], ["683"], axis=1)]
    inits = [numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
             numpy_helper.from_array(PICKED.astype(np.int64), "picked")]
    return _save(Path(path), nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
                 [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])], inits)


def _picture() -> np.ndarray:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (PICTURE_H // 8, PICTURE_W // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((PICTURE_W, PICTURE_H), Image.BILINEAR))


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    return {"det": write_detector(root / "det_10g.onnx"), "det_batched": write_detector(root / "b.onnx", batched=True),
            "rec": write_recognizer(root / "w600k_r50.onnx"), "none": write_detector(root / "none.onnx", faces=[])}


# ------------------------------------------------------------------------------------ face analysis

def test_detection_decodes_boxes_and_keypoints_and_suppresses(onnx_files):
    for key in ("det", "det_batched"):
        faces = fa.detect_faces(fa.network(onnx_files[key]), _picture())
        assert len(faces) == 2, key  # the overlapping one suppressed, the one under 0.5 dropped
        c, a = faces  # best score first
        assert c.score == pytest.approx(0.95) and a.score == pytest.approx(0.9)
        np.testing.assert_allclose(c.box, BOX_C, atol=1e-4)
        np.testing.assert_allclose(c.keypoints, np.tile((BOX_C[:2] + BOX_C[2:]) / 2, (5, 1)), atol=1e-4)
        np.testing.assert_allclose(a.box, BOX_A, atol=1e-4)
        np.testing.assert_allclose(a.keypoints, KPS_A, atol=1e-4)
        assert fa.largest(faces) is a  # the largest box, not the best score
    with pytest.raises(ValueError, match="No face found"):
        fa.largest(fa.detect_faces(fa.network(onnx_files["none"]), _picture()))


def test_similarity_is_the_least_squares_one():
    np.testing.assert_allclose(fa.similarity(KPS_A, fa.ARCFACE_TEMPLATE), M_TRUE, atol=1e-5)
    rng = np.random.default_rng(0)
    src, dst = rng.normal(size=(5, 2)) * 30 + 60, rng.normal(size=(5, 2)) * 20 + 56
    x, y = src[:, 0], src[:, 1]  # [x -y 1 0; y x 0 1] (a, b, tx, ty) = (u, v), solved independently
    rows = np.concatenate([np.stack([x, -y, np.ones(5), np.zeros(5)], 1), np.stack([y, x, np.zeros(5), np.ones(5)], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    np.testing.assert_allclose(fa.similarity(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_embedding_is_arcface_on_the_aligned_crop(onnx_files):
    import cv2
    picture = _picture()
    files = [onnx_files["det"], onnx_files["rec"]]
    face = fa.analyze(picture, files)
    crop = cv2.warpAffine(picture, M_TRUE, (112, 112), borderValue=0.0)  # the crop of the known alignment
    want = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1).reshape(-1)[PICKED]
    np.testing.assert_allclose(face.embedding, want, atol=2.5 / 127.5)
    assert np.abs(face.embedding - want).mean() < 0.2 / 127.5
    normed = fa.face_id_embedding(picture, files)
    assert normed.shape == (1, 512)
    np.testing.assert_allclose(normed[0], face.embedding / np.linalg.norm(face.embedding), rtol=1e-6)


def test_instant_id_keypoints_map_is_drawn_as_the_extension(onnx_files):
    picture = _picture()  # 240 high: at resolution 240 the picture as it is, padded to 320x256
    drawn = fa.instant_id_keypoints(picture, 240, [onnx_files["det"]])
    assert drawn.shape == (240, 320, 3) and drawn.dtype == np.uint8
    colors = {(255, 0, 0): KPS_A[0], (0, 255, 0): KPS_A[1], (0, 0, 255): KPS_A[2], (255, 255, 0): KPS_A[3],
              (255, 0, 255): KPS_A[4]}
    for color, (x, y) in colors.items():  # each keypoint a disc of radius 10 in its colour
        assert tuple(drawn[int(y), int(x)]) == color
        assert tuple(drawn[int(y) + 9, int(x)]) == color or np.linalg.norm(KPS_A - [x, y + 9], axis=1).min() < 9
    # the limbs to the nose: ellipses in the first point's colour at 0.6, under the discs
    mid = (KPS_A[3] + KPS_A[2]) / 2
    assert min(np.linalg.norm(KPS_A - mid, axis=1)) > 10.5
    assert tuple(drawn[int(mid[1]), int(mid[0])]) == (153, 153, 0)
    assert tuple(drawn[0, 0]) == (0, 0, 0) and tuple(drawn[230, 300]) == (0, 0, 0)
    np.testing.assert_array_equal(drawn, fa.draw_keypoints(256, 320, KPS_A)[:240])


# ------------------------------------------------------------------------------------ FaceID files

def faceid_state(*, zero=False, seed=0, plus_hidden: int | None = None) -> dict:
    """A FaceID adapter for the tiny SD1 UNet in the released layout (4 tokens); ``plus_hidden``: FaceID
    plus (ProjModelFaceIdPlus's resampler reading CLIP hidden states of that width)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        t = torch.randn(shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)
        return torch.zeros(shape) if zero else t.half().float()

    proj = {"proj.0.weight": rand(1024, 512), "proj.0.bias": rand(1024, scale=0.02),
            "proj.2.weight": rand(4 * CROSS, 1024), "proj.2.bias": rand(4 * CROSS, scale=0.02),
            "norm.weight": 1 + rand(CROSS, scale=0.05), "norm.bias": rand(CROSS, scale=0.02)}
    if zero:
        proj["norm.weight"] = torch.zeros(CROSS)
    if plus_hidden:
        p = "perceiver_resampler."
        proj.update({p + "proj_in.weight": rand(CROSS, plus_hidden), p + "proj_in.bias": rand(CROSS, scale=0.02),
                     p + "proj_out.weight": rand(CROSS, CROSS), p + "proj_out.bias": rand(CROSS, scale=0.02),
                     p + "norm_out.weight": 1 + rand(CROSS, scale=0.05), p + "norm_out.bias": rand(CROSS, scale=0.02)})
        for i in range(4):
            for n in ("0.norm1", "0.norm2", "1.0"):
                proj[f"{p}layers.{i}.{n}.weight"] = 1 + rand(CROSS, scale=0.05)
                proj[f"{p}layers.{i}.{n}.bias"] = rand(CROSS, scale=0.02)
            proj[f"{p}layers.{i}.0.to_q.weight"] = rand(CROSS, CROSS)
            proj[f"{p}layers.{i}.0.to_kv.weight"] = rand(2 * CROSS, CROSS)
            proj[f"{p}layers.{i}.0.to_out.weight"] = rand(CROSS, CROSS)
            proj[f"{p}layers.{i}.1.1.weight"] = rand(4 * CROSS, CROSS)
            proj[f"{p}layers.{i}.1.3.weight"] = rand(CROSS, 4 * CROSS)
    layers = {}
    for j, width in enumerate(ip_adapter_layer_widths("sd1")):
        layers[f"{2 * j + 1}.to_k_ip.weight"] = rand(width, CROSS)
        layers[f"{2 * j + 1}.to_v_ip.weight"] = rand(width, CROSS)
        for i in (2 * j, 2 * j + 1):  # the LoRA of the FaceID training (not applied: its own LoRA file is)
            layers[f"{i}.to_q_lora.down.weight"] = rand(4, width)
            layers[f"{i}.to_q_lora.up.weight"] = rand(width, 4)
    return {"image_proj": proj, "ip_adapter": layers}


def test_faceid_files_are_told_from_keys_and_shapes(tmp_path):
    state = faceid_state(seed=1)
    built = controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid_sd15.bin", state))
    assert (built.kind, built.layers, built.cross_attention_dim, built.embed_dim) == ("faceid", 4, CROSS, 512)
    emb = torch.randn(1, 512)
    cond, uncond = ip_adapter.face_tokens(built, emb.numpy())
    p = {k: v.float() for k, v in torch.load(tmp_path / "ip-adapter-faceid_sd15.bin", weights_only=True)["image_proj"].items()}

    def mlp(x):  # MLPProjModelFaceId: Linear, GELU, Linear -> 4 tokens -> LayerNorm
        h = torch.nn.functional.gelu(x @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
        return torch.nn.functional.layer_norm(h.reshape(-1, 4, CROSS), (CROSS,), p["norm.weight"], p["norm.bias"])
    torch.testing.assert_close(cond, mlp(emb), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(uncond, mlp(torch.zeros(1, 512)), atol=1e-4, rtol=1e-4)
    st = controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid_sdxl_st.safetensors", state))
    assert st.kind == "faceid"
    broken = {"image_proj": {"proj.weight": torch.zeros(4 * CROSS, 512)}, "ip_adapter": state["ip_adapter"]}
    with pytest.raises(UnsupportedCheckpoint, match="FaceID"):
        controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid_broken.bin", broken))
    with pytest.raises(UnsupportedCheckpoint, match="InstantID"):
        controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter_instant_id_sdxl.bin", state))


def test_faceid_plus_and_its_v2_shortcut(tmp_path):
    clip = build_clip_vision(dtype=torch.float32)
    state = faceid_state(seed=2, plus_hidden=clip.config.hidden_size)
    v1 = controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid-plus_sd15.bin", state))
    v2 = controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid-plusv2_sd15.bin", state))
    assert (v1.kind, v1.embed_dim, v1.shortcut, v2.shortcut) == ("faceid_plus", clip.config.hidden_size, False, True)
    emb, pic = np.random.default_rng(1).normal(size=(1, 512)), Image.fromarray(_picture())
    c1, u1 = ip_adapter.face_tokens(v1, emb, clip, pic)
    c2, u2 = ip_adapter.face_tokens(v2, emb, clip, pic)
    assert c1.shape == u1.shape == (1, 4, CROSS) and not torch.allclose(c1, u1)
    faceid = controlnet_model.load(write_ip_adapter(tmp_path / "ip-adapter-faceid_sd15.bin", faceid_state(seed=2)))
    id_tokens = ip_adapter.face_tokens(faceid, emb)  # the same MLP: v2 adds its tokens to the resampler's
    torch.testing.assert_close(c2, c1 + id_tokens[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(u2, u1 + id_tokens[1], atol=1e-4, rtol=1e-4)


def test_rows_are_listed_as_the_extension():
    for name, tags, files in (("ip-adapter_face_id", ("IP-Adapter",), fa.BUFFALO_L_FILES),
                              ("instant_id_face_embedding", ("Instant-ID",), fa.ANTELOPEV2_FILES),
                              ("instant_id_face_keypoints", ("Instant-ID",), fa.ANTELOPEV2_FILES[:1])):
        row = controlnet_preprocessors.find(name)
        assert (row.tags, row.weights, row.resolution, row.title) == (tags, files, None, name)
    assert controlnet_preprocessors.find("ip-adapter_face_id_plus").weights[-1] == "clip_vision/clip_h.pth"
    assert fa.BUFFALO_L_FILES == ("insightface/models/buffalo_l/det_10g.onnx", "insightface/models/buffalo_l/w600k_r50.onnx")


# ------------------------------------------------------------------------------------------ API

def _detect(server, module, image, res=240):
    return requests.post(server.url + "/controlnet/detect", timeout=120, json={
        "controlnet_module": module, "controlnet_input_images": [b64(image)], "controlnet_processor_res": res})


@pytest.fixture(scope="module")
def face_folders(server, onnx_files):
    root = server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER / "insightface" / "models"
    written = []

    def put(source, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(source).read_bytes())
        written.append(target)
    yield root, put
    for path in written:
        path.unlink(missing_ok=True)


def test_api_detect_face_rows(server, onnx_files, face_folders):
    root, put = face_folders
    picture = Image.fromarray(_picture())
    r = _detect(server, "instant_id_face_keypoints", picture)
    assert r.status_code == 422 and f"put scrfd_10g_bnkps.onnx in {root / 'antelopev2'}" in r.json()["detail"]
    r = _detect(server, "ip-adapter_face_id", picture)
    detail = r.json()["detail"]
    assert r.status_code == 422 and "det_10g.onnx" in detail and f"w600k_r50.onnx in {root / 'buffalo_l'}" in detail
    put(onnx_files["det"], root / "antelopev2" / "scrfd_10g_bnkps.onnx")
    r = _detect(server, "instant_id_face_keypoints", picture)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(decode(r.json()["images"][0]).convert("RGB")),
                                  fa.draw_keypoints(256, 320, KPS_A)[:240])
    put(onnx_files["rec"], root / "antelopev2" / "glintr100.onnx")
    assert _detect(server, "instant_id_face_embedding", picture).status_code == 200
    put(onnx_files["none"], root / "buffalo_l" / "det_10g.onnx")
    put(onnx_files["rec"], root / "buffalo_l" / "w600k_r50.onnx")
    r = _detect(server, "ip-adapter_face_id", picture)
    assert r.status_code == 422 and "No face found" in r.json()["detail"]
    put(onnx_files["det"], root / "buffalo_l" / "det_10g.onnx")
    r = _detect(server, "ip-adapter_face_id", picture)
    assert r.status_code == 200, r.text


def test_api_faceid_units(server, onnx_files, face_folders, tmp_path):
    root, put = face_folders
    put(onnx_files["det"], root / "buffalo_l" / "det_10g.onnx")
    put(onnx_files["rec"], root / "buffalo_l" / "w600k_r50.onnx")
    folder = server.data_dir / "models" / "ControlNet"
    titles = {}
    for key, state in (("zero", faceid_state(zero=True)), ("random", faceid_state(seed=3))):
        target = write_ip_adapter(folder / f"ip-adapter-faceid_{key}_sd15.bin", state)
        put(target, target)
        titles[key] = f"{target.stem} [{controlnets.short_hash(target)}]"
    unit = {"enabled": True, "module": "ip-adapter_face_id", "image": b64(Image.fromarray(_picture()))}
    plain = _pixels(_txt2img(server))
    assert np.array_equal(_pixels(_txt2img(server, [{**unit, "model": titles["zero"]}])), plain)
    steered = _pixels(_txt2img(server, [{**unit, "model": titles["random"]}]))
    assert np.abs(steered.astype(int) - plain).max() > 8
    # FaceID plus: the embedding and the picture's CLIP-H features (clip_h.pth), with its own module
    clip_path = root.parent.parent / "clip_vision" / "clip_h.pth"
    put(write_clip_vision(tmp_path / "clip_h.pth", build_clip_vision()), clip_path)
    plus = write_ip_adapter(folder / "ip-adapter-faceid-plusv2_sd15.bin", faceid_state(seed=4, plus_hidden=32))
    put(plus, plus)
    plus_title = f"{plus.stem} [{controlnets.short_hash(plus)}]"
    r = _txt2img(server, [{**unit, "model": plus_title}])  # FaceID's module for a FaceID plus file: refused
    assert "needs the module ip-adapter_face_id_plus" in assert_error(r, "alwayson_scripts")
    plus_pixels = _pixels(_txt2img(server, [{**unit, "model": plus_title, "module": "ip-adapter_face_id_plus"}]))
    assert np.abs(plus_pixels.astype(int) - plain).max() > 8 and not np.array_equal(plus_pixels, steered)
    (root / "buffalo_l" / "w600k_r50.onnx").unlink()
    r = _txt2img(server, [{**unit, "model": titles["random"]}])
    assert f"put w600k_r50.onnx in {root / 'buffalo_l'}" in assert_error(r, "alwayson_scripts")
