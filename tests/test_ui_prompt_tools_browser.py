"""The prompt tools in a real browser (Chromium through Playwright) on the shared test server:
the token counters, Ctrl+↑/↓ weights, Alt+←/→ moves, 🗑️ clear prompt, Generate forever and the
icon buttons that render without an emoji font. Jobs are 64x64 with 1 step.
"""

from __future__ import annotations

import io
import re
import time

import pytest
import requests

from tests.test_ui_browser import (JOB_TIMEOUT_MS, browser, expect_idle, fill_job, page,  # noqa: F401 - fixtures
                                   saved_images, set_number)

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402


def test_token_counter_turns_to_the_next_chunk_past_75_tokens(page):
    counter = page.locator("#txt2img_token_counter")
    box = page.locator("#txt2img_prompt textarea")
    box.fill("cat " * 70)
    expect(counter).to_have_text("70/75")
    box.press_sequentially("cat " * 10, delay=5)  # typed: the count follows the keys
    expect(counter).to_have_text("80/150")
    page.locator("#txt2img_neg_prompt textarea").fill("blurry, ugly")
    expect(page.locator("#txt2img_negative_token_counter")).to_have_text("3/75")  # blurry , ugly
    expect(page.locator("#img2img_token_counter")).to_have_count(1)


def test_ctrl_up_and_down_change_the_weight_of_the_word(page, server):
    box = page.locator("#txt2img_prompt textarea")
    box.fill("a cat sitting")
    box.evaluate("(el) => { el.focus(); el.setSelectionRange(3, 3); }")  # the cursor in "cat"
    box.press("Control+ArrowUp")
    expect(box).to_have_value("a (cat:1.1) sitting")
    box.press("Control+ArrowUp")
    expect(box).to_have_value("a (cat:1.2) sitting")
    box.press("Control+ArrowDown")
    box.press("Control+ArrowDown")
    expect(box).to_have_value("a cat sitting")
    box.evaluate("(el) => el.setSelectionRange(2, 13)")  # a selection: "cat sitting"
    box.press("Control+ArrowDown")
    expect(box).to_have_value("a (cat sitting:0.9)")
    box.fill("<lora:x:0.8>")  # an extra network's weight: steps of 0.05
    box.evaluate("(el) => el.setSelectionRange(3, 3)")
    box.press("Control+ArrowUp")
    expect(box).to_have_value("<lora:x:0.85>")

    # Alt+→ moves the part between commas under the cursor one place right (A1111's keyedit_move)
    box.fill("a cat, a dog, a bird")
    box.evaluate("(el) => el.setSelectionRange(9, 9)")  # in "a dog"
    box.press("Alt+ArrowRight")
    expect(box).to_have_value("a cat, a bird, a dog")
    assert box.evaluate("(el) => el.value.slice(el.selectionStart, el.selectionEnd)") == "a dog"

    # the step is the option keyedit_precision_attention, as the page has it (window.opts: given
    # here as the Settings tab gives a change, without a reload)
    options = server.url + "/sdapi/v1/options"
    assert requests.post(options, json={"keyedit_precision_attention": 0.2}, timeout=60).status_code == 200
    try:
        page.evaluate("(json) => window.easelOptionsChanged(json)", requests.get(options, timeout=60).text)
        assert page.evaluate("() => window.opts.keyedit_precision_attention") == 0.2
        box.fill("a cat sitting")
        box.evaluate("(el) => { el.focus(); el.setSelectionRange(3, 3); }")
        box.press("Control+ArrowUp")
        expect(box).to_have_value("a (cat:1.2) sitting")
    finally:
        requests.post(options, json={"keyedit_precision_attention": 0.1}, timeout=60)


def test_clear_prompt_empties_both_boxes_after_confirming(page):
    page.locator("#txt2img_prompt textarea").fill("a red cube")
    page.locator("#txt2img_neg_prompt textarea").fill("blurry")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#txt2img_clear_prompt").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("")
    expect(page.locator("#txt2img_neg_prompt textarea")).to_have_value("")
    expect(page.locator("#txt2img_token_counter")).to_have_text("0/75")


