"""The API against hostile numbers, locked settings and concurrent saves, through real HTTP.

- NaN, Infinity, -Infinity and 1e309 (which Python's json reads as infinity) in every numeric
  field of txt2img and img2img (read from /openapi.json), in every numeric option of POST /options
  and of override_settings, and inside script_args: each a JSON 422 naming the field, in strict
  JSON (FastAPI's own 422 echoed the NaN and failed to serialise: a plain-text 500); the options
  stay readable.
- A config.json with NaN, Infinity, out-of-bounds and wrong-type values (hand-edited): the server
  starts, GET /options answers, each bad value is replaced by its default with a message naming
  the option, across a restart.
- The command line's locks, as A1111's: --hide-ui-dir-config (the output folders),
  --freeze-settings, --freeze-settings-in-sections, --freeze-specific-settings, through POST
  /options, override_settings on txt2img and img2img, and an extension's `shared.opts` (the
  opts_writer test extension), with A1111's messages. The Settings tab's Apply is checked
  in-process at the end (its browser test is tests/test_ui_settings_browser.py).
- Concurrent option saves from the event loop and other threads: no error, config.json whole.
- `webuiapi` still sets options and generates.
"""

from __future__ import annotations

import html
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.api_common import BASE, assert_error, decode
from tests.api_common import strict_json as parse_strict
from tests.pictures import b64, picture

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "extensions"
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e309")
SMALL = {**BASE, "steps": 1}
MESSAGE_HIDE = "not possible to set '{}' because it is restricted with --hide_ui_dir_config"
MESSAGE_FREEZE = "changing settings is disabled"


def strict_json(r: requests.Response):
    """The answer, JSON by its content type, parsed as strict JSON."""
    assert "json" in r.headers.get("content-type", ""), (r.status_code, r.headers, r.text[:300])
    return parse_strict(r.text)


def post_raw(srv, path: str, body: dict, field: str | None = None, literal: str | None = None,
             **kw) -> requests.Response:
    """POST `body` as JSON text with `field` set to the raw `literal` (NaN is no JSON value, so
    requests' own encoder would not send it)."""
    if field is not None:
        body = {**body, field: "@@RAW@@"}
    text = json.dumps(body).replace('"@@RAW@@"', literal or "null")
    return requests.post(srv.url + path, data=text, headers={"Content-Type": "application/json"}, timeout=120, **kw)


def numeric_fields(srv, path: str) -> list[str]:
    """The request body's number and integer fields, from the server's own schema."""
    spec = srv.get("/openapi.json").json()
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    fields = []
    for name, prop in schema["properties"].items():
        kinds = {p.get("type") for p in prop.get("anyOf", [prop])}
        if kinds & {"number", "integer"}:
            fields.append(name)
    return fields


def numeric_options(srv) -> dict:
    return {k: v for k, v in srv.get("/sdapi/v1/options").json().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def loaded(server):
    """The server once its start-up checkpoint load is done (sd_model_checkpoint then reads as the
    loaded model's title): one tiny generation, which waits for it."""
    r = server.post("/sdapi/v1/txt2img", json=SMALL)
    assert r.status_code == 200, r.text
    return server


def add_extension(data: Path, name: str) -> None:
    shutil.copytree(FIXTURES / name, data / "extensions" / name, ignore=shutil.ignore_patterns("__pycache__"))


def assign(srv, key: str, value, how: str = "setattr") -> dict:
    """An extension's `shared.opts.<key> = value` (or `shared.opts.set(key, value)`), reported."""
    r = srv.post("/opts-writer/assign", json={"key": key, "value": value, "how": how})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def srv(tiny_checkpoints, tmp_path_factory):
    """A server of this module's own (these tests change its options), no flags that lock anything."""
    from tests.server import run_server

    data = tmp_path_factory.mktemp("robust-data")
    add_extension(data, "opts_writer")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--nowebui", "--ckpt", str(tiny_checkpoints.sd1),
                    ready_path="/sdapi/v1/samplers") as server:
        yield loaded(server)


@pytest.fixture(scope="module")
def locked(tiny_checkpoints, tmp_path_factory):
    """A server with --hide-ui-dir-config, the img2img section frozen and samples_format frozen."""
    from tests.server import run_server

    data = tmp_path_factory.mktemp("locked-data")
    add_extension(data, "opts_writer")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--nowebui", "--ckpt", str(tiny_checkpoints.sd1),
                    "--hide-ui-dir-config", "--freeze-settings-in-sections", " img2img ,",
                    "--freeze-specific-settings", "samples_format, jpeg_quality",
                    ready_path="/sdapi/v1/samplers") as server:
        yield loaded(server)


