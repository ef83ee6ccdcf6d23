"""Face restoration (issue 15): GFPGAN and CodeFormer through the real loaders, the offline face
detector (OpenCV's Haar cascade) on a drawn face, the pasting-back that leaves everything outside
the face's crop untouched, and the API: restore_faces (txt2img, img2img), Extras' GFPGAN/CodeFormer
fields, /sdapi/v1/face-restorers, and the clear refusals (missing model, pickle bomb).

The models have random weights, built with the architectures' own classes (tests/face_models.py):
GFPGAN tiny (64 px); CodeFormer at the class's fixed encoder/decoder size with the smallest
transformer, so it runs only where needed (one Extras call in the server)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import face_detection, face_restoration
from modules.core.types import RequestError
from modules.services import extras, face_restorers
from modules.services.face_restorers import CASCADE, FaceRestorationHooks, FaceRestorers, folders_for
from tests.api_common import BASE, assert_error, decode
from tests.face_models import draw_face, tiny_gfpgan, write_codeformer, write_gfpgan
from tests.pictures import b64


class Bomb:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def scene() -> Image.Image:
    """The drawn face on the left of a wider picture: plenty of background to stay unchanged."""
    return draw_face((400, 256), center=(120, 128))


def face_area(image: Image.Image) -> np.ndarray:
    """True inside the crops of the faces the detector finds in ``image``."""
    faces = face_restoration.find_faces(image, face_detection.load_cascade(CASCADE))
    mask = np.zeros((image.height, image.width), bool)
    for face in faces:
        left, top, right, bottom = face_restoration.crop_region(face, image.width, image.height)
        mask[top:bottom, left:right] = True
    return mask


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    models = tmp_path_factory.mktemp("faces") / "models"
    write_gfpgan(models)
    return FaceRestorers(folders_for(object(), models), log=lambda _line: None)


# -- detection --------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.8, 1.0, 1.3])
def test_the_drawn_face_is_detected_offline(scale):
    cascade = face_detection.load_cascade(CASCADE)
    gray = cv2.cvtColor(np.asarray(draw_face(scale=scale)), cv2.COLOR_RGB2GRAY)
    boxes = face_detection.detect(gray, cascade)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert abs(x + w / 2 - 128) < 8 and abs(y + h / 2 - 128) < 12 and 100 * scale < w < 200 * scale


def test_no_face_in_a_plain_picture():
    cascade = face_detection.load_cascade(CASCADE)
    assert face_detection.detect(np.full((128, 128), 120, np.uint8), cascade) == []
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    assert face_detection.detect(gradient, cascade) == []


# -- loading ----------------------------------------------------------------------------------

def test_gfpgan_is_rebuilt_from_its_shapes_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    reference = tiny_gfpgan()
    path = write_gfpgan(tmp_path)
    model = face_restoration.build(path, expected="GFPGAN")
    assert model.architecture == "GFPGAN" and model.size == 64
    loaded = model.net.state_dict()
    saved = torch.load(path, weights_only=True)["params_ema"]
    assert set(loaded) == set(saved) == set(reference.state_dict())
    assert all(np.array_equal(loaded[k].numpy(), saved[k].numpy()) for k in saved)
    other = tmp_path / "GFPGAN" / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in saved.items()}, str(other))
    assert face_restoration.build(other).size == 64
    with pytest.raises(face_restoration.FaceModelError, match="not CodeFormer"):
        face_restoration.build(path, expected="CodeFormer")


def test_codeformer_loads_through_the_extra_arches_loader(tmp_path):
    path = write_codeformer(tmp_path)
    model = face_restoration.build(path, expected="CodeFormer")
    assert model.architecture == "CodeFormer" and model.size == 512
    assert model.net.connect_list == ["32", "64"] and len(model.net.ft_layers) == 1


def test_a_pickle_bomb_in_models_gfpgan_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "bomb-ran"
    folder = tmp_path / "models" / "GFPGAN"
    folder.mkdir(parents=True)
    with open(folder / "GFPGANv1.4.pth", "wb") as file:
        pickle.dump({"params_ema": {"toRGB.0.weight": Bomb(marker)}}, file)
    service = FaceRestorers(folders_for(object(), tmp_path / "models"), log=lambda _line: None)
    with pytest.raises(RequestError, match="refused"):
        service.restore(scene(), "GFPGAN")
    assert not marker.exists()
    assert "refused" in service.unusable[folder / "GFPGANv1.4.pth"]


def test_a_missing_model_names_the_file_and_the_folder(tmp_path):
    service = FaceRestorers(folders_for(object(), tmp_path / "models"))
    with pytest.raises(RequestError) as error:
        service.check("CodeFormer")
    assert str(tmp_path / "models" / "Codeformer") in error.value.message
    assert "codeformer-v0.1.0.pth" in error.value.message and "never downloads" in error.value.message
    custom = folders_for(type("Opts", (), {"gfpgan_models_path": str(tmp_path / "mine")})(), tmp_path / "models")
    assert custom["GFPGAN"] == tmp_path / "mine" and custom["CodeFormer"] == tmp_path / "models" / "Codeformer"


# -- restoring --------------------------------------------------------------------------------

def test_only_the_face_region_changes(local):
    image = scene()
    out = local.restore(image, "GFPGAN")
    before, after = np.asarray(image).astype(int), np.asarray(out).astype(int)
    inside = face_area(image)
    assert inside.any() and not inside.all()
    assert np.array_equal(before[~inside], after[~inside])  # outside the crop: bit for bit
    change = np.abs(before - after).sum(-1)
    assert change[inside].mean() > 5  # the random model repainted the face
    # feathered: at the crop's left border the picture barely moves, in the middle it does
    rows = inside.any(1)
    left, right = int(np.argmax(inside.any(0))), int(inside.shape[1] - np.argmax(inside.any(0)[::-1]))
    assert change[rows, left].mean() * 4 < change[rows, (left + right) // 2].mean()


def test_no_face_no_change_and_no_model_load(tmp_path):
    service = FaceRestorers(folders_for(object(), tmp_path / "empty"))
    flat = Image.new("RGB", (96, 64), (90, 120, 60))
    assert service.restore(flat, "GFPGAN") is flat  # nothing found: the file is not even looked for


def test_alpha_is_kept(local):
    image = scene().convert("RGBA")
    image.putalpha(200)
    out = local.restore(image, "GFPGAN")
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out.getchannel("A")), np.asarray(image.getchannel("A")))


def test_job_hooks_restore_each_picture_and_name_the_model(local):
    hooks = FaceRestorationHooks(local, "GFPGAN")
    image = scene()
    assert not np.array_equal(np.asarray(hooks.image_ready(None, 0, image)), np.asarray(image))
    assert hooks.extra_params() == {"Face restoration": "GFPGAN"}
    assert face_restorers.wanted({"face_restoration": True, "face_restoration_model": "GFPGAN"}) == "GFPGAN"
    assert face_restorers.wanted({"face_restoration": False, "face_restoration_model": "GFPGAN"}) is None


def test_extras_blend_by_visibility(local, monkeypatch):
    from modules.core import postprocess

    monkeypatch.setattr(face_restorers, "_current", local)
    image = scene()
    full = local.restore(image, "GFPGAN")
    info: dict = {}
    half = extras.restore_faces(image, postprocess.UpscaleSettings(upscaler_1="None", gfpgan_visibility=0.5), info)
    expected = np.asarray(Image.blend(image, full, 0.5)).astype(int)
    # GFPGAN adds fresh noise at each run (randomize_noise, as in A1111): close, not equal
    assert np.abs(np.asarray(half).astype(int) - expected).mean() < 8
    assert info == {"GFPGAN visibility": 0.5}


# -- through the API of the shared server -----------------------------------------------------

def test_api_face_restorers_lists_both_with_their_folders(server):
    rows = server.get("/sdapi/v1/face-restorers").json()
    assert [r["name"] for r in rows] == ["CodeFormer", "GFPGAN"]
    assert rows[0]["cmd_dir"].endswith("Codeformer") and rows[1]["cmd_dir"].endswith("GFPGAN")


def test_api_missing_models_are_a_422_naming_the_folder(server):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "restore_faces": True})
    message = assert_error(r, "restore_faces", (422,))
    assert "Codeformer" in message and "codeformer-v0.1.0.pth" in message
    r = server.post("/sdapi/v1/extra-single-image",
                    json={"image": b64(scene()), "upscaler_1": "None", "gfpgan_visibility": 1})
    message = assert_error(r, "gfpgan_visibility", (422,))
    assert "GFPGAN" in message and "GFPGANv1.4.pth" in message


@pytest.fixture(scope="module")
def served(server):
    """A tiny GFPGAN and the small CodeFormer in the server's A1111 folders; removed afterwards."""
    models = server.data_dir / "models"
    paths = [write_gfpgan(models), write_codeformer(models)]
    yield server
    for path in paths:
        path.unlink()


