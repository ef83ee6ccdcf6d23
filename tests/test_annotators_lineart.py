"""sd-webui-controlnet's lineart preprocessors run from the user's annotator files: ``lineart``
(lineart_realistic, ``lineart/sk_model.pth``), ``lineart_coarse`` (``lineart/sk_model2.pth``),
``lineart_anime`` (``lineart_anime/netG.pth``) and ``lineart_anime_denoise`` (``manga_line/erika.pth``).

Tiny random state dicts in the real key layouts (narrower, the U-Net shallower) go into the shared
server's annotator folder; ``/controlnet/detect`` is compared with the networks written out in plain
functional ops, a txt2img unit uses one, and files that are not the network are 422s naming the module.
The extension hides these rows' resolution slider: they run at 512 on the short side, so the pictures
here are 512 px (no resize) unless a test checks the resize."""

from __future__ import annotations

import cv2
import numpy as np
import requests
import torch
import torch.nn.functional as F
from PIL import Image

from modules.core import annotator_lineart, annotator_lineart_anime
from tests.api_common import assert_error, decode
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures
from tests.test_controlnet_preprocessors_more import _annotators


def _detect(server, module, image):
    return requests.post(server.url + "/controlnet/detect", timeout=300, json={
        "controlnet_module": module, "controlnet_input_images": [b64(image)]})