# ---------------------------------------------------------------------------- NaN and infinity

@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"])
def test_non_finite_in_every_numeric_field_is_a_json_422_naming_it(srv, path):
    fields = numeric_fields(srv, path)
    assert len(fields) > 20 and {"cfg_scale", "steps", "seed", "denoising_strength"} <= set(fields)
    base = {**SMALL, "init_images": [b64(picture())]} if path.endswith("img2img") else SMALL
    for field in fields:
        for literal in NON_FINITE:
            r = post_raw(srv, path, base, field, literal)
            assert r.status_code == 422, (field, literal, r.status_code, r.text[:300])
            strict_json(r)
            assert_error(r, field, (422,))
    assert srv.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0  # nothing was queued
    r = srv.post(path, json=base)  # and the same request with finite numbers generates
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (64, 64)


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"])
def test_non_finite_inside_override_settings_and_script_args_is_refused(srv, path):
    base = {**SMALL, "init_images": [b64(picture())]} if path.endswith("img2img") else SMALL
    options = numeric_options(srv)
    assert {"CLIP_stop_at_last_layers", "eta_noise_seed_delta", "extra_networks_default_multiplier"} <= set(options)
    for key in options:
        for literal in NON_FINITE:
            text = json.dumps({**base, "override_settings": {key: "@@"}}).replace('"@@"', literal)
            r = requests.post(srv.url + path, data=text, headers={"Content-Type": "application/json"}, timeout=60)
            assert r.status_code == 422, (key, literal, r.text[:300])
            assert key in assert_error(r, "override_settings", (422,))
            strict_json(r)
    for field, inner in (("script_args", '[1, "x", NaN]'), ("alwayson_scripts", '{"x": {"args": [Infinity]}}'),
                         ("comments", '{"a": -Infinity}')):
        r = post_raw(srv, path, base, field, inner)
        assert r.status_code == 422, (field, r.text)
        assert_error(r, field, (422,))
        assert strict_json(r)["detail"][0]["input"] in ([1, "x", "NaN"], {"x": {"args": ["Infinity"]}},
                                                         {"a": "-Infinity"})
    # huge numbers where the request allows none: refused by validation, nothing generated
    for field in ("steps", "seed", "width", "cfg_scale", "eta", "s_churn", "firstphase_width"):
        if field in numeric_fields(srv, path):
            r = post_raw(srv, path, base, field, str(10 ** 30))
            assert r.status_code == 422, (field, r.text)
            assert_error(r, field, (422,))


def test_non_finite_options_are_refused_and_get_options_keeps_working(srv):
    before = srv.get("/sdapi/v1/options").json()
    huge = (str(10 ** 30), str(-10 ** 30), str(10 ** 400))  # for the options with bounds on that side
    cases = [(key, literal) for key in numeric_options(srv) for literal in NON_FINITE]
    cases += [(key, literal) for key in ("jpeg_quality", "extra_networks_default_multiplier", "eta_noise_seed_delta",
                                         "CLIP_stop_at_last_layers", "show_progress_every_n_steps") for literal in huge]
    for key, literal in cases:
        r = post_raw(srv, "/sdapi/v1/options", {}, key, literal)
        assert r.status_code == 422, (key, literal, r.text)
        assert_error(r, key, (422,))
        strict_json(r)
    r = srv.get("/sdapi/v1/options")
    assert r.status_code == 200 and strict_json(r) == before
    stored = srv.data_dir / "config.json"
    if stored.exists():
        parse_strict(stored.read_text())
    # out of bounds and the wrong type, too
    for key, value in (("extra_networks_default_multiplier", 1e30), ("eta_noise_seed_delta", 10 ** 30),
                       ("jpeg_quality", "80"), ("jpeg_quality", None), ("CLIP_stop_at_last_layers", 12.5)):
        r = srv.post("/sdapi/v1/options", json={key: value})
        assert_error(r, key, (422,))
    assert srv.get("/sdapi/v1/options").json() == before


