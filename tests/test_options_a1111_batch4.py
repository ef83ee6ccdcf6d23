"""A fourth batch of A1111 1.10's options (issue 13), each checked where it acts: the page's Interrupt
under interrupt_after_current (the picture being made is finished, the next not started), the
hypernetwork every prompt gets (sd_hypernetwork, as its <hypernet:> tag), the browser opened at start
(auto_launch_browser: never under CI or pytest), the console's warnings (show_warnings), the page's
title, progress bar, sound and wake lock (show_progress_in_title, show_progressbar,
notification_audio / notification_volume, prevent_screen_sleep_during_generation), and `/file=`
serving the install's notification.mp3 and nothing else of the install. One browser test: the job's
progress in the tab's title.

Sections: "System" (auto_launch_browser, show_warnings), "User interface" (show_progress_in_title),
"Live previews" (show_progressbar, prevent_screen_sleep_during_generation), "Saving images/grids"
(notification_audio, notification_volume), "UI alternatives" (interrupt_after_current), "Extra
Networks" (sd_hypernetwork).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.core.types import GenerationRequest
from modules.services.options import Options
from tests.browser import chromium  # noqa: F401  (the module's Chromium)
from tests.test_options_a1111_batch3 import assert_defaults_and_refusals

NEW = {  # key: (A1111's default, a value it refuses)
    "auto_launch_browser": ("Local", "Always"),
    "show_warnings": (False, "off"),
    "show_progress_in_title": (True, "yes"),
    "show_progressbar": (True, 1),
    "prevent_screen_sleep_during_generation": (True, "no"),
    "notification_audio": (True, None),
    "notification_volume": (100, 101),
    "interrupt_after_current": (True, "later"),
    "sd_hypernetwork": ("None", "no-such-hypernetwork"),
}
SMALL = dict(width=64, height=64, steps=3, seed=12, save_images=False, prompt="a red cube")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------- through the API

def test_the_api_lists_each_option_with_a1111s_default_and_refuses_a_bad_value(server):
    sections = assert_defaults_and_refusals(server, NEW)
    assert sections == {"auto_launch_browser": "system", "show_warnings": "system", "show_progress_in_title": "ui", "show_progressbar": "ui",
                        "prevent_screen_sleep_during_generation": "ui", "notification_audio": "saving-images",
                        "notification_volume": "saving-images", "interrupt_after_current": "ui_alternatives",
                        "sd_hypernetwork": "extra_networks"}


def test_file_route_of_the_server_refuses_the_installs_other_files(server):
    for name in ("webui.py", "README.md", "requirements.txt"):
        assert server.get(f"/file={name}").status_code == 403, name
    # the test install has no notification.mp3: not found, not refused
    assert server.get("/file=notification.mp3").status_code == 404


# ------------------------------------------------------------------------------ the file route

def test_the_notification_sound_is_the_one_file_of_the_install_that_file_serves(tmp_path, monkeypatch):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from modules import file_route, paths_internal

    install, data = tmp_path / "install", tmp_path / "data"
    install.mkdir()
    data.mkdir()
    (install / "notification.mp3").write_bytes(b"ID3 a tiny sound")
    (install / "webui.py").write_text("print('source')", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("secret", encoding="utf-8")
    monkeypatch.setattr(paths_internal, "script_path", str(install))
    monkeypatch.setattr(paths_internal, "data_path", str(data))
    app = Starlette()
    file_route.mount(app, None, None)
    client = TestClient(app)
    for url in ("/file=notification.mp3", f"/file={install / 'notification.mp3'}"):
        r = client.get(url)
        assert r.status_code == 200 and r.content == b"ID3 a tiny sound", url
    for url in ("/file=webui.py", f"/file={install / 'webui.py'}", "/file=../secret.txt", "/file=notification.mp3x"):
        assert client.get(url).status_code == 403, url
    # a notification.mp3 that links elsewhere is not the install's own file
    (install / "notification.mp3").unlink()
    os.symlink(tmp_path / "secret.txt", install / "notification.mp3")
    assert client.get("/file=notification.mp3").status_code == 403
    (install / "notification.mp3").unlink()
    assert client.get("/file=notification.mp3").status_code == 404


# ------------------------------------------------------------------------ opening the browser

def test_auto_launch_browser_opens_as_a1111_decides_and_never_under_ci_or_pytest():
    import webui
    from modules import cmd_args

    def launches(choice, *flags, **environ) -> bool:
        return webui.launch_browser(cmd_args.parse_args(list(flags), extra_preloads=[]), choice, environ=environ)

    assert launches("Local") and launches("Remote") and not launches("Disable")
    assert not launches("Local", "--listen") and not launches("Local", "--server-name", "myhost")  # not local
    assert launches("Remote", "--listen") and launches("Disable", "--autolaunch")
    assert not launches("Remote", "--nowebui")
    for environ in ({"CI": "true"}, {"PYTEST_CURRENT_TEST": "a test"}, {"SD_WEBUI_RESTARTING": "1"}):
        assert not launches("Remote", **environ) and not launches("Local", "--autolaunch", **environ), environ
    assert os.environ.get("PYTEST_CURRENT_TEST")  # (what keeps this session's own servers from opening one)


def test_show_warnings_lets_userwarnings_reach_the_console_or_not():
    import warnings

    import webui

    options = Options(None)
    for shown in (False, True):
        options.set("show_warnings", shown)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            webui.show_warnings(options)
            warnings.warn("a user warning of batch 4", UserWarning)
            warnings.warn("a runtime warning of batch 4", RuntimeWarning)
        assert [str(w.message) for w in caught] == (["a user warning of batch 4"] if shown else []) + \
            ["a runtime warning of batch 4"], shown


# -------------------------------------------------------------------------------- the engine

@pytest.fixture(scope="module")
def hypernetwork_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("batch4-hypernetworks")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_checkpoints, hypernetwork_dir):
    """A real engine built by webui.build_engine, its hypernetworks in `hypernetwork_dir`."""
    import webui
    from modules import cmd_args

    data = tmp_path_factory.mktemp("batch4-data")
    opts = cmd_args.parse_args(["--data-dir", str(data), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--hypernetwork-dir", str(hypernetwork_dir)], extra_preloads=[])
    return webui.build_engine(opts)


def test_interrupt_after_current_finishes_the_picture_being_made_and_starts_no_other(engine):
    from modules.ui.generation_tab import stop_after_current

    job = dict(SMALL, steps=12, n_iter=3, prompt="a cube stopped after one")
    alone = engine.submit_txt2img(GenerationRequest(**dict(job, n_iter=1))).result()
    assert stop_after_current(engine, None) is False  # nothing runs

    def stopped(task_id: str):
        """The job's result after asking it to stop while its first or second picture is sampled."""
        future = engine.submit_txt2img(GenerationRequest(**job), task_id=task_id, overrides={"return_grid": False})
        state, deadline = engine.state, time.time() + 60
        while not (state.task_id == task_id and state.sampling_step >= 1) and time.time() < deadline:
            time.sleep(0.002)
        current = state.job_no
        asked = stop_after_current(engine, task_id)
        return future.result(), current, asked

    result, current, asked = stopped("batch4-after-current")
    assert asked and current < 2
    assert not result.interrupted and len(result.images) == current + 1  # finished, none after it
    assert np.array_equal(pixels(result.images[0]), pixels(alone.images[0]))  # the first one whole

    engine.options.set("interrupt_after_current", False)
    try:
        future = engine.submit_txt2img(GenerationRequest(**job), task_id="batch4-at-once")
        while not (engine.state.task_id == "batch4-at-once" and engine.state.sampling_step >= 1) \
                and not future.done():
            time.sleep(0.002)
        assert stop_after_current(engine, "batch4-at-once") is False  # the page interrupts at once
        engine.queue.interrupt_job("batch4-at-once")
        assert future.result().interrupted
    finally:
        engine.options.set("interrupt_after_current", True)


