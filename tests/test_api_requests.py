"""Request details of txt2img/img2img that A1111 clients rely on, over real HTTP against the session's
`server` (tiny SD1): sampler names and defaults, override_settings with and without restoring,
send_images/save_images and the grid, `infotext`, force_task_id, and validation (422/400 naming
the field, the server going on). Requests are tiny: 64x64, 1-2 steps.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.api_common import BASE, assert_error, decode
from tests.pictures import picture


def txt2img(server, body: dict) -> tuple[list[Image.Image], dict, dict]:
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text[:2000]
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"]), data


def img2img(server, body: dict) -> tuple[list[Image.Image], dict, dict]:
    r = server.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text[:2000]
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"]), data


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def settings_line(info: dict, index: int = 0) -> str:
    return info["infotexts"][index].rsplit("\n", 1)[-1]


@pytest.fixture
def restore_options(server):
    before = server.get("/sdapi/v1/options").json()
    yield
    after = server.get("/sdapi/v1/options").json()
    changed = {k: before[k] for k in before if after.get(k) != before[k]}
    if changed:
        assert server.post("/sdapi/v1/options", json=changed).status_code == 200


# ------------------------------------------------------------------------------------ samplers

def test_default_sampler_is_a1111s_euler_and_sampler_index_is_read(server):
    no_sampler = {k: v for k, v in BASE.items() if k != "sampler_name"}
    images, info, _ = txt2img(server, no_sampler)
    assert info["sampler_name"] == "Euler" and "Sampler: Euler, Schedule type: Automatic," in info["infotexts"][0]
    euler = txt2img(server, {**BASE, "sampler_name": "Euler"})[0]
    assert np.array_equal(px(images[0]), px(euler[0]))
    _, info, _ = txt2img(server, {**no_sampler, "sampler_index": "Heun"})
    assert info["sampler_name"] == "Heun"
    _, info, _ = txt2img(server, {**BASE, "sampler_name": "LMS", "sampler_index": "Heun"})  # sampler_name first
    assert info["sampler_name"] == "LMS"


@pytest.mark.parametrize("fields,sampler,schedule", [
    ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "k_dpmpp_2m", "scheduler": "karras"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "k_dpmpp_2m_ka"}, "DPM++ 2M", "Karras"),
    ({"sampler_name": "Euler", "scheduler": "sgm_uniform"}, "Euler", "SGM Uniform"),
    ({"sampler_name": "Euler", "scheduler": "SGMUniform"}, "Euler", "SGM Uniform"),
    ({"sampler_name": "DPM++ 2M Karras", "scheduler": "Exponential"}, "DPM++ 2M", "Exponential"),
    ({"sampler_name": "DPM++ 2M Karras", "scheduler": "Automatic"}, "DPM++ 2M", "Karras"),
], ids=["combined", "alias+id", "label", "old-alias", "sgm-id", "sgm-alias", "explicit-wins", "automatic-keeps"])
def test_sampler_and_schedule_names(server, fields, sampler, schedule):
    _, info, _ = txt2img(server, {**BASE, "steps": 1, **fields})
    assert info["sampler_name"] == sampler
    assert f"Sampler: {sampler}, Schedule type: {schedule}," in info["infotexts"][0]


def test_same_sampler_by_any_name_gives_the_same_pixels(server):
    reference = txt2img(server, {**BASE, "sampler_name": "DPM++ 2M", "scheduler": "Karras"})[0][0]
    for fields in ({"sampler_name": "k_dpmpp_2m", "scheduler": "karras"}, {"sampler_index": "DPM++ 2M Karras",
                                                                          "sampler_name": None}):
        assert np.array_equal(px(txt2img(server, {**BASE, **fields})[0][0]), px(reference))


@pytest.mark.parametrize("fields,field,hint", [
    ({"sampler_name": "Nope"}, "sampler_name", "DPM++ 2M"),
    ({"sampler_name": None, "sampler_index": "Nope"}, "sampler_index", "Euler a"),
    ({"scheduler": "Fancy"}, "scheduler", "Karras"),
], ids=["sampler", "sampler-index", "scheduler"])
def test_unknown_sampler_or_schedule_lists_the_known_ones(server, fields, field, hint):
    message = assert_error(server.post("/sdapi/v1/txt2img", json={**BASE, **fields}), field, (422,))
    assert hint in message, message


def test_a_timestep_sampler_takes_any_schedule_type_as_a1111_does(server):
    """A1111's DDIM runs its own timesteps whatever the schedule type and writes the type it was
    given: an infotext with "Sampler: DDIM, Schedule type: Karras" gives A1111's picture again."""
    own, _, _ = txt2img(server, {**BASE, "sampler_name": "DDIM", "scheduler": "Automatic"})
    karras, info, _ = txt2img(server, {**BASE, "sampler_name": "DDIM", "scheduler": "Karras"})
    assert np.array_equal(px(own[0]), px(karras[0]))
    assert "Sampler: DDIM, Schedule type: Karras," in info["infotexts"][0]