def test_a_stored_nan_config_survives_restarts(tiny_checkpoints, tmp_path):
    from tests.server import run_server

    data = tmp_path / "data"
    data.mkdir()
    # as hand-edited (or written by an older version): literals Python's json reads, and bad values
    (data / "config.json").write_text(
        '{"extra_networks_default_multiplier": NaN, "jpeg_quality": Infinity, "initial_noise_multiplier": 1e309,\n'
        ' "CLIP_stop_at_last_layers": 99, "samples_save": "yes", "sd_model_checkpoint": 5, "eta_noise_seed_delta": -1,\n'
        ' "an_extensions_option": -Infinity, "kept_unknown": "text", "grid_format": "jpg"}')
    bad = ("extra_networks_default_multiplier", "jpeg_quality", "initial_noise_multiplier", "CLIP_stop_at_last_layers",
           "samples_save", "sd_model_checkpoint", "eta_noise_seed_delta")
    flags = ("--nowebui", "--skip-load-model-at-start")
    with run_server(data, tiny_checkpoints.checkpoints_dir, *flags, ready_path="/sdapi/v1/samplers") as server:
        r = server.get("/sdapi/v1/options")
        assert r.status_code == 200, r.text
        options = strict_json(r)
        assert (options["extra_networks_default_multiplier"], options["jpeg_quality"], options["initial_noise_multiplier"],
                options["CLIP_stop_at_last_layers"], options["samples_save"], options["eta_noise_seed_delta"]) \
            == (1.0, 80, 1.0, 1, True, 0)
        assert options["grid_format"] == "jpg" and options["kept_unknown"] == "text"  # good values stay
        assert "an_extensions_option" not in options
        log = server.output()
        for key in (*bad, "an_extensions_option"):
            assert f"option {key} " in log, (key, log)
        r = server.post("/sdapi/v1/options", json={"jpeg_quality": 91})  # a save writes strict JSON
        assert r.status_code == 200, r.text
        saved = parse_strict((data / "config.json").read_text())
        assert saved["jpeg_quality"] == 91 and saved["extra_networks_default_multiplier"] == 1.0
    with run_server(data, tiny_checkpoints.checkpoints_dir, *flags, ready_path="/sdapi/v1/samplers") as server:
        options = strict_json(server.get("/sdapi/v1/options"))
        assert options["jpeg_quality"] == 91 and options["grid_format"] == "jpg"
        assert "[options]" not in server.output()  # nothing left to repair


# ----------------------------------------------------------------------------------- locks

def test_hide_ui_dir_config_refuses_output_folders_everywhere(locked, tmp_path):
    elsewhere = str(tmp_path / "elsewhere")
    before = locked.get("/sdapi/v1/options").json()
    for key in ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_grids", "outdir_extras_samples",
                "opts_writer_folder"):
        r = locked.post("/sdapi/v1/options", json={key: elsewhere})
        assert MESSAGE_HIDE.format(key) in assert_error(r, key, (422,))
        r = locked.post("/sdapi/v1/options", json={key: before[key]})  # its own value: no change, allowed
        assert r.status_code == 200, r.text
    r = locked.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True,
                                                "override_settings": {"outdir_txt2img_samples": elsewhere}})
    assert MESSAGE_HIDE.format("outdir_txt2img_samples") in assert_error(r, "outdir_txt2img_samples", (422,))
    r = locked.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(picture())], "save_images": True,
                                                "override_settings": {"outdir_samples": elsewhere},
                                                "override_settings_restore_afterwards": False})
    assert MESSAGE_HIDE.format("outdir_samples") in assert_error(r, "outdir_samples", (422,))
    assert not Path(elsewhere).exists()
    # an extension's assignment: A1111's RuntimeError; its set(): False
    report = assign(locked, "outdir_samples", elsewhere)
    assert report["raised"] == "RuntimeError" and report["message"] == MESSAGE_HIDE.format("outdir_samples")
    report = assign(locked, "outdir_grids", elsewhere, how="set")
    assert report["raised"] is None and report["returned"] is False
    assert locked.get("/sdapi/v1/options").json() == before
    # what is not locked still changes, through every path
    r = locked.post("/sdapi/v1/options", json={"samples_save": False, "grid_save": False})
    assert r.status_code == 200 and locked.get("/sdapi/v1/options").json()["samples_save"] is False
    assert assign(locked, "return_grid", False) == {"raised": None, "returned": None, "value": False}
    r = locked.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert r.status_code == 200 and json.loads(r.json()["info"])["clip_skip"] == 2


