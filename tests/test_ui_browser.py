"""The Gradio UI in a real browser (Chromium through Playwright) against the shared test server.

What a user does on the txt2img tab: type prompts, set sizes and steps through the controls,
Generate, watch the progress, get the gallery, the info and the saved file; Interrupt a long job;
pick checkpoints; use the seed buttons; see errors as messages while the page keeps working.
Every wait is on a condition of the page, never a fixed sleep (but the idle page watched for 3 s). Jobs are 64x64 with 1-2 steps,
except the one that is interrupted.
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.browser import launch_browser

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

TIMEOUT_MS = 60_000  # generous for a loaded CI machine; conditions usually hold in well under a second
JOB_TIMEOUT_MS = 120_000


# ------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def browser():
    expect.set_options(timeout=TIMEOUT_MS)  # Playwright's assertions wait 5 s by default
    try:
        with launch_browser() as b:
            yield b
    finally:
        expect.set_options(timeout=5_000)


@pytest.fixture
def page(browser, server) -> Page:
    # every test starts from the tiny SD1 (other test modules switch the shared server's model)
    r = requests.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"},
                      timeout=120)
    assert r.status_code == 200, r.text
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(server.url)
    # ready once the page's load event has shown the loaded checkpoint in the picker and its start-up
    # (each tab shown once, then the options given: webui_globals.js) is over, as a user's first click
    # lands (a file picked during the start-up's tab round on a loaded machine could miss its editor)
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^tiny-sd1\.safetensors \["))
    expect(page.locator("#easel-options-applied")).to_be_attached()
    yield page
    context.close()


def set_number(page: Page, elem_id: str, value, *, on_step: bool = True) -> None:
    """Type into a slider's or number box's field, as a user would, and check it took
    (the range input follows the typed value when the value lies on the slider's step)."""
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")
    expect(field).to_have_value(str(value))
    slider = page.locator(f"#{elem_id} input[type=range]")
    if on_step and slider.count():
        expect(slider).to_have_value(str(value))


def fill_job(page: Page, prompt: str, *, steps: int, size: int = 64, negative: str = "", batch_count: int = 1):
    page.locator("#txt2img_prompt textarea").fill(prompt)
    page.locator("#txt2img_neg_prompt textarea").fill(negative)
    set_number(page, "txt2img_steps", steps)
    set_number(page, "txt2img_width", size)
    set_number(page, "txt2img_height", size)
    set_number(page, "txt2img_batch_count", batch_count)


def expect_idle(page: Page, timeout: int = JOB_TIMEOUT_MS) -> None:
    expect(page.locator("#txt2img_generate")).to_be_visible(timeout=timeout)
    expect(page.locator("#txt2img_interrupt")).to_be_hidden()
    expect(page.locator("#txt2img_skip")).to_be_hidden()


def expect_controls(page: Page, tab: str, **expected) -> None:
    """The tab's controls show these values (keys: prompt, negative, steps, cfg, seed, width,
    height, sampler, scheduler, denoising)."""
    where = {"prompt": "prompt textarea", "negative": "neg_prompt textarea", "steps": "steps input[type=number]",
             "cfg": "cfg_scale input[type=number]", "seed": "seed input", "width": "width input[type=number]",
             "height": "height input[type=number]", "sampler": "sampling input", "scheduler": "scheduler input",
             "denoising": "denoising_strength input[type=number]"}
    for name, value in expected.items():
        expect(page.locator(f"#{tab}_{where[name]}")).to_have_value(str(value))


def info_text(page: Page) -> str:
    return page.locator("#html_info_txt2img").inner_text()


def seed_in(info: str) -> int:
    match = re.search(r"\bSeed: (\d+)", info)
    assert match, f"no seed in the info: {info!r}"
    return int(match.group(1))


def saved_images(server) -> list[Path]:
    return sorted((Path(server.data_dir) / "outputs" / "txt2img-images").glob("*/*.png"))


def open_checkpoint_list(page: Page):
    """Click the picker open (it opens on focus, so a focused one is blurred first)."""
    field = page.locator("#setting_sd_model_checkpoint input")
    field.blur()
    field.click()
    options = page.locator("#setting_sd_model_checkpoint [role=option]")
    expect(options.first).to_be_visible()
    return options


def choose_checkpoint(page: Page, name: str) -> None:
    open_checkpoint_list(page).filter(has_text=name).first.click()


# -------------------------------------------------------------------------------------- tests

def test_generate_shows_gallery_info_and_saves_the_png(page, server):
    before = set(saved_images(server))
    fill_job(page, "a red cube on a table", negative="blurry", steps=2)
    page.locator("#txt2img_generate").click()

    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect_idle(page)
    info = info_text(page)
    assert "a red cube on a table" in info
    assert "Negative prompt: blurry" in info
    assert "Steps: 2," in info and "Size: 64x64" in info
    seed = seed_in(info)

    new = sorted(set(saved_images(server)) - before)
    assert len(new) == 1, new
    path = new[0]
    assert path.parent.name == datetime.date.today().strftime("%Y-%m-%d")
    assert re.fullmatch(rf"\d{{5}}-{seed}\.png", path.name), path.name
    from PIL import Image

    with Image.open(path) as png:
        assert png.size == (64, 64)
        assert f"Seed: {seed}," in png.info["parameters"]

    # recycle puts the last job's seed back, the dice makes it random again
    page.locator("#txt2img_reuse_seed").click()
    expect(page.locator("#txt2img_seed input")).to_have_value(str(seed))
    page.locator("#txt2img_random_seed").click()
    expect(page.locator("#txt2img_seed input")).to_have_value("-1")


PASTED = ("a red circle, (glossy:1.2)\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, Schedule type: Karras, "
          "CFG scale: 4.5, Seed: 1234, Size: 64x128, Denoising strength: 0.4, Hires upscale: 1.5, "
          "Hires steps: 1, Hires upscaler: Latent (nearest), Sampler typo: x")


def test_paste_puts_an_infotext_into_the_controls_and_generates_it(page, server):
    page.locator("#txt2img_prompt textarea").fill(PASTED)
    page.locator("#txt2img_paste").click()
    expect_controls(page, "txt2img", prompt="a red circle, (glossy:1.2)", negative="blurry", steps=3, cfg=4.5,
                    seed=1234, width=64, height=128, sampler="Euler a", scheduler="Karras")
    expect(page.locator("#txt2img_hr_scale input[type=number]")).to_have_value("1.5")  # the accordion opened
    expect(page.locator("#txt2img_hr_scale input[type=number]")).to_be_visible()

    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect_idle(page)
    info = info_text(page)
    for part in ("a red circle, (glossy:1.2)", "Negative prompt: blurry", "Steps: 3,", "Sampler: Euler a,",
                 "Schedule type: Karras,", "CFG scale: 4.5,", "Seed: 1234,", "Size: 64x128,",
                 "Denoising strength: 0.4,", "Hires upscale: 1.5,", "Hires steps: 1,", "Hires upscaler: Latent (nearest)"):
        assert part in info, (part, info)

    # an empty prompt box: the page's last generation goes back into the controls
    page.locator("#txt2img_prompt textarea").fill("")
    set_number(page, "txt2img_steps", 2)
    set_number(page, "txt2img_cfg_scale", 7)
    page.locator("#txt2img_paste").click()
    expect_controls(page, "txt2img", prompt="a red circle, (glossy:1.2)", steps=3, cfg=4.5)

    # plain text is a prompt; the controls it does not mention keep their values
    page.locator("#txt2img_prompt textarea").fill("just words")
    page.locator("#txt2img_paste").click()
    expect_controls(page, "txt2img", prompt="just words", steps=3)


def test_interrupt_ends_a_long_job_early(page, server):
    server.interrupt_and_wait_idle()  # the job below is the only one
    before = set(saved_images(server))
    # a long job of light steps (100 pictures of 64 px, 150 steps each: minutes; A1111's
    # interrupt_after_current off, so the button stops the picture that runs): the server stays
    # responsive on a loaded CI machine (a 512 px job there kept it too busy to answer the page), and
    # the click lands long before the end
    assert server.post("/sdapi/v1/options", json={"interrupt_after_current": False}).status_code == 200
    try:
        fill_job(page, "a very long job", steps=150, size=64, batch_count=100)
        page.locator("#txt2img_generate").click()

        expect(page.locator("#txt2img_interrupt")).to_be_visible()
        expect(page.locator("#txt2img_skip")).to_be_visible()
        expect(page.locator("#txt2img_generate")).to_be_hidden()
        # once sampling has begun (the server says so; the progress bar's text is checked in
        # test_the_tab_title_shows_the_jobs_progress_while_it_runs), the click comes at once
        deadline = time.time() + JOB_TIMEOUT_MS / 1000
        while True:
            state = requests.get(server.url + "/sdapi/v1/progress?skip_current_image=true", timeout=30).json()["state"]
            if state["job_count"] > 0 and state["sampling_step"] >= 1:
                break
            assert time.time() < deadline, state
            time.sleep(0.2)
        page.locator("#txt2img_interrupt").dispatch_event("click")  # (re-rendered while the job runs: a pointer click can miss it)
        expect_idle(page, timeout=60_000)  # the other pictures would take minutes
        info = info_text(page)
        assert "Interrupted: the unfinished pictures were not saved." in info and "Steps: 150" in info
        # the pictures finished before the click are saved (A1111's too), the one it stopped is not
        finished = set(saved_images(server)) - before
        assert len(finished) < 100
        # the server is free again: the progress endpoint shows no job
        assert requests.get(server.url + "/sdapi/v1/progress", timeout=30).json()["state"]["job"] == ""
    finally:
        server.post("/sdapi/v1/options", json={"interrupt_after_current": True})
        server.interrupt_and_wait_idle()


def test_an_idle_page_sends_nothing_and_no_trigger_has_two_always_last_listeners(page, server):
    """Regression: the token counters had two `always_last` listeners on the steps slider and on
    the styles dropdown; Gradio re-dispatches a whole trigger when a queued always_last call ends,
    so the two re-queued each other forever: 4 requests a second from every open page and a
    main thread that never rested (every click took seconds)."""
    posts = []
    page.on("request", lambda r: posts.append((r.post_data or r.url)[:200]) if "/gradio_api/" in r.url else None)
    # the page's load events may still be arriving on a loaded machine; the loop never went quiet
    quiet = False
    for _ in range(15):
        seen = len(posts)
        page.wait_for_timeout(2000)
        if len(posts) == seen:
            quiet = True
            break
    assert quiet, posts[-6:]
    # the page still counts: steps and styles reach both counters through one listener
    page.locator("#txt2img_prompt textarea").fill("[cat:dog:0.5]")
    expect(page.locator("#txt2img_token_counter")).to_contain_text("/75")

    config = requests.get(server.url + "/config", timeout=30).json()
    listeners: dict[tuple, int] = {}
    for dep in config["dependencies"]:
        if dep.get("trigger_mode") == "always_last":
            for target in dep["targets"]:
                listeners[tuple(target)] = listeners.get(tuple(target), 0) + 1
    assert [t for t, n in listeners.items() if n > 1] == []


A1111_IDS = ["tab_txt2img", "setting_sd_model_checkpoint", "txt2img_prompt", "txt2img_neg_prompt", "txt2img_generate",
             "txt2img_gallery", "html_info_txt2img", "txt2img_steps", "txt2img_cfg_scale", "txt2img_width",
             "txt2img_height", "txt2img_seed", "txt2img_sampling", "txt2img_scheduler", "txt2img_batch_count",
             "txt2img_batch_size", "txt2img_random_seed", "txt2img_reuse_seed"]  # + interrupt/skip, shown while busy


def test_checkpoint_picker_lists_checkpoints_and_sets_native_size(page, server, tiny_checkpoints):
    for elem_id in A1111_IDS:
        expect(page.locator(f"#{elem_id}")).to_have_count(1)
    expect(page.locator("#txt2img_distilled_cfg_scale")).to_be_hidden()  # Flux dev's only (tests/test_flux.py)
    expect(page.locator("#txt2img_cfg_scale input[type=number]")).to_have_value("7")

    names = open_checkpoint_list(page).all_inner_texts()
    for path in tiny_checkpoints.paths.values():
        assert any(path.name in n for n in names), (path.name, names)
    page.keyboard.press("Escape")

    picker = page.locator("#setting_sd_model_checkpoint input")
    width = page.locator("#txt2img_width input[type=number]")
    height = page.locator("#txt2img_height input[type=number]")
    expect(width).to_have_value("512")
    try:
        choose_checkpoint(page, "tiny-sdxl.safetensors")
        expect(picker).to_have_value(re.compile(r"^tiny-sdxl\.safetensors \["))
        expect(width).to_have_value("1024")
        expect(height).to_have_value("1024")

        # picked right after the SDXL load's outputs arrived: a pick made while an event is still
        # pending must not be dropped (Gradio's default trigger mode drops it)
        choose_checkpoint(page, "tiny-sd1.safetensors")
        expect(picker).to_have_value(re.compile(r"^tiny-sd1\.safetensors \["))
        expect(width).to_have_value("512")
    finally:  # leave the shared server on SD1 even when the page failed
        requests.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"},
                      timeout=120)
    expect(height).to_have_value("512")


