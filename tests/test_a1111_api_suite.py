"""A1111's own HTTP test suite (its `test/` folder, 1.10), rerun against Easel and checked harder.

A1111's tests post fixed payloads to a server started by its CI command line and assert only
`status_code == 200`. This module sends the same requests (same endpoints, the same payload fields
and values, the same variation per test) to Easel started with that exact command line
(`launch.py --skip-prepare-environment --skip-torch-cuda-test --test-server --do-not-download-clip
--no-half --disable-opt-split-attention --use-cpu all --api-server-stop`, over the tiny SD1
checkpoint), and then checks what came back: the images decode as PNGs of the requested size, are not
blank, carry their infotext; `info` and the infotext say the seed, sampler, size, steps, prompts that
were asked; the list endpoints answer A1111's field names and types. The code here is Easel's own;
only the requests are A1111's. The pictures of A1111's `test/test_files` (img2img_basic.png,
mask_basic.png) are replaced by generated ones of the same role, sent as A1111's conftest sends them
(`data:image/png;base64,` URLs). A1111's CI downloads GFPGAN and CodeFormer; here random-weight
ones (tests/face_models.py) are put in the server's models/GFPGAN and models/Codeformer, and
A1111's two-faces.jpg is replaced by a drawn face.

A1111's CI also downloads BLIP and CLIP ViT-L/14 for /interrogate; here a tiny BLIP and CLIP in the
real layouts (tests/test_interrogate_clip.py) and three short category lists stand in for them.

Every test of test_txt2img.py, test_img2img.py, test_extras.py, test_utils.py and
test_torch_utils.py runs here.
Beyond A1111's requests: /png-info on a generated picture, /extra-batch-images, /options GET,
/sd-vae and /memory (asked of A1111-compatible servers by the same clients).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests
from PIL import Image

from tests.api_common import PROCESSED_KEYS, decode, strict_json
from tests.face_models import draw_face, write_codeformer, write_gfpgan
from tests.pictures import b64, picture, square_mask
from tests.server import free_port
from tests.test_a1111_command_line import A1111_CI, Started
from tests.test_interrogate_clip import LISTS, write_blip, write_clip, write_lists

# ------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def base_url(tiny_checkpoints, tmp_path_factory):
    """Easel started with A1111's CI command line (plus where its files are), as A1111's CI does
    before running its test/ folder; A1111's tests know it as `base_url`."""
    data = tmp_path_factory.mktemp("a1111-suite")
    write_gfpgan(data / "models")
    write_codeformer(data / "models")
    write_blip(data / "models")
    write_clip(data / "models" / "CLIP")
    write_lists(data / "interrogate")
    server = Started(["launch.py", *A1111_CI, "--data-dir", str(data), "--ckpt-dir",
                      str(tiny_checkpoints.checkpoints_dir), "--ckpt", str(tiny_checkpoints.sd1),
                      "--port", str(free_port())], data / "log")
    try:
        yield server.ready().url
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ A1111's inputs

# A1111's conftest sends its test pictures as data URLs; these stand in for img2img_basic.png and
# mask_basic.png (a picture with structure, a white square to repaint).
INIT = picture(64, 64)
MASK = square_mask((64, 64), (16, 16, 48, 48))


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + b64(image)


def txt2img_request() -> dict:
    """test_txt2img.py's simple_txt2img_request, field for field."""
    return {"batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
            "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
            "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0,
            "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1,
            "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1, "subseed_strength": 0,
            "tiling": False, "width": 64}


