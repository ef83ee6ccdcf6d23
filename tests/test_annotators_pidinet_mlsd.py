"""sd-webui-controlnet's PiDiNet preprocessors (``softedge_pidinet``, ``softedge_pidisafe``,
``scribble_pidinet``, ``t2ia_sketch_pidi``) and ``mlsd``, run from tiny random annotator files in the real
key layouts (``pidinet/table5_pidinet.pth``: training weights under ``state_dict`` with DataParallel's
``module.`` prefix; ``mlsd/mlsd_large_512_fp32.pth``: a plain state dict with the batch norms' buffers),
compared with independent functional references written here over the state dicts, through the shared
server's ``/controlnet/detect`` and a txt2img unit; a file that is not the network: a 422 naming the module."""

from __future__ import annotations

import cv2
import numpy as np
import requests
import torch
import torch.nn.functional as F

from modules.core import annotator_mlsd, annotator_pidinet
from modules.services import controlnets
from tests.api_common import assert_error, decode
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures

PIDINET_BLOCKS = [f"block{s}_{i}" for s, n in ((1, 3), (2, 4), (3, 4), (4, 4)) for i in range(1, n + 1)]
PIDINET_KINDS = ["cd", "ad", "rd", "cv"] * 4  # carv4: init_block, then the blocks


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


def _detect(server, image, module, **extra):
    return requests.post(server.url + "/controlnet/detect", timeout=120, json={
        "controlnet_module": module, "controlnet_input_images": [b64(image)], **extra})


def _map(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.json()["images"][0]).convert("L"))


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _resized(image: np.ndarray, res: int) -> tuple[np.ndarray, int, int]:
    """The extension's resize_image_with_pad: short side to ``res``, edges padded to multiples of 64."""
    h, w = image.shape[:2]
    k = res / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    return np.pad(resized, [[0, (64 - th % 64) % 64], [0, (64 - tw % 64) % 64], [0, 0]], mode="edge"), th, tw


# ------------------------------------------------------------------------------------------ PiDiNet

