"""A1111's localizations: an extension's localizations/xx_XX.json is a choice of the `localization`
option ("Localization", User interface), and with it chosen the page shows the translated texts.

Unit: the option's choices are "None" plus the names found (the repo's folder and the active
extensions'); a disabled extension's localization is gone; `load` reads the chosen file and is {}
for "None", an unknown name or a broken file. Browser (Chromium through Playwright, a server of its
own with the `loc_probe` fixture extension and config.json choosing xx_XX): the Generate button,
a slider's label, the prompt's placeholder, a button's title, a main tab and a dropdown's option
texts are translated; the prompt the user types is not, and a generation still works (the
dropdown's translated option still selects the English sampler).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules import extensions, localization
from modules.services.options import Options
from tests.server import run_server
from tests.test_extensions import add, ext_env  # noqa: F401  (ext_env: the extension folders fixture)
from tests.test_ui_browser import browser, fill_job  # noqa: F401  (browser: the shared fixture)

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "extensions" / "loc_probe" / "localizations" / "xx_XX.json"


def test_option_lists_extension_localizations(ext_env, tmp_path):  # noqa: F811
    repo_dir = tmp_path / "repo_localizations"
    repo_dir.mkdir()
    (repo_dir / "yy_YY.json").write_text('{"Generate": "Go-yy"}', encoding="utf8")
    (repo_dir / "notes.txt").write_text("not a localization")
    add(Path(extensions.extensions_dir), "loc_probe")
    settings: dict = {}
    extensions.list_extensions(settings)

    old_dir = localization.localizations_dir
    localization.localizations_dir = str(repo_dir)
    try:
        options = Options(None)
        assert options.get("localization") == "None"
        assert options.defs["localization"].label == "Localization"
        assert options.defs["localization"].section == "User interface"
        localization.bind(options)
        assert options.defs["localization"].choice_list() == ("None", "xx_XX", "yy_YY")
        assert options.set("localization", "xx_XX") and options.get("localization") == "xx_XX"
        with pytest.raises(ValueError, match="localization"):
            options.validate("localization", "zz_ZZ")

        assert localization.load("xx_XX") == json.loads(FIXTURE.read_text(encoding="utf8"))
        assert localization.load("yy_YY") == {"Generate": "Go-yy"}
        assert localization.load("None") == {} and localization.load(None) == {} and localization.load("zz_ZZ") == {}

        (repo_dir / "yy_YY.json").write_text("[1, 2]", encoding="utf8")  # not an object: nothing, no error
        assert localization.load("yy_YY") == {}
        (repo_dir / "yy_YY.json").write_text("{broken", encoding="utf8")
        assert localization.load("yy_YY") == {}

        settings["disabled_extensions"] = ["loc_probe"]  # a disabled extension's localization is gone
        extensions.list_extensions()
        assert options.defs["localization"].choice_list() == ("None", "yy_YY")
    finally:
        localization.localizations_dir = old_dir


# ------------------------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def loc_server(tiny_checkpoints, tmp_path_factory):
    data = tmp_path_factory.mktemp("localization")
    (data / "extensions").mkdir()
    add(data / "extensions", "loc_probe")
    (data / "config.json").write_text(json.dumps({"localization": "xx_XX"}), encoding="utf8")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1)) as server:
        yield server


def test_page_is_translated(loc_server, browser):  # noqa: F811
    options = loc_server.get("/sdapi/v1/options").json()
    assert options["localization"] == "xx_XX"

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        page.goto(loc_server.url)
        generate = page.locator("#txt2img_generate")
        expect(generate).to_have_text("Erzeugen-xx")
        expect(generate).to_have_attribute("title", "Erzeugen (Strg+Enter)-xx")
        expect(page.locator("#txt2img_prompt textarea")).to_have_attribute("placeholder", "Prompt-xx")
        expect(page.locator("#txt2img_steps")).to_contain_text("Schritte-xx")
        expect(page.locator("#txt2img_steps")).not_to_contain_text("Sampling steps")
        expect(page.locator("#tabs [role=tab]", has_text="Einstellungen-xx")).to_have_count(1)
        assert page.evaluate("window.localization['Generate']") == "Erzeugen-xx"

        # a dropdown's options, shown when it opens, are translated; picking one still works
        field = page.locator("#txt2img_sampling input")
        field.click()
        option = page.locator("#txt2img_sampling [role=option]", has_text="Euler-a-xx")
        expect(option).to_have_count(1)
        option.click()
        expect(field).to_have_value("Euler a")

        # what the user types is never translated; the job runs with the English names
        fill_job(page, "Generate", steps=1)
        expect(page.locator("#txt2img_prompt textarea")).to_have_value("Generate")
        generate.click()
        info = page.locator("#html_info_txt2img")
        expect(info).to_contain_text("Sampler: Euler a", timeout=120_000)
        expect(info).to_contain_text("Generate")
        expect(generate).to_have_text("Erzeugen-xx")
    finally:
        context.close()