def test_generate_forever_repeats_until_cancelled(page, server):
    fill_job(page, "a blue sphere", steps=1)
    before = len(saved_images(server))
    page.locator("#txt2img_generate").click(button="right")
    page.get_by_role("menuitem", name="Generate forever", exact=True).click()
    deadline = time.time() + JOB_TIMEOUT_MS / 1000
    while len(saved_images(server)) < before + 3 and time.time() < deadline:
        page.wait_for_timeout(200)
    assert len(saved_images(server)) >= before + 3
    page.locator("#txt2img_generate:visible, #txt2img_interrupt:visible").first.click(button="right")
    page.get_by_role("menuitem", name="Cancel generate forever").click()
    expect_idle(page)
    done = len(saved_images(server))
    page.wait_for_timeout(1500)  # nothing starts again
    assert len(saved_images(server)) == done
    assert page.evaluate("() => window.easelGenerateForever.running('txt2img')") is False


def test_generate_forever_stops_on_interrupt(page, server):
    server.interrupt_and_wait_idle()  # the job below is the only one
    # a long job of light steps (as the interrupt test's: minutes of work, the server answering the page),
    # A1111's interrupt_after_current off so that the click stops the picture that runs
    assert server.post("/sdapi/v1/options", json={"interrupt_after_current": False}).status_code == 200
    try:
        fill_job(page, "a long job", steps=150, batch_count=100)
        before = len(saved_images(server))
        page.locator("#txt2img_generate").click(button="right")
        page.get_by_role("menuitem", name="Generate forever", exact=True).click()
        deadline = time.time() + JOB_TIMEOUT_MS / 1000
        while True:  # the click comes once the server samples (the page may learn of the job late)
            state = requests.get(server.url + "/sdapi/v1/progress?skip_current_image=true", timeout=30).json()["state"]
            if state["job_count"] > 0 and state["sampling_step"] >= 1:
                break
            assert time.time() < deadline, state
            time.sleep(0.2)
        assert page.evaluate("() => window.easelGenerateForever.running('txt2img')") is True
        interrupt = page.locator("#txt2img_interrupt")
        expect(interrupt).to_be_visible(timeout=JOB_TIMEOUT_MS)
        interrupt.dispatch_event("click")  # (re-rendered while the job runs: a pointer click can miss it)
        expect_idle(page)
        assert page.evaluate("() => window.easelGenerateForever.running('txt2img')") is False
        done = len(saved_images(server))
        assert done < before + 100, "the job was interrupted before its 100 pictures"
        page.wait_for_timeout(2000)  # no job starts again
        expect(page.locator("#txt2img_interrupt")).to_be_hidden()
        assert len(saved_images(server)) == done
        assert requests.get(server.url + "/sdapi/v1/progress", timeout=30).json()["state"]["job_count"] == 0
        assert page.evaluate("() => window.easelGenerateForever.running('txt2img')") is False
    finally:
        server.post("/sdapi/v1/options", json={"interrupt_after_current": True})
        server.interrupt_and_wait_idle()