def test_steps_default_is_a1111s_50(server):
    body = {k: v for k, v in BASE.items() if k != "steps"}
    _, info, _ = txt2img(server, {**body, "width": 64, "height": 64})
    assert info["steps"] == 50 and "Steps: 50," in info["infotexts"][0]


# ------------------------------------------------------------------------------------ overrides

def test_override_settings_are_restored_by_default(server, restore_options):
    _, info, _ = txt2img(server, {**BASE, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    assert server.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    _, info, _ = txt2img(server, {**BASE, "override_settings": {"CLIP_stop_at_last_layers": 2},
                                  "override_settings_restore_afterwards": True})
    assert server.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_override_settings_stay_without_restore(server, restore_options):
    body = {**BASE, "sampler_name": "Euler a", "override_settings": {"eta_noise_seed_delta": 31337},
            "override_settings_restore_afterwards": False}
    images, info, _ = txt2img(server, body)
    assert "ENSD: 31337" in info["infotexts"][0]
    assert server.get("/sdapi/v1/options").json()["eta_noise_seed_delta"] == 31337
    again, info, _ = txt2img(server, {**BASE, "sampler_name": "Euler a"})  # the option holds now
    assert "ENSD: 31337" in info["infotexts"][0] and np.array_equal(px(again[0]), px(images[0]))


def test_override_checkpoint_stays_without_restore(server, tiny_checkpoints, restore_options):
    selected = server.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    try:
        _, info, _ = txt2img(server, {**BASE, "override_settings": {"sd_model_checkpoint": "tiny-sdxl.safetensors"},
                                      "override_settings_restore_afterwards": False})
        assert info["sd_model_name"] == "tiny-sdxl"
        assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sdxl.safetensors")
        _, info, _ = txt2img(server, BASE)
        assert info["sd_model_name"] == "tiny-sdxl"
    finally:
        assert server.post("/sdapi/v1/options", json={"sd_model_checkpoint": selected}).status_code == 200
    assert txt2img(server, BASE)[1]["sd_model_name"] == "tiny-sd1"


# ------------------------------------------------------------------------------------ images, grid

def test_send_images_false_returns_no_images_but_the_info(server):
    images, info, data = txt2img(server, {**BASE, "send_images": False, "batch_size": 2})
    assert images == [] and data["images"] == []
    assert info["all_seeds"] == [BASE["seed"], BASE["seed"] + 1] and len(info["infotexts"]) == 2


def test_grid_comes_first_only_with_save_images(server):
    images, info, _ = txt2img(server, {**BASE, "batch_size": 2})
    assert len(images) == 2 and info["index_of_first_image"] == 0 and len(info["infotexts"]) == 2

    images, info, _ = txt2img(server, {**BASE, "batch_size": 2, "save_images": True})
    assert [im.size for im in images] == [(128, 64), (64, 64), (64, 64)]
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3
    assert images[0].info["parameters"] == info["infotexts"][0]
    assert images[2].info["parameters"] == info["infotexts"][2] and f"Seed: {BASE['seed'] + 1}," in info["infotexts"][2]
    left = px(images[0])[:, :64]
    assert np.array_equal(left, px(images[1]))  # the grid is made of the images

    images, info, _ = txt2img(server, {**BASE, "batch_size": 2, "save_images": True,
                                       "override_settings": {"return_grid": False}})
    assert len(images) == 2 and info["index_of_first_image"] == 0


# ------------------------------------------------------------------------------------ infotext

def test_infotext_fills_the_request_and_reproduces_the_image(server):
    original, info, _ = txt2img(server, {**BASE, "seed": 4321, "cfg_scale": 5.5, "sampler_name": "DPM++ 2M",
                                         "scheduler": "Karras", "width": 64, "height": 72})
    text = info["infotexts"][0]
    images, again, data = txt2img(server, {"infotext": text})
    assert again["prompt"] == BASE["prompt"] and again["negative_prompt"] == BASE["negative_prompt"]
    assert (again["seed"], again["cfg_scale"], again["steps"], again["width"], again["height"]) == (4321, 5.5, 2, 64, 72)
    assert again["sampler_name"] == "DPM++ 2M" and "Schedule type: Karras" in again["infotexts"][0]
    assert np.array_equal(px(images[0]), px(original[0]))
    assert data["parameters"]["seed"] == 4321  # the echo shows the filled request, as in A1111


def test_fields_set_in_the_request_win_over_the_infotext(server):
    _, info, _ = txt2img(server, {**BASE, "seed": 10})
    _, again, _ = txt2img(server, {"infotext": info["infotexts"][0], "seed": 11, "prompt": "a blue ball"})
    assert again["seed"] == 11 and again["prompt"] == "a blue ball" and again["steps"] == BASE["steps"]


def test_infotext_settings_become_override_settings_for_that_request(server, restore_options):
    text = "a red cube\nSteps: 1, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, Clip skip: 2, ENSD: 99"
    _, info, data = txt2img(server, {"infotext": text})
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0] and "ENSD: 99" in info["infotexts"][0]
    assert data["parameters"]["override_settings"] == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 99}
    options = server.get("/sdapi/v1/options").json()
    assert options["CLIP_stop_at_last_layers"] == 1 and options["eta_noise_seed_delta"] == 0
    _, info, _ = txt2img(server, {"infotext": text, "override_settings": {"CLIP_stop_at_last_layers": 3}})
    assert info["clip_skip"] == 3  # the request's own override wins


