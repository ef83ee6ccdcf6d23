"""sd-webui-controlnet's TEED preprocessors run from the user's annotator files: ``softedge_teed``
(``TEED/7_model.pth``) and ``softedge_anyline`` (``TEED/MTEED.pth``, the same network, with the extension's
lineart_standard touch-up), both with the "Safe Steps" slider.

Random state dicts in the real (fixed, 58 thousand weights) layout go into the shared server's annotator
folder; ``/controlnet/detect`` is compared with the network written out here in plain functional ops and
the extension's post-processing (sigmoid of the mean of the four maps, safe_step, Anyline's faint-line
pixels found with scipy over the three channels as skimage labels them); a txt2img unit uses one; missing
or broken files are 422s naming the file and folder. Pictures are tiny (resolution 64 .. 128)."""

from __future__ import annotations

import cv2
import numpy as np
import requests
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from modules.core import annotator_teed
from modules.services import controlnets
from tests.api_common import assert_error, decode
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures

# (key, out, in per group, kernel) of every convolution of TED; "T": transposed (in, out, k, k)
LAYOUT = [("block_1.conv1", 16, 3, 3), ("block_1.conv2", 16, 16, 3), ("block_2.conv1", 32, 16, 3),
          ("block_2.conv2", 32, 32, 3), ("dblock_3.denselayer1.conv1", 48, 32, 3),
          ("dblock_3.denselayer1.conv2", 48, 48, 3), ("side_1.conv", 32, 16, 1), ("pre_dense_3.conv", 48, 32, 1),
          ("up_block_1.features.0", 1, 16, 1), ("up_block_1.features.2T", 1, 1, 2),
          ("up_block_2.features.0", 1, 32, 1), ("up_block_2.features.2T", 1, 1, 2),
          ("up_block_3.features.0", 16, 48, 1), ("up_block_3.features.2T", 16, 16, 4),
          ("up_block_3.features.3", 1, 16, 1), ("up_block_3.features.5T", 1, 1, 4),
          ("block_cat.DWconv1", 24, 1, 3), ("block_cat.DWconv2", 24, 1, 3)]


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


def _detect(server, image, module, **extra):
    return requests.post(server.url + "/controlnet/detect", timeout=120, json={
        "controlnet_module": module, "controlnet_input_images": [b64(Image.fromarray(np.asarray(image)))], **extra})


def _map(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    rgb = np.asarray(decode(response.json()["images"][0]).convert("RGB"))
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0]


def _resized(image: np.ndarray, res: int) -> tuple[np.ndarray, int, int]:
    """The extension's resize_image_with_pad: short side to ``res``, edges padded to multiples of 64."""
    h, w = image.shape[:2]
    k = res / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    return np.pad(resized, [[0, -th % 64], [0, -tw % 64], [0, 0]], mode="edge"), th, tw


