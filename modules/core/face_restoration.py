"""Face restoration (GFPGAN, CodeFormer): build the model from its file, find the faces, restore
each one in a square crop, paste it back (a feathered edge, or the face parsing mask).

- Files are read like the upscalers' (``upscaler_models.read_state_dict``: ``.pth`` weights-only,
  a pickle holding more than tensors refused before anything in it runs; ``.safetensors``).
- GFPGAN: spandrel's ``GFPGANv1Clean``, its size, width and style depth read from the tensor
  shapes (spandrel's own loader assumes the 512 px v1.3/v1.4 release; the same numbers come out
  for those). CodeFormer: spandrel_extra_arches' loader.
- Faces: with RetinaFace's file present (``retinaface``: ``models/GFPGAN/detection_Resnet50_Final.pth``,
  what A1111's facexlib uses), each face's five landmarks are aligned onto the FFHQ template the
  models were trained on (facexlib's 512 px template: a similarity transform by least median of
  squares, so a tilted face is turned upright for the model and turned back when pasted).
  Without it, ``face_detection`` (OpenCV's Haar cascade): each face box becomes a square crop
  framed as the FFHQ-aligned faces (eyes a little above the middle, the face about 60% of the
  crop), scaled to the model's input size (512), no rotation (the cascade gives no landmarks).
  Outside each crop the picture is left exactly as it was.
- Pasting: through a feathered square, or, given facexlib's face parsing network
  (``face_parsing``: ``models/GFPGAN/parsing_parsenet.pth``, what A1111's helper pastes with), through
  the mask of the restored face's own pixels (skin, eyes, nose, mouth; not hair, hat, neck, cloth or
  background), as facexlib does with parsing on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from . import face_detection, face_parsing, retinaface, upscaler_models

ARCHITECTURES = ("CodeFormer", "GFPGAN")


class FaceModelError(ValueError):
    """A file that is not a usable face restoration model; the message says why."""


@dataclass
class FaceModel:
    architecture: str  # "GFPGAN" or "CodeFormer"
    net: torch.nn.Module
    size: int  # the square crop it takes and gives


# -- building -------------------------------------------------------------------------------

def _is_gfpgan(state: dict) -> bool:
    return "toRGB.0.weight" in state and "stylegan_decoder.style_mlp.1.weight" in state


def _is_codeformer(state: dict) -> bool:
    return all(k in state for k in ("position_emb", "idx_pred_layer.1.weight", "quantize.embedding.weight"))


def _gfpgan(state: dict) -> FaceModel:
    from spandrel.architectures.GFPGAN import GFPGAN

    log_size = 2 + len([k for k in state if k.startswith("toRGB.") and k.endswith(".weight")])
    out_size = 2 ** log_size
    narrow = state["final_conv.weight"].shape[0] / 256  # channels["4"] = 512 * narrow / 2
    multiplier = 2
    for i in range(log_size - 2):  # the first resolution of 64 px or more tells the multiplier
        resolution = 2 ** (i + 3)
        if resolution >= 64:
            base = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}[resolution]
            multiplier = round(state[f"toRGB.{i}.weight"].shape[1] / (base * narrow * 0.5))
            break
    mlp = sorted({k.split(".")[2] for k in state if k.startswith("stylegan_decoder.style_mlp.") and k.endswith(".weight")})
    style = state["stylegan_decoder.style_mlp.1.weight"].shape[0]
    different_w = state["final_linear.weight"].shape[0] != style
    sft_half = state["condition_scale.0.2.weight"].shape[0] == state["condition_scale.0.0.weight"].shape[0]
    net = GFPGAN(out_size=out_size, num_style_feat=style, channel_multiplier=multiplier, decoder_load_path=None,
                 fix_decoder=False, num_mlp=len(mlp), input_is_latent=True, different_w=different_w, narrow=narrow,
                 sft_half=sft_half)
    net.load_state_dict(state, strict=True)
    return FaceModel("GFPGAN", net, out_size)


def _codeformer(state: dict) -> FaceModel:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch

    descriptor = CodeFormerArch().load(state)
    return FaceModel("CodeFormer", descriptor.model, 512)


def build(path: Path, expected: str | None = None) -> FaceModel:
    """The model in ``path`` on the CPU, eval mode, fp32; FaceModelError with the reason."""
    upscaler_models.spandrel_module()  # spandrel imported without torchvision (see there)
    try:
        state = upscaler_models.read_state_dict(path)
    except upscaler_models.UpscalerFileError as error:
        raise FaceModelError(str(error)) from None
    architecture = "GFPGAN" if _is_gfpgan(state) else "CodeFormer" if _is_codeformer(state) else None
    if architecture is None:
        raise FaceModelError(f"{path.name}: not a GFPGAN or CodeFormer model")
    if expected is not None and architecture != expected:
        raise FaceModelError(f"{path.name}: a {architecture} model, not {expected}")
    try:
        model = _gfpgan(state) if architecture == "GFPGAN" else _codeformer(state)
    except Exception as error:  # noqa: BLE001 - recognised keys, broken shapes
        raise FaceModelError(f"{path.name}: cannot be built as {architecture}: {error}") from None
    model.net.eval()
    return model


# -- faces ------------------------------------------------------------------------------------

# facexlib's FFHQ five-point template for 512 px faces: eyes, nose tip, mouth corners (x, y)
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]])


@dataclass(frozen=True)
class Face:
    box: face_detection.Box  # what the detector found
    crop: tuple[float, float, float]  # left, top, side of the square restored around it (Haar)
    landmarks: tuple | None = None  # RetinaFace's five points: the crop is aligned onto the template


def aligned_faces(image: Image.Image, net: retinaface.RetinaFaceNet) -> list[Face]:
    """The faces RetinaFace finds in ``image``, each to be aligned by its landmarks."""
    faces = []
    for found in retinaface.detect(net, np.asarray(image.convert("RGB"))):
        x1, y1, x2, y2 = found.box
        box = (round(x1), round(y1), round(x2 - x1), round(y2 - y1))
        faces.append(Face(box, (x1, y1, max(x2 - x1, y2 - y1)), tuple(map(tuple, found.landmarks.tolist()))))
    return faces


def find_faces(image: Image.Image, cascade: face_detection.Cascade, max_side: int = 640) -> list[Face]:
    """The faces of ``image`` (detected on a copy at most ``max_side`` wide, as facexlib does)."""
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    shrink = max(gray.shape) / max_side if max(gray.shape) > max_side else 1.0
    if shrink > 1:
        gray = cv2.resize(gray, (round(gray.shape[1] / shrink), round(gray.shape[0] / shrink)), interpolation=cv2.INTER_AREA)
    faces = []
    for x, y, w, h in face_detection.detect(gray, cascade):
        x, y, w, h = (v * shrink for v in (x, y, w, h))
        side = 1.6 * w  # the Haar box spans brows to mouth: the FFHQ framing is about 1.6x wider
        top = y + 0.38 * h - 0.47 * side  # its eyes (0.38 down the box) at 47% of the crop
        faces.append(Face((round(x), round(y), round(w), round(h)), (x + w / 2 - side / 2, top, side)))
    return faces


def _to_crop(face: Face, size: int) -> np.ndarray:
    """The 2x3 affine from the picture to the model's square crop of the face."""
    if face.landmarks is not None:
        matrix, _inliers = cv2.estimateAffinePartial2D(np.array(face.landmarks, dtype=np.float64),
                                                      FFHQ_TEMPLATE_512 * (size / 512.0), method=cv2.LMEDS)
        if matrix is not None:
            return matrix
    left, top, side = face.crop
    k = size / side
    return np.array([[k, 0, -left * k], [0, k, -top * k]], dtype=np.float64)


