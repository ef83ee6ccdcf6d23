"""Image files: real files on disk, read back by our reader, by raw bytes and by sd-parsers."""

import base64
import datetime
import io
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms
from sd_parsers import ParserManager

from modules.core import image_io
from modules.core.image_io import (
    dated_subdir,
    decode_base64_to_image,
    decode_user_comment,
    encode_pil_to_base64,
    grid_layout,
    image_grid,
    next_sequence_number,
    read_infotext,
    save_grid,
    save_image,
)
from modules.core.infotext import build_infotext, parse_infotext

PARAMS = {
    "Steps": 25,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 6.5,
    "Seed": 1234,
    "Size": "64x64",
    "Model hash": "abcdef1234",
    "Model": "dreamshaper_8",
    "Lora hashes": "detail: 0123abcd, style: 4567ef01",
    "Version": "v1.10.1",
}
PROMPT = "a photo of a cat, (sharp:1.2)\nsecond line"
NEGATIVE = "blurry, lowres"
INFOTEXT = build_infotext(PROMPT, NEGATIVE, PARAMS)


def picture(mode="RGB", size=(64, 64)):
    im = Image.new("RGB", size)
    im.putdata([(x * 4 % 256, y * 4 % 256, (x + y) % 256) for y in range(size[1]) for x in range(size[0])])
    return im.convert(mode)


def png_chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(ctype + body), f"bad CRC in {ctype!r}"
        chunks.append((ctype, body))
        pos += 12 + length
    return chunks


def exif_user_comment_entry(path):
    """The raw UserComment bytes (Pillow's EXIF parser) and its TIFF type (from the raw entry)."""
    with Image.open(path) as im:
        raw_exif = im.info["exif"]
    exif = Image.Exif()
    exif.load(raw_exif)
    raw = exif.get_ifd(0x8769)[0x9286]
    tiff = raw_exif[6:] if raw_exif.startswith(b"Exif\0\0") else raw_exif
    assert tiff[:2] == b"MM"  # big-endian, as piexif writes
    entry = tiff.index(b"\x92\x86")
    (tag_type,) = struct.unpack(">H", tiff[entry + 2:entry + 4])
    return raw, tag_type


def pixels(image):
    return np.asarray(image).tolist()


def sd_parse(path):
    result = ParserManager().parse(path)
    assert result is not None, f"sd-parsers found nothing in {path.name}"
    sampler = result.samplers[0]
    return result, sampler


# --------------------------------------------------------------------------- PNG

def test_png_is_read_by_sd_parsers(tmp_path):
    path = save_image(picture(), tmp_path, seed=1234, infotext=INFOTEXT)
    assert path.name == "00000-1234.png"
    result, sampler = sd_parse(path)
    assert result.generator.name == "AUTOMATIC1111"
    assert sampler.prompts[0].value == PROMPT
    assert sampler.negative_prompts[0].value == NEGATIVE
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters["seed"] == "1234"
    assert sampler.parameters["steps"] == "25"
    assert sampler.parameters["cfg_scale"] == "6.5"
    assert sampler.parameters["scheduler"] == "Karras"
    assert sampler.model.name == "dreamshaper_8"
    assert sampler.model.hash == "abcdef1234"


def test_png_text_chunk_comes_right_after_ihdr(tmp_path):
    path = save_image(picture(), tmp_path, seed=1, infotext=INFOTEXT)
    chunks = png_chunks(path.read_bytes())
    assert [c[0] for c in chunks[:2]] == [b"IHDR", b"tEXt"]
    keyword, text = chunks[1][1].split(b"\0", 1)
    assert keyword == b"parameters"
    assert text.decode("latin-1") == INFOTEXT
    types = [c[0] for c in chunks]
    assert types.index(b"tEXt") < types.index(b"IDAT")
    assert types[-1] == b"IEND"


def test_png_text_first_even_with_an_icc_profile(tmp_path):
    im = picture()
    im.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = save_image(im, tmp_path, seed=1, infotext=INFOTEXT)
    types = [c[0] for c in png_chunks(path.read_bytes())]
    assert types[:3] == [b"IHDR", b"tEXt", b"iCCP"]


