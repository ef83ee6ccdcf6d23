"""A schema-driven fuzz run: schemathesis reads the server's /openapi.json and sends every operation
data that fits its schema and data that does not. No answer may be a 5xx, every answer is JSON, and
the server goes on serving afterwards.

JSON cannot carry NaN or infinity, so hypothesis never generates them; Python's json module reads
them all the same (`NaN`, `Infinity`, `-Infinity`, and `1e309` overflowing to infinity). A second
run sends those raw literals, and numbers far out of range (±10**30), in every numeric field of
every POST operation the schema lists, and in every numeric option of POST /options: no 5xx,
strict JSON answers (no NaN literal echoed back), a 422 for each non-finite number, and GET
/options answers afterwards.

Bounded in time: a fixed, derandomized number of examples per operation (no shrinking, no example
database), and the generation endpoints get tiny work: sizes, steps and batch counts that the
schema allows are capped before sending (values of the wrong type are left alone, so they still
reach the validation).
"""

from __future__ import annotations

import collections
import json
import time

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from tests.api_common import BASE, strict_json  # noqa: E402
from tests.pictures import b64, picture  # noqa: E402

LOGIN = ("fuzz", "fuzz-pw")
EXAMPLES = 10  # at most, per operation and per mode (positive, negative)
# caps that keep a generation request tiny on the CPU
INT_CAPS = {"width": 64, "height": 64, "steps": 2, "n_iter": 1, "batch_size": 2, "hr_second_pass_steps": 1,
            "hr_resize_x": 64, "hr_resize_y": 64, "firstphase_width": 64, "firstphase_height": 64,
            "seed_resize_from_w": 64, "seed_resize_from_h": 64, "upscaling_resize_w": 128,
            "upscaling_resize_h": 128, "inpaint_full_res_padding": 16, "mask_blur": 4, "mask_blur_x": 4,
            "mask_blur_y": 4}
FLOAT_CAPS = {"hr_scale": 1.5, "upscaling_resize": 2.0}


GENERATION = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/easel/v1/jobs/txt2img", "/easel/v1/jobs/img2img")
# left out, these would mean the model's native size and 20 steps: seconds per request on the CPU
SMALL_DEFAULTS = {"width": 64, "height": 64, "steps": 2}


def cap(path: str, body):
    """The same request with the expensive numbers made small (only where they are numbers)."""
    if not isinstance(body, dict):
        return body
    if path in GENERATION:
        for key, value in SMALL_DEFAULTS.items():
            if body.get(key) is None:
                body[key] = value
    for key, most in INT_CAPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            body[key] = most
    for key, most in FLOAT_CAPS.items():
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > most:
            body[key] = most
    return body


@pytest.fixture(scope="module")
def srv(tiny_checkpoints, tmp_path_factory):
    from tests.server import run_server

    with run_server(tmp_path_factory.mktemp("fuzz-data"), tiny_checkpoints.checkpoints_dir, "--nowebui",
                    "--api-auth", ":".join(LOGIN), "--ckpt", str(tiny_checkpoints.sd1),
                    ready_path="/sdapi/v1/samplers", auth=LOGIN) as server:
        yield server


