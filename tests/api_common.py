"""What A1111 clients validate in API answers, the small request both API test files start from, and
the decoding of returned images."""

import base64
import io
import json

import requests
from PIL import Image

BASE = {"prompt": "a red cube on a table", "negative_prompt": "blurry", "width": 64, "height": 64,
        "steps": 2, "cfg_scale": 7.0, "sampler_name": "Euler a", "seed": 1234}

# the keys of A1111's Processed.js()
PROCESSED_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip",
    "is_using_inpainting_conditioning", "version",
}


def decode(text: str) -> Image.Image:
    """A returned image: bare base64 (A1111 adds no data: prefix) of a PNG."""
    assert not text.startswith("data:"), "A1111 returns bare base64, without a data: prefix"
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def assert_error(r: requests.Response, field: str, status: tuple[int, ...] = (400, 404, 413, 422)) -> str:
    """A 4xx JSON answer whose `detail` names `field`; returns all its messages joined."""
    assert r.status_code in status, (r.status_code, r.text)
    body = r.json()
    details = body["detail"] if isinstance(body["detail"], list) else [{"loc": [], "msg": body["detail"]}]
    named = [d for d in details if field in [str(x) for x in d.get("loc", [])]]
    assert named, f"no error detail names {field!r}: {body}"
    return " ".join(str(d["msg"]) for d in details)


def strict_json(text: str):
    """`text` parsed as strict JSON: a NaN, Infinity or -Infinity literal (which Python's json would
    read, and no other JSON reader does) is an AssertionError."""
    def refuse(literal):
        raise AssertionError(f"non-standard JSON literal {literal} in {text[:300]}")

    return json.loads(text, parse_constant=refuse)