def test_png_non_latin1_text_uses_itxt(tmp_path):
    text = build_infotext("猫の写真, ünïcödé", "", PARAMS)
    path = save_image(picture(), tmp_path, seed=1, infotext=text)
    chunks = png_chunks(path.read_bytes())
    assert chunks[1][0] == b"iTXt"
    assert chunks[1][1].startswith(b"parameters\0\0\0")  # uncompressed, no language
    assert read_infotext(path) == text
    with Image.open(path) as im:
        assert im.info["parameters"] == text  # Pillow agrees
    assert sd_parse(path)[1].prompts[0].value == "猫の写真, ünïcödé"


def test_png_round_trip_of_awkward_values(tmp_path):
    params = dict(PARAMS, Model='my "best": model, v2', **{"Hires upscaler": "4x-UltraSharp"})
    text = build_infotext("prompt", "", params)
    path = save_image(picture(), tmp_path, seed=7, infotext=text)
    parsed = parse_infotext(read_infotext(path))
    assert parsed["Model"] == 'my "best": model, v2'
    assert parsed["Lora hashes"] == "detail: 0123abcd, style: 4567ef01"
    assert "Negative prompt:" not in read_infotext(path)


def test_png_keeps_rgba_and_pixels(tmp_path):
    im = picture("RGBA")
    path = save_image(im, tmp_path, seed=1, infotext=None)
    with Image.open(path) as back:
        assert back.mode == "RGBA"
        assert pixels(back) == pixels(im)
    assert read_infotext(path) is None


# --------------------------------------------------------------------------- JPEG / WebP

@pytest.mark.parametrize("extension", ["jpg", "webp"])
def test_exif_user_comment_is_a1111_unicode(tmp_path, extension):
    text = build_infotext("a cat, 漢字", NEGATIVE, PARAMS)
    path = save_image(picture("RGBA"), tmp_path, seed=3, infotext=text, extension=extension)
    assert path.name == f"00000-3.{extension}"
    raw, tag_type = exif_user_comment_entry(path)
    assert raw.startswith(b"UNICODE\0")
    assert raw[8:].decode("utf-16-be") == text
    assert tag_type == 7  # UNDEFINED, as piexif writes it (A1111's reader expects bytes)
    assert read_infotext(path) == text


@pytest.mark.parametrize("extension", ["jpg", "webp"])
def test_sd_parsers_reads_jpeg_and_webp(tmp_path, extension):
    path = save_image(picture(), tmp_path, seed=1234, infotext=INFOTEXT, extension=extension)
    _, sampler = sd_parse(path)
    assert sampler.prompts[0].value == PROMPT
    assert sampler.negative_prompts[0].value == NEGATIVE
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters["seed"] == "1234"
    assert sampler.model.name == "dreamshaper_8"


def test_jpeg_converts_rgba_and_respects_quality(tmp_path):
    low = save_image(picture("RGBA"), tmp_path, seed=1, infotext=None, extension="jpg", jpeg_quality=10)
    high = save_image(picture("RGBA"), tmp_path, seed=1, infotext=None, extension="jpeg", jpeg_quality=95)
    with Image.open(low) as a, Image.open(high) as b:
        assert a.format == b.format == "JPEG" and a.mode == "RGB"
        # A coarser quantization table means a lower quality setting took effect.
        assert sum(a.quantization[0]) > sum(b.quantization[0])
    assert high.name.endswith(".jpeg")


def test_webp_is_lossless_at_quality_100(tmp_path):
    im = picture()
    lossless = save_image(im, tmp_path, seed=1, infotext="x", extension="webp", jpeg_quality=100)
    lossy = save_image(im, tmp_path, seed=1, infotext="x", extension="webp", jpeg_quality=50)
    with Image.open(lossless) as a, Image.open(lossy) as b:
        assert pixels(a.convert("RGB")) == pixels(im)
        assert pixels(b.convert("RGB")) != pixels(im)