def _write_hypernetwork(folder: Path, width: int) -> None:
    """A1111's layout (tests/test_hypernetworks.py): per context width, the key and value MLPs."""
    g = torch.Generator().manual_seed(3)

    def mlp() -> dict:
        return {"linear.0.weight": torch.randn(2 * width, width, generator=g) * 0.2,
                "linear.0.bias": torch.randn(2 * width, generator=g) * 0.1,
                "linear.2.weight": torch.randn(width, 2 * width, generator=g) * 0.2,
                "linear.2.bias": torch.randn(width, generator=g) * 0.1}

    torch.save({width: [mlp(), mlp()], "layer_structure": [1, 2, 1], "activation_func": "relu",
                "is_layer_norm": False, "use_dropout": False, "activate_output": False, "name": "shapes"},
               folder / "shapes.pt")


def test_sd_hypernetwork_changes_every_picture_as_its_tag_does(engine, hypernetwork_dir):
    def run(prompt: str, **overrides):
        request = GenerationRequest(**dict(SMALL, prompt=prompt))
        return engine.submit_txt2img(request, overrides=overrides or None).result()

    plain = run("a red cube")
    _write_hypernetwork(hypernetwork_dir, engine.models.model.unet.config.cross_attention_dim)
    tagged = run("a red cube<hypernet:shapes:1.0>")
    assert np.abs(pixels(plain.images[0]) - pixels(tagged.images[0])).max() > 4
    assert engine.options.defs["sd_hypernetwork"].choice_list() == ("None", "shapes")  # the files there

    engine.options.set("sd_hypernetwork", "shapes")
    try:
        chosen = run("a red cube")
        named = run("a red cube <hypernet:shapes:0>")  # the prompt names it: its own strength holds
    finally:
        engine.options.set("sd_hypernetwork", "None")
    assert np.array_equal(pixels(chosen.images[0]), pixels(tagged.images[0]))
    assert chosen.infotexts[0].startswith("a red cube<hypernet:shapes:1.0>\n")  # A1111: the tag in the prompt
    assert np.array_equal(pixels(named.images[0]), pixels(plain.images[0]))
    assert "<hypernet:shapes:1.0>" not in named.infotexts[0]
    # for one job (override_settings), and off again after it
    assert np.array_equal(pixels(run("a red cube", sd_hypernetwork="shapes").images[0]), pixels(tagged.images[0]))
    assert np.array_equal(pixels(run("a red cube").images[0]), pixels(plain.images[0]))


