"""A1111's full page image viewer (modules/ui/lightbox.js), in a real browser against the shared
server: two tiny pictures are made, one is selected in txt2img's gallery and its big picture
clicked: #lightboxModal shows that picture in #modalImage, → shows the next one (the gallery's
selection follows), ← goes back, the zoom follows js_modal_lightbox_initially_zoomed (and ⤡
toggles it), a gamepad's stick steps through the pictures with js_modal_lightbox_gamepad, Escape
closes; with js_modal_lightbox off the click is Gradio's own and no viewer opens."""

from __future__ import annotations

import pytest

from tests.test_ui_browser import browser, fill_job, page  # noqa: F401
from tests.test_ui_img2img_browser import generate_and_wait

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402

VIEWER_OPTIONS = {"js_modal_lightbox": True, "js_modal_lightbox_initially_zoomed": True,
                  "js_modal_lightbox_gamepad": False, "js_modal_lightbox_gamepad_repeat": 250}

# a stand-in gamepad (Chromium has no way to plug one in): navigator.getGamepads() gives its
# stick's x axis from window.easelTestStick, and the page hears it connect
FAKE_GAMEPAD = """() => {
    window.easelTestStick = 0;
    const pad = {index: 0, id: "test pad", connected: true, buttons: [],
                 get axes() { return [window.easelTestStick, 0]; }};
    navigator.getGamepads = () => [pad];
    const event = new Event("gamepadconnected");
    Object.defineProperty(event, "gamepad", {value: pad});
    window.dispatchEvent(event);
}"""


def set_options(server, page=None, **values) -> None:
    """Sets the options through the API; with `page`, that page gets them as it gets the ones
    applied in Settings (window.opts through easelOptionsChanged, modules/ui/settings.py)."""
    r = server.post("/sdapi/v1/options", json=values)
    assert r.status_code == 200, r.text
    if page is not None:
        page.evaluate("async () => easelOptionsChanged(JSON.stringify("
                      "await (await fetch('/sdapi/v1/options')).json()))")
        for key, value in values.items():
            assert page.evaluate(f"() => window.opts[{key!r}]") == value


@pytest.fixture
def viewer_options(server):
    """(before `page`: the page is opened with them)"""
    set_options(server, **VIEWER_OPTIONS)
    yield
    set_options(server, **{**VIEWER_OPTIONS, "js_modal_lightbox_gamepad": False})


def two_pictures(page) -> list[str]:
    """Generates 2 pictures (batch count 2: the grid and 2 pictures); their src in the gallery."""
    fill_job(page, "a lightbox square", steps=1, batch_count=2)
    generate_and_wait(page, "txt2img")
    thumbs = page.locator("#txt2img_gallery .thumbnail-item")
    expect(thumbs).to_have_count(3)
    return [thumbs.nth(i).locator("img").get_attribute("src") for i in range(3)]


def open_preview(page, index: int):
    """Selects the gallery's entry (Gradio's preview opens): its big picture."""
    page.locator("#txt2img_gallery .thumbnail-item").nth(index).click()
    big = page.locator("#txt2img_gallery .media-button img")
    expect(big).to_be_visible()
    return big


def test_the_viewer_opens_steps_zooms_and_closes_and_is_off_when_the_option_is(viewer_options, page, server):
    sources = two_pictures(page)
    modal, image = page.locator("#lightboxModal"), page.locator("#modalImage")
    expect(modal).to_be_hidden()
    expect(page.locator("#modal_save")).to_have_count(1)  # A1111's ids and controls are on the page
    expect(modal.locator(".modalZoom, .modalTileImage, .modalClose, .modalPrev, .modalNext")).to_have_count(5)

    big = open_preview(page, 1)
    expect(big).to_have_attribute("src", sources[1])
    big.click()
    expect(modal).to_be_visible()
    expect(image).to_have_attribute("src", sources[1])
    expect(image).to_have_class("modalImageFullscreen")  # js_modal_lightbox_initially_zoomed
    expect(page.locator("#modal_save")).to_be_visible()  # (txt2img has a 💾)

    page.keyboard.press("ArrowRight")
    expect(image).to_have_attribute("src", sources[2])
    selected = page.locator("#txt2img_gallery .thumbnails .thumbnail-item.selected img")
    expect(selected).to_have_attribute("src", sources[2])  # the gallery's selection followed
    page.keyboard.press("ArrowRight")  # past the last: round to the first (the grid)
    expect(image).to_have_attribute("src", sources[0])
    page.keyboard.press("ArrowLeft")
    expect(image).to_have_attribute("src", sources[2])
    modal.locator(".modalPrev").click()
    expect(image).to_have_attribute("src", sources[1])

    # a gamepad's stick (js_modal_lightbox_gamepad) steps once, then again only after the repeat
    # period while it is held, at once when released and moved again
    page.evaluate(FAKE_GAMEPAD)
    page.evaluate("() => { window.easelTestStick = 0.9; }")
    page.wait_for_timeout(400)
    expect(image).to_have_attribute("src", sources[1])  # the option is off
    set_options(server, page, js_modal_lightbox_gamepad=True, js_modal_lightbox_gamepad_repeat=5000)
    expect(image).to_have_attribute("src", sources[2])
    page.wait_for_timeout(700)
    expect(image).to_have_attribute("src", sources[2])  # held: no repeat before 5000 ms
    page.evaluate("() => { window.easelTestStick = 0; }")
    page.wait_for_timeout(100)
    page.evaluate("() => { window.easelTestStick = -0.9; }")
    expect(image).to_have_attribute("src", sources[1])
    page.evaluate("() => { window.easelTestStick = 0; }")

    modal.locator(".modalZoom").click()  # ⤡ toggles the zoom
    expect(image).not_to_have_class("modalImageFullscreen")
    expect(modal).to_be_visible()
    page.keyboard.press("Escape")
    expect(modal).to_be_hidden()
    expect(big).to_be_visible()  # Gradio's preview stays: Escape was the viewer's

    # not zoomed at the start; the close button
    set_options(server, page, js_modal_lightbox_initially_zoomed=False)
    big.click()
    expect(modal).to_be_visible()
    expect(image).to_have_attribute("src", sources[1])
    expect(image).not_to_have_class("modalImageFullscreen")
    modal.locator(".modalClose").click()
    expect(modal).to_be_hidden()

    # the viewer off: the click is Gradio's own (on the picture's left half: the previous entry)
    set_options(server, page, js_modal_lightbox=False)
    big.click(position={"x": 2, "y": 2})
    expect(big).to_have_attribute("src", sources[0])
    page.wait_for_timeout(300)
    expect(modal).to_be_hidden()