def test_long_infotext_in_jpeg_is_truncated_not_fatal(tmp_path):
    text = build_infotext("x" * 40_000, "", PARAMS)
    path = save_image(picture(), tmp_path, seed=1, infotext=text, extension="jpg")
    back = read_infotext(path)
    assert back and text.startswith(back) and len(back) > 30_000


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"UNICODE\0" + "héllo, 漢".encode("utf-16-be"), "héllo, 漢"),
        (b"UNICODE\0" + "hello, world".encode("utf-16-le"), "hello, world"),
        (b"UNICODE\0" + "\ufeffhello".encode("utf-16-le"), "hello"),
        (b"UNICODE\0" + b"plain ascii", "plain ascii"),
        (b"ASCII\0\0\0" + "Steps: 20".encode(), "Steps: 20"),
        (b"\0" * 8 + b"undefined", "undefined"),
        (b"no prefix at all", "no prefix at all"),
        (tuple(b"UNICODE\0" + "t".encode("utf-16-be")), "t"),
        (b"UNICODE\0", None),
    ],
)
def test_user_comment_variants(raw, expected):
    assert decode_user_comment(raw) == expected


# --------------------------------------------------------------------------- numbering and atomicity

def test_numbering_continues_after_existing_files(tmp_path):
    (tmp_path / "00007-1.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "grid-0042.png").write_bytes(b"x")
    names = [save_image(picture(), tmp_path, seed=s, infotext=None).name for s in (5, 6, 7)]
    assert names == ["00008-5.png", "00009-6.png", "00010-7.png"]
    assert next_sequence_number(tmp_path) == 11
    assert next_sequence_number(tmp_path / "missing") == 0


def test_suffix_no_seed_and_created_directories(tmp_path):
    target = dated_subdir(tmp_path / "outputs" / "txt2img-images", datetime.date(2024, 3, 9))
    assert target == tmp_path / "outputs" / "txt2img-images" / "2024-03-09"
    first = save_image(picture(), target, seed=99, infotext=None, basename_suffix="-before-highres-fix")
    second = save_image(picture(), target, seed=None, infotext=None)
    assert (first.name, second.name) == ("00000-99-before-highres-fix.png", "00001.png")
    with pytest.raises(ValueError, match="separator"):
        save_image(picture(), target, seed=1, infotext=None, basename_suffix="/../x")
    with pytest.raises(ValueError, match="extension"):
        save_image(picture(), target, seed=1, infotext=None, extension="bmp")


def test_concurrent_saves_get_distinct_numbers(tmp_path):
    barrier = threading.Barrier(8)
    paths, errors = [], []

    def worker(seed):
        try:
            barrier.wait()
            paths.append(save_image(picture(), tmp_path, seed=seed, infotext=f"seed {seed}"))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({p.name for p in paths}) == 8
    assert sorted(p.name[:5] for p in paths) == [f"{n:05}" for n in range(8)]
    for p in paths:
        assert read_infotext(p) == f"seed {p.name.split('-')[1].split('.')[0]}"
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)  # no temp files left


def test_failed_write_leaves_no_file_under_a_final_name(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(image_io.os, "link", broken)
    monkeypatch.setattr(image_io.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save_image(picture(), tmp_path, seed=1, infotext=INFOTEXT)
    assert os.listdir(tmp_path) == []


def test_existing_file_is_never_overwritten(tmp_path, monkeypatch):
    (tmp_path / "00000-1.png").write_bytes(b"keep me")
    monkeypatch.setattr(image_io, "next_sequence_number", lambda *a, **k: 0)  # a stale count
    path = save_image(picture(), tmp_path, seed=1, infotext=None)
    assert path.name == "00001-1.png"
    assert (tmp_path / "00000-1.png").read_bytes() == b"keep me"


# --------------------------------------------------------------------------- grids

def test_grid_of_four_is_two_by_two(tmp_path):
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "white")]
    grid = image_grid(images)
    assert grid.size == (128, 128)
    assert grid.getpixel((0, 0)) == (255, 0, 0)
    assert grid.getpixel((64, 0)) == (0, 128, 0)
    assert grid.getpixel((0, 64)) == (0, 0, 255)
    path = save_grid(grid, tmp_path / "txt2img-grids", INFOTEXT)
    assert path.name == "grid-0000.png"
    assert save_grid(grid, tmp_path / "txt2img-grids", None, "jpg").name == "grid-0001.jpg"
    assert read_infotext(path) == INFOTEXT


