"""A1111's Extra Networks settings, on the page: the folder buttons above the cards (hidden folders,
a name starting with ".", only with extra_networks_show_hidden_directories), the cards of models
in hidden folders (extra_networks_hidden_models: Always / When searched, i.e. with a search text
of 4 characters or more / Never), in a real browser against the shared server; and the tabs'
order (ui_extra_networks_tab_reorder, read as the page is built) in the page webui serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.test_ui_browser import browser, page  # noqa: F401
from tests.test_ui_extra_networks_browser import TENSORS

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402

VISIBLE, SECRET, STYLED = "easel_en_visible", "easel_en_secret", "easel_en_styled"
DEFAULTS = {"extra_networks_show_hidden_directories": True, "extra_networks_hidden_models": "When searched"}


def set_options(server, **values) -> None:
    r = server.post("/sdapi/v1/options", json=values)
    assert r.status_code == 200, r.text


@pytest.fixture
def lora_files(server):
    """A LoRA in models/Lora, one in models/Lora/.hidden (a hidden folder), one in models/Lora/styles."""
    from safetensors.torch import save_file

    root = Path(server.data_dir) / "models" / "Lora"
    files = [root / f"{VISIBLE}.safetensors", root / ".hidden" / f"{SECRET}.safetensors",
             root / "styles" / f"{STYLED}.safetensors"]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(TENSORS, str(file))
    set_options(server, **DEFAULTS)
    yield
    set_options(server, **DEFAULTS)
    for file in files:
        file.unlink(missing_ok=True)
    for folder in (root / ".hidden", root / "styles"):
        folder.rmdir()
    server.post("/sdapi/v1/refresh-loras")


def test_hidden_folders_and_their_models_follow_the_options(lora_files, page, server):
    page.locator("#txt2img_extra_networks_button").click()
    panel = page.locator("#txt2img_extra_networks")
    expect(panel).to_be_visible()

    def refresh_lora_page():
        page.locator("#txt2img_extra_refresh").click()
        page.locator("#txt2img_extra_tabs").get_by_role("tab", name="Lora", exact=True).click()
        expect(card(VISIBLE)).to_be_visible()

    def card(name):
        return page.locator("#txt2img_lora_cards .card").filter(has_text=name)

    def folder(path):
        return page.locator("#txt2img_lora_dirs button").filter(has_text=path)

    search = page.locator("#txt2img_extra_search input")

    # A1111's defaults: hidden folders shown as buttons, their models' cards when searched
    refresh_lora_page()
    folders = page.locator("#txt2img_lora_dirs button").all_inner_texts()
    assert [f.strip() for f in folders] == ["Lora", "Lora/.hidden", "Lora/styles"]
    expect(card(SECRET)).to_have_count(1)
    expect(card(SECRET)).to_be_hidden()
    expect(card(STYLED)).to_be_visible()
    search.fill("sec")  # 3 characters: not yet
    expect(card(SECRET)).to_be_hidden()
    search.fill("secr")  # 4: a search
    expect(card(SECRET)).to_be_visible()
    expect(card(VISIBLE)).to_be_hidden()  # (not found by it)
    search.fill("")
    expect(card(SECRET)).to_be_hidden()
    expect(card(VISIBLE)).to_be_visible()

    # a folder button searches for its folder; clicked again, the search is cleared
    folder("Lora/.hidden").click()
    expect(search).to_have_value("Lora/.hidden")
    expect(card(SECRET)).to_be_visible()
    expect(card(VISIBLE)).to_be_hidden()
    expect(card(STYLED)).to_be_hidden()
    folder("Lora/.hidden").click()
    expect(search).to_have_value("")
    expect(card(VISIBLE)).to_be_visible()
    expect(card(SECRET)).to_be_hidden()
    folder("Lora/styles").click()
    expect(card(STYLED)).to_be_visible()
    expect(card(VISIBLE)).to_be_hidden()
    folder("Lora/styles").click()

    # hidden folders off, their models never: neither is on the page, even when searched
    set_options(server, extra_networks_show_hidden_directories=False, extra_networks_hidden_models="Never")
    refresh_lora_page()
    folders = page.locator("#txt2img_lora_dirs button").all_inner_texts()
    assert [f.strip() for f in folders] == ["Lora", "Lora/styles"]
    expect(card(SECRET)).to_have_count(0)
    search.fill("secret")
    expect(card(SECRET)).to_have_count(0)
    search.fill("")

    # always: the card is there like any other
    set_options(server, extra_networks_hidden_models="Always")
    refresh_lora_page()
    expect(card(SECRET)).to_be_visible()


def test_the_order_of_the_tab_names_and_a1111s_matching():
    from modules.ui.extra_networks import ordered_pages

    def titles(order):
        return [title for _, title in ordered_pages(order)]

    usual = titles("")
    assert usual == ["Checkpoints", "Lora", "Textual Inversion"]  # (an empty part matches every tab)
    assert titles("lora, textual") == ["Lora", "Textual Inversion", "Checkpoints"]
    assert titles(" Textual Inversion ,CHECK") == ["Textual Inversion", "Checkpoints", "Lora"]
    assert titles("hypernetworks, inversion") == ["Textual Inversion", "Checkpoints", "Lora"]  # a part of a name
    assert titles("nothing") == usual


def test_the_served_page_has_the_extra_networks_tabs_in_the_chosen_order(tiny_checkpoints, tmp_path):
    from tests.test_gradio_theme import serve

    config = {"ui_extra_networks_tab_reorder": "lora, textual inversion"}
    with serve(tmp_path / "data", tiny_checkpoints.checkpoints_dir, config) as url:
        components = requests.get(url + "/config", timeout=60).json()["components"]
    for tab in ("txt2img", "img2img"):
        ids = [f"{tab}_{name}" for name in ("checkpoints", "lora", "textual_inversion")]
        found = [(c["props"].get("elem_id"), c["props"].get("label")) for c in components
                 if c["props"].get("elem_id") in ids]
        assert found == [(f"{tab}_lora", "Lora"), (f"{tab}_textual_inversion", "Textual Inversion"),
                         (f"{tab}_checkpoints", "Checkpoints")]