def test_refiner_accordion_switches_to_the_refiner(page, server, tiny_checkpoints):
    """A1111's Refiner accordion: open it, pick a checkpoint and the switch point, generate."""
    refiner = Path(getattr(tiny_checkpoints, "sdxl_refiner", None) or tiny_checkpoints.sdxl)
    try:
        r = requests.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sdxl.safetensors"},
                          timeout=120)
        assert r.status_code == 200, r.text
        page.reload()  # the page's load event shows the SDXL base and its native size
        expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^tiny-sdxl\.safetensors \["))
        expect(page.locator("#txt2img_height input[type=number]")).to_have_value("1024")
        expect(page.locator("#txt2img_checkpoint")).to_be_hidden()  # closed: off
        page.locator("#txt2img_enable").get_by_text("Refiner").first.click()
        field = page.locator("#txt2img_checkpoint input")
        field.click()
        page.locator("#txt2img_checkpoint [role=option]").filter(has_text=refiner.name).first.click()
        expect(field).to_have_value(re.compile("^" + re.escape(refiner.name)))
        set_number(page, "txt2img_switch_at", 0.5)
        fill_job(page, "a red cube", steps=2)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect_idle(page)
        info = info_text(page)
        assert re.search(rf"Refiner: {re.escape(refiner.stem)} \[[0-9a-f]{{10}}\]", info), info
        assert "Refiner switch at: 0.5" in info, info

        # with hires fix too: the refiner runs in the second pass (A1111's hires_fix_refiner_pass
        # default), once the timestep is past the switch point (4 hires steps at denoising 0.7 run
        # 3, the last ones below t = 500), and the picture comes at the upscaled size
        page.locator("#txt2img_hr").get_by_text("Hires. fix").click()
        set_number(page, "txt2img_hires_steps", 4)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#html_info_txt2img")).to_contain_text("Hires upscale: 2", timeout=JOB_TIMEOUT_MS)
        expect_idle(page)
        info = info_text(page)
        assert re.search(rf"Refiner: {re.escape(refiner.stem)} \[[0-9a-f]{{10}}\]", info), info
        assert "Refiner switch at: 0.5" in info and "Size: 64x64" in info, info
        with Image.open(saved_images(server)[-1]) as png:
            assert png.size == (128, 128) and "Hires upscale: 2" in png.info["parameters"]
        page.locator("#txt2img_hr").get_by_text("Hires. fix").click()  # off again

        # closed again, then the last generation pasted back: open, with its switch point
        set_number(page, "txt2img_switch_at", 0.3)
        page.locator("#txt2img_enable").get_by_text("Refiner").first.click()
        expect(page.locator("#txt2img_switch_at")).to_be_hidden()
        page.locator("#txt2img_prompt textarea").fill("")
        page.locator("#txt2img_paste").click()
        expect(page.locator("#txt2img_switch_at input[type=number]")).to_have_value("0.5")
        expect(page.locator("#txt2img_switch_at")).to_be_visible()
        expect(field).to_have_value(re.compile("^" + re.escape(refiner.name)))
    finally:  # leave the shared server on SD1 even when the page failed
        requests.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"},
                      timeout=120)