def test_freeze_settings_in_sections_and_specific_settings(locked):
    before = locked.get("/sdapi/v1/options").json()
    r = locked.post("/sdapi/v1/options", json={"initial_noise_multiplier": 0.5})
    assert ("not possible to set 'initial_noise_multiplier' because settings in section 'img2img' (img2img) are "
            "frozen with --freeze-settings-in-sections") in assert_error(r, "initial_noise_multiplier", (422,))
    for key, value in (("samples_format", "jpg"), ("jpeg_quality", 50)):
        r = locked.post("/sdapi/v1/options", json={"send_seed": False, key: value})  # all or nothing
        assert (f"not possible to set '{key}' because this setting is frozen with --freeze-specific-settings"
                in assert_error(r, key, (422,)))
    r = locked.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [b64(picture())],
                                                "override_settings": {"img2img_extra_noise": 0.5}})
    assert "--freeze-settings-in-sections" in assert_error(r, "img2img_extra_noise", (422,))
    report = assign(locked, "inpainting_mask_weight", 0.5)
    assert report["raised"] == "AssertionError" and "--freeze-settings-in-sections" in report["message"]
    report = assign(locked, "jpeg_quality", 10, how="set")
    assert report["raised"] == "AssertionError" and "--freeze-specific-settings" in report["message"]
    assert locked.get("/sdapi/v1/options").json() == before
    # an infotext's locked setting is not taken from the text (the rest of the text is)
    unseeded = {k: v for k, v in SMALL.items() if k != "seed"}
    r = locked.post("/sdapi/v1/img2img", json={**unseeded, "init_images": [b64(picture())], "infotext":
                                                "a cat\nSteps: 1, Seed: 77, Noise multiplier: 0.5"})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["seed"] == 77
    assert "override_settings" not in r.json()["parameters"] or \
        "initial_noise_multiplier" not in (r.json()["parameters"]["override_settings"] or {})


def test_freeze_settings_locks_everything_and_saves_nothing(tiny_checkpoints, tmp_path):
    from tests.server import run_server

    data = tmp_path / "data"
    add_extension(data, "opts_writer")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--nowebui", "--ckpt", str(tiny_checkpoints.sd1),
                    "--freeze-settings", ready_path="/sdapi/v1/samplers") as server:
        before = loaded(server).get("/sdapi/v1/options").json()
        for body in ({"jpeg_quality": 50}, {"samples_save": False}, {"localization": "None", "send_seed": False}):
            key = [k for k, v in body.items() if before[k] != v][0]
            r = server.post("/sdapi/v1/options", json=body)
            assert MESSAGE_FREEZE in assert_error(r, key, (422,))
        other = next(m["title"] for m in server.get("/sdapi/v1/sd-models").json()
                     if Path(m["filename"]).name == Path(tiny_checkpoints.sd2_v).name)
        r = server.post("/sdapi/v1/options", json={"sd_model_checkpoint": other})
        assert MESSAGE_FREEZE in assert_error(r, "sd_model_checkpoint", (422,))
        # A1111 lets a value through that changes nothing: a client posting the options back works
        r = server.post("/sdapi/v1/options", json=before)
        assert r.status_code == 200, r.text
        for overrides in ({"eta_noise_seed_delta": 31337}, {"sd_model_checkpoint": other},
                          {"CLIP_stop_at_last_layers": 3}):
            r = server.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": overrides,
                                                        "override_settings_restore_afterwards": False})
            assert MESSAGE_FREEZE in assert_error(r, next(iter(overrides)), (422,))
        r = server.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"eta_noise_seed_delta": 0}})
        assert r.status_code == 200, r.text
        report = assign(server, "samples_save", False)
        assert report == {"raised": "AssertionError", "message": MESSAGE_FREEZE, "value": True}
        assert assign(server, "jpeg_quality", 80, how="set")["raised"] is None  # the same value: no change
        assert server.get("/sdapi/v1/options").json() == before
        assert server.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
        assert not (data / "config.json").exists()  # nothing was ever saved


# ------------------------------------------------------------------------------ concurrency