def write_tiny_pidinet(path, stem=4, width=4, seed=0) -> dict:
    """A random table5_pidinet state dict (widths C, 2C, 4C, 4C; dilation and attention modules), saved
    as the training checkpoint the real file is. Returns the tensors under their bare names."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {"init_block.weight": rand(stem, 3, 3, 3, scale=0.5)}
    channels, ends = stem, []
    for name in PIDINET_BLOCKS:
        stage, index = int(name[5]), int(name[7])
        out = stem * min(2 ** (stage - 1), 4)
        state[f"{name}.conv1.weight"] = rand(channels, 1, 3, 3, scale=0.5)
        state[f"{name}.conv2.weight"] = rand(out, channels, 1, 1)
        if index == 1 and stage > 1:
            state[f"{name}.shortcut.weight"], state[f"{name}.shortcut.bias"] = rand(out, channels, 1, 1), rand(out)
        channels = out
        if name in ("block1_3", "block2_4", "block3_4", "block4_4"):
            ends.append(out)
    for i, c in enumerate(ends):
        state[f"dilations.{i}.conv1.weight"], state[f"dilations.{i}.conv1.bias"] = rand(width, c, 1, 1), rand(width)
        for k in range(1, 5):
            state[f"dilations.{i}.conv2_{k}.weight"] = rand(width, width, 3, 3, scale=0.1)
        state[f"attentions.{i}.conv1.weight"], state[f"attentions.{i}.conv1.bias"] = rand(4, width, 1, 1), rand(4)
        state[f"attentions.{i}.conv2.weight"] = rand(1, 4, 3, 3)
        state[f"conv_reduces.{i}.conv.weight"], state[f"conv_reduces.{i}.conv.bias"] = rand(1, width, 1, 1), rand(1)
    state["classifier.weight"], state["classifier.bias"] = rand(1, 4, 1, 1, scale=3.0), rand(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 10, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return state


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """s[..., i, j] = x[..., i + dy, j + dx], zero outside the picture."""
    h, w = x.shape[2:]
    padded = F.pad(x, (2, 2, 2, 2))
    return padded[:, :, 2 + dy:2 + dy + h, 2 + dx:2 + dx + w]


def _pixel_difference(x: torch.Tensor, weight: torch.Tensor, kind: str) -> torch.Tensor:
    """A depthwise pixel-difference convolution written as sums of shifted differences (PiDiNet's
    definitions: cd x_k - x_centre, ad x_k - its clockwise neighbour, rd x(2d) - x(d))."""
    taps = [(k // 3 - 1, k % 3 - 1) for k in range(9)]
    w = weight[:, 0].reshape(-1, 9)
    y = torch.zeros_like(x)
    if kind == "cv":
        return F.conv2d(x, weight, padding=1, groups=x.shape[1])
    if kind == "cd":
        for k, (dy, dx) in enumerate(taps):
            y = y + w[:, k, None, None] * (_shift(x, dy, dx) - x)
    elif kind == "ad":
        ring = [0, 1, 2, 5, 8, 7, 6, 3]
        for k, nxt in zip(ring, ring[1:] + ring[:1]):
            y = y + w[:, k, None, None] * (_shift(x, *taps[k]) - _shift(x, *taps[nxt]))
    else:  # rd: the kernel's taps 1..8 go with the eight directions in reading order
        directions = [d for d in taps if d != (0, 0)]
        for k, (dy, dx) in enumerate(directions, start=1):
            y = y + w[:, k, None, None] * (_shift(x, 2 * dy, 2 * dx) - _shift(x, dy, dx))
    return y


def reference_pidinet(state: dict, image: np.ndarray) -> np.ndarray:
    """The extension's apply_pidinet (BGR / 255, the fused side output), uint8."""
    x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).float().permute(2, 0, 1)[None] / 255.0
    size = x.shape[2:]
    init = state["init_block.weight"]
    x = F.conv2d(x, init, padding=1) - F.conv2d(x, init.sum(dim=(2, 3), keepdim=True))  # cd over RGB
    sides = []
    for index, name in enumerate(PIDINET_BLOCKS):
        if f"{name}.shortcut.weight" in state:
            x = F.max_pool2d(x, 2, 2)
        y = F.conv2d(F.relu(_pixel_difference(x, state[f"{name}.conv1.weight"], PIDINET_KINDS[index + 1])),
                     state[f"{name}.conv2.weight"])
        if f"{name}.shortcut.weight" in state:
            x = F.conv2d(x, state[f"{name}.shortcut.weight"], state[f"{name}.shortcut.bias"])
        x = x + y
        if name in ("block1_3", "block2_4", "block3_4", "block4_4"):
            i = len(sides)
            d = F.conv2d(F.relu(x), state[f"dilations.{i}.conv1.weight"], state[f"dilations.{i}.conv1.bias"])
            d = sum(F.conv2d(d, state[f"dilations.{i}.conv2_{k}.weight"], padding=r, dilation=r)
                    for k, r in zip(range(1, 5), (5, 7, 9, 11)))
            a = F.conv2d(F.relu(d), state[f"attentions.{i}.conv1.weight"], state[f"attentions.{i}.conv1.bias"])
            d = d * torch.sigmoid(F.conv2d(a, state[f"attentions.{i}.conv2.weight"], padding=1))
            side = F.conv2d(d, state[f"conv_reduces.{i}.conv.weight"], state[f"conv_reduces.{i}.conv.bias"])
            sides.append(F.interpolate(side, size, mode="bilinear", align_corners=False))
    edge = torch.sigmoid(F.conv2d(torch.cat(sides, 1), state["classifier.weight"], state["classifier.bias"]))
    return edge[0, 0].numpy()


def test_pidinet_preprocessors_run_from_the_users_file(server, api_models):
    path = _annotators(server) / annotator_pidinet.FILE
    state = write_tiny_pidinet(path)
    image = picture(64, 48)
    try:
        # no resolution slider (as the extension): Easel runs these at 512, the short side
        padded, th, tw = _resized(_rgb(image), 512)
        edge = reference_pidinet(state, padded)[:th, :tw]
        soft = _map(_detect(server, image, "softedge_pidinet"))
        expected = (edge * 255.0).clip(0, 255).astype(np.uint8)
        assert soft.shape == (512, 683) and expected.std() > 5
        # the plain kernels Easel turns the pixel differences into sum in another order: a level at most
        assert np.abs(soft.astype(int) - expected).max() <= 1 and np.mean(soft == expected) > 0.99
        safe = _map(_detect(server, image, "softedge_pidisafe"))
        assert set(np.unique(safe)) <= {0, 127, 255} and len(np.unique(safe)) > 1
        assert np.mean(safe == (np.floor(edge * 3.0) / 2.0 * 255.0).clip(0, 255).astype(np.uint8)) > 0.99
        sketch = _map(_detect(server, image, "t2ia_sketch_pidi"))  # white where the edge is over one half
        assert np.mean(sketch == np.where(edge > 0.5, 255, 0)) > 0.99 and len(np.unique(sketch)) == 2
        scribble = _map(_detect(server, image, "scribble_pidinet"))
        assert set(np.unique(scribble)) <= {0, 255} and scribble.shape == soft.shape
        # a unit with it steers a generation; its infotext names the module
        unit = {"enabled": True, "module": "softedge_pidinet", "model": api_models["ldm"], "image": b64(image)}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert "Module: pidinet, " in r.json()["info"]
        # the training file without its wrapper and prefix is read as well
        torch.save(state, path)
        assert np.array_equal(_map(_detect(server, image, "softedge_pidinet")), soft)
        bad = dict(state, **{"block2_2.conv1.weight": torch.zeros(8, 1, 5, 5)})  # a converted (5x5) kernel
        torch.save(bad, path)
        r = _detect(server, image, "softedge_pidinet")
        assert r.status_code == 422 and "table5_pidinet.pth" in r.json()["detail"] and "3x3" in r.json()["detail"]
        path.write_bytes(b"PK\x03\x04 not a state dict")
        assert "module(softedge_pidinet)" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        path.unlink()


