"""The extra networks panel and the styles controls in a real browser (Chromium through Playwright)
against the shared test server (fixtures and helpers of tests/test_ui_browser.py).

What a user does: open the panel with 🎴, see the cards of the checkpoints, LoRA files and
embeddings (a preview picture where one sits beside the file), filter them with the search box,
click a Lora card to put `<lora:name:1>` in the prompt (and again to take it out), a Textual
Inversion card to add its name to the prompt box last used, a checkpoint card to load that
checkpoint; edit a Lora card's user metadata (✏️, the .json beside the file: its preferred weight,
activation and negative text go in with the card); pick a style and Generate, apply a style into
the prompt box, save the prompts as a style. Files are written into the shared server's folders (models/Lora, embeddings, styles.csv)
and found with Refresh.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.fixtures.tiny_embeddings import random_vectors, write_a1111_pt
from tests.test_ui_browser import (JOB_TIMEOUT_MS, browser, expect_idle, fill_job, page,  # noqa: F401
                                   saved_images)

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

LORA_A, LORA_B, EMBEDDING = "easel_test_lora", "other_lora_file", "easel-test-emb"
ALIAS_B = "Fancy Output Name"  # kohya's ss_output_name: the card shows and inserts it (A1111's default)
LORA_META = "easel_meta_lora"  # one with A1111's user metadata (the .json beside it)
TENSORS = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 4),
           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 1)}


@pytest.fixture
def network_files(server):
    """Two LoRA files (one with a preview picture, one with an alias) and an embedding for the tiny
    SD1's text encoder, in the server's default folders; removed after."""
    lora_dir = Path(server.data_dir) / "models" / "Lora"
    emb_dir = Path(server.data_dir) / "embeddings"
    lora_dir.mkdir(parents=True, exist_ok=True)
    tensors = TENSORS
    files = [lora_dir / f"{LORA_A}.safetensors", lora_dir / f"{LORA_B}.safetensors", lora_dir / f"{LORA_A}.png"]
    save_file(tensors, str(files[0]))
    save_file(tensors, str(files[1]), metadata={"ss_output_name": ALIAS_B})
    Image.new("RGB", (300, 200), (20, 160, 40)).save(files[2])
    files.append(write_a1111_pt(emb_dir / f"{EMBEDDING}.pt", random_vectors(2)))
    yield
    for file in files:
        file.unlink(missing_ok=True)
    requests.post(server.url + "/sdapi/v1/refresh-loras", timeout=60)


@pytest.fixture
def styles_file(server):
    path = Path(server.data_dir) / "styles.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "prompt", "negative_prompt"])
        writer.writerow(["Browser style", "{prompt}, in the style of easel", "lowres"])
        writer.writerow(["Second, with comma", "golden hour", ""])
    yield path
    path.write_text("name,prompt,negative_prompt\n", encoding="utf-8")


def open_panel(page: Page) -> None:
    page.locator("#txt2img_extra_networks_button").click()
    expect(page.locator("#txt2img_extra_networks")).to_be_visible()
    expect(page.locator("#txt2img_extra_tabs")).to_be_visible()


def show_page(page: Page, title: str) -> None:
    page.locator("#txt2img_extra_tabs").get_by_role("tab", name=title, exact=True).click()


def cards(page: Page, kind: str):
    return page.locator(f"#txt2img_{kind}_cards .card")


def prompt_box(page: Page, negative: bool = False):
    return page.locator(f"#txt2img_{'neg_' if negative else ''}prompt textarea")


def pick_style(page: Page, name: str) -> None:
    field = page.locator("#txt2img_styles input")
    field.click()
    page.locator("#txt2img_styles [role=option]").filter(has_text=name).first.click()
    page.keyboard.press("Escape")
    expect(page.locator("#txt2img_styles")).to_contain_text(name)


# -------------------------------------------------------------------------------------- tests

def test_panel_cards_search_and_clicks(page, server, network_files, tiny_checkpoints):
    for elem_id in ("txt2img_extra_networks_button", "txt2img_styles", "txt2img_style_apply", "txt2img_style_create"):
        expect(page.locator(f"#{elem_id}")).to_have_count(1)
    expect(page.locator("#txt2img_extra_networks")).to_be_hidden()
    open_panel(page)
    page.locator("#txt2img_extra_refresh").click()

    # checkpoints: one card per file, named by its stem
    checkpoint_cards = cards(page, "checkpoints")
    for path in tiny_checkpoints.paths.values():
        expect(checkpoint_cards.filter(has_text=path.stem).first).to_be_attached()

    # Lora: both files; the alias is shown; the picture beside the first is its preview
    show_page(page, "Lora")
    lora_a = cards(page, "lora").filter(has_text=LORA_A)
    lora_b = cards(page, "lora").filter(has_text=ALIAS_B)
    expect(lora_a).to_have_count(1)
    expect(lora_b).to_have_count(1)
    expect(lora_a.locator("img.preview")).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
    expect(lora_b.locator("img.preview")).to_have_count(0)

    # search filters the cards (case-insensitive, on the name and the path)
    search = page.locator("#txt2img_extra_search input, #txt2img_extra_search textarea").first
    search.fill("FANCY")
    expect(lora_b).to_be_visible()
    expect(lora_a).to_be_hidden()
    search.fill("other_lora")  # the file name of the aliased one
    expect(lora_b).to_be_visible()
    expect(lora_a).to_be_hidden()
    search.fill("")
    expect(lora_a).to_be_visible()

    # a Lora card adds <lora:name:1> to the prompt, a second click takes it out again
    prompt = prompt_box(page)
    prompt.fill("a castle")
    lora_a.click()
    expect(prompt).to_have_value(f"a castle <lora:{LORA_A}:1>")
    lora_b.click()
    expect(prompt).to_have_value(f"a castle <lora:{LORA_A}:1> <lora:{ALIAS_B}:1>")
    lora_a.click()
    expect(prompt).to_have_value(f"a castle <lora:{ALIAS_B}:1>")

    # a Textual Inversion card adds the embedding's name to the prompt box last used
    show_page(page, "Textual Inversion")
    emb = cards(page, "textual_inversion").filter(has_text=EMBEDDING)
    expect(emb).to_have_count(1)
    negative = prompt_box(page, negative=True)
    negative.fill("blurry")
    negative.focus()
    emb.click()
    expect(negative).to_have_value(f"blurry {EMBEDDING}")
    expect(prompt).to_have_value(f"a castle <lora:{ALIAS_B}:1>")

    # the server got what the clicks typed: saving the prompts as a style stores them
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").first.fill("From the cards")
    page.locator("#txt2img_style_create").click()
    expect(page.locator("#txt2img_style_name input, #txt2img_style_name textarea").first).to_have_value("")
    styles = requests.get(server.url + "/sdapi/v1/prompt-styles", timeout=60).json()
    saved = [s for s in styles if s["name"] == "From the cards"]
    assert saved == [{"name": "From the cards", "prompt": f"a castle <lora:{ALIAS_B}:1>",
                      "negative_prompt": f"blurry {EMBEDDING}"}], styles
    (Path(server.data_dir) / "styles.csv").write_text("name,prompt,negative_prompt\n", encoding="utf-8")

    # a checkpoint card loads that checkpoint
    show_page(page, "Checkpoints")
    picker = page.locator("#setting_sd_model_checkpoint input")
    try:
        checkpoint_cards.filter(has_text="tiny-sd2-v").first.click()
        expect(picker).to_have_value(re.compile(r"^tiny-sd2-v\.safetensors \["))
        assert requests.get(server.url + "/sdapi/v1/options", timeout=60).json()["sd_model_checkpoint"].startswith(
            "tiny-sd2-v.safetensors")
    finally:
        requests.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"},
                      timeout=120)

    # 🎴 again hides the panel
    page.locator("#txt2img_extra_networks_button").click()
    expect(page.locator("#txt2img_extra_networks")).to_be_hidden()

    # img2img has the same panel and controls, with its own ids
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_extra_networks_button").click()
    show_page_of = page.locator("#img2img_extra_tabs").get_by_role("tab", name="Lora", exact=True)
    show_page_of.click()
    expect(page.locator("#img2img_lora_cards .card").filter(has_text=LORA_A)).to_have_count(1)
    expect(page.locator("#img2img_styles")).to_have_count(1)


def test_lora_card_user_metadata_and_its_editor(page, server):
    """A1111's user metadata: the card inserts the preferred weight and the activation text (and the
    negative text), ✏️ edits the .json beside the file, keeping the keys the editor does not show."""
    lora_dir = Path(server.data_dir) / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    model, meta = lora_dir / f"{LORA_META}.safetensors", lora_dir / f"{LORA_META}.json"
    save_file(TENSORS, str(model))
    meta.write_text(json.dumps({"activation text": "glowing runes", "preferred weight": 0.7, "negative text": "dull",
                                "civitai": {"id": 7}}), encoding="utf-8")
    try:
        requests.post(server.url + "/sdapi/v1/refresh-loras", timeout=60)  # (the panel's Refresh: all folders)
        open_panel(page)
        show_page(page, "Lora")
        card = cards(page, "lora").filter(has_text=LORA_META)
        prompt, negative = prompt_box(page), prompt_box(page, negative=True)
        prompt.fill("a castle")
        negative.fill("blurry")
        card.click()
        expect(prompt).to_have_value(f"a castle <lora:{LORA_META}:0.7> glowing runes")
        expect(negative).to_have_value("blurry dull")
        card.click()  # and out again, the activation text and the negative text with it
        expect(prompt).to_have_value("a castle")
        expect(negative).to_have_value("blurry")

        card.locator(".edit-button").click()  # ✏️ opens the editor and is no click on the card
        editor = page.locator("#txt2img_lora_edit_user_metadata")
        expect(editor).to_be_visible()

        def field(name):
            return editor.locator(f"#txt2img_lora_edit_user_metadata_{name}").locator("textarea, input").first

        expect(field("activation_text")).to_have_value("glowing runes")
        expect(prompt).to_have_value("a castle")
        field("description").fill("Runes that glow")
        editor.locator("#txt2img_lora_edit_user_metadata_save").click()
        expect(editor).to_be_hidden()
        expect(card.locator(".description")).to_have_text("Runes that glow")
        saved = json.loads(meta.read_text(encoding="utf-8"))
        assert saved == {"activation text": "glowing runes", "preferred weight": 0.7, "negative text": "dull",
                         "civitai": {"id": 7}, "description": "Runes that glow", "sd version": "Unknown",
                         "notes": ""}, saved
    finally:
        model.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        requests.post(server.url + "/sdapi/v1/refresh-loras", timeout=60)


def test_style_changes_the_generated_prompt_and_applies_into_the_box(page, server, styles_file):
    page.reload()  # the styles file was written after the page was opened
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^tiny-sd1\.safetensors \["))
    before = set(saved_images(server))
    fill_job(page, "a blue ball", steps=1)
    pick_style(page, "Browser style")
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect_idle(page)
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("a blue ball, in the style of easel")
    expect(info).to_contain_text("Negative prompt: lowres")
    new = sorted(set(saved_images(server)) - before)
    assert len(new) == 1, new
    with Image.open(new[0]) as png:
        assert png.info["parameters"].startswith("a blue ball, in the style of easel\nNegative prompt: lowres\n")
    expect(prompt_box(page)).to_have_value("a blue ball")  # the box keeps what was typed

    # 📋 writes the selected styles into the boxes and clears the selection
    pick_style(page, "Second, with comma")
    page.locator("#txt2img_style_apply").click()
    expect(prompt_box(page)).to_have_value("a blue ball, in the style of easel, golden hour")
    expect(prompt_box(page, negative=True)).to_have_value("lowres")
    expect(page.locator("#txt2img_styles .token")).to_have_count(0)