# -------------------------------------------------------------------------------- the page

def test_title_progress_is_a1111s_text():
    from modules.ui.generation_tab import title_progress

    assert title_progress(None) == ""
    assert title_progress({"progress": 0.0, "eta": None}) == ""
    assert title_progress({"progress": 0.456, "eta": 12.7}) == "46% ETA: 12s"
    assert title_progress({"progress": 0.5, "eta": 75.2}) == "50% ETA: 01:15"
    assert title_progress({"progress": 0.05, "eta": 3700.0}) == "5% ETA: 01:01:40"


def test_the_page_carries_the_title_progressbar_sound_and_wake_lock_options(engine, tmp_path, monkeypatch):
    import gradio as gr

    from modules import paths_internal
    from modules.ui.app import page_script
    from modules.ui.settings import SettingsTab
    from modules.ui.txt2img import Txt2ImgTab

    opts = json.loads(SettingsTab(engine.options).options_json())  # the page's window.opts
    assert {k: opts[k] for k in NEW} == {k: default for k, (default, _) in NEW.items()}
    script = page_script()
    for needle in ("show_progress_in_title", "prevent_screen_sleep_during_generation", "navigator.wakeLock",
                   "notification_audio", "notification_volume", "/file=notification.mp3", "easelProgressTitle"):
        assert needle in script, needle
    # the sound only when the install has notification.mp3 as the page is built (A1111: after Reload UI)
    assert script.endswith(", false)")
    (tmp_path / "notification.mp3").write_bytes(b"ID3")
    monkeypatch.setattr(paths_internal, "script_path", str(tmp_path))
    assert page_script().endswith(", true)")

    def progress_shown() -> set:
        """How the Generate job shows its progress over the gallery (Gradio's show_progress)."""
        with gr.Blocks() as demo:
            tab = Txt2ImgTab(engine)
            tab.build()
        return {fn.show_progress for fn in demo.fns.values() if any(c is tab.gallery for c in fn.show_progress_on or [])}

    assert progress_shown() == {"full"}
    engine.options.set("show_progressbar", False)
    try:
        assert progress_shown() == {"hidden"}  # (read when the page is built)
    finally:
        engine.options.set("show_progressbar", True)


