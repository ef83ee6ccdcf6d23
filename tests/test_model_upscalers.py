"""Model upscalers (issue 15): tiny random-weight models built with spandrel's own architecture
classes, saved as A1111's users have them (plain state dicts in .pth, or .safetensors) in A1111's
folders, then found, named, run and served through the real code: the service
(modules.services.upscalers), the registry (modules.core.upscaling) and the shared API server."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.core import postprocess, upscaler_models, upscaling
from modules.services.upscalers import ModelUpscalers, folders_for, install
from tests.api_common import BASE, decode
from tests.pictures import b64

spandrel = upscaler_models.spandrel_module()
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.DAT import DAT  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.HAT import HAT  # noqa: E402
from spandrel.architectures.OmniSR import OmniSR  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

CPU = torch.device("cpu")

# (folder, file name, name shown, spandrel architecture, scale, tiny model)
MODELS = [
    ("ESRGAN", "4x-Tiny.pth", "4x-Tiny", "ESRGAN", 4, lambda: ESRGAN(num_filters=8, num_blocks=1, scale=4)),
    ("ESRGAN", "2x-Tiny.safetensors", "2x-Tiny", "ESRGAN", 2, lambda: ESRGAN(num_filters=8, num_blocks=1, scale=2)),
    ("RealESRGAN", "RealESRGAN_x4plus.pth", "R-ESRGAN 4x+", "ESRGAN", 4,
     lambda: ESRGAN(num_filters=8, num_blocks=1, scale=4)),
    ("RealESRGAN", "realesr-general-x4v3.pth", "R-ESRGAN General 4xV3", "RealESRGAN Compact", 4,
     lambda: Compact(num_feat=8, num_conv=2, upscale=4)),
    ("SwinIR", "SwinIR-tiny-x2.safetensors", "SwinIR-tiny-x2", "SwinIR", 2,
     lambda: SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                    upsampler="pixelshuffle", mlp_ratio=2.0)),
    ("DAT", "DAT_x2.pth", "DAT x2", "DAT", 2,
     lambda: DAT(img_size=16, embed_dim=16, split_size=[2, 4], depth=[1], num_heads=[2], upscale=2,
                 expansion_factor=2.0)),
    ("DAT", "HAT-tiny-x4.pth", "HAT-tiny-x4", "HAT", 4,
     lambda: HAT(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, compress_ratio=3,
                 squeeze_factor=4, upscale=4, num_feat=8, mlp_ratio=2.0)),
    ("DAT", "OmniSR-tiny-x2.safetensors", "OmniSR-tiny-x2", "OmniSR", 2,
     lambda: OmniSR(num_feat=8, block_num=1, window_size=4, res_num=1, up_scale=2)),
    ("ESRGAN", "SPAN-tiny-x4.pth", "SPAN-tiny-x4", "SPAN", 4,
     lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4)),
]
CONVOLUTIONAL = {"ESRGAN", "RealESRGAN Compact", "SPAN"}  # no attention windows: tiles are seamless


class Bomb:
    """A pickle that runs code when loaded by a plain torch.load: it writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def write_models(models_dir: Path, marker: Path) -> None:
    torch.manual_seed(0)
    for folder, file, _name, _arch, _scale, make in MODELS:
        path = models_dir / folder / file
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in make().state_dict().items()}
        if path.suffix == ".safetensors":
            save_file(state, str(path))
        elif folder == "RealESRGAN":
            torch.save({"params_ema": state}, path)  # as Real-ESRGAN's releases are
        else:
            torch.save(state, path)
    esrgan = models_dir / "ESRGAN"
    with open(esrgan / "bomb.pth", "wb") as file:
        pickle.dump({"weight": Bomb(marker)}, file)
    torch.save({"some.layer.weight": torch.zeros(4, 4)}, esrgan / "not-an-upscaler.pth")
    (esrgan / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    """The service over the A1111 folders, installed in the registry for this module only."""
    root = tmp_path_factory.mktemp("upscalers")
    marker = root / "bomb-ran"
    write_models(root / "models", marker)
    logged: list[str] = []
    service = install(ModelUpscalers(folders_for(object(), root / "models"), log=logged.append))
    service.marker, service.logged = marker, logged
    yield service
    upscaling.set_refresher(None)
    upscaling.set_model_upscalers([])


def picture(width: int = 40, height: int = 28, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


def test_files_are_found_and_named_as_a1111_names_them(found):
    rows = {u.name: u for u in upscaling.model_upscalers()}
    for folder, file, name, _arch, scale, _make in MODELS:
        assert rows[name].scale == scale and rows[name].kind == folder
        assert Path(rows[name].model_path).name == file
    assert rows["R-ESRGAN 4x+"].model_url.endswith("/RealESRGAN_x4plus.pth")
    assert rows["4x-Tiny"].model_name == "ESRGAN_4x"  # A1111's model_name for its ESRGAN rows
    # after the built-in ones, in the hires menu and in Extras
    assert upscaling.names()[-len(rows):] == list(rows)
    assert set(rows) <= set(postprocess.image_upscaler_names())
    architectures = {f.name: f.architecture for f in found.files}
    assert {architectures[name] for _, _, name, *_ in MODELS} == {m[3] for m in MODELS}


def test_a_pickle_bomb_is_refused_and_nothing_in_it_runs(found):
    bomb = next(p for p in found.unusable if p.name == "bomb.pth")
    assert "refused" in found.unusable[bomb] and "bomb" not in upscaling.names()
    assert not found.marker.exists()
    real = found.marker.with_name("plain-pickle-ran")  # the same pickle, loaded without protection, does run
    pickle.loads(pickle.dumps({"weight": Bomb(real)}))
    assert real.exists()
    with pytest.raises(upscaler_models.UpscalerFileError, match="refused"):
        upscaler_models.read_state_dict(bomb)
    assert not found.marker.exists()


def test_unusable_files_are_listed_with_the_reason_not_fatal(found):
    reasons = {p.name: why for p, why in found.unusable.items()}
    assert "does not recognise" in reasons["not-an-upscaler.pth"]
    assert "cannot be read" in reasons["truncated.safetensors"]
    assert any("truncated.safetensors" in line for line in found.logged)


@pytest.mark.parametrize("name,scale", [(m[2], m[4]) for m in MODELS])
def test_each_model_gives_its_scale_and_the_exact_target_size(found, name, scale):
    image = picture(20, 12)
    native = upscaling.get(name).step(image, scale)
    assert native.size == (20 * scale, 12 * scale) and native.mode == "RGB"
    assert upscaling.upscale_image(image, 50, 30, name).size == (50, 30)  # 2.5x: one step, then Lanczos down
    if scale == 2:  # 6x asked of a 2x model: the model twice (4x), then Lanczos up to the size
        assert upscaling.upscale_image(image, 120, 72, name).size == (120, 72)


def seam_mask(size: int, tile: int, scale: int, band: int) -> np.ndarray:
    """True where a pixel (output coordinates) is at least `band` input pixels from a tile seam."""
    seams = np.arange(tile, size, tile) * scale
    coords = np.arange(size * scale)
    return np.all(np.abs(coords[:, None] - seams[None, :]) >= band * scale, axis=1) if len(seams) else np.ones_like(coords, bool)


@pytest.mark.parametrize("name,arch,scale", [(m[2], m[3], m[4]) for m in MODELS if m[1] != "2x-Tiny.safetensors"])
def test_tiled_equals_untiled_away_from_the_seams(found, name, arch, scale):
    """Tolerance: convolutional models match everywhere (within 1/255 of rounding); window-attention
    models (SwinIR, DAT, HAT, OmniSR) see other window borders and padding in each tile, so their
    pixels at least 4 input pixels from a seam differ by under 3/255 on average (random weights
    exaggerate this; trained models are smoother)."""
    image = picture(40, 28)
    model = upscaler_models.build(Path(upscaling.get(name).model_path))
    whole = np.asarray(upscaler_models.run(model, image, CPU, tile=0), dtype=np.int16)
    tiled = np.asarray(upscaler_models.run(model, image, CPU, tile=16, overlap=8), dtype=np.int16)
    diff = np.abs(whole - tiled)
    if arch in CONVOLUTIONAL:
        assert diff.max() <= 1
    else:
        keep = seam_mask(28, 16, scale, 4)[:, None] & seam_mask(40, 16, scale, 4)[None, :]
        assert diff[keep].mean() < 3.0, diff[keep].mean()


def test_interrupt_between_tiles_and_the_model_leaves_the_device(found):
    model = upscaler_models.build(Path(upscaling.get("4x-Tiny").model_path))
    calls = []
    out = upscaler_models.run(model, picture(40, 28), CPU, tile=16, interrupted=lambda: calls.append(1) or len(calls) > 2)
    assert out.size == (160, 112) and len(calls) == 3  # two tiles ran, then a plain resize
    assert next(model.descriptor.model.parameters()).device == CPU


def test_tile_options_are_read_at_each_run(found):
    class Opts(dict):
        pass

    opts = Opts(ESRGAN_tile=16, ESRGAN_tile_overlap=4, DAT_tile=0, DAT_tile_overlap=0)
    service = ModelUpscalers(found.folders, options=opts)
    esrgan = next(f for f in found.files if f.name == "4x-Tiny")
    dat = next(f for f in found.files if f.name == "DAT x2")
    assert service.tile_options(esrgan) == (16, 4) and service.tile_options(dat) == (0, 0)
    opts["ESRGAN_tile"] = 0
    assert service.tile_options(esrgan) == (0, 4)
    assert service.upscale(esrgan, picture(12, 8)).size == (48, 32)


def test_console_bar_over_the_tiles_follows_its_option(found, capsys):
    """A1111's enable_upscale_progressbar (on by default): a tqdm bar on stderr over the tiles."""
    opts = {"ESRGAN_tile": 16, "ESRGAN_tile_overlap": 4, "enable_upscale_progressbar": True}
    service = ModelUpscalers(found.folders, options=opts)
    esrgan = next(f for f in found.files if f.name == "4x-Tiny")
    capsys.readouterr()
    assert service.upscale(esrgan, picture(40, 28)).size == (160, 112)
    bar = capsys.readouterr().err
    assert "Tiled upscale (4x-Tiny)" in bar and "6/6" in bar  # 3 x 2 tiles of 16 px
    opts["enable_upscale_progressbar"] = False
    service.upscale(esrgan, picture(40, 28))
    assert "Tiled upscale" not in capsys.readouterr().err
    opts.update(enable_upscale_progressbar=True, ESRGAN_tile=0)  # untiled: no bar, as in A1111
    service.upscale(esrgan, picture(12, 8))
    assert "Tiled upscale" not in capsys.readouterr().err


def test_half_precision_only_where_the_device_has_it(found):
    model = upscaler_models.build(Path(upscaling.get("4x-Tiny").model_path))
    assert upscaler_models.run_dtype(model, CPU, half=True) == torch.float32


def test_extras_blends_two_model_upscalers(found):
    image = picture(20, 12)
    settings = postprocess.UpscaleSettings(upscale_by=4, upscaler_1="4x-Tiny", upscaler_2="R-ESRGAN General 4xV3",
                                           upscaler_2_visibility=0.25)
    settings.check()
    out, info = postprocess.upscale(image, settings)
    first = upscaling.upscale_image(image, 80, 48, "4x-Tiny")
    second = upscaling.upscale_image(image, 80, 48, "R-ESRGAN General 4xV3")
    assert out.size == (80, 48)
    assert np.array_equal(np.asarray(out), np.asarray(Image.blend(first, second, 0.25)))
    assert info["Postprocess upscaler"] == "4x-Tiny" and info["Postprocess upscaler 2"] == "R-ESRGAN General 4xV3"


def test_a_file_added_later_is_found_when_asked_for(found, tmp_path):
    folder = found.folders["ESRGAN"]
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), folder / "late-2x.pth")
    try:
        assert upscaling.get("late-2x").scale == 2  # an unknown name looks at the folders again
    finally:
        (folder / "late-2x.pth").unlink()
        upscaling.refresh()
    assert "late-2x" not in upscaling.names()