def test_a1111_token_counter_globals_recount_through_the_hidden_buttons(page):
    """A1111's token-counters.js contract, for extensions that change a prompt box from their own
    script: update_token_counter('<tab>_token_button') or recalculatePromptTokens('<tab>_prompt')
    clicks the hidden `<tab>_token_button`, which counts the box again."""
    for elem_id in ("txt2img_token_button", "txt2img_negative_token_button", "img2img_token_button",
                    "img2img_negative_token_button"):
        expect(page.locator(f"#{elem_id}")).to_be_attached()
        expect(page.locator(f"#{elem_id}")).to_be_hidden()
    counter = page.locator("#txt2img_token_counter")
    page.locator("#txt2img_prompt textarea").fill("cat " * 80)
    page.locator("#txt2img_neg_prompt textarea").fill("blurry")
    expect(counter).to_have_text("80/150")
    expect(page.locator("#txt2img_negative_token_counter")).to_have_text("1/75")
    page.wait_for_timeout(500)  # the typing's own counts are over

    def body(response) -> str:
        try:
            return response.text() or ""
        except Exception:  # noqa: BLE001 - a response without a body (a stream, a redirect)
            return ""

    def recount(call: str, shown: str) -> None:
        """`call` makes the page ask the server for a count, and the answer is `shown`."""
        with page.expect_response(lambda r: r.request.method == "POST" and shown in body(r),
                                  timeout=JOB_TIMEOUT_MS):
            page.evaluate(call)

    recount("() => update_token_counter('txt2img_token_button')", "80/150")
    recount("() => update_token_counter('txt2img_negative_token_button')", "1/75")
    recount("() => recalculatePromptTokens('txt2img_prompt')", "80/150")
    page.evaluate("() => update_token_counter('no_such_button')")  # an id A1111 does not know: nothing
    # the functions A1111's Gradio events call as `_js`: they recount and pass their arguments on
    assert page.evaluate("() => update_txt2img_tokens('x', 'y')") == "x"  # two arguments: the first
    assert page.evaluate("() => recalculate_prompts_txt2img('a', 'b', 'c')") == ["a", "b", "c"]
    for name in ("update_img2img_tokens", "recalculate_prompts_img2img", "promptTokenCountUpdateFunctions"):
        assert page.evaluate(f"() => typeof {name}") != "undefined", name
    expect(counter).to_have_text("80/150")


def test_generate_forever_stops_on_a_failing_job_and_keeps_its_message(page, server):
    fill_job(page, "never made", steps=1)
    set_number(page, "txt2img_width", 100, on_step=False)  # not a multiple of 8: every job fails
    before = len(saved_images(server))
    page.locator("#txt2img_generate").click(button="right")
    page.get_by_role("menuitem", name="Generate forever", exact=True).click()
    page.wait_for_function("() => !window.easelGenerateForever.running('txt2img')")
    expect(page.locator("#html_info_txt2img .error")).to_contain_text("multiple of 8")
    expect_idle(page)
    assert len(saved_images(server)) == before


def test_icon_buttons_draw_their_glyph_without_an_emoji_font(page):
    from PIL import Image

    button = page.locator("#txt2img_random_seed")
    expect(button).to_have_attribute("data-easel-icon", "dice")
    assert button.get_attribute("title")  # A1111's tooltip stays
    box = button.bounding_box()
    assert box and box["width"] > 10 and box["height"] > 10
    glyph = button.evaluate("(el) => { const s = getComputedStyle(el, '::before');"
                            " return [s.maskImage || s.webkitMaskImage, s.width]; }")
    assert "data:image/svg+xml" in glyph[0] and float(glyph[1].rstrip("px")) > 0
    picture = Image.open(io.BytesIO(button.screenshot())).convert("L")
    low, high = picture.getextrema()
    assert high - low > 60, "the button shows no glyph"
    for elem_id in ("txt2img_clear_prompt", "txt2img_style_apply", "refresh_sd_model_checkpoint", "txt2img_paste"):
        expect(page.locator(f"#{elem_id}")).to_have_attribute("data-easel-icon", re.compile(".+"))



def test_token_count_runs_the_before_token_counter_callbacks_and_cuts_extra_networks():
    from types import SimpleNamespace

    from modules import script_callbacks
    from modules.ui import prompt_tools

    seen = []

    class Conditioner:
        def __init__(self, model):
            self.model = model

        def token_count(self, text, steps, is_positive):
            seen.append((text, steps, is_positive))
            return len(text.split()), 75

    model = SimpleNamespace(family=SimpleNamespace(conditioner=lambda m, **kw: Conditioner(m)))
    engine = SimpleNamespace(models=SimpleNamespace(model=model), embeddings=None, styles=None)

    def longer(params):
        params.prompt += " added words"
        params.steps = 3

    script_callbacks.on_before_token_counter(longer)
    try:
        assert prompt_tools.token_count(engine, "a <lora:x:1> cat", 20, [], is_positive=False) == (4, 75)
    finally:
        script_callbacks.remove_callbacks_for_function(longer)
        prompt_tools._conditioners.clear()
    assert seen == [("a  cat added words", 3, False)]
    assert prompt_tools.counter_html(80, 150) == "<span class='gr-box gr-text-input'>80/150</span>"
