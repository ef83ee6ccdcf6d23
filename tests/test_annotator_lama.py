"""sd-webui-controlnet's ``inpaint_only+lama``: LaMa's FFC ResNet generator run from random weights in
the layout of the real ``lama/ControlNetLama.pth`` (the generator's plain state dict, ``model.N.*``),
compared with an independent functional reference written here over the state dict; the extension's
preprocessor (LaMa at 256 px, laid over the picture by the mask) through ``/controlnet/detect``; a
unit with it in a txt2img job (the picture kept outside the mask, "Resize and Fill" generating the
filled borders); the file missing or broken: a 422 naming it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from PIL import Image

from modules.core import annotator_lama, controlnet
from modules.core.checkpoint_file import CheckpointError
from modules.services import controlnets
from tests.api_common import assert_error, decode
from tests.pictures import b64, picture, square_mask
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


# ------------------------------------------------------------------------- the layout, the reference

def write_lama(path, width=4, downs=3, blocks=2, share=0.75, seed=0, save=True) -> dict:
    """A random generator state dict in big-lama's layout (input 4 channels, output 3; the last
    downsampling and the blocks ``share`` global), saved as ControlNetLama.pth is."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(key, cout, cin, k, bias=False, transposed=False):
        shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        state[key + ".weight"] = torch.randn(shape, generator=g) * (1.0 / (cin * k * k)) ** 0.5
        if bias:
            state[key + ".bias"] = torch.randn(cout, generator=g) * 0.1

    def norm(key, c):
        state[key + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[key + ".bias"] = 0.1 * torch.randn(c, generator=g)
        state[key + ".running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[key + ".running_var"] = 0.5 + torch.rand(c, generator=g)
        state[key + ".num_batches_tracked"] = torch.tensor(1000)

    conv("model.1.ffc.convl2l", width, 4, 7)
    norm("model.1.bn_l", width)
    for i in range(downs):
        cin, cout, key = width * 2 ** i, width * 2 ** (i + 1), f"model.{2 + i}"
        glob = int(cout * share) if i == downs - 1 else 0
        conv(key + ".ffc.convl2l", cout - glob, cin, 3)
        norm(key + ".bn_l", cout - glob)
        if glob:
            conv(key + ".ffc.convl2g", glob, cin, 3)
            norm(key + ".bn_g", glob)
    c = width * 2 ** downs
    glob = int(c * share)
    loc = c - glob
    for b in range(blocks):
        for part in ("conv1", "conv2"):
            key = f"model.{2 + downs + b}.{part}"
            conv(key + ".ffc.convl2l", loc, loc, 3)
            conv(key + ".ffc.convl2g", glob, loc, 3)
            conv(key + ".ffc.convg2l", loc, glob, 3)
            conv(key + ".ffc.convg2g.conv1.0", glob // 2, glob, 1)
            norm(key + ".ffc.convg2g.conv1.1", glob // 2)
            conv(key + ".ffc.convg2g.fu.conv_layer", glob, glob, 1)
            norm(key + ".ffc.convg2g.fu.bn", glob)
            conv(key + ".ffc.convg2g.conv2", glob, glob // 2, 1)
            norm(key + ".bn_l", loc)
            norm(key + ".bn_g", glob)
    up = 2 + downs + blocks + 1
    for j in range(downs):
        cin = width * 2 ** (downs - j)
        conv(f"model.{up + 3 * j}", cin // 2, cin, 3, bias=True, transposed=True)
        norm(f"model.{up + 3 * j + 1}", cin // 2)
    conv(f"model.{up + 3 * downs + 1}", 3, width, 7, bias=True)
    state[f"model.{up + 3 * downs + 1}.weight"] *= 0.05  # keep the sigmoid out of saturation
    if save:
        torch.save(state, path)
    return state


def reference_generator(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The generator over the state dict, written out in plain functional torch: (1, 4, H, W) -> RGB."""
    def bn(t, key):
        return F.batch_norm(t, state[key + ".running_mean"], state[key + ".running_var"], state[key + ".weight"],
                            state[key + ".bias"], training=False, eps=1e-5)

    def conv(t, key, pad, stride=1):
        if t is None or key + ".weight" not in state:
            return 0
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect") if pad else t, state[key + ".weight"], stride=stride)

    def fourier(t, key):
        b, c, h, w = t.shape
        f = torch.view_as_real(torch.fft.rfft2(t, norm="ortho"))  # (b, c, h, w', 2)
        f = f.permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, -1)
        f = F.relu(bn(F.conv2d(f, state[key + ".conv_layer.weight"]), key + ".bn"))
        f = f.reshape(b, c, 2, h, -1).permute(0, 1, 3, 4, 2).contiguous()
        return torch.fft.irfft2(torch.view_as_complex(f), s=(h, w), norm="ortho")

    def ffc(pair, key, pad, stride=1):
        x_l, x_g = pair
        out_l = conv(x_l, key + ".ffc.convl2l", pad, stride) + conv(x_g, key + ".ffc.convg2l", pad, stride)
        out_g = conv(x_l, key + ".ffc.convl2g", pad, stride)
        if x_g is not None and key + ".ffc.convg2g.conv1.0.weight" in state:
            s = F.relu(bn(F.conv2d(x_g, state[key + ".ffc.convg2g.conv1.0.weight"]), key + ".ffc.convg2g.conv1.1"))
            out_g = out_g + F.conv2d(s + fourier(s, key + ".ffc.convg2g.fu"), state[key + ".ffc.convg2g.conv2.weight"])
        return (F.relu(bn(out_l, key + ".bn_l")),
                F.relu(bn(out_g, key + ".bn_g")) if key + ".bn_g.weight" in state else None)

    pair = ffc((F.pad(x, (3,) * 4, mode="reflect"), None), "model.1", 0)
    i = 2
    while f"model.{i}.ffc.convl2l.weight" in state:
        pair = ffc(pair, f"model.{i}", 1, stride=2)
        i += 1
    while f"model.{i}.conv1.ffc.convl2l.weight" in state:
        inner = ffc(ffc(pair, f"model.{i}.conv1", 1), f"model.{i}.conv2", 1)
        pair = (pair[0] + inner[0], pair[1] + inner[1])
        i += 1
    x = torch.cat(pair, dim=1)
    i += 1
    while state.get(f"model.{i}.weight") is not None and state[f"model.{i}.weight"].shape[-1] == 3:
        x = F.conv_transpose2d(x, state[f"model.{i}.weight"], state[f"model.{i}.bias"], stride=2, padding=1,
                               output_padding=1)
        x = F.relu(bn(x, f"model.{i + 1}"))
        i += 3
    x = F.conv2d(F.pad(x, (3,) * 4, mode="reflect"), state[f"model.{i + 1}.weight"], state[f"model.{i + 1}.bias"])
    return torch.sigmoid(x)


def reference_map(state: dict, rgba: np.ndarray) -> np.ndarray:
    """The extension's inpaint_only+lama over the reference generator: short side to 256, edges padded
    to 64, the masked pixels (mask > one half) black beside the mask, the output kept where masked,
    cut back, resized to the picture and laid over it by the mask; the mask as alpha."""
    h, w = rgba.shape[:2]
    k = 256 / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    small = cv2.resize(rgba, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    small = np.pad(small, [[0, -th % 64], [0, -tw % 64], [0, 0]], mode="edge")
    x = torch.from_numpy(small).float().permute(2, 0, 1)[None] / 255.0
    mask = (x[:, 3:] > 0.5).float()
    color = x[:, :3] * (1 - mask)
    with torch.no_grad():
        out = reference_generator(state, torch.cat([color, mask], dim=1)) * mask + color * (1 - mask)
    out = (out[0].permute(1, 2, 0).numpy() * 255.0).clip(0, 255).astype(np.uint8)[:th, :tw]
    out = cv2.resize(out, (w, h)).astype(np.float32)
    alpha = rgba[:, :, 3:].astype(np.float32) / 255.0
    return np.concatenate([(out * alpha + rgba[:, :, :3] * (1 - alpha)).clip(0, 255).astype(np.uint8),
                           rgba[:, :, 3:]], axis=2)


def _rgba(image: Image.Image, mask: Image.Image) -> np.ndarray:
    return np.concatenate([np.asarray(image.convert("RGB")), np.asarray(mask.convert("L"))[:, :, None]], axis=2)


# ------------------------------------------------------------------------------------- the network

def test_the_real_layout_loads_strictly_and_runs_as_the_reference(tmp_path):
    path = tmp_path / "ControlNetLama.pth"
    state = write_lama(path, width=64, downs=3, blocks=18)  # big-lama's sizes (annotator/lama/config.yaml)
    net = annotator_lama.build_generator(path)
    assert set(net.state_dict()) == set(state)
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) == \
        sum(p.numel() for p in net.parameters()) + sum(b.numel() for k, b in net.named_buffers() if "running" in k)
    x = torch.rand(1, 4, 128, 96, generator=torch.Generator().manual_seed(3))
    x[:, 3:] = (x[:, 3:] > 0.6).float()
    with torch.no_grad():
        ours, ref = net(x), reference_generator(state, x)
    assert ours.shape == (1, 3, 128, 96)
    assert (ours - ref).abs().max().item() < 1e-4 and ours.std().item() > 0.01

    # a training checkpoint's ``generator.`` keys and a file without the batch-norm counters load too
    small = write_lama(None, save=False)
    torch.save({f"generator.{k}": v for k, v in small.items() if "num_batches" not in k}, tmp_path / "prefixed.pth")
    assert set(annotator_lama.build_generator(tmp_path / "prefixed.pth").state_dict()) == set(small)
    # a missing tensor or another network: refused, naming the file
    torch.save({k: v for k, v in small.items() if "convg2l" not in k}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="cut.pth"):
        annotator_lama.build_generator(tmp_path / "cut.pth")
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth"):
        annotator_lama.build_generator(tmp_path / "other.pth")


def test_the_map_fills_the_masked_area_and_keeps_the_rest(tmp_path):
    path = tmp_path / "ControlNetLama.pth"
    state = write_lama(path, seed=1)
    image, mask = picture(96, 64), square_mask((96, 64), (30, 10, 70, 40))
    rgba = _rgba(image, mask)
    out = annotator_lama.preprocess(rgba, -1, 0, 0, [path])
    assert out.shape == (64, 96, 4)
    assert np.abs(out.astype(int) - reference_map(state, rgba)).max() <= 1
    kept = rgba[:, :, 3] == 0
    assert np.array_equal(out[kept], rgba[kept])  # outside the mask: the picture itself, alpha the mask
    assert np.abs(out[12:38, 32:68, :3].astype(int) - rgba[12:38, 32:68, :3]).mean() > 10  # filled


# -------------------------------------------------------------------------------- through the API

def test_detect_and_a_unit_run_from_the_users_file(server, api_models):
    path = _annotators(server) / annotator_lama.FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    image, mask = picture(64, 64), square_mask((64, 64), (24, 24, 40, 40))
    unit = {"enabled": True, "module": "inpaint_only+lama", "model": api_models["ldm"],
            "image": {"image": b64(image), "mask": b64(mask)}, "resize_mode": "Just Resize"}
    state = write_lama(path, seed=2)
    try:
        r = requests.post(server.url + "/controlnet/detect", timeout=120, json={
            "controlnet_module": "inpaint_only+lama", "controlnet_input_images": [b64(image)],
            "controlnet_masks": [b64(mask)]})
        assert r.status_code == 200, r.text
        shown = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
        expected = reference_map(state, _rgba(image, mask))
        assert np.abs(shown.astype(int) - expected[:, :, :3]).max() <= 1
        assert np.array_equal(shown[:24], np.asarray(image)[:24])
        r = requests.post(server.url + "/controlnet/detect", timeout=120, json={  # no mask: refused
            "controlnet_module": "inpaint_only+lama", "controlnet_input_images": [b64(image)]})
        assert r.status_code == 422 and "mask" in r.text

        r = _txt2img(server, [unit])
        out, source = _pixels(r), np.asarray(image)
        far = np.ones((64, 64), dtype=bool)
        far[24 - 7:40 + 7, 24 - 7:40 + 7] = False  # the mask grown by the paste-back's dilate + blur
        assert np.array_equal(out[far], source[far])
        assert np.abs(out[26:38, 26:38].astype(int) - source[26:38, 26:38]).max() > 8
        assert "Module: inpaint_only+lama, " in r.json()["info"]

        # "Resize and Fill" (the extension's outpainting): the borders the picture leaves are generated
        tall, tall_mask = picture(32, 64), square_mask((32, 64), (8, 8, 24, 24))
        wide = dict(unit, image={"image": b64(tall), "mask": b64(tall_mask)}, resize_mode="Resize and Fill")
        out = _pixels(_txt2img(server, [wide]))
        assert np.array_equal(out[40:, 23:41], np.asarray(tall)[40:, 7:25])  # the picture, far from its mask
        assert out[:, :10].reshape(-1, 3).std(axis=0).max() > 2  # the sides: generated, not one colour

        path.write_bytes(b"PK\x03\x04 not a state dict")  # a broken file: a 422 naming the module
        assert "module(inpaint_only+lama)" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        path.unlink()
    message = assert_error(_txt2img(server, [unit]), "alwayson_scripts")  # missing: the file and its folder
    assert "ControlNetLama.pth" in message and str(_annotators(server) / "lama") in message
    r = requests.post(server.url + "/controlnet/detect", timeout=60, json={
        "controlnet_module": "inpaint_only+lama", "controlnet_input_images": [b64(image)],
        "controlnet_masks": [b64(mask)]})
    assert r.status_code == 422 and "ControlNetLama.pth" in r.json()["detail"]


def test_resize_and_fill_masks_an_inpaint_maps_borders():
    rgba = np.zeros((64, 32, 4), np.uint8)
    rgba[:, :, :3] = 90
    filled = controlnet.fit_map(rgba, 64, 64, "Resize and Fill")
    assert (filled[:, :16, 3] == 255).all() and (filled[:, 16:48, 3] == 0).all() and (filled[:, 48:, 3] == 255).all()
    assert (controlnet.hint_tensor(filled)[0, :, :, :16] == -1).all()


def test_lama_units_start_from_noise_carrying_the_filled_picture(sd1):
    """The extension's HackedImageRNG: q_sample(x0, 999, noise) with x0 the VAE latents of the filled
    picture, in the first pass only; other units leave the noise alone."""
    from modules.core import model_ops
    from modules.core.sigma_schedules import TrainingSigmas

    filled = np.zeros((32, 48, 4), np.uint8)
    filled[:, :, 0], filled[:, :24, 1], filled[:, :, 3] = 200, 120, 0
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def unit(**kw):
        return controlnet.ControlUnit(object(), filled, resize_mode="Crop and Resize", **kw)

    def encode(pixels):
        return model_ops.encode_pixels(sd1, pixels)

    assert controlnet.ControlJob([unit()]).initial_noise(sd1, noise, encode) is noise
    mixed = controlnet.ControlJob([unit(), unit(noise_from_map=True)]).initial_noise(sd1, noise, encode)
    picture = controlnet.fit_map(filled, 64, 64, "Crop and Resize")[..., :3]
    x0 = encode(torch.from_numpy(picture.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None])
    a = float(TrainingSigmas.from_config().alphas_cumprod[999])
    assert 0.06 < a ** 0.5 < 0.07  # SD's schedule: about 7 % of the picture
    assert torch.allclose(mixed, a ** 0.5 * x0 + (1 - a) ** 0.5 * noise, atol=1e-6)
    hires = controlnet.ControlJob([unit(noise_from_map=True)], first_height=32, hires_height=64)
    assert hires.initial_noise(sd1, noise, encode) is noise  # the hires pass (its size): as it is