def test_api_txt2img_and_img2img_restore_faces(served):
    r = served.post("/sdapi/v1/txt2img", json={**BASE, "restore_faces": True})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "CodeFormer"
    assert "Face restoration: CodeFormer" in info["infotexts"][0]
    body = {**BASE, "restore_faces": True, "override_settings": {"face_restoration_model": "GFPGAN"},
            "init_images": [b64(draw_face(64))], "denoising_strength": 0.5}
    r = served.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert "Face restoration: GFPGAN" in r.json()["info"]
    r = served.post("/sdapi/v1/txt2img", json=BASE)  # off by default (the face_restoration option)
    assert "Face restoration" not in r.json()["info"]


def test_api_extras_gfpgan_then_codeformer(served):
    image = scene()
    body = {"image": b64(image), "upscaler_1": "None", "gfpgan_visibility": 0.5, "codeformer_visibility": 1,
            "codeformer_weight": 0.3}
    r = served.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    html = r.json()["html_info"]
    assert "GFPGAN visibility: 0.5" in html and "CodeFormer visibility: 1" in html and "CodeFormer weight: 0.3" in html
    out = np.asarray(decode(r.json()["image"]).convert("RGB")).astype(int)
    before, inside = np.asarray(image).astype(int), face_area(image)
    assert np.array_equal(before[~inside], out[~inside]) and np.abs(before - out)[inside].mean() > 5