# -- through the API of the shared server ----------------------------------------------------

@pytest.fixture(scope="module")
def served(server):
    """Two tiny models in the server's models/ESRGAN and models/RealESRGAN; removed afterwards."""
    models = server.data_dir / "models"
    torch.manual_seed(1)
    paths = [models / "ESRGAN" / "4x-Served.pth", models / "RealESRGAN" / "RealESRGAN_x2plus.pth"]
    for path, model in zip(paths, (ESRGAN(num_filters=8, num_blocks=1, scale=4), Compact(num_feat=8, num_conv=2, upscale=2))):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    # A1111 lists a built-in Real-ESRGAN name only while realesrgan_enabled_models ticks it
    enabled = server.get("/sdapi/v1/options").json()["realesrgan_enabled_models"]
    assert server.post("/sdapi/v1/options", json={"realesrgan_enabled_models": [*enabled, "R-ESRGAN 2x+"]}).ok
    yield server
    server.post("/sdapi/v1/options", json={"realesrgan_enabled_models": enabled})
    for path in paths:
        path.unlink()
    server.get("/sdapi/v1/upscalers")  # the server looks again: the rows are gone


def test_api_lists_model_upscalers_and_realesrgan_models(served):
    rows = {u["name"]: u for u in served.get("/sdapi/v1/upscalers").json()}
    assert rows["4x-Served"]["scale"] == 4 and rows["4x-Served"]["model_path"].endswith("4x-Served.pth")
    assert rows["R-ESRGAN 2x+"]["scale"] == 2 and rows["R-ESRGAN 2x+"]["model_url"].endswith("RealESRGAN_x2plus.pth")
    assert [r["name"] for r in served.get("/sdapi/v1/upscalers").json()][:3] == ["None", "Lanczos", "Nearest"]
    realesrgan = served.get("/sdapi/v1/realesrgan-models").json()
    assert realesrgan == [{"name": "R-ESRGAN 2x+", "path": rows["R-ESRGAN 2x+"]["model_path"], "scale": 2}]