def test_fuzz_every_operation_no_server_error(srv):
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json", auth=LOGIN, timeout=60)
    session = requests.Session()
    session.auth = LOGIN
    failures, calls, started = [], 0, time.monotonic()
    statuses = collections.Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, [op.label for op in operations]

    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def probe(case):
                nonlocal calls
                case.body = cap(operation.path, case.body)
                calls += 1
                try:
                    response = case.call(base_url=srv.url, session=session, timeout=60)
                except requests.RequestException as exc:
                    failures.append(f"no answer: {operation.label} ({mode}): {exc}\n  {case.as_curl_command()}")
                    return
                statuses[response.status_code // 100 * 100] += 1
                problem = None
                if response.status_code >= 500:
                    problem = "server error"
                elif response.content and "json" not in response.headers.get("content-type", [""])[0]:
                    problem = "not JSON"
                if problem:
                    failures.append(f"{problem}: {operation.label} ({mode}) -> {response.status_code} "
                                    f"{response.content[:300]!r}\n  {case.as_curl_command()}")

            try:
                probe()
            except Unsatisfiable:  # nothing to get wrong (no parameters, no body): its positive run covers it
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label

    elapsed = time.monotonic() - started
    print(f"fuzz: {calls} requests over {len(operations)} operations in {elapsed:.1f}s, answers {dict(statuses)}")
    assert statuses[200] > len(operations) and statuses[400] > 20  # both kinds of data reached the server
    assert not failures, "\n".join(failures[:20])

    # the server goes on: a plain request still works
    r = srv.post("/sdapi/v1/txt2img", json={**BASE, "steps": 1}, auth=LOGIN)
    assert r.status_code == 200, r.text
    assert srv.get("/sdapi/v1/progress", auth=LOGIN).json()["state"]["job_count"] == 0


NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e309")
RAW_NUMBERS = (*NON_FINITE, str(10 ** 30), str(-10 ** 30))


def _base_bodies() -> dict:
    """A request each operation would accept: a number that gets through validation runs tiny work."""
    image = b64(picture())
    small = {**BASE, "steps": 1}
    return {"/sdapi/v1/txt2img": small, "/sdapi/v1/img2img": {**small, "init_images": [image]},
            "/sdapi/v1/extra-single-image": {"image": image},
            "/sdapi/v1/extra-batch-images": {"imageList": [{"data": image, "name": "a.png"}]},
            "/sdapi/v1/png-info": {"image": image},
            "/easel/v1/jobs/txt2img": small, "/easel/v1/jobs/img2img": {**small, "init_images": [image]}}


def _numeric_fields(spec: dict, operation: dict) -> list[str]:
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body is None:
        return []
    return [name for name, prop in resolve(body).get("properties", {}).items()
            if {resolve(p).get("type") for p in prop.get("anyOf", [prop])} & {"number", "integer"}]


def test_raw_nan_infinity_and_huge_numbers_in_every_numeric_field(srv):
    session = requests.Session()
    session.auth = LOGIN
    spec = session.get(srv.url + "/openapi.json", timeout=60).json()
    bases, failures, sent, started = _base_bodies(), [], 0, time.monotonic()
    cases = []
    for path, methods in spec["paths"].items():
        if "post" in methods:
            cases += [(path, field, literal) for field in _numeric_fields(spec, methods["post"])
                      for literal in RAW_NUMBERS]
    covered = {path for path, _, _ in cases}
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/extra-single-image"} <= covered, covered
    options = session.get(srv.url + "/sdapi/v1/options", timeout=60).json()
    cases += [("/sdapi/v1/options", key, literal) for key, value in options.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool) for literal in RAW_NUMBERS]

    accepted, statuses = set(), collections.Counter()  # accepted: options that took 10**30 (limits without a top)
    for path, field, literal in cases:
        body = {**bases.get(path, {}), field: "@@RAW@@"}
        text = json.dumps(body).replace('"@@RAW@@"', literal)
        sent += 1
        try:
            r = session.post(srv.url + path, data=text, headers={"Content-Type": "application/json"}, timeout=120)
        except requests.RequestException as exc:
            failures.append(f"no answer: {path} {field}={literal}: {exc}")
            continue
        statuses[r.status_code] += 1
        problem = None
        if r.status_code >= 500:
            problem = "server error"
        elif literal in NON_FINITE and r.status_code != 422:
            problem = "not refused"
        else:
            try:
                strict_json(r.text)
            except (AssertionError, ValueError) as exc:
                problem = f"not strict JSON ({exc})"
        if problem:
            failures.append(f"{problem}: {path} {field}={literal} -> {r.status_code} {r.text[:200]!r}")
        elif path == "/sdapi/v1/options" and r.status_code == 200:
            accepted.add(field)
    print(f"raw numbers: {sent} requests in {time.monotonic() - started:.1f}s, answers {dict(statuses)}; "
          f"options taking 10**30: {sorted(accepted)}")
    assert not failures, "\n".join(failures[:20])

    r = session.get(srv.url + "/sdapi/v1/options", timeout=60)
    assert r.status_code == 200
    after = strict_json(r.text)
    assert {k: v for k, v in after.items() if k not in accepted} == {k: v for k, v in options.items() if k not in accepted}
    assert all(after[k] == 10 ** 30 for k in accepted)
    r = session.post(srv.url + "/sdapi/v1/options", json={k: options[k] for k in accepted}, timeout=60)
    assert r.status_code == 200, r.text