def _feather(size: int) -> np.ndarray:
    """A mask over the crop: 1 inside, falling smoothly to 0 over the outer 1/8 of each side."""
    edge = max(2, size // 8)
    ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / edge, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.outer(ramp, ramp).astype(np.float32)


def crop_region(face: Face, width: int, height: int, size: int = 512) -> tuple[int, int, int, int]:
    """The pixels restoring ``face`` may change: (left, top, right, bottom), inside the picture
    (for an aligned face, the box around its turned crop)."""
    if face.landmarks is not None:
        back = cv2.invertAffineTransform(_to_crop(face, size))
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ back.T
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
    left, top, side = face.crop
    return (max(0, math.floor(left)), max(0, math.floor(top)),
            min(width, math.ceil(left + side)), min(height, math.ceil(top + side)))


def _run_net(model: FaceModel, crop: np.ndarray, device: torch.device, weight: float) -> np.ndarray:
    """(S, S, 3) uint8 RGB -> the restored face, the same shape, as the models take it: [-1, 1]."""
    x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=torch.float32)
    x = x / 127.5 - 1.0
    with torch.inference_mode():
        if model.architecture == "CodeFormer":
            y = model.net(x, weight=weight, adain=True)[0]
        else:
            y = model.net(x, return_rgb=False)[0]
    y = ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y[0].permute(1, 2, 0).cpu().numpy()


def restore(image: Image.Image, model: FaceModel, faces: list[Face], device: torch.device,
            weight: float = 0.5, interrupted: Callable[[], bool] = lambda: False,
            parser: face_parsing.ParseNet | None = None) -> Image.Image:
    """``image`` with each of ``faces`` restored by ``model`` (CodeFormer's fidelity ``weight``:
    0 = the most restoration, 1 = closest to the input); pixels outside the faces' crops stay.
    With ``parser`` each face is pasted through its parsing mask, else through a feathered square."""
    if not faces:
        return image
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    picture = np.asarray(image.convert("RGB"))
    result = picture.astype(np.float32)
    height, width = picture.shape[:2]
    size = model.size
    for face in faces:
        if interrupted():
            break
        to_crop = _to_crop(face, size)
        crop = cv2.warpAffine(picture, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        restored = _run_net(model, np.ascontiguousarray(crop), device, weight)
        back = cv2.invertAffineTransform(to_crop)
        left, top, right, bottom = crop_region(face, width, height, size)
        # warp only into the crop's own region: nothing outside it can change
        shift = np.array([[0, 0, -left], [0, 0, -top]], dtype=np.float64)
        region = (right - left, bottom - top)
        pasted = cv2.warpAffine(restored, back + shift, region, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        soft = _feather(size) if parser is None else face_parsing.face_mask(parser, restored)
        mask = cv2.warpAffine(soft, back + shift, region, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
        area = result[top:bottom, left:right]
        result[top:bottom, left:right] = area * (1 - mask) + pasted.astype(np.float32) * mask
    out = np.where(result == picture, picture, np.clip(np.round(result), 0, 255).astype(np.uint8))
    restored_image = Image.fromarray(out.astype(np.uint8), "RGB")
    if alpha is not None:
        restored_image.putalpha(alpha)
    return restored_image
