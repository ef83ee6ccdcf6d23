"""What one request may ask for: prompt length and pixels per job (settings max_prompt_length and
max_job_pixels), and an init picture's own size used or refused, never silently changed. Over a
limit is a 422 naming the field, before the job is queued; the server goes on serving."""

from __future__ import annotations

import contextlib
import time

from tests.api_common import BASE, assert_error, decode
from tests.pictures import b64, picture


@contextlib.contextmanager
def option(server, key, value):
    old = server.get("/sdapi/v1/options").json()[key]
    assert server.post("/sdapi/v1/options", json={key: value}).status_code == 200
    try:
        yield
    finally:
        assert server.post("/sdapi/v1/options", json={key: old}).status_code == 200


def test_a_prompt_over_the_limit_is_refused_at_once(server):
    """The finding: a 1 MB prompt held the worker for 155 s. Now every prompt field is measured first."""
    limit = server.get("/sdapi/v1/options").json()["max_prompt_length"]
    assert limit == 20000
    for name in ("prompt", "negative_prompt"):
        started = time.monotonic()
        r = server.post("/sdapi/v1/txt2img", json={**BASE, name: "a " * 500_000})
        message = assert_error(r, name, (422,))
        assert "1000000 characters" in message and "max_prompt_length" in message
        assert time.monotonic() - started < 10
    hires = {**BASE, "enable_hr": True, "hr_scale": 1.0, "hr_second_pass_steps": 1}
    assert_error(server.post("/sdapi/v1/txt2img", json={**hires, "hr_prompt": "x" * 20001}), "hr_prompt", (422,))
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "y" * 20000})  # at the limit: generated
    assert r.status_code == 200 and decode(r.json()["images"][0]).size == (64, 64)
    with option(server, "max_prompt_length", 10):
        assert_error(server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "eleven char"}), "prompt", (422,))
    with option(server, "max_prompt_length", 0):  # 0: no limit
        assert server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "z" * 20001}).status_code == 200


def test_jobs_over_the_pixel_limit_name_the_field_that_makes_them_big(server):
    with option(server, "max_job_pixels", 64 * 64 * 2):
        assert server.post("/sdapi/v1/txt2img", json={**BASE, "batch_size": 2}).status_code == 200
        message = assert_error(server.post("/sdapi/v1/txt2img", json={**BASE, "batch_size": 3}), "batch_size", (422,))
        assert "12288 pixels" in message and "max_job_pixels" in message
        assert_error(server.post("/sdapi/v1/txt2img", json={**BASE, "width": 128, "height": 128}), "width", (422,))
        hires = {**BASE, "enable_hr": True, "hr_scale": 2.0}
        assert_error(server.post("/sdapi/v1/txt2img", json=hires), "hr_scale", (422,))
        assert_error(server.post("/sdapi/v1/txt2img", json={**hires, "hr_resize_x": 256}), "hr_resize_x", (422,))
        i2i = {**BASE, "init_images": [b64(picture(64, 64))], "batch_size": 3}
        assert_error(server.post("/sdapi/v1/img2img", json=i2i), "batch_size", (422,))
    # the default limit lets A1111's largest UI job through the check and refuses what no card holds
    huge = {**BASE, "width": 2048, "height": 2048, "batch_size": 8, "enable_hr": True, "hr_scale": 4.0}
    assert_error(server.post("/sdapi/v1/txt2img", json=huge), "hr_scale", (422,))


def test_an_init_picture_is_used_at_its_size_or_refused(server):
    """The finding: an init picture over 2048 on a side was silently shrunk to 2048 when the request
    gave no size. Now its own size is used, or the request is refused and says what to do."""
    wide = b64(picture(2056, 64))
    request = {k: v for k, v in BASE.items() if k not in ("width", "height")}
    message = assert_error(server.post("/sdapi/v1/img2img", json={**request, "init_images": [wide]}),
                           "init_images", (422,))
    assert "2056x64" in message and "width and height" in message
    r = server.post("/sdapi/v1/img2img", json={**request, "init_images": [wide], "width": 128, "height": 64})
    assert r.status_code == 200 and decode(r.json()["images"][0]).size == (128, 64)
    r = server.post("/sdapi/v1/img2img", json={**request, "init_images": [b64(picture(96, 72))]})
    assert r.status_code == 200 and decode(r.json()["images"][0]).size == (96, 72)