def test_invalid_size_is_a_message_and_the_page_keeps_working(page, server):
    fill_job(page, "after an error", steps=1)
    set_number(page, "txt2img_width", 100, on_step=False)  # in the slider's range, not a multiple of 8
    page.locator("#txt2img_generate").click()

    error = page.locator("#html_info_txt2img .error")
    expect(error).to_contain_text("width")
    expect(error).to_contain_text("multiple of 8")
    expect(page.locator(".toast-body").filter(has_text="multiple of 8").first).to_be_visible()
    expect_idle(page)

    set_number(page, "txt2img_width", 64)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#html_info_txt2img")).to_contain_text("Steps: 1,")
    expect(error).to_have_count(0)
    expect_idle(page)


@pytest.fixture(scope="module")
def server_with_broken_checkpoint(tiny_checkpoints, tmp_path_factory):
    """A server of its own (the shared one's folder stays clean): the tiny SD1 and a corrupt file."""
    import os

    from tests.server import run_server

    ckpts = tmp_path_factory.mktemp("ui-ckpts")
    os.link(tiny_checkpoints.sd1, ckpts / "tiny-sd1.safetensors")
    (ckpts / "broken.safetensors").write_bytes(b"\xff" * 64 + b"not a checkpoint")
    data = tmp_path_factory.mktemp("ui-data")
    with run_server(data, ckpts, "--ckpt", str(ckpts / "tiny-sd1.safetensors"), ready_path="/") as srv:
        yield srv


def test_checkpoint_that_fails_to_load_is_a_message_and_the_page_keeps_working(browser, server_with_broken_checkpoint):
    srv = server_with_broken_checkpoint
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto(srv.url)
        picker = page.locator("#setting_sd_model_checkpoint input")
        expect(picker).to_have_value(re.compile(r"^tiny-sd1\.safetensors \["))

        choose_checkpoint(page, "broken.safetensors")
        expect(page.locator(".toast-body").filter(has_text="Could not load broken.safetensors").first).to_be_visible()
        expect(picker).to_have_value(re.compile(r"^tiny-sd1\.safetensors \["))  # the old model stays

        fill_job(page, "still working", steps=1)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#html_info_txt2img")).to_contain_text("Model: tiny-sd1")
        expect_idle(page)
    finally:
        context.close()
