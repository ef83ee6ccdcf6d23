"""The Extras tab's work (modules/ui/extras_tab.py) on a real engine: uploads read from their files,
the worker's upscale, the saved PNGs read back; bad input is the message in the info box (the page
itself: tests/test_ui_tools_browser.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin


@pytest.fixture(scope="module")
def tab(tmp_path_factory, tiny_checkpoints):
    import webui
    from modules import cmd_args
    from modules.ui.extras_tab import ExtrasTab

    data = tmp_path_factory.mktemp("extras-data")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir)],
                               extra_preloads=[])
    return ExtrasTab(webui.build_engine(opts))


def _upload(path: Path, size=(40, 24), text: str | None = "a cat\nSteps: 3, Seed: 1") -> dict:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    Image.fromarray(np.stack([x * 6, y * 10, x * 0 + 90], -1).astype(np.uint8)).save(path, pnginfo=info)
    return {"path": str(path), "orig_name": path.name}


def _run(tab, mode=0, image=None, files=None, scale_to=False, by=2.0, w=64, h=64, crop=True,
         up1="Lanczos", up2="None", vis=0.0, input_dir="", output_dir="", show_results=True):
    return tab.run(mode, image, files, scale_to, by, w, h, crop, up1, up2, vis, input_dir, output_dir, show_results)


def test_single_picture_is_upscaled_shown_and_saved_with_its_texts(tab, tmp_path):
    images, info = _run(tab, image=_upload(tmp_path / "in.png"))
    assert [im.size for im in images] == [(80, 48)]
    assert "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos" in info
    saved = sorted((tab.engine.data_path / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 1 and saved[0].name == "00000.png"
    with Image.open(saved[0]) as png:
        assert png.size == (80, 48)
        assert png.info["parameters"] == "a cat\nSteps: 3, Seed: 1"  # the input's, kept
        assert png.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"


def test_batch_scales_every_picture_to_a_size(tab, tmp_path):
    files = [_upload(tmp_path / "a.png"), _upload(tmp_path / "b.png", size=(24, 40), text=None)]
    images, info = _run(tab, mode=1, files=files, scale_to=True, w=64, h=32, crop=True)
    assert [im.size for im in images] == [(64, 32), (64, 32)]
    assert "Postprocess upscale to: 64x32" in info and "Postprocess crop to: 64x32" in info


def test_bad_input_is_a_message(tab, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    images, info = _run(tab, mode=1, files=[{"path": str(broken), "orig_name": "broken.png"}])
    assert images == [] and "broken.png is not an image Easel can read" in info and "class='error'" in info
    images, info = _run(tab, image=None)
    assert images == [] and "Upload a picture first" in info
    images, info = _run(tab, image=_upload(tmp_path / "c.png"), up2="Lanczos", vis=1.5)
    assert images == [] and "must be between 0 and 1, got 1.5" in info


def test_batch_from_directory_writes_to_the_output_folder_and_lists_what_it_skipped(tab, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    _upload(source / "one.png")
    _upload(source / "two.png", size=(16, 16), text=None)
    (source / "notes.txt").write_text("not a picture")
    images, info = _run(tab, mode=2, up1="Nearest", by=3.0, input_dir=str(source), output_dir=str(target),
                        show_results=False)
    assert images == []  # "Show result images" off
    written = sorted(target.glob("*.png"))
    assert [Image.open(p).size for p in written] == [(120, 72), (48, 48)]
    assert Image.open(written[0]).info["parameters"] == "a cat\nSteps: 3, Seed: 1"
    assert f"Saved 2 images to {target}" in info and "Skipped notes.txt: not a readable image" in info
    images, info = _run(tab, mode=2, input_dir=str(tmp_path / "missing"))
    assert images == [] and "is not a folder" in info


def test_batch_from_directory_is_refused_under_hide_ui_dir_config(tab, tmp_path):
    from modules.ui.extras_tab import ExtrasTab

    locked = ExtrasTab(tab.engine, allow_folders=False)
    images, info = locked.run(2, None, None, False, 2.0, 64, 64, True, "Lanczos", "None", 0.0, str(tmp_path), "", True)
    assert images == [] and "--hide-ui-dir-config" in info


def test_face_restoration_sliders_restore_the_face_and_name_a_missing_model(tab, tmp_path):
    """A1111's Extras GFPGAN / CodeFormer visibility sliders: with GFPGAN's file in models/GFPGAN the
    face changes and the postprocessing text says so; CodeFormer without its file is a message
    naming the field."""
    from tests.face_models import draw_face, write_gfpgan

    write_gfpgan(tab.engine.data_path / "models")
    path = tmp_path / "face.png"
    draw_face(256).save(path)
    upload = {"path": str(path), "orig_name": path.name}
    plain, _ = _run(tab, image=upload, by=1.0)
    restored, info = tab.run(0, upload, None, False, 1.0, 64, 64, True, "Lanczos", "None", 0.0, "", "", True,
                             1.0, 0.0, 0.0)
    assert "GFPGAN visibility: 1" in info, info
    assert restored[0].size == plain[0].size == (256, 256)
    assert not np.array_equal(np.asarray(restored[0].convert("RGB")), np.asarray(plain[0].convert("RGB")))
    _, error = tab.run(0, upload, None, False, 1.0, 64, 64, True, "Lanczos", "None", 0.0, "", "", True,
                       0.0, 1.0, 0.5)
    assert "codeformer_visibility" in error and "CodeFormer" in error