def test_api_hires_fix_with_a_model_upscaler(served):
    body = {**BASE, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "4x-Served", "denoising_strength": 0.5,
            "hr_second_pass_steps": 1}
    r = served.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert decode(data["images"][0]).size == (128, 128)
    assert "Hires upscaler: 4x-Served" in data["info"]


def test_api_extras_single_and_batch_with_two_model_upscalers(served):
    image = picture(24, 16)
    body = {"upscaling_resize": 2, "upscaler_1": "4x-Served", "upscaler_2": "R-ESRGAN 2x+",
            "extras_upscaler_2_visibility": 0.5}
    r = served.post("/sdapi/v1/extra-single-image", json={**body, "image": b64(image)})
    assert r.status_code == 200, r.text
    single = decode(r.json()["image"])
    assert single.size == (48, 32)
    assert "Postprocess upscaler: 4x-Served" in r.json()["html_info"]
    r = served.post("/sdapi/v1/extra-batch-images",
                    json={**body, "imageList": [{"data": b64(image), "name": "a.png"}, {"data": b64(picture(16, 16, 1)), "name": "b.png"}]})
    assert r.status_code == 200, r.text
    batch = [decode(text) for text in r.json()["images"]]
    assert [b.size for b in batch] == [(48, 32), (32, 32)]
    assert np.array_equal(np.asarray(batch[0]), np.asarray(single))