def write_tiny_teed(path, seed=0) -> dict:
    """A random TED state dict in the real layout (the network has one size; it is small). The inputs are
    0..255, so the first layer is scaled down, and the maps' last layers up, to spread the edge map."""
    g, state = torch.Generator().manual_seed(seed), {}
    for key, out, into, k in LAYOUT:
        transposed, key = key.endswith("T"), key.removesuffix("T")
        shape = (into, out, k, k) if transposed else (out, into, k, k)
        state[f"{key}.weight"] = torch.randn(*shape, generator=g) / (into * k * k) ** 0.5
        state[f"{key}.bias"] = torch.randn(out, generator=g) * 0.1
    state["block_1.conv1.weight"] /= 5.0
    for key in ("up_block_1.features.2", "up_block_2.features.2", "up_block_3.features.5", "block_cat.DWconv2"):
        state[f"{key}.weight"] *= 4.0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_maps(state: dict, image: np.ndarray) -> list[np.ndarray]:
    """TED's four maps (three heads and the fusion) written out over the state dict."""
    def smish(x):
        return x * torch.tanh(torch.log(1 + torch.sigmoid(x)))

    def conv(x, key, **kw):
        return F.conv2d(x, state[f"{key}.weight"], state[f"{key}.bias"], **kw)

    def up(x, key, k):
        return F.conv_transpose2d(x, state[f"{key}.weight"], state[f"{key}.bias"], stride=2, padding=(k - 2) // 2)

    x = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None]
    b1 = smish(conv(smish(conv(x, "block_1.conv1", stride=2, padding=1)), "block_1.conv2", padding=1))
    b2 = conv(smish(conv(b1, "block_2.conv1", padding=1)), "block_2.conv2", padding=1)
    down = F.max_pool2d(b2, 3, stride=2, padding=1)
    mixed, skip = down + conv(b1, "side_1.conv", stride=2), conv(down, "pre_dense_3.conv")
    dense = conv(smish(conv(smish(mixed), "dblock_3.denselayer1.conv1", padding=2)), "dblock_3.denselayer1.conv2")
    b3 = 0.5 * (dense + skip)
    o1 = up(smish(conv(b1, "up_block_1.features.0")), "up_block_1.features.2", 2)
    o2 = up(smish(conv(b2, "up_block_2.features.0")), "up_block_2.features.2", 2)
    o3 = up(smish(conv(b3, "up_block_3.features.0")), "up_block_3.features.2", 4)
    o3 = up(smish(conv(o3, "up_block_3.features.3")), "up_block_3.features.5", 4)
    heads = torch.cat([o1, o2, o3], 1)
    a = conv(smish(heads), "block_cat.DWconv1", padding=1, groups=3)
    b = conv(smish(a), "block_cat.DWconv2", padding=1, groups=24)
    fused = smish((a + b).sum(1, keepdim=True))
    return [m[0, 0].numpy() for m in (o1, o2, o3, fused)]


def reference_teed(state: dict, image: np.ndarray, safe_steps: int) -> np.ndarray:
    """The extension's TEEDDetector map of a padded picture (its sides multiples of 4: no resize)."""
    edge = 1 / (1 + np.exp(-np.mean(np.stack(reference_maps(state, image), 2), 2).astype(np.float64)))
    if safe_steps:
        edge = np.floor(edge.astype(np.float32) * (safe_steps + 1)) / safe_steps
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def faint_line_pixels(padded: np.ndarray) -> np.ndarray:
    """Anyline's overlay: lineart_standard's map == 1, in objects of 36 voxels or more when labelled over
    (H, W, 3) with 6-connectivity, as the extension's remove_small_objects(min_size=36) sees it."""
    x = padded.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    intensity /= max(16, float(np.median(intensity[intensity > 8])))
    ones = np.repeat(((intensity * 127).clip(0, 255).astype(np.uint8) == 1)[..., None], 3, axis=2)
    labels, _ = ndimage.label(ones, ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel())
    return (ones & (sizes[labels] >= 36))[..., 0]


def lines_picture(h, w, seed=0) -> np.ndarray:
    """Grey with a few dark lines, many faint (one level) lines and faint specks."""
    rng, image = np.random.default_rng(seed), np.full((h, w, 3), 200, np.uint8)
    for count, colour, width in ((6, (40, 60, 50), 2), (30, (198, 199, 199), 1)):
        for _ in range(count):
            a, b = (tuple(int(v) for v in rng.integers(0, [w, h])) for _ in range(2))
            cv2.line(image, a, b, colour, width)
    image[rng.random((h, w)) < 0.01] = 198
    return image


def test_the_network_has_the_real_files_layout():
    """The keys and shapes of xavysp/TEED's TED (the state dict of 7_model.pth and MTEED.pth)."""
    with torch.device("meta"):
        state = annotator_teed.TEED().state_dict()
    expected = {}
    for key, out, into, k in LAYOUT:
        transposed, key = key.endswith("T"), key.removesuffix("T")
        expected[f"{key}.weight"] = (into, out, k, k) if transposed else (out, into, k, k)
        expected[f"{key}.bias"] = (out,)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(v.numel() for v in state.values()) == 58_910  # "TED > 58K" parameters