def test_grid_layout_follows_a1111():
    assert grid_layout(4) == (2, 2)
    assert grid_layout(3) == (2, 2)  # round(sqrt(3)) = 2
    assert grid_layout(6) == (2, 3)
    assert grid_layout(8) == (3, 3)
    assert grid_layout(1) == (1, 1)
    assert grid_layout(6, prevent_empty_spots=True) == (2, 3)
    assert grid_layout(7, prevent_empty_spots=True) == (1, 7)
    assert grid_layout(6, batch_size=3, n_rows=0) == (3, 2)
    assert grid_layout(6, n_rows=4) == (4, 2)
    assert grid_layout(3, rows=5) == (3, 1)
    with pytest.raises(ValueError):
        grid_layout(0)


def test_grid_cells_fit_the_largest_image_and_center_smaller_ones():
    grid = image_grid([Image.new("RGB", (64, 64), "red"), Image.new("RGBA", (32, 32), (0, 0, 255, 255))], rows=1)
    assert grid.size == (128, 64)
    assert grid.getpixel((64 + 32, 32)) == (0, 0, 255)
    assert grid.getpixel((65, 1)) == (255, 255, 255)  # background around the small one


# --------------------------------------------------------------------------- base64

def test_base64_round_trip_keeps_infotext():
    encoded = encode_pil_to_base64(picture(), infotext=INFOTEXT)
    assert not encoded.startswith("data:")
    for form in (encoded, "data:image/png;base64," + encoded, encoded[:40] + "\n" + encoded[40:]):
        image = decode_base64_to_image(form)
        assert image.mode == "RGB" and image.size == (64, 64)
        assert image.info["parameters"] == INFOTEXT
        assert pixels(image) == pixels(picture())


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_base64_jpeg_and_webp_carry_infotext(fmt):
    im = picture()
    im.info["parameters"] = INFOTEXT
    decoded = decode_base64_to_image(encode_pil_to_base64(im, fmt))
    assert decoded.info["parameters"] == INFOTEXT


def _b64(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    "payload, message",
    [
        ("", "empty"),
        ("not base64 at all!!", "base64"),
        (base64.b64encode(b"hello, I am text").decode(), "not a recognizable image"),
        ("data:text/plain,hello", "not base64-encoded"),
    ],
)
def test_base64_errors_are_value_errors_with_messages(payload, message):
    with pytest.raises(ValueError, match=message):
        decode_base64_to_image(payload)


def test_truncated_and_oversized_images_are_refused():
    data = base64.b64decode(_b64(picture()))
    truncated = base64.b64encode(data[: len(data) // 2]).decode()
    with pytest.raises(ValueError, match="truncated"):
        decode_base64_to_image(truncated)
    with pytest.raises(ValueError, match="too large"):
        decode_base64_to_image(_b64(picture()), max_pixels=64 * 63)
    assert decode_base64_to_image(_b64(picture()), max_pixels=64 * 64).size == (64, 64)


def test_modes_are_normalized_to_rgb_or_rgba():
    sixteen = Image.new("I;16", (8, 8))
    sixteen.putdata([65535] * 32 + [0] * 32)
    decoded = decode_base64_to_image(_b64(sixteen))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255) and decoded.getpixel((7, 7)) == (0, 0, 0)

    cmyk = decode_base64_to_image(_b64(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    assert cmyk.mode == "RGB"
    r, g, b = cmyk.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    decoded = decode_base64_to_image(_b64(palette, transparency=0))
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((1, 1))[3] == 0 and decoded.getpixel((0, 0)) == (0, 255, 0, 255)

    assert decode_base64_to_image(_b64(Image.new("P", (8, 8)))).mode == "RGB"
    assert decode_base64_to_image(_b64(Image.new("LA", (8, 8), (10, 128)))).getpixel((0, 0)) == (10, 10, 10, 128)
    assert decode_base64_to_image(_b64(Image.new("RGBA", (8, 8), (1, 2, 3, 4)))).getpixel((0, 0)) == (1, 2, 3, 4)
    assert decode_base64_to_image(_b64(Image.new("L", (8, 8), 7))).mode == "RGB"


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_base64_to_image(_b64(im, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)
