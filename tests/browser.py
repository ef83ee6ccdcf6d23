"""Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

    from tests.browser import launch_browser

    def test_page_loads(server_url):
        with launch_browser() as browser:
            page = browser.new_page()
            page.goto(server_url)

Playwright never downloads a browser here: it starts the system Chromium by its path. When that is
missing and we are root on Debian it is installed with apt-get (once per test run). When it cannot
be had the test fails with the reason under CI (CI=true), and is skipped with the reason elsewhere.
"""

import contextlib
import os
from typing import Iterator

import pytest

from modules.launch_utils import CHROMIUM_PATH, ensure_chromium

# The last five keep Chromium from phoning home (updates, sync, field trials), which on a closed
# network means a flood of failing connections.
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_chromium() -> None:
    """Fail (under CI) or skip (elsewhere) the calling test when Chromium is not available."""
    problem = ensure_chromium()
    if problem is None:
        return
    message = f"browser tests need Chromium: {problem}"
    if running_in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def launch_browser(**launch_options) -> Iterator["playwright.sync_api.Browser"]:  # noqa: F821
    """A headless Chromium (Playwright `Browser`) with a fresh, temporary profile.

    Playwright gives every `launch()` its own new user data folder and deletes it on close.
    `launch_options` go to `chromium.launch()` (e.g. slow_mo=100).
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, headless=True, args=list(BROWSER_ARGS), **launch_options)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def chromium():
    """A module's Chromium with the browser tests' patience for a slow machine (their expect
    timeout, tests/test_ui_browser.TIMEOUT_MS); import it into a test module to use it."""
    pytest.importorskip("playwright")
    from playwright.sync_api import expect

    from tests.test_ui_browser import TIMEOUT_MS

    expect.set_options(timeout=TIMEOUT_MS)
    try:
        with launch_browser() as b:
            yield b
    finally:
        expect.set_options(timeout=5_000)