def _map(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    rgb = np.asarray(decode(response.json()["images"][0]).convert("RGB"))
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    return rgb[..., 0]


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _conv(g, cout, cin, k):
    return torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5, torch.randn(cout, generator=g) * 0.1


# ---------------------------------------------------------------------------- lineart (sk_model)

def write_tiny_generator(path, width=4, blocks=2, seed=0) -> dict:
    """A random sk_model state dict in the real layout (model0 .. model4; the real one is 64 wide with
    3 residual blocks). Returns the tensors."""
    g, state = torch.Generator().manual_seed(seed), {}
    convs = {"model0.1": (width, 3, 7), "model1.0": (2 * width, width, 3), "model1.3": (4 * width, 2 * width, 3),
             "model4.1": (1, width, 7)}
    for block in range(blocks):
        for conv in (1, 5):
            convs[f"model2.{block}.conv_block.{conv}"] = (4 * width, 4 * width, 3)
    for key, shape in convs.items():
        state[f"{key}.weight"], state[f"{key}.bias"] = _conv(g, *shape)
    for key, (cin, cout) in {"model3.0": (4 * width, 2 * width), "model3.3": (2 * width, width)}.items():
        state[f"{key}.weight"] = torch.randn(cin, cout, 3, 3, generator=g) / (cin * 9) ** 0.5
        state[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_lineart(state: dict, image: np.ndarray) -> np.ndarray:
    """The extension's lineart map written out: 255 minus the generator's drawing of RGB in 0..1."""
    def conv(x, key, pad=0, **kw):
        if pad:
            x = F.pad(x, (pad,) * 4, mode="reflect")
        return F.conv2d(x, state[f"{key}.weight"], state[f"{key}.bias"], **kw)

    def up(x, key):
        return F.conv_transpose2d(x, state[f"{key}.weight"], state[f"{key}.bias"], stride=2, padding=1,
                                  output_padding=1)

    x = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None] / 255.0
    x = F.relu(F.instance_norm(conv(x, "model0.1", pad=3)))
    x = F.relu(F.instance_norm(conv(x, "model1.0", stride=2, padding=1)))
    x = F.relu(F.instance_norm(conv(x, "model1.3", stride=2, padding=1)))
    block = 0
    while f"model2.{block}.conv_block.1.weight" in state:
        y = F.relu(F.instance_norm(conv(x, f"model2.{block}.conv_block.1", pad=1)))
        x = x + F.instance_norm(conv(y, f"model2.{block}.conv_block.5", pad=1))
        block += 1
    x = F.relu(F.instance_norm(up(x, "model3.0")))
    x = F.relu(F.instance_norm(up(x, "model3.3")))
    drawing = (torch.sigmoid(conv(x, "model4.1", pad=3))[0, 0].numpy() * 255.0).clip(0, 255).astype(np.uint8)
    return 255 - drawing


def test_lineart_realistic_and_coarse_run_from_the_users_files(server, api_models):
    fine, coarse = _annotators(server) / annotator_lineart.FILE, _annotators(server) / annotator_lineart.FILE_COARSE
    fine_state, coarse_state = write_tiny_generator(fine), write_tiny_generator(coarse, width=3, blocks=3, seed=1)
    image = picture(512, 512)
    try:
        realistic = _map(_detect(server, "lineart_realistic", image))  # by its label
        assert np.array_equal(realistic, reference_lineart(fine_state, _rgb(image)))
        assert len(np.unique(realistic)) > 20
        rough = _map(_detect(server, "lineart_coarse", image))
        assert np.array_equal(rough, reference_lineart(coarse_state, _rgb(image)))
        assert not np.array_equal(realistic, rough)

        unit = {"enabled": True, "module": "lineart_realistic", "model": api_models["ldm"],
                "image": b64(picture(64, 64))}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert "Module: lineart, " in r.json()["info"]
        fine.write_bytes(b"PK\x03\x04 not a state dict")  # a broken file: a 422 naming the module
        assert "module(lineart_realistic)" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        fine.unlink()
        coarse.unlink()
    assert "sk_model.pth" in _detect(server, "lineart", image).json()["detail"]  # missing again: refused


# ---------------------------------------------------------------------- lineart_anime (netG U-Net)

def write_tiny_unet(path, width=2, downs=7, seed=0, prefix="module.") -> dict:
    """A random netG state dict in the real layout (the real one: 64 wide, 8 downsamplings), saved with
    the ``module.`` prefix of a DataParallel save as the real file has. Returns the tensors, unprefixed."""
    g, state = torch.Generator().manual_seed(seed), {}

    def up(key, cin, cout):
        state[f"{key}.weight"] = torch.randn(cin, cout, 4, 4, generator=g) / (cin * 4) ** 0.5
        state[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.1

    widths = [width * m for m in (1, 2, 4)] + [width * 8] * (downs - 3)
    state["model.model.0.weight"], state["model.model.0.bias"] = _conv(g, width, 3, 4)
    up("model.model.3", 2 * width, 1)
    key = "model.model.1.model"
    for level, (outer, inner) in enumerate(zip(widths, widths[1:])):
        state[f"{key}.1.weight"], state[f"{key}.1.bias"] = _conv(g, inner, outer, 4)
        innermost = level == len(widths) - 2
        up(f"{key}.3" if innermost else f"{key}.5", inner if innermost else 2 * inner, outer)
        key += ".3.model"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return state


def reference_anime(state: dict, image: np.ndarray) -> np.ndarray:
    """The extension's lineart_anime map written out (a picture whose sides are multiples of 256)."""
    def level(x, key):
        y = F.conv2d(F.leaky_relu(x, 0.2), state[f"{key}.1.weight"], state[f"{key}.1.bias"], stride=2, padding=1)
        if f"{key}.3.model.1.weight" in state:
            y, last = level(F.instance_norm(y), f"{key}.3.model"), f"{key}.5"
        else:
            last = f"{key}.3"
        y = F.conv_transpose2d(F.relu(y), state[f"{last}.weight"], state[f"{last}.bias"], stride=2, padding=1)
        return torch.cat([x, F.instance_norm(y)], 1)

    x = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None] / 127.5 - 1.0
    x = F.conv2d(x, state["model.model.0.weight"], state["model.model.0.bias"], stride=2, padding=1)
    x = level(x, "model.model.1.model")
    x = torch.tanh(F.conv_transpose2d(F.relu(x), state["model.model.3.weight"], state["model.model.3.bias"],
                                      stride=2, padding=1))
    return 255 - (x[0, 0] * 127.5 + 127.5).numpy().clip(0, 255).astype(np.uint8)


def test_lineart_anime_runs_from_a_dataparallel_netG(server):
    path = _annotators(server) / annotator_lineart_anime.FILE_ANIME
    state = write_tiny_unet(path)
    image = picture(512, 512)
    try:
        lines = _map(_detect(server, "lineart_anime", image))
        assert np.array_equal(lines, reference_anime(state, _rgb(image)))
        assert len(np.unique(lines)) > 20
        # 80 x 64: 512 on the short side (640 x 512), stretched to 768 x 512 for the U-Net and back
        wide = _map(_detect(server, "lineart_anime", picture(80, 64)))
        assert wide.shape == (512, 640) and len(np.unique(wide)) > 20
    finally:
        path.unlink()


# ------------------------------------------------------------ lineart_anime_denoise (erika res_skip)

def write_tiny_erika(path, widths=(3, 4, 5, 6, 7, 6, 5, 4, 3, 2), repeats=(2, 1, 2, 1, 2, 2, 1, 1, 2, 2),
                     seed=0) -> dict:
    """A random erika state dict in the real layout (block0 .. block9, conv15; the real one is 24 .. 384
    wide with 2, 3, 5, 7, 12, 7, 5, 3, 2, 2 blocks). Returns the tensors."""
    g, state = torch.Generator().manual_seed(seed), {}

    def bn_relu_conv(key, cin, cout, k=3, grey=False):
        state[f"{key}.model.0.weight"] = 1 + torch.randn(cin, generator=g) * 0.1
        state[f"{key}.model.0.bias"] = torch.randn(cin, generator=g) * 0.1
        mean, var = torch.randn(cin, generator=g), 0.5 + torch.rand(cin, generator=g)
        if grey:  # the first norm sees 0..255
            mean, var = mean + 128.0, var * 64.0 ** 2
        state[f"{key}.model.0.running_mean"], state[f"{key}.model.0.running_var"] = mean, var
        state[f"{key}.model.0.num_batches_tracked"] = torch.tensor(1000)
        state[f"{key}.model.2.weight"], state[f"{key}.model.2.bias"] = _conv(g, cout, cin, k)

    channels = 1
    for stage, (width, count) in enumerate(zip(widths, repeats)):
        for i in range(count):
            key, cin = f"block{stage}.model.{i}", channels if i == 0 else width
            strided = 0 < stage < 5 and i == count - 1
            bn_relu_conv(f"{key}.conv1", cin, width, grey=stage == 0 and i == 0)
            bn_relu_conv(f"{key}.residual", width, width)
            if cin != width or strided:
                state[f"{key}.shortcut.model.0.weight"], state[f"{key}.shortcut.model.0.bias"] = _conv(g, width, cin, 1)
        channels = width
    bn_relu_conv("conv15", channels, 1, k=1)
    state["conv15.model.2.weight"] *= 40.0  # a map that spans the grey levels
    state["conv15.model.2.bias"] += 128.0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reference_erika(state: dict, image: np.ndarray) -> np.ndarray:
    """The extension's lineart_anime_denoise map written out: 255 minus res_skip of the grey picture."""
    def bn_relu_conv(x, key, stride=1, upsample=False):
        x = F.batch_norm(x, state[f"{key}.model.0.running_mean"], state[f"{key}.model.0.running_var"],
                         state[f"{key}.model.0.weight"], state[f"{key}.model.0.bias"], False, 0.0, 1e-3)
        weight = state[f"{key}.model.2.weight"]
        x = F.conv2d(F.leaky_relu(x, 0.2), weight, state[f"{key}.model.2.bias"], stride=stride,
                     padding=weight.shape[-1] // 2)
        return F.interpolate(x, scale_factor=2, mode="nearest") if upsample else x

    def stage(x, index):
        count = sum(1 for k in state if k.startswith(f"block{index}.model.") and k.endswith(".conv1.model.2.weight"))
        for i in range(count):
            key = f"block{index}.model.{i}"
            stride, upsample = (2 if 0 < index < 5 and i == count - 1 else 1), (4 < index < 9 and i == 0)
            y = bn_relu_conv(bn_relu_conv(x, f"{key}.conv1", stride, upsample), f"{key}.residual")
            if f"{key}.shortcut.model.0.weight" in state:
                x = F.conv2d(x, state[f"{key}.shortcut.model.0.weight"], state[f"{key}.shortcut.model.0.bias"],
                             stride=stride)
                x = F.interpolate(x, scale_factor=2, mode="nearest") if upsample else x
            x = x + y
        return x

    grey = cv2.cvtColor(np.array(image), cv2.COLOR_RGB2GRAY)
    encoder = [torch.from_numpy(grey).float()[None, None]]
    for index in range(5):
        encoder.append(stage(encoder[-1], index))
    x = encoder[5]
    for index, skip in zip(range(5, 9), (4, 3, 2, 1)):
        x = stage(x, index) + encoder[skip]
    x = bn_relu_conv(stage(x, 9), "conv15")
    return (255.0 - x[0, 0].numpy()).clip(0, 255).astype(np.uint8)


def test_lineart_anime_denoise_runs_from_erika(server):
    path = _annotators(server) / annotator_lineart_anime.FILE_MANGA
    state = write_tiny_erika(path)
    image = picture(512, 512)
    try:
        lines = _map(_detect(server, "lineart_anime_denoise", image))
        assert np.array_equal(lines, reference_erika(state, _rgb(image)))
        assert len(np.unique(lines)) > 20
        grey = cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY)  # it sees the grey picture only
        assert np.array_equal(_map(_detect(server, "lineart_anime_denoise", Image.fromarray(grey))), lines)
    finally:
        path.unlink()


# ------------------------------------------------------------------------------- not the network

def test_a_file_that_is_not_the_network_is_a_422_naming_the_module(server):
    image = picture(64, 64)
    netg = _annotators(server) / annotator_lineart_anime.FILE_ANIME
    erika = _annotators(server) / annotator_lineart_anime.FILE_MANGA
    coarse = _annotators(server) / annotator_lineart.FILE_COARSE
    try:
        write_tiny_generator(netg)  # a lineart generator where the U-Net goes
        r = _detect(server, "lineart_anime", image)
        assert r.status_code == 422 and "lineart_anime" in r.json()["detail"] and "netG.pth" in r.json()["detail"]
        erika.parent.mkdir(parents=True, exist_ok=True)
        erika.write_bytes(b"<html>not found</html>")
        r = _detect(server, "lineart_anime_denoise", image)
        assert r.status_code == 422 and "lineart_anime_denoise" in r.json()["detail"]
        assert "erika.pth" in r.json()["detail"]
        state = write_tiny_generator(coarse)
        state["model4.1.weight"] = torch.zeros(2, 4, 7, 7)  # two output channels: not the network
        torch.save(state, coarse)
        r = _detect(server, "lineart_coarse", image)
        assert r.status_code == 422 and "lineart_coarse" in r.json()["detail"] and "sk_model2.pth" in r.json()["detail"]
    finally:
        for path in (netg, erika, coarse):
            path.unlink(missing_ok=True)


def test_the_networks_have_the_real_files_layouts():
    """Built at the real files' sizes (on the meta device: no memory), the key names and shapes are the
    extension's (those of lllyasviel/Annotators' sk_model.pth, netG.pth and erika.pth)."""
    with torch.device("meta"):
        sk = annotator_lineart.LineartGenerator(64, 3).state_dict()
        levels = [(64, 128), (128, 256), (256, 512)] + [(512, 512)] * 4
        netg = annotator_lineart_anime.AnimeUnet(levels).state_dict()
        erika = annotator_lineart_anime.MangaLineNetwork([24, 48, 96, 192, 384, 192, 96, 48, 24, 16],
                                                         [2, 3, 5, 7, 12, 7, 5, 3, 2, 2]).state_dict()
    assert tuple(sk["model0.1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sk["model2.2.conv_block.5.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sk["model3.3.weight"].shape) == (128, 64, 3, 3) and tuple(sk["model4.1.weight"].shape) == (1, 64, 7, 7)
    innermost = "model.model.1" + ".model.3" * 6 + ".model"
    assert tuple(netg[innermost + ".1.weight"].shape) == (512, 512, 4, 4)
    assert tuple(netg[innermost + ".3.weight"].shape) == (512, 512, 4, 4)
    assert tuple(netg["model.model.1.model.5.weight"].shape) == (256, 64, 4, 4)
    assert tuple(netg["model.model.3.weight"].shape) == (128, 1, 4, 4)
    assert tuple(erika["block4.model.11.shortcut.model.0.weight"].shape) == (384, 384, 1, 1)
    assert tuple(erika["block5.model.0.shortcut.model.0.weight"].shape) == (192, 384, 1, 1)
    assert tuple(erika["block0.model.0.conv1.model.0.running_var"].shape) == (1,)
    assert "block0.model.1.shortcut.model.0.weight" not in erika
    assert tuple(erika["conv15.model.2.weight"].shape) == (1, 16, 1, 1)
    assert (len(sk), len(netg), len(erika)) == (24, 32, 707)  # the extension's modules' state_dict() lengths
