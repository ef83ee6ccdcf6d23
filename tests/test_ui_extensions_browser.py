"""The Extensions tab in a real browser (Chromium through Playwright), against a server of its own
(Apply restarts it).

What a user does: open Extensions, see the installed extensions with their state and problems,
untick one, Apply and restart; the server comes back, the page reloads, the extension is off in
config.json, in the table and in the API. "Install from URL" from a local git repository adds
one to the table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.server import run_server
from tests.test_extensions import add, make_repo

pytest.importorskip("playwright")
from tests.test_ui_browser import browser  # noqa: E402,F401  (the shared fixture)
from playwright.sync_api import Page, expect  # noqa: E402

TIMEOUT_MS = 60_000
RESTART_TIMEOUT_MS = 180_000  # the restarted process imports torch and builds the UI again


@pytest.fixture(scope="module")
def ext_server(tiny_checkpoints, tmp_path_factory):
    data = tmp_path_factory.mktemp("extensions-ui")
    user = data / "extensions"
    user.mkdir()
    add(user, "page_assets")  # requires an extension that is not installed: its row shows that
    add(user, "preload_flag")
    add(user, "broken_import")  # its script fails at import: the row shows why
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1),
                    "--easel-test-flag", "browser") as server:
        yield server


@pytest.fixture
def page(browser, ext_server) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(ext_server.url)
    page.locator("#tab_extensions-button").click()
    expect(page.locator("#extensions")).to_be_visible()
    yield page
    context.close()


def row(page: Page, name: str):
    return page.locator(f'#extensions tr[data-extension="{name}"]')


def test_table_lists_extensions_with_state_and_problems(page):
    expect(page.locator("#extensions tbody tr")).to_have_count(4)  # and the built-in Lora, as in A1111
    expect(row(page, "Lora").locator("input.extension-enable")).to_be_checked()
    expect(row(page, "broken_import").locator(".extension_status")).to_contain_text(
        "ImportError: broken_import needs a package that is not installed")
    expect(row(page, "page_assets").locator("input.extension-enable")).to_be_checked()
    expect(row(page, "preload_flag").locator("input.extension-enable")).to_be_checked()
    expect(row(page, "page_assets").locator(".extension_status")).to_contain_text(
        'requires "no-such-extension", which is not installed')
    expect(page.locator("#extensions_disable_all input[value=none]")).to_be_checked()


def test_untick_apply_restarts_and_persists(page, ext_server):
    before = ext_server.output().count("[easel] restarting")
    row(page, "page_assets").locator("input.extension-enable").uncheck()
    page.locator("#extensions_apply").click()
    expect(page.locator("#extensions_installed_info")).to_contain_text("Easel is restarting")

    # the server restarts in place and the page reloads itself once it answers again
    page.wait_for_function("() => !document.querySelector('#extensions_installed_info')?.textContent"
                           ".includes('restarting')", timeout=RESTART_TIMEOUT_MS)
    assert ext_server.output().count("[easel] restarting") == before + 1
    config = json.loads((Path(ext_server.data_dir) / "config.json").read_text(encoding="utf-8"))
    assert config["disabled_extensions"] == ["page_assets"] and config["disable_all_extensions"] == "none"

    page.locator("#tab_extensions-button").click(timeout=RESTART_TIMEOUT_MS)
    expect(row(page, "page_assets").locator("input.extension-enable")).not_to_be_checked()
    expect(row(page, "preload_flag").locator("input.extension-enable")).to_be_checked()
    response = ext_server.get("/sdapi/v1/extensions")
    assert response.status_code == 200, response.text
    listed = {e["name"]: e["enabled"] for e in response.json()}
    assert listed == {"page_assets": False, "preload_flag": True, "broken_import": True, "Lora": True}
    # the restarted process got the same flags
    assert ext_server.get("/sdapi/v1/cmd-flags").json()["easel_test_flag"] == "browser"


def test_install_from_url(page, ext_server, tmp_path):
    repo = make_repo(tmp_path / "from-url", "install_marker")
    page.locator("#extensions_install_tab-button").click()
    page.locator("#extension_install_url textarea, #extension_install_url input").first.fill(repo.as_uri())
    page.locator("#extension_install_dirname textarea, #extension_install_dirname input").first.fill("cloned_marker")
    page.locator("#extension_install_button").click()
    expect(page.locator("#extension_install_result")).to_contain_text(
        re.compile(r"Installed into .*cloned_marker"))
    target = Path(ext_server.data_dir) / "extensions" / "cloned_marker"
    assert (target / "install-runs.txt").read_text().splitlines() == ["pip installed=True skip_install=False"]
    page.locator("#extensions_installed_tab-button").click()
    expect(row(page, "cloned_marker").locator("input.extension-enable")).to_be_checked()
    expect(row(page, "cloned_marker")).to_contain_text(repo.as_uri())