def test_infotext_hires_turns_hires_on(server):
    text = ("a red cube\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.5, "
            "Hires upscale: 2, Hires steps: 1, Hires upscaler: Latent")
    images, info, _ = txt2img(server, {"infotext": text})
    assert images[0].size == (128, 128) and "Hires upscale: 2" in info["infotexts"][0]


def test_img2img_infotext_fills_sampler_and_seed_fields_only(server):
    text = "a green tree\nNegative prompt: fog\nSteps: 1, Sampler: Heun, CFG scale: 3, Seed: 777, Size: 64x64"
    _, info, _ = img2img(server, {"prompt": "kept prompt", "init_images": [b64(picture())], "infotext": text,
                                  "denoising_strength": 0.5})
    assert info["sampler_name"] == "Heun" and info["all_seeds"] == [777] and info["steps"] == 1
    assert info["prompt"] == "kept prompt" and info["cfg_scale"] == 7.0  # A1111 pastes no prompt/CFG into img2img


def test_bad_infotext_values_name_the_infotext(server):
    r = server.post("/sdapi/v1/txt2img", json={"infotext": "x\nSteps: many, Sampler: Euler, Seed: 1"})
    assert "Steps" in assert_error(r, "infotext", (422,))
    assert txt2img(server, {**BASE, "steps": 1})[0][0].size == (64, 64)


# ------------------------------------------------------------------------------------ task ids

def test_force_task_id_is_tracked_and_a_task_id_is_made_otherwise(server):
    txt2img(server, {**BASE, "steps": 1, "force_task_id": "task(requests-forced)"})
    done = server.post("/internal/progress", json={"id_task": "task(requests-forced)"}).json()
    assert done["completed"] is True and done["active"] is False


# ------------------------------------------------------------------------------------ validation

BAD = [
    ("steps-text", {"steps": "many"}, "steps", "integer"),
    ("steps-151", {"steps": 151}, "steps", "150"),
    ("n_iter-0", {"n_iter": 0}, "n_iter", "1"),
    ("batch-9", {"batch_size": 9}, "batch_size", "8"),
    ("cfg-31", {"cfg_scale": 31}, "cfg_scale", "30"),
    ("seed--2", {"seed": -2}, "seed", "-1"),
    ("subseed-strength-2", {"subseed_strength": 2}, "subseed_strength", "1"),
    ("width-4096", {"width": 4096}, "width", "2048"),
    ("denoising-2", {"denoising_strength": 2}, "denoising_strength", "1"),
    ("styles-text", {"styles": "not a list"}, "styles", "list"),
    ("override-not-object", {"override_settings": [1, 2]}, "override_settings", "dict"),
    ("hr-upscaler", {"enable_hr": True, "hr_upscaler": "Magic"}, "hr_upscaler", "Lanczos"),
    ("send_images-text", {"send_images": "maybe"}, "send_images", "bool"),
]


@pytest.mark.parametrize("change,field,hint", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_fields_are_422_naming_the_field(server, change, field, hint):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, **change})
    message = assert_error(r, field, (422,))
    assert hint.lower() in message.lower(), message


def test_not_json_and_not_images(server):
    r = server.post("/sdapi/v1/txt2img", data="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    r = server.post("/sdapi/v1/img2img", json={**BASE, "init_images": ["bm90IGFuIGltYWdl"]})  # "not an image"
    assert "image" in assert_error(r, "init_images", (400,))
    r = server.post("/sdapi/v1/img2img", json={**BASE, "init_images": [b64(picture())], "mask": "!!!"})
    assert_error(r, "mask", (400,))
    assert txt2img(server, {**BASE, "steps": 1})[0][0].size == (64, 64)  # the server goes on


@pytest.mark.parametrize("path,body", [
    ("interrupt", None), ("skip", None), ("refresh-checkpoints", None), ("refresh-vae", None),
    ("refresh-loras", None), ("refresh-embeddings", None), ("reload-checkpoint", None), ("options", {}),
])
def test_every_post_answers_a_json_object(server, path, body):
    r = server.post(f"/sdapi/v1/{path}", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json") and r.json() == {}
