"""The page's options of the third batch of A1111 1.10's options (issue 13; the rest, and every
option's default and refusal through /sdapi/v1/options: tests/test_options_a1111_batch3.py), each
checked on what the page gets: the components as built, the cards' HTML, the gallery's pictures, the
token counts, the picker's names, and in a real browser the text a card puts in the prompt.

Sections touched: "User interface" (send_size, send_seed), "UI alternatives"
(sd_checkpoint_dropdown_use_short), "Gallery" (do_not_show_images, gallery_height), "img2img"
(img2img_batch_show_results_limit, img2img_editor_height and the three brush colours), "Prompt
editing" (include_styles_into_token_counters, disable_token_counters), "Extra Networks" (extra_networks_card_*,
extra_networks_add_text_separator).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from modules.services.options import Options
from tests.browser import chromium  # noqa: F401  (the module's Chromium)
from tests.test_options_a1111_batch3 import engine, picture  # noqa: F401  (the module's engine, a picture)


def test_send_seed_and_send_size_decide_what_a_sent_picture_sets_in_img2img():
    import gradio as gr

    from modules.ui.app import sent_fields

    options = Options(None)
    sent = picture(100, 70)
    assert sent_fields(sent, 1234, options) == (1234, 96, 64)  # A1111's defaults: both sent
    options.set("send_size", False)
    options.set("send_seed", False)
    assert sent_fields(sent, 1234, options) == (gr.update(), gr.update(), gr.update())  # left as they are


def test_do_not_show_images_empties_the_gallery_not_the_files_or_the_infotext(engine, tmp_path):
    from modules.core.types import GenerationRequest
    from modules.ui.generation_tab import Shown

    request = GenerationRequest(prompt="a shown cube", width=64, height=64, steps=1, seed=5, save_images=True)
    result = engine.submit_txt2img(request, overrides={"outdir_samples": str(tmp_path), "save_to_dirs": False}).result()
    shown = Shown.of(result)
    assert len(shown.gallery(engine.options)) == 1
    engine.options.set("do_not_show_images", True)
    try:
        assert shown.gallery(engine.options) == [] and "Seed: 5" in shown.infotexts[0]
        assert [Path(p).is_file() for p in result.paths] == [True]
    finally:
        engine.options.set("do_not_show_images", False)


def test_img2img_batch_show_results_limit_counts_the_pictures_shown(engine, tmp_path):
    from modules.services import img2img_batch
    from modules.ui.generation_tab import Shown

    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        picture(64, 64).save(source / name)
    fields = {"prompt": "a batch cube", "steps": 1, "width": 64, "height": 64, "seed": 6, "denoising_strength": 0.5}
    report = img2img_batch.run_batch(engine, fields, source, tmp_path / "out", keep_results=3)
    assert len(report.written) == 3
    assert len(Shown.of_batch(report.results, "", 32).images) == 3  # A1111's default: up to 32
    limited = Shown.of_batch(report.results, "", 2)
    assert len(limited.images) == len(limited.infotexts) == len(limited.seeds) == 2
    assert Shown.of_batch(report.results, "", 0).images == []  # 0: none
    assert len(Shown.of_batch(report.results, "", -1).images) == 3  # -1: all


def test_the_extra_networks_card_options_shape_the_cards_html():
    from modules.ui.extra_networks import Card, card_html, page_html

    card = Card("tuned", "lora", "<lora:tuned:1>", "tuned", description="<b>bold</b> & co")
    options = Options(None)
    plain = card_html(card, options)
    assert "<span class='description'>&lt;b&gt;bold&lt;/b&gt; &amp; co</span>" in plain  # A1111's defaults
    assert "style=" not in plain and plain == card_html(card)
    options.set("extra_networks_card_description_is_html", True)
    assert "<span class='description'><b>bold</b> & co</span>" in card_html(card, options)
    options.set("extra_networks_card_width", 200)
    options.set("extra_networks_card_height", 300)
    options.set("extra_networks_card_text_scale", 1.5)
    styled = card_html(card, options)
    assert "data-search='tuned' style='width: 200px; height: 300px;' title=" in styled
    assert "<div class='actions' style='font-size: 150%'>" in styled
    options.set("extra_networks_card_show_desc", False)
    assert "description" not in page_html("txt2img", "lora", [card], options)


def test_extra_networks_add_text_separator_goes_before_a_cards_text_and_out_with_it(server, chromium):
    """In a real browser (Chromium through Playwright): a Lora card's and an embedding card's text
    go into the prompt after the separator, and a second click takes both out again."""
    from playwright.sync_api import expect

    from tests.test_ui_extra_networks_browser import EMBEDDING, LORA_A, TENSORS
    from tests.fixtures.tiny_embeddings import random_vectors, write_a1111_pt

    lora = Path(server.data_dir) / "models" / "Lora" / f"{LORA_A}.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(TENSORS, str(lora))
    embedding = write_a1111_pt(Path(server.data_dir) / "embeddings" / f"{EMBEDDING}.pt", random_vectors(2))
    assert server.post("/sdapi/v1/options", json={"extra_networks_add_text_separator": ", ",
                                                  "sd_model_checkpoint": "tiny-sd1.safetensors"}).status_code == 200
    context = chromium.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(60_000)  # (a loaded CI machine)
    try:
        page = context.new_page()
        page.goto(server.url)
        expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(re.compile(r"^tiny-sd1"))
        prompt = page.locator("#txt2img_prompt textarea")
        prompt.fill("a cat")
        page.locator("#txt2img_extra_networks_button").click()
        page.locator("#txt2img_extra_refresh").click()
        tabs = page.locator("#txt2img_extra_tabs")
        tabs.get_by_role("tab", name="Lora", exact=True).click()
        card = page.locator("#txt2img_lora_cards .card").filter(has_text=LORA_A)
        card.click()
        expect(prompt).to_have_value(f"a cat, <lora:{LORA_A}:1>")
        card.click()
        expect(prompt).to_have_value("a cat")
        tabs.get_by_role("tab", name="Textual Inversion", exact=True).click()
        card = page.locator("#txt2img_textual_inversion_cards .card").filter(has_text=EMBEDDING)
        prompt.click()  # the prompt box last used takes the embedding
        card.click()
        expect(prompt).to_have_value(f"a cat, {EMBEDDING}")
        card.click()
        expect(prompt).to_have_value("a cat")
    finally:
        context.close()
        server.post("/sdapi/v1/options", json={"extra_networks_add_text_separator": " "})
        lora.unlink(missing_ok=True)
        embedding.unlink(missing_ok=True)
        server.post("/sdapi/v1/refresh-loras")


def test_the_page_builds_its_gallery_and_img2img_editors_as_the_options_say(engine):
    """Read when the page is built (A1111: Reload UI): the galleries' height, the img2img pictures'
    height and the brushes' first colours, as the components are made."""
    import gradio as gr

    from modules.ui.extras_tab import ExtrasTab
    from modules.ui.img2img import Img2ImgTab

    def built():
        tab = Img2ImgTab(engine)
        with gr.Blocks():
            tab._build_sources()
            tab.build_results()
            extras_tab = ExtrasTab(engine)
            extras_tab.build()
        return tab, extras_tab

    tab, extras_tab = built()
    assert tab.gallery.height == extras_tab.gallery.height == "auto"  # A1111's default "": the page's own
    assert tab.init_img.height == tab.sketch.height == tab.inpaint_mask.height == 720
    assert tab.sketch.brush.default_color == tab.inpaint_sketch.brush.default_color == "#ffffff"
    assert tab.inpaint.brush.colors == [("#ffffff", 0.75)]
    changed = {"gallery_height": "30em", "img2img_editor_height": 400, "img2img_sketch_default_brush_color": "#cc3232",
               "img2img_inpaint_mask_brush_color": "#000000", "img2img_inpaint_sketch_default_brush_color": "#3270cc"}
    for key, value in changed.items():
        engine.options.set(key, value)
    try:
        tab, extras_tab = built()
    finally:
        for key in changed:
            engine.options.set(key, engine.options.defs[key].default)
    assert tab.gallery.height == extras_tab.gallery.height == "30em"
    assert tab.init_img.height == tab.inpaint.height == tab.inpaint_sketch.height == tab.inpaint_base.height == 400
    assert tab.sketch.brush.default_color == "#cc3232" and tab.sketch.brush.colors[0] == "#cc3232"
    assert tab.inpaint_sketch.brush.default_color == "#3270cc"
    assert tab.inpaint.brush.colors == [("#000000", 0.75)]