def test_concurrent_option_saves_never_fail_and_leave_config_json_whole(srv, tiny_checkpoints):
    title = next(m["title"] for m in srv.get("/sdapi/v1/sd-models").json()
                 if Path(m["filename"]).name == Path(tiny_checkpoints.sd1).name)
    errors: list[str] = []
    lock = threading.Lock()

    def post_option(i: int) -> None:
        body = {"jpeg_quality": 50 + i % 40, "samples_save": bool(i % 2), "send_seed": bool(i % 3)}
        if i % 25 == 0:  # saved from a worker thread (the checkpoint is selected there), not the event loop
            body["sd_model_checkpoint"] = title
        r = srv.post("/sdapi/v1/options", json=body, timeout=120)
        if r.status_code != 200:
            with lock:
                errors.append(f"options {r.status_code} {r.text[:200]}")

    def generate(i: int) -> None:  # override_settings kept afterwards: the checkpoint selected and saved
        r = srv.post("/sdapi/v1/txt2img", json={**SMALL, "seed": i, "override_settings": {"sd_model_checkpoint": title},
                                                "override_settings_restore_afterwards": False}, timeout=300)
        if r.status_code != 200:
            with lock:
                errors.append(f"txt2img {r.status_code} {r.text[:200]}")

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(post_option, i) for i in range(200)]
        futures += [pool.submit(generate, i) for i in range(6)]
        for future in futures:
            future.result()
    assert not errors, errors[:5]
    stored = parse_strict((srv.data_dir / "config.json").read_text())  # whole, strict JSON
    assert stored == {k: v for k, v in srv.get("/sdapi/v1/options").json().items() if k in stored}
    assert 50 <= stored["jpeg_quality"] < 90
    assert not [p.name for p in srv.data_dir.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(tmp_path):
    from modules.core import atomic_write

    target = tmp_path / "config.json"
    atomic_write.write_text(target, '{"a": 1}')
    target.chmod(0o640)
    with pytest.raises(RuntimeError):
        with atomic_write.replacing(target) as file:
            file.write('{"a": 2, "half')
            raise RuntimeError("disk full")
    assert target.read_text() == '{"a": 1}' and [p.name for p in tmp_path.iterdir()] == ["config.json"]
    atomic_write.write_text(target, '{"a": 3}')
    assert target.read_text() == '{"a": 3}' and target.stat().st_mode & 0o777 == 0o640  # permissions kept


# ------------------------------------------------------------------------------------ clients

def test_webuiapi_sets_options_and_generates(srv):
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(baseurl=srv.url + "/sdapi/v1", sampler="Euler a", steps=1)
    api.set_options({"jpeg_quality": 77, "samples_format": "png", "extra_networks_default_multiplier": 0.5})
    options = api.get_options()
    assert (options["jpeg_quality"], options["extra_networks_default_multiplier"]) == (77, 0.5)
    result = api.txt2img(prompt="a red cube", seed=5, width=64, height=64, cfg_scale=7.0)
    assert result.image.size == (64, 64) and result.info["seed"] == 5


# -------------------------------------------------------------------------------- Settings tab

def test_settings_tab_apply_refuses_locked_options_with_a_message(tmp_path):
    pytest.importorskip("gradio")
    from modules.services.options import Options, Restrictions
    from modules.ui.settings import SettingsTab

    options = Options(tmp_path / "config.json",
                      restrictions=Restrictions.of(hide_dirs=True, keys=["jpeg_quality"], sections=["Live previews"]))
    tab = SettingsTab(options)
    values = tab.values()

    def apply(**changes) -> str:  # the report the page shows, as text
        return html.unescape(tab.apply(*[changes.get(k, v) for k, v in zip(tab.keys, values)])[0])

    for key, value, words in (("outdir_samples", "/tmp/x", "--hide_ui_dir_config"),
                              ("jpeg_quality", 12, "--freeze-specific-settings"),
                              ("show_progress_every_n_steps", 3, "section 'Live previews' (ui)")):
        message = apply(**{key: value, "samples_save": False})
        assert f"not possible to set '{key}'" in message and words in message, message
    assert options.get("samples_save") is True and not (tmp_path / "config.json").exists()  # all or nothing
    message = apply(samples_save=False, extra_networks_default_multiplier=float("nan"))
    assert "extra_networks_default_multiplier must be a finite number" in message
    assert "1 settings changed: samples_save" in apply(samples_save=False)
    assert json.loads((tmp_path / "config.json").read_text())["samples_save"] is False

    frozen = SettingsTab(Options(None, restrictions=Restrictions.of(freeze_all=True)))
    message = html.unescape(frozen.apply(*[False if k == "samples_save" else v
                                           for k, v in zip(frozen.keys, frozen.values())])[0])
    assert "samples_save: changing settings is disabled" in message
