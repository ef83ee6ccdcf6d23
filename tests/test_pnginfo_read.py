"""What the PNG Info tab and /sdapi/v1/png-info read from a file (modules.core.image_io.read_info)."""

from PIL import Image, PngImagePlugin

from modules.core import image_io
from modules.ui.pnginfo_tab import NOTHING, read_upload


def _png(path, **texts):
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info, dpi=(72, 72))


def test_infotext_and_other_items_are_read_and_technical_keys_left_out(tmp_path):
    path = tmp_path / "a.png"
    _png(path, parameters="a cat\nSteps: 3, Seed: 1", Software="paint & <tools>")
    infotext, items = image_io.read_info(path)
    assert infotext == "a cat\nSteps: 3, Seed: 1"
    assert items == {"Software": "paint & <tools>"}  # no parameters, no dpi
    text, shown = read_upload({"path": str(path), "orig_name": "a.png"})
    assert text == infotext
    assert "<b>parameters</b>" in shown and "a cat<br>Steps: 3, Seed: 1" in shown
    assert "paint &amp; &lt;tools&gt;" in shown  # escaped


def test_nothing_found_and_a_broken_file(tmp_path):
    plain = tmp_path / "plain.png"
    _png(plain)
    assert read_upload({"path": str(plain)}) == ("", f"<div><p>{NOTHING}</p></div>")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    text, shown = read_upload({"path": str(broken), "orig_name": "broken.png"})
    assert text == "" and "class='error'" in shown and "broken.png is not an image Easel can read" in shown
    assert read_upload(None) == ("", "")