def test_include_styles_into_token_counters_counts_the_selected_styles_words(engine):
    from modules.core.types import GenerationRequest
    from modules.ui.prompt_tools import token_count

    if engine.models.model is None:  # the counters count with the loaded model's tokenizer
        engine.submit_txt2img(GenerationRequest(prompt="x", width=64, height=64, steps=1, save_images=False)).result()
    engine.styles.save_style("Long batch3 style", "{prompt}, " + ", ".join(["golden hour"] * 30), "")
    try:
        plain = token_count(engine, "a cat", 20, [])
        styled = token_count(engine, "a cat", 20, ["Long batch3 style"])
        assert styled[0] > plain[0] + 60 and styled[1] == 150  # A1111's default: the style's words count
        engine.options.set("include_styles_into_token_counters", False)
        assert token_count(engine, "a cat", 20, ["Long batch3 style"]) == plain
    finally:
        engine.options.set("include_styles_into_token_counters", True)
        engine.styles.delete_style("Long batch3 style")


def test_sd_checkpoint_dropdown_use_short_names_the_pickers_checkpoints_by_file_name(engine, tiny_checkpoints, tmp_path):
    from modules.ui.app import _current, _titles

    folder = tiny_checkpoints.checkpoints_dir / "batch3-sub"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(tiny_checkpoints.sd1, folder / "nested-copy.safetensors")
    try:
        engine.checkpoints.refresh()
        assert "batch3-sub/nested-copy.safetensors" in _titles(engine)  # A1111's default: the path
        engine.options.set("sd_checkpoint_dropdown_use_short", True)
        shorts = _titles(engine)
        assert "nested-copy" in shorts and not any("/" in title for title in shorts)
        for title in shorts:  # each still names its checkpoint
            assert engine.checkpoints.find(title) is not None, title
        if engine.models.info is not None:
            assert _current(engine) == engine.models.info.short_title
    finally:
        engine.options.set("sd_checkpoint_dropdown_use_short", False)
        shutil.rmtree(folder)
        engine.checkpoints.refresh()


def test_disable_token_counters_leaves_the_counters_and_their_counting_out_of_the_page(engine):
    import gradio as gr

    from modules.ui.prompt_tools import PromptTools

    def built() -> tuple[PromptTools, int]:
        tools = PromptTools(engine, "txt2img")
        with gr.Blocks() as blocks:
            prompt, negative = gr.Textbox(), gr.Textbox()
            steps, styles = gr.Slider(1, 150, value=20), gr.Dropdown([], multiselect=True)
            tools.build_counter(False)
            tools.build_counter(True)
            tools.build_buttons()
            tools.wire(prompt, negative, steps, styles)
        return tools, len(blocks.fns)

    shown, events = built()
    # 4 counts, A1111's two hidden token buttons, 🗑️
    assert shown.counter.visible and shown.negative_counter.visible and events == 7
    engine.options.set("disable_token_counters", True)
    try:
        hidden, events = built()
    finally:
        engine.options.set("disable_token_counters", False)
    assert not hidden.counter.visible and not hidden.negative_counter.visible and events == 1  # 🗑️ only