def test_softedge_teed_runs_from_the_users_file_with_safe_steps(server, api_models):
    path = _annotators(server) / annotator_teed.FILE
    r = _detect(server, picture(64, 64), "softedge_teed")  # missing: refused, naming the file and folder
    assert r.status_code == 422
    assert "7_model.pth" in r.json()["detail"] and str(_annotators(server) / "TEED") in r.json()["detail"]
    state = write_tiny_teed(path)
    image = picture(96, 64)  # 64 on the short side: 96 x 64, padded to 128 x 64 for the network
    padded, th, tw = _resized(np.asarray(image), 64)
    try:
        plain = _map(_detect(server, image, "softedge_teed", controlnet_processor_res=64, controlnet_threshold_a=0))
        assert plain.shape == (64, 96)
        assert np.array_equal(plain, reference_teed(state, padded, 0)[:th, :tw])
        assert len(np.unique(plain)) > 30
        for steps in (1, 2, 5):  # safe steps cut the map into steps + 1 levels
            cut = _map(_detect(server, image, "softedge_teed", controlnet_processor_res=64,
                               controlnet_threshold_a=steps))
            assert np.array_equal(cut, reference_teed(state, padded, steps)[:th, :tw])
            levels = set(np.unique(cut))
            assert levels <= {min(255, int(i / steps * 255)) for i in range(steps + 2)} and len(levels) > 1
        default = _map(_detect(server, image, "softedge_teed", controlnet_processor_res=64))  # -1: 2 steps
        assert np.array_equal(default, reference_teed(state, padded, 2)[:th, :tw])

        unit = {"enabled": True, "module": "softedge_teed", "model": api_models["ldm"], "image": b64(picture(64, 64)),
                "processor_res": 64}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert "Module: softedge_teed, " in r.json()["info"]
        torch.save({k: v for k, v in state.items() if not k.startswith("block_cat.")}, path)  # not TED
        r = _detect(server, image, "softedge_teed", controlnet_processor_res=64)
        assert r.status_code == 422 and "softedge_teed" in r.json()["detail"] and "7_model.pth" in r.json()["detail"]
        path.write_bytes(b"PK\x03\x04 not a state dict")
        assert "module(softedge_teed)" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        path.unlink()


def test_softedge_anyline_marks_mteeds_edges_with_the_faint_lineart(server):
    listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()["module_detail"]
    assert listed["softedge_anyline"]["sliders"] == [
        {"name": "Resolution", "value": 1280, "min": 64, "max": 2048, "step": 8},
        {"name": "Safe Steps", "value": 2, "min": 0, "max": 10, "step": 1}]
    path = _annotators(server) / annotator_teed.FILE_MTEED
    r = _detect(server, picture(64, 64), "softedge_anyline", controlnet_processor_res=64)
    assert r.status_code == 422
    assert "MTEED.pth" in r.json()["detail"] and str(_annotators(server) / "TEED") in r.json()["detail"]
    state = write_tiny_teed(path, seed=1)
    image = lines_picture(96, 128)  # 128 on the short side: 128 x 171, padded to 192 wide
    padded, th, tw = _resized(image, 128)
    try:
        for steps in (2, 0):
            lines = _map(_detect(server, image, "softedge_anyline", controlnet_processor_res=128,
                                 controlnet_threshold_a=steps))
            assert lines.shape == (128, 171)
            edge, faint = reference_teed(state, padded, steps), faint_line_pixels(padded)
            expected = np.where(faint, 1, edge)[:th, :tw]
            assert np.array_equal(lines, expected)
            assert faint[:th, :tw].sum() > 50 and (edge[:th, :tw][faint[:th, :tw]] != 1).any()  # it changes pixels
        x = padded.astype(np.float32)  # the faint specks (lineart 1, fewer than 12 pixels) are left out
        level = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
        level = (level * 127 / max(16, float(np.median(level[level > 8])))).clip(0, 255).astype(np.uint8)
        assert ((level == 1) & ~faint).sum() > 0
    finally:
        path.unlink()