# --------------------------------------------------------------------------------------------- MLSD

MLSD_STRIDES = (1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1)  # backbone.features.1..13
MLSD_WIDTHS = (4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 12, 12)  # each block's output (the real file: 16 .. 96)


def _bn(state: dict, prefix: str, channels: int, g) -> None:
    state[f"{prefix}.weight"] = 1 + torch.randn(channels, generator=g) * 0.1
    state[f"{prefix}.bias"] = torch.randn(channels, generator=g) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(channels, generator=g) * 0.1
    state[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=g)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def write_tiny_mlsd(path, stem=8, decoder=8, seed=0) -> dict:
    """A random mlsd_large state dict in the real layout, narrow; saved as a plain state dict."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {"backbone.features.0.0.weight": rand(stem, 4, 3, 3)}
    _bn(state, "backbone.features.0.1", stem, g)
    channels = stem
    for index, out in enumerate(MLSD_WIDTHS, start=1):
        p = f"backbone.features.{index}.conv"
        if index == 1:  # expansion 1: depthwise, projection
            state[f"{p}.0.0.weight"] = rand(channels, 1, 3, 3)
            _bn(state, f"{p}.0.1", channels, g)
            state[f"{p}.1.weight"] = rand(out, channels, 1, 1)
            _bn(state, f"{p}.2", out, g)
        else:
            hidden = 2 * channels
            state[f"{p}.0.0.weight"] = rand(hidden, channels, 1, 1)
            _bn(state, f"{p}.0.1", hidden, g)
            state[f"{p}.1.0.weight"] = rand(hidden, 1, 3, 3)
            _bn(state, f"{p}.1.1", hidden, g)
            state[f"{p}.2.weight"] = rand(out, hidden, 1, 1)
            _bn(state, f"{p}.3", out, g)
        channels = out
    skips = [MLSD_WIDTHS[i - 1] for i in (1, 3, 6, 10, 13)]
    deep = skips[-1]
    for number, skip in zip((15, 17, 19, 21), reversed(skips[:-1])):
        for conv, into in (("conv1", deep), ("conv2", skip)):
            state[f"block{number}.{conv}.0.weight"], state[f"block{number}.{conv}.0.bias"] = \
                rand(decoder, into, 1, 1), rand(decoder)
            _bn(state, f"block{number}.{conv}.1", decoder, g)
        for conv, (into, out) in (("conv1", (2 * decoder, 2 * decoder)), ("conv2", (2 * decoder, decoder))):
            state[f"block{number + 1}.{conv}.0.weight"] = rand(out, into, 3, 3, scale=0.2)
            state[f"block{number + 1}.{conv}.0.bias"] = rand(out)
            _bn(state, f"block{number + 1}.{conv}.1", out, g)
        deep = decoder
    for conv in ("conv1", "conv2"):
        state[f"block23.{conv}.0.weight"] = rand(decoder, decoder, 3, 3, scale=0.2)
        state[f"block23.{conv}.0.bias"] = rand(decoder)
        _bn(state, f"block23.{conv}.1", decoder, g)
    state["block23.conv3.weight"], state["block23.conv3.bias"] = rand(16, decoder, 1, 1, scale=1.5), rand(16)
    state["block23.conv3.bias"][7] = 0.5  # centre scores around one half: some over the thresholds, some not
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_mlsd(state: dict, image: np.ndarray, score: float, distance: float) -> np.ndarray:
    """The extension's apply_mlsd (pred_lines at the picture's own size), written with functional ops."""
    def conv_bn(x, prefix, *, stride=1, groups=1, dilation=1, act=F.relu):
        weight = state[f"{prefix}.0.weight"]
        if stride == 2:
            x, padding = F.pad(x, (0, 1, 0, 1)), 0
        else:
            padding = dilation * (weight.shape[-1] // 2)
        x = F.conv2d(x, weight, state.get(f"{prefix}.0.bias"), stride, padding, dilation, groups)
        x = F.batch_norm(x, state[f"{prefix}.1.running_mean"], state[f"{prefix}.1.running_var"],
                         state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"], False, 0.0, 1e-5)
        return act(x) if act else x

    h, w = image.shape[:2]
    x = np.concatenate([image, np.ones((h, w, 1))], axis=2).transpose(2, 0, 1)[None].astype(np.float32)
    x = torch.from_numpy(x / 127.5 - 1.0)
    x, skips = conv_bn(x, "backbone.features.0", stride=2, act=F.relu6), []
    for index, stride in enumerate(MLSD_STRIDES, start=1):
        p, y = f"backbone.features.{index}.conv", x
        if index == 1:
            y = conv_bn(y, f"{p}.0", groups=y.shape[1], act=F.relu6)
            y = F.conv2d(y, state[f"{p}.1.weight"])
            bn = f"{p}.2"
        else:
            y = conv_bn(y, f"{p}.0", act=F.relu6)
            y = conv_bn(y, f"{p}.1", stride=stride, groups=y.shape[1], act=F.relu6)
            y = F.conv2d(y, state[f"{p}.2.weight"])
            bn = f"{p}.3"
        y = F.batch_norm(y, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                         state[f"{bn}.bias"], False, 0.0, 1e-5)
        x = x + y if stride == 1 and x.shape == y.shape else y
        if index in (1, 3, 6, 10, 13):
            skips.append(x)
    x = skips[-1]
    for number, skip in zip((15, 17, 19, 21), reversed(skips[:-1])):
        deep = conv_bn(x, f"block{number}.conv1")
        if number != 15:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        x = torch.cat([conv_bn(skip, f"block{number}.conv2"), deep], 1)
        x = conv_bn(conv_bn(x, f"block{number + 1}.conv1") + x, f"block{number + 1}.conv2")
    x = conv_bn(conv_bn(x, "block23.conv1", dilation=5), "block23.conv2")
    tp = F.conv2d(x, state["block23.conv3.weight"], state["block23.conv3.bias"])[0, 7:].numpy()
    heat = 1 / (1 + np.exp(-tp[0].astype(np.float64)))
    peaks = sorted(((heat[y, x_], y, x_) for y in range(heat.shape[0]) for x_ in range(heat.shape[1])
                    if heat[y, x_] >= heat[max(0, y - 1):y + 2, max(0, x_ - 1):x_ + 2].max()), reverse=True)
    out = np.zeros((h, w), np.uint8)
    for value, y, x_ in peaks[:200]:  # the 200 best centres, then the thresholds
        dx0, dy0, dx1, dy1 = tp[1:5, y, x_].astype(np.float64)
        if value > score and np.hypot(dx0 - dx1, dy0 - dy1) > distance:
            cv2.line(out, (int(2 * (x_ + dx0)), int(2 * (y + dy0))), (int(2 * (x_ + dx1)), int(2 * (y + dy1))), 255, 1)
    return out


def test_mlsd_runs_from_the_users_file_with_its_thresholds(server, api_models):
    path = _annotators(server) / annotator_mlsd.FILE
    state = write_tiny_mlsd(path)
    image = picture(64, 64)
    try:
        lines = _map(_detect(server, image, "mlsd", controlnet_processor_res=64))
        expected = reference_mlsd(state, _rgb(image), 0.1, 0.1)  # the sliders' defaults
        assert lines.shape == (64, 64) and set(np.unique(lines)) == {0, 255}
        assert np.array_equal(lines, expected)
        # the value threshold: scores are below 2 (the slider's top); the distance threshold in tp-map pixels
        strict = _map(_detect(server, image, "mlsd", controlnet_processor_res=64, controlnet_threshold_a=0.3,
                              controlnet_threshold_b=6.0))
        assert np.array_equal(strict, reference_mlsd(state, _rgb(image), 0.3, 6.0))
        assert 0 < (strict > 0).sum() < (lines > 0).sum()
        none = _map(_detect(server, image, "mlsd", controlnet_processor_res=64, controlnet_threshold_a=1.99))
        assert none.max() == 0
        # at the resolution asked for: a 128-px short side, padded to 192 x 128 inside, cut back to 171 x 128
        wide = picture(96, 72)
        big = _map(_detect(server, wide, "mlsd", controlnet_processor_res=128))
        padded, th, tw = _resized(_rgb(wide), 128)
        assert big.shape == (th, tw) == (128, 171)
        assert np.array_equal(big, reference_mlsd(state, padded, 0.1, 0.1)[:th, :tw])
        unit = {"enabled": True, "module": "mlsd", "model": api_models["ldm"], "image": b64(image),
                "processor_res": 64}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert "Module: mlsd, " in r.json()["info"]
        write_tiny_pidinet(path)  # another network's file: refused, naming the module and the file
        message = assert_error(_txt2img(server, [unit]), "alwayson_scripts")
        assert "module(mlsd)" in message and "mlsd_large_512_fp32.pth" in message and "M-LSD" in message
    finally:
        path.unlink()