def img2img_request() -> dict:
    """test_img2img.py's simple_img2img_request, field for field."""
    return {"batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
            "include_init_images": False, "init_images": [data_url(INIT)], "inpaint_full_res": False,
            "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
            "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
            "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
            "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
            "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64}


def extras_request() -> dict:
    """test_extras.py's upscaling payload, without the image."""
    return {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
            "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
            "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0}


# ------------------------------------------------------------------------------------ checks


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def not_blank(image: Image.Image) -> None:
    """A real picture: several distinct colours and some spread, not one flat colour (or NaN black)."""
    a = px(image)
    assert a.std() > 2 and len(np.unique(a.reshape(-1, 3), axis=0)) > 16, "blank picture"


def parse_infotext(text: str) -> tuple[str, str | None, dict[str, str]]:
    """An infotext -> (prompt, negative prompt or None, {key: value}) of its last line.
    Written here (not Easel's parser) so the test does not check Easel with itself."""
    lines = text.split("\n")
    params_line = lines[-1]
    negative = None
    rest = lines[:-1]
    for i, line in enumerate(rest):
        if line.startswith("Negative prompt: "):
            negative = "\n".join([line[len("Negative prompt: "):], *rest[i + 1:]])
            rest = rest[:i]
            break
    fields = dict(re.findall(r'\s*([\w][\w \-/+]*): ("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', params_line))
    return "\n".join(rest), negative, fields


def post(url: str, body: dict, n_images: int, size: tuple[int, int]) -> tuple[list[Image.Image], dict, dict]:
    """POST a generation, expect 200 and `n_images` real pictures of `size`, each carrying its
    infotext; returns (images, info, whole answer)."""
    r = requests.post(url, json=body, timeout=300)
    assert r.status_code == 200, r.text
    data = strict_json(r.text)
    assert set(data) == {"images", "parameters", "info"}
    info = strict_json(data["info"])
    assert PROCESSED_KEYS <= set(info), PROCESSED_KEYS - set(info)
    images = [decode(s) for s in data["images"]]
    assert len(images) == n_images and info["index_of_first_image"] == 0
    assert len(info["infotexts"]) == n_images and len(info["all_seeds"]) == n_images
    for image, text in zip(images, info["infotexts"]):
        assert image.size == size and image.mode == "RGB"
        not_blank(image)
        assert image.info["parameters"] == text  # the PNG carries its infotext, as A1111's API writes it
    return images, info, data


def check_asked(body: dict, info: dict, data: dict, size: tuple[int, int] | None = None) -> dict[str, str]:
    """`info`, every infotext and the echoed `parameters` say what `body` asked. Returns the first
    infotext's fields."""
    width, height = size or (body["width"], body["height"])
    seed = info["seed"]
    # seed -1: a random seed, the batch's seeds following it
    assert isinstance(seed, int) and seed >= 0 and seed != body["seed"]
    assert info["all_seeds"] == [seed + i for i in range(len(info["all_seeds"]))]
    assert isinstance(info["subseed"], int) and info["subseed"] >= 0 and info["subseed_strength"] == 0
    assert (info["width"], info["height"], info["steps"]) == (width, height, body["steps"])
    assert info["sampler_name"] == body["sampler_index"] and info["cfg_scale"] == body["cfg_scale"]
    assert info["prompt"] == body["prompt"] and info["negative_prompt"] == body["negative_prompt"]
    assert info["batch_size"] == body["batch_size"] and info["restore_faces"] is False
    assert info["all_prompts"] == [body["prompt"]] * len(info["all_seeds"])
    assert info["sd_model_name"] == "tiny-sd1" and info["styles"] == []
    assert re.fullmatch(r"[0-9a-f]{10}", info["sd_model_hash"]) and info["face_restoration_model"] is None
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (-1, -1) and info["clip_skip"] == 1
    assert re.fullmatch(r"\d{14}", info["job_timestamp"]) and isinstance(info["version"], str)
    assert info["is_using_inpainting_conditioning"] is False
    first = None
    for i, text in enumerate(info["infotexts"]):
        prompt, negative, fields = parse_infotext(text)
        assert prompt == body["prompt"]
        assert negative == (body["negative_prompt"] or None)
        assert fields["Steps"] == str(body["steps"]) and fields["Sampler"] == body["sampler_index"]
        assert fields["CFG scale"] == str(body["cfg_scale"]) and fields["Size"] == f"{width}x{height}"
        assert fields["Seed"] == str(info["all_seeds"][i]) and fields["Model"] == "tiny-sd1"
        assert fields["Model hash"] == info["sd_model_hash"] and fields["Version"] == info["version"]
        assert "Variation seed" not in fields and "Face restoration" not in fields
        first = first or fields
    params = data["parameters"]  # the request, echoed
    for key in ("prompt", "negative_prompt", "steps", "width", "height", "seed", "batch_size", "n_iter",
                "sampler_index", "cfg_scale"):
        assert params[key] == body[key], key
    return first


# ------------------------------------------------------------------------------------ test_txt2img.py

TXT2IMG = "/sdapi/v1/txt2img"


def test_txt2img_simple_performed(base_url):
    body = txt2img_request()
    _, info, data = post(base_url + TXT2IMG, body, 1, (64, 64))
    fields = check_asked(body, info, data)
    assert "Tiling" not in fields and "Hires upscale" not in fields and "Denoising strength" not in fields


def test_txt2img_with_negative_prompt_performed(base_url):
    body = {**txt2img_request(), "negative_prompt": "example negative prompt"}
    _, info, data = post(base_url + TXT2IMG, body, 1, (64, 64))
    check_asked(body, info, data)
    assert info["all_negative_prompts"] == ["example negative prompt"]
    assert "\nNegative prompt: example negative prompt\n" in info["infotexts"][0]
    # the negative prompt is used: the same seed without it gives another picture
    seeded = {**body, "seed": info["seed"], "subseed": info["subseed"]}
    again, _, _ = post(base_url + TXT2IMG, seeded, 1, (64, 64))
    without, _, _ = post(base_url + TXT2IMG, {**seeded, "negative_prompt": ""}, 1, (64, 64))
    assert np.abs(px(again[0]) - px(without[0])).mean() > 0.5


def test_txt2img_with_complex_prompt_performed(base_url):
    prompt = "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"
    body = {**txt2img_request(), "prompt": prompt}
    _, info, data = post(base_url + TXT2IMG, body, 1, (64, 64))
    check_asked(body, info, data)
    assert info["infotexts"][0].startswith(prompt + "\n")  # written as given, not as parsed


def test_txt2img_not_square_image_performed(base_url):
    body = {**txt2img_request(), "height": 128}
    _, info, data = post(base_url + TXT2IMG, body, 1, (64, 128))  # PIL: (width, height)
    check_asked(body, info, data)


def test_txt2img_with_hrfix_performed(base_url):
    body = {**txt2img_request(), "enable_hr": True}
    _, info, data = post(base_url + TXT2IMG, body, 1, (128, 128))  # A1111's default hr_scale: 2
    # info and Size are the first pass's, as A1111's p.width / p.height
    fields = check_asked(body, info, data, size=(64, 64))
    assert fields["Hires upscale"] == "2" and fields["Denoising strength"] == "0"


def test_txt2img_with_tiling_performed(base_url):
    body = {**txt2img_request(), "tiling": True}
    images, info, data = post(base_url + TXT2IMG, body, 1, (64, 64))
    fields = check_asked(body, info, data)
    assert fields["Tiling"] == "True"
    # a tiling picture continues across its edges: the seam (last column next to the first) is no
    # sharper than neighbouring columns inside the picture
    a = px(images[0]).astype(float)
    seam = np.abs(a[:, -1] - a[:, 0]).mean()
    inside = np.mean([np.abs(a[:, i + 1] - a[:, i]).mean() for i in range(a.shape[1] - 1)])
    assert seam < 3 * inside + 1


def test_txt2img_with_restore_faces_performed(base_url):
    body = {**txt2img_request(), "restore_faces": True}
    _, info, data = post(base_url + TXT2IMG, body, 1, (64, 64))
    assert info["restore_faces"] is True and "Face restoration: " in info["infotexts"][0]


@pytest.mark.parametrize("sampler", ["PLMS", "DDIM", "UniPC"])
def test_txt2img_with_vanilla_sampler_performed(base_url, sampler):
    body = {**txt2img_request(), "sampler_index": sampler}
    _, info, data = post(base_url + TXT2IMG, body, 1, (64, 64))
    check_asked(body, info, data)


def _two_pictures(base_url: str, change: dict) -> None:
    body = {**txt2img_request(), **change}
    images, info, data = post(base_url + TXT2IMG, body, 2, (64, 64))  # no grid: the API saves none
    check_asked(body, info, data)
    assert info["all_subseeds"] == [info["subseed"], info["subseed"] + 1]  # as A1111's, following the first
    assert np.abs(px(images[0]) - px(images[1])).mean() > 0.5  # two seeds, two pictures


def test_txt2img_multiple_batches_performed(base_url):
    _two_pictures(base_url, {"n_iter": 2})


def test_txt2img_batch_performed(base_url):
    _two_pictures(base_url, {"batch_size": 2})


# ------------------------------------------------------------------------------------ test_img2img.py

IMG2IMG = "/sdapi/v1/img2img"


def _img2img_checks(body: dict, info: dict, data: dict) -> dict[str, str]:
    fields = check_asked(body, info, data)
    assert info["denoising_strength"] == 0.75 and fields["Denoising strength"] == "0.75"
    assert data["parameters"]["init_images"] is None  # include_init_images: False
    return fields


def test_img2img_simple_performed(base_url):
    body = img2img_request()
    images, info, data = post(base_url + IMG2IMG, body, 1, (64, 64))
    fields = _img2img_checks(body, info, data)
    assert "Mask blur" not in fields
    assert np.abs(px(images[0]) - px(INIT)).mean() > 1  # repainted at 0.75


def _outside(mask: Image.Image, margin: int = 12) -> np.ndarray:
    """Where the mask (and its blur) does not reach: farther than `margin` pixels from its box."""
    box = np.asarray(mask) > 0
    ys, xs = np.nonzero(box)
    far = np.ones_like(box)
    far[max(ys.min() - margin, 0):ys.max() + margin + 1, max(xs.min() - margin, 0):xs.max() + margin + 1] = False
    return far


def _inside(mask: Image.Image, margin: int = 6) -> np.ndarray:
    box = np.asarray(mask) > 0
    ys, xs = np.nonzero(box)
    core = np.zeros_like(box)
    core[ys.min() + margin:ys.max() - margin + 1, xs.min() + margin:xs.max() - margin + 1] = True
    return core


def test_inpainting_masked_performed(base_url):
    body = {**img2img_request(), "mask": data_url(MASK)}
    images, info, data = post(base_url + IMG2IMG, body, 1, (64, 64))
    fields = _img2img_checks(body, info, data)
    assert fields["Mask blur"] == "4" and "Mask mode" not in fields
    out, init = px(images[0]), px(INIT)
    keep, repaint = _outside(MASK), _inside(MASK)
    assert np.abs(out[keep] - init[keep]).max() <= 1  # the unmasked part is the input's
    assert np.abs(out[repaint] - init[repaint]).mean() > 5  # the masked part is repainted


def test_inpainting_with_inverted_masked_performed(base_url):
    body = {**img2img_request(), "mask": data_url(MASK), "inpainting_mask_invert": True}
    images, info, data = post(base_url + IMG2IMG, body, 1, (64, 64))
    fields = _img2img_checks(body, info, data)
    assert fields["Mask blur"] == "4" and fields["Mask mode"] == "Inpaint not masked"
    out, init = px(images[0]), px(INIT)
    keep, repaint = _inside(MASK, 11), _outside(MASK)  # the other way round (the blur reaches ~10 px)
    assert np.abs(out[keep] - init[keep]).max() <= 1
    assert np.abs(out[repaint] - init[repaint]).mean() > 5


# A1111 writes "Masked content: fill" and nothing for "original" (the default); Easel also names the
# latent modes, so that pasting the infotext gives them back
@pytest.mark.parametrize("fill, name", [(0, "fill"), (1, None), (2, "latent noise"), (3, "latent nothing")])
def test_inpainting_fill_modes(base_url, fill, name):
    """Beyond A1111's suite: its masked request with each `inpainting_fill` (Masked content)."""
    body = {**img2img_request(), "mask": data_url(MASK), "inpainting_fill": fill}
    images, info, data = post(base_url + IMG2IMG, body, 1, (64, 64))
    fields = _img2img_checks(body, info, data)
    assert fields.get("Masked content") == name and data["parameters"]["inpainting_fill"] == fill
    out, init = px(images[0]), px(INIT)
    keep = _outside(MASK)
    assert np.abs(out[keep] - init[keep]).max() <= 1


def test_img2img_sd_upscale_performed(base_url):
    body = {**img2img_request(), "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}
    _, info, _ = post(base_url + IMG2IMG, body, 1, (128, 128))
    fields = parse_infotext(info["infotexts"][0])[2]
    # the 128 px picture was painted as 64 px tiles (the job's size), 8 px overlapping
    assert (fields["SD upscale overlap"], fields["SD upscale upscaler"], fields["Size"]) == ("8", "Lanczos", "64x64")


# ------------------------------------------------------------------------------------ test_extras.py

EXTRAS = "/sdapi/v1/extra-single-image"


def _extras(base_url: str, payload: dict) -> tuple[Image.Image, dict]:
    r = requests.post(base_url + EXTRAS, json=payload, timeout=120)
    assert r.status_code == 200, r.text
    data = strict_json(r.text)
    assert set(data) == {"image", "html_info"} and isinstance(data["html_info"], str)
    return decode(data["image"]), data


def test_simple_upscaling_performed(base_url):
    image, data = _extras(base_url, {**extras_request(), "image": data_url(INIT)})
    assert image.size == (128, 128)  # resize_mode 0: upscaling_resize 2, the _w/_h are for mode 1
    expected = px(INIT.resize((128, 128), Image.LANCZOS))
    assert np.abs(px(image) - expected).mean() < 2  # a Lanczos upscale of the input
    assert "Postprocess upscale by: 2" in data["html_info"] and "Postprocess upscaler: Lanczos" in data["html_info"]


def test_png_info_performed(base_url):
    # A1111's test posts only an image to extra-single-image: its defaults (upscaler_1 "None")
    # give the image back unchanged
    image, _ = _extras(base_url, {"image": data_url(INIT)})
    assert image.size == (64, 64) and np.array_equal(px(image), px(INIT))


def test_interrogate_performed(base_url):
    # A1111's test sends `model` to extra-single-image, which ignores it: the image comes back
    image, _ = _extras(base_url, {"image": data_url(INIT), "model": "clip"})
    assert image.size == (64, 64) and np.array_equal(px(image), px(INIT))


def test_interrogate_endpoint(base_url):
    r = requests.post(base_url + "/sdapi/v1/interrogate", json={"image": data_url(INIT), "model": "clip"}, timeout=120)
    assert r.status_code == 200, r.text
    caption = r.json()["caption"]
    # A1111's form: the BLIP caption, then one line of each list (tiny random models: any words)
    assert isinstance(caption, str) and caption.count(", ") >= len(LISTS)
    assert caption.endswith(tuple(", " + line for line in LISTS["styles.txt"]))  # the lists in name order


def test_png_info_of_a_generated_picture(base_url):
    """Beyond A1111's suite: /png-info reads back the infotext txt2img wrote into its PNG."""
    _, info, data = post(base_url + TXT2IMG, {**txt2img_request(), "negative_prompt": "bad"}, 1, (64, 64))
    r = requests.post(base_url + "/sdapi/v1/png-info", json={"image": "data:image/png;base64," + data["images"][0]},
                      timeout=60)
    assert r.status_code == 200, r.text
    answer = strict_json(r.text)
    assert set(answer) == {"info", "items", "parameters"}
    assert answer["info"] == info["infotexts"][0]
    assert isinstance(answer["items"], dict) and "parameters" not in answer["items"]  # A1111 pops it from items
    params = answer["parameters"]
    assert params["Prompt"] == "example prompt" and params["Negative prompt"] == "bad"
    assert str(params["Seed"]) == str(info["seed"]) and str(params["Steps"]) == "3"
    assert params["Sampler"] == "Euler a" and (str(params["Size-1"]), str(params["Size-2"])) == ("64", "64")
    # a picture without parameters: empty info and parameters, as A1111
    r = requests.post(base_url + "/sdapi/v1/png-info", json={"image": data_url(INIT)}, timeout=60)
    assert r.status_code == 200 and r.json()["info"] == ""


def test_extra_batch_images(base_url):
    """Beyond A1111's suite: the batch form of its upscaling request."""
    payload = {**extras_request(), "imageList": [{"data": data_url(INIT), "name": "a.png"},
                                                 {"data": b64(picture(32, 48)), "name": "b.png"}]}
    r = requests.post(base_url + "/sdapi/v1/extra-batch-images", json=payload, timeout=120)
    assert r.status_code == 200, r.text
    images = [decode(s) for s in r.json()["images"]]
    assert [im.size for im in images] == [(128, 128), (64, 96)]
    for image in images:
        not_blank(image)


# ------------------------------------------------------------------------------------ test_utils.py


def test_options_write(base_url):
    url = base_url + "/sdapi/v1/options"
    r = requests.get(url, timeout=30)
    assert r.status_code == 200
    options = strict_json(r.text)
    before = options["send_seed"]
    assert isinstance(before, bool)
    # what A1111's options answer always holds, with its types
    assert isinstance(options["sd_model_checkpoint"], str) and "tiny-sd1" in options["sd_model_checkpoint"]
    assert isinstance(options["CLIP_stop_at_last_layers"], int) and isinstance(options["samples_format"], str)
    try:
        assert requests.post(url, json={"send_seed": not before}, timeout=30).status_code == 200
        after = requests.get(url, timeout=30).json()
        assert after["send_seed"] is (not before)
        assert {k: v for k, v in after.items() if k != "send_seed"} == \
            {k: v for k, v in options.items() if k != "send_seed"}  # nothing else changed
    finally:
        assert requests.post(url, json={"send_seed": before}, timeout=30).status_code == 200
    assert requests.get(url, timeout=30).json()["send_seed"] is before


def _check_cmd_flags(flags):
    assert isinstance(flags, dict)
    # A1111's flags by their argparse names, with the CI command line's values
    assert flags["skip_prepare_environment"] is True and flags["test_server"] is True
    assert flags["no_half"] is True and flags["use_cpu"] == ["all"] and flags["api_server_stop"] is True
    assert flags["do_not_download_clip"] is True and flags["disable_opt_split_attention"] is True
    assert flags["api"] is True and isinstance(flags["port"], int) and flags["nowebui"] is False
    assert isinstance(flags["ckpt_dir"], str) and flags["api_auth"] is None


def _check_samplers(items):
    names = {item["name"] for item in items}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "PLMS", "UniPC"} <= names
    for item in items:
        assert set(item) == {"name", "aliases", "options"}
        assert isinstance(item["name"], str) and all(isinstance(a, str) for a in item["aliases"])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in item["options"].items())


def _check_upscalers(items):
    assert {"None", "Lanczos", "Nearest"} <= {item["name"] for item in items}
    for item in items:
        assert set(item) == {"name", "model_name", "model_path", "model_url", "scale"}
        assert isinstance(item["name"], str)
        for key in ("model_name", "model_path", "model_url"):
            assert item[key] is None or isinstance(item[key], str)
        assert item["scale"] is None or isinstance(item["scale"], (int, float))


def _check_sd_models(items):
    assert "tiny-sd1" in {item["model_name"] for item in items}
    for item in items:
        assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(item)
        assert all(isinstance(item[k], str) for k in ("title", "model_name", "filename"))
        assert item["title"].startswith(item["filename"].replace("\\", "/").split("/")[-1]) or \
            item["model_name"] in item["title"]
        if item["sha256"] is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", item["sha256"]) and item["hash"] == item["sha256"][:10]


def _check_named_paths(keys):
    def check(items):
        assert isinstance(items, list)  # Easel has none of these models today: an empty list
        for item in items:
            assert set(item) == keys and isinstance(item["name"], str)
    return check


def _check_styles(items):
    assert isinstance(items, list)
    for item in items:
        assert set(item) == {"name", "prompt", "negative_prompt"} and isinstance(item["name"], str)


def _check_embeddings(body):
    assert set(body) >= {"loaded", "skipped"}
    for group in ("loaded", "skipped"):
        assert isinstance(body[group], dict)
        for item in body[group].values():
            assert {"step", "sd_checkpoint", "sd_checkpoint_name", "shape", "vectors"} <= set(item)
            assert isinstance(item["shape"], int) and isinstance(item["vectors"], int)


@pytest.mark.parametrize("url, check", [
    ("sdapi/v1/cmd-flags", _check_cmd_flags),
    ("sdapi/v1/samplers", _check_samplers),
    ("sdapi/v1/upscalers", _check_upscalers),
    ("sdapi/v1/sd-models", _check_sd_models),
    ("sdapi/v1/hypernetworks", _check_named_paths({"name", "path"})),
    ("sdapi/v1/face-restorers", _check_named_paths({"name", "cmd_dir"})),
    ("sdapi/v1/realesrgan-models", _check_named_paths({"name", "path", "scale"})),
    ("sdapi/v1/prompt-styles", _check_styles),
    ("sdapi/v1/embeddings", _check_embeddings),
], ids=lambda v: v if isinstance(v, str) else "")
def test_get_api_url(base_url, url, check):
    r = requests.get(f"{base_url}/{url}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    check(strict_json(r.text))


def test_sd_vae_and_memory(base_url):
    """Beyond A1111's suite: two more listings its clients read."""
    vaes = requests.get(base_url + "/sdapi/v1/sd-vae", timeout=30)
    assert vaes.status_code == 200 and isinstance(vaes.json(), list)
    for item in vaes.json():
        assert set(item) == {"model_name", "filename"}
    memory = requests.get(base_url + "/sdapi/v1/memory", timeout=30)
    assert memory.status_code == 200
    ram = memory.json()["ram"]
    assert set(ram) == {"free", "used", "total"} and 0 < ram["used"] < ram["total"]
    assert memory.json()["cuda"] == {"error": "unavailable"} or "system" in memory.json()["cuda"]


# ------------------------------------------------------------------------------------ not over HTTP


@pytest.mark.parametrize("restorer_name", ["gfpgan", "codeformer"])
def test_face_restorers(base_url, restorer_name):
    # A1111 calls its restorers in-process on two-faces.jpg; here through Extras, on a drawn face
    face = draw_face(128, scale=0.5)
    payload = {**extras_request(), "upscaler_1": "None", f"{restorer_name}_visibility": 1, "image": data_url(face)}
    image, _ = _extras(base_url, payload)
    assert image.size == face.size and not np.array_equal(px(image), px(face))  # visibly changed


@pytest.mark.parametrize("wrapped", [True, False])
def test_get_param(wrapped):
    import types

    import torch

    from modules import torch_utils

    module = torch.nn.Linear(1, 1).to(dtype=torch.float16, device="cpu")
    holder = types.SimpleNamespace(model=module) if wrapped else module  # as spandrel wraps a model
    param = torch_utils.get_param(holder)
    assert param.dtype == torch.float16 and param.device == torch.device("cpu")