def test_the_tab_title_shows_the_jobs_progress_while_it_runs(server, chromium):
    """In a real browser: "[NN% ETA: ...] Easel" while a long job runs, the plain title with
    show_progress_in_title off and after the job."""
    from playwright.sync_api import expect

    from tests.test_ui_browser import JOB_TIMEOUT_MS, expect_idle, fill_job

    assert server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"}).status_code == 200
    context = chromium.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(60_000)  # (a loaded CI machine)
    try:
        page = context.new_page()
        page.goto(server.url)
        expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^tiny-sd1"))
        base = page.title()
        # long enough that a loaded CI machine is still running it after both title checks, of light
        # steps (a 512 px job there kept the server too busy to answer the page's ticks)
        fill_job(page, "a title in progress", steps=150, size=64, batch_count=100)  # (minutes)
        page.locator("#txt2img_generate").click()
        page.wait_for_function("(base) => /^\\[\\d+%( ETA: \\S+)?\\] /.test(document.title) "
                               "&& document.title.endsWith(base)", arg=base, timeout=JOB_TIMEOUT_MS)
        # the progress bar over the gallery, with its ETA
        progress = page.locator("#txt2img_gallery").get_by_text(re.compile(r"Batch \d+/100, Step \d+/150, ETA \d+"))
        expect(progress.first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        # the option off (as Settings' Apply sends it to window.opts): the next tick leaves the title alone.
        # Saved on the server too: the page may refresh window.opts from the server while the job runs (a
        # quicksetting's late change event on a loaded machine), which must not bring the old value back
        assert server.post("/sdapi/v1/options", json={"show_progress_in_title": False}).status_code == 200
        page.evaluate("() => { window.opts.show_progress_in_title = false; }")
        try:  # (the page's once-a-second tick; a loaded CI machine has starved the page's renderer for a minute)
            page.wait_for_function("(base) => document.title === base", arg=base, timeout=JOB_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 - the page's state, for the next investigation
            state = page.evaluate("() => ({title: document.title, visibility: document.visibilityState, "
                                  "option: (window.opts || {}).show_progress_in_title, now: Date.now()})")
            raise AssertionError(f"the title stayed: {state}") from exc
        # the plain title came from the option, not from the job's end
        assert server.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]["job_count"] > 0
        server.post("/sdapi/v1/options", json={"show_progress_in_title": True})
        page.evaluate("() => { window.opts.show_progress_in_title = true; }")
        # interrupt through the API: no race with the Interrupt button hiding when the job ends by itself
        server.interrupt_and_wait_idle()
        expect_idle(page)  # (the page hears of the job's end a while later on a loaded CI machine)
        page.wait_for_function("(base) => document.title === base", arg=base)
    finally:
        context.close()
        server.post("/sdapi/v1/options", json={"show_progress_in_title": True})
        server.interrupt_and_wait_idle()  # (a failure above leaves the long job running)
