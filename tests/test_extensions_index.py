"""The Extensions tab's "Available" (A1111's extension index) and "Check for updates".

A local index.json in A1111's format lists a few extensions, one of them a local git repository the
test makes; the tab loads it from a path, a file:// URL and a real http server, filters and sorts it
as A1111 does, marks the installed ones, and installs an entry through Install from URL's path. An
unreachable index is a message. Check for updates fetches each git extension's remote: "latest",
"behind HEAD" after a new commit in the source repository, "unknown (remote error)" once it is gone.
The end-to-end tests drive the same events through a real server's Gradio queue, and the table's
Install button in a browser.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import socket
import threading
from pathlib import Path

import gradio as gr
import pytest

from modules import extension_install, extensions
from modules.services.options import Options
from modules.ui.extensions_tab import ExtensionsTab
from tests.test_extensions import add, ext_env, flags, git, make_repo  # noqa: F401  (ext_env: the fixture)

HIDDEN = list(extension_install.DEFAULT_HIDDEN_TAGS)


def names(table: str) -> list[str]:
    """The extension names of the Available table's rows, in order."""
    return re.findall(r'<tr class="available-extension[^"]*" data-url="[^"]*"><td>(?:<a [^>]*>)?([^<]*)', table)


def write_index(path: Path, marker_url: str, installed_url: str) -> Path:
    index = {
        "tags": {"script": "a new script", "tab": "a new tab", "ads": "advertising", "localization": "translations",
                 "installed": "already installed"},
        "extensions": [
            {"name": "Alpha Marker", "url": marker_url, "description": "Leaves a marker file", "tags": ["script"],
             "added": "2024-03-01", "created_at": "2023-01-01T00:00:00Z", "commit_time": "2024-05-01 10:00:00",
             "stars": 5},
            {"name": "Beta Ads", "url": "https://github.com/example/beta-ads", "description": "Shows ads",
             "tags": ["ads"], "added": "2024-02-01", "created_at": "2023-06-01T00:00:00Z", "stars": 50},
            {"name": "Gamma Tab", "url": "https://github.com/example/gamma", "description": "Adds a tab <b>here</b>",
             "tags": ["tab"], "added": "2024-04-01", "created_at": "2022-01-01T00:00:00Z",
             "commit_time": "2024-01-01 00:00:00", "stars": 1},
            {"name": "Preload Flag", "url": installed_url, "description": "Adds a flag", "tags": ["script"],
             "added": "2023-12-01", "stars": 10},
            {"name": "No URL", "description": "skipped, as A1111 does"},
        ],
    }
    path.write_text(json.dumps(index), encoding="utf-8")
    return path


@pytest.fixture
def indexed(ext_env, tmp_path):
    """An index of four extensions: Alpha (a local repo, not installed), two on GitHub, and
    Preload Flag (a local repo, installed)."""
    marker = make_repo(tmp_path / "alpha", "install_marker")
    other = make_repo(tmp_path / "preload.git", "preload_flag")
    extension_install.install_from_url(other.as_uri(), None, "preload_flag", cmd_opts=flags(), run_installer=False)
    index = write_index(tmp_path / "index.json", marker.as_uri(), other.as_uri())
    return index, marker, other


def test_available_table_filters_sorts_and_marks_installed(indexed, tmp_path):
    index, marker, other = indexed
    options = Options(tmp_path / "config.json")
    tab = ExtensionsTab(options, cmd_opts=flags())
    url_box, table, tags, search, message = tab.load_index(f"  {index}  ", HIDDEN, "newest first")
    assert "Loaded 4 extension(s)" in message and url_box == str(index) and search == ""
    # A1111's defaults hide ads, localization and the installed ones; newest first
    assert names(table) == ["Gamma Tab", "Alpha Marker"]
    assert "Extension hidden: 2" in table
    assert tags["choices"] == ["script", "tab", "ads", "localization", "installed"] and tags["value"] == HIDDEN
    assert "Adds a tab &lt;b&gt;here&lt;/b&gt;" in table  # the index's text is escaped
    assert 'Update: 2024-05-01 10:00:00 Added: 2024-03-01 Created: 2023-01-01T00:00:00Z' in table
    # the address is remembered in the options (config.json) for the next visit
    assert json.loads((tmp_path / "config.json").read_text())["extensions_index_url"] == str(index)

    table, _ = tab.refresh_available([], "a-z", "")
    assert names(table) == ["Alpha Marker", "Beta Ads", "Gamma Tab", "Preload Flag"]
    assert "Extension hidden" not in table
    installed_row = re.search(r'<tr class="available-extension extension-installed".*?</tr>', table).group(0)
    assert "Preload Flag" in installed_row and ">installed</span>" in installed_row
    assert f'data-url="{other.as_uri()}" disabled>Installed</button>' in installed_row
    assert f'data-url="{marker.as_uri()}">Install</button>' in table
    assert '<a href="https://github.com/example/gamma" target="_blank">Gamma Tab</a>' in table
    assert names(tab.refresh_available([], "z-a", "")[0]) == ["Preload Flag", "Gamma Tab", "Beta Ads", "Alpha Marker"]
    assert names(tab.refresh_available([], "oldest first", "")[0]) == [
        "Preload Flag", "Beta Ads", "Alpha Marker", "Gamma Tab"]
    assert names(tab.refresh_available([], "stars", "")[0]) == ["Beta Ads", "Preload Flag", "Alpha Marker", "Gamma Tab"]
    assert names(tab.refresh_available([], "create time", "")[0])[:3] == ["Beta Ads", "Alpha Marker", "Gamma Tab"]
    assert names(tab.refresh_available([], "update time", "")[0])[:2] == ["Alpha Marker", "Gamma Tab"]
    assert names(tab.refresh_available([], "internal order", "")[0]) == [
        "Alpha Marker", "Beta Ads", "Gamma Tab", "Preload Flag"]
    # hiding a tag, and the search (name or description, any case)
    assert names(tab.refresh_available(["script"], "a-z", "")[0]) == ["Beta Ads", "Gamma Tab"]
    table, _ = tab.refresh_available([], "a-z", "MARKER")
    assert names(table) == ["Alpha Marker"] and "Extension hidden: 3" in table
    assert names(tab.refresh_available([], "a-z", "a flag")[0]) == ["Preload Flag"]

    # a file:// URL loads the same index
    _url, table, _tags, _search, message = tab.load_index(index.as_uri(), [], "a-z")
    assert "Loaded 4 extension(s)" in message and len(names(table)) == 4


def test_index_over_http(indexed):
    index, _marker, _other = indexed
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(index.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/index.json"
        tab = ExtensionsTab(Options(None), cmd_opts=flags("--listen"))  # browsing needs no extension access
        _url, table, _tags, _search, message = tab.load_index(url, HIDDEN, "a-z")
        assert "Loaded 4 extension(s)" in message and names(table) == ["Alpha Marker", "Gamma Tab"]
        missing = url.replace("index.json", "nothing.json")
        *unchanged, message = tab.load_index(missing, HIDDEN, "a-z")
        assert "the server answered 404" in message
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_install_from_the_index_uses_install_from_url(indexed, tmp_path):
    index, marker, _other = indexed
    refused = ExtensionsTab(Options(None), cmd_opts=flags("--listen"))
    *_rest, message = refused.load_index(str(index), [], "a-z")  # a file on the server: the install rule
    assert "Extension access is disabled" in message
    refused.index = extension_install.load_index(str(index), cmd_opts=flags())
    _available, _table, message = refused.install_from_index(marker.as_uri(), [], "a-z", "")
    assert "Extension access is disabled" in message and "--listen" in message
    assert sorted(p.name for p in Path(extensions.extensions_dir).iterdir()) == ["preload_flag"]

    tab = ExtensionsTab(Options(None), cmd_opts=flags())
    tab.load_index(str(index), HIDDEN, "a-z")
    available, table, message = tab.install_from_index(marker.as_uri(), HIDDEN, "a-z", "")
    target = Path(extensions.extensions_dir) / "alpha"
    assert f"Installed into {target}" in message
    assert (target / "install-runs.txt").read_text().splitlines() == ["pip installed=True skip_install=False"]
    assert 'data-extension="alpha"' in table and marker.as_uri() in table
    assert names(available) == ["Gamma Tab"]  # now installed: hidden by the default tags
    assert f'data-url="{marker.as_uri()}" disabled>Installed</button>' in tab.refresh_available([], "a-z", "")[0]
    _available, _table, again = tab.install_from_index(marker.as_uri(), [], "a-z", "")
    assert "Extension directory already exists" in again


def test_unreachable_or_wrong_index_is_a_message(indexed, tmp_path):
    index, _marker, _other = indexed
    tab = ExtensionsTab(Options(tmp_path / "config.json"), cmd_opts=flags())
    tab.load_index(str(index), [], "a-z")
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/index.json"
    url_box, table, tags, search, message = tab.load_index(url, [], "a-z")
    assert "Could not load the extension index from " + url in message and "offline" in message
    assert "Traceback" not in message
    assert all(update == gr.update() for update in (url_box, table, tags, search))  # the rest stays as it was
    assert len(names(tab.refresh_available([], "a-z", "")[0])) == 4  # the last index still shows
    assert json.loads((tmp_path / "config.json").read_text())["extensions_index_url"] == str(index)

    not_index = tmp_path / "other.json"
    not_index.write_text('{"items": []}')
    for source, expected in ((str(tmp_path / "missing.json"), "Could not read the extension index"),
                             (str(not_index), "is not an extension index: it has no &quot;extensions&quot; list"),
                             (str(tmp_path), "Could not read the extension index"),
                             ("ftp://example.com/index.json", "Not an address an extension index can be loaded"),
                             ("   ", "No extension index URL given")):
        *_rest, message = tab.load_index(source, [], "a-z")
        assert expected in message, (source, message)
    (tmp_path / "broken.json").write_text("{not json")
    assert "is not an extension index (not JSON" in tab.load_index(str(tmp_path / "broken.json"), [], "a-z")[-1]


def update_cell(table: str, name: str) -> str:
    row = re.search(rf'<tr class="extension-row[^"]*" data-extension="{name}">.*?</tr>', table, re.S).group(0)
    return re.search(r'<td class="extension_update">(.*?)</td>', row).group(1)


def test_check_for_updates(ext_env, tmp_path):
    source = make_repo(tmp_path / "source", "install_marker")
    extension_install.install_from_url(source.as_uri(), None, "marker", cmd_opts=flags(), run_installer=False)
    add(Path(extensions.extensions_dir), "page_assets")  # not a git checkout: nothing to check
    installed = Path(extensions.extensions_dir) / "marker"

    refused = ExtensionsTab(Options(None), cmd_opts=flags("--listen"))
    info, _table = refused.check_updates()
    assert "Extension access is disabled" in info

    tab = ExtensionsTab(Options(None), cmd_opts=flags())
    assert update_cell(tab.table_html(), "marker") == "unknown"  # not checked yet (A1111's word)
    info, table = tab.check_updates()
    assert update_cell(table, "marker") == "latest" and update_cell(table, "page_assets") == ""
    assert "Checked 1 git extension(s): no updates found" in info

    (source / "NEW.txt").write_text("a new commit\n")
    git("add", "-A", cwd=source)
    git("commit", "-m", "second", cwd=source)
    info, table = tab.check_updates()
    assert update_cell(table, "marker") == "behind HEAD" and "updates for marker" in info
    assert update_cell(tab.table_html(), "marker") == "behind HEAD"  # kept for the rescanned table
    assert not (installed / "NEW.txt").exists()  # only fetched: the checkout is unchanged

    shutil.move(source, tmp_path / "gone")  # the remote is unreachable
    info, table = tab.check_updates()
    cell = update_cell(table, "marker")
    assert cell.startswith("unknown (remote error)") and "could not fetch " + source.as_uri() in cell
    assert "could not check marker" in info
    # nothing of the extension ran: its install.py would have left this file
    assert not (installed / "install-runs.txt").exists()


def test_tab_has_the_available_controls(ext_env, tmp_path):
    options = Options(tmp_path / "config.json")
    assert options.get("extensions_index_url") == (
        "https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/master/index.json")
    options.set("extensions_index_url", "/srv/index.json")
    with gr.Blocks() as demo:
        ExtensionsTab(options, cmd_opts=flags()).build()
    config = demo.get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in config["components"] if c.get("props", {}).get("elem_id")}
    for elem_id in ("extensions_check", "extensions_index_load", "extension_to_install", "install_extension_button",
                    "extensions_available_html", "extensions_search"):
        assert elem_id in by_id, elem_id
    assert by_id["extensions_index_load"]["props"]["value"] == "Load from:"
    assert by_id["extensions_check"]["props"]["value"] == "Check for updates"
    assert by_id["extensions_hide_tags"]["props"]["label"] == "Hide extensions with tags"
    assert by_id["extensions_hide_tags"]["props"]["value"] == HIDDEN
    assert [c[0] for c in by_id["extensions_sort_order"]["props"]["choices"]] == [
        "newest first", "oldest first", "a-z", "z-a", "internal order", "update time", "create time", "stars"]
    assert by_id["extensions_index_url"]["props"]["label"] == "Extension index URL"


# ---- end to end: a real server, through its Gradio queue and in a browser -----------------------------

@pytest.fixture(scope="module")
def index_server(tiny_checkpoints, tmp_path_factory):
    """A server of its own (its extensions folder is its data dir's) and an index of local repos."""
    from tests.server import run_server

    root = tmp_path_factory.mktemp("index-server")
    marker = make_repo(root / "alpha", "install_marker")
    other = make_repo(root / "preload.git", "preload_flag")
    index = write_index(root / "index.json", marker.as_uri(), other.as_uri())
    with run_server(root / "data", tiny_checkpoints.checkpoints_dir, "--api", "--skip-load-model-at-start") as srv:
        yield srv, index, marker, other


def test_available_and_updates_through_the_gradio_queue(index_server):
    from tests.test_request_guard import fn_index, queue_run, ui_config

    srv, index, marker, _other = index_server
    config = ui_config(srv.url)
    own = {"Origin": srv.url}
    status, output = queue_run(srv.url, fn_index(config, "extensions_index_load"), [str(index), HIDDEN, "a-z"], own)
    assert status == 200 and output, output
    assert names(output[1])[:2] == ["Alpha Marker", "Gamma Tab"] and "Loaded 4" in output[4]
    status, output = queue_run(srv.url, fn_index(config, "install_extension_button"),
                               [marker.as_uri(), HIDDEN, "a-z", ""], own)
    assert status == 200 and "Installed into" in output[2], output
    assert "Alpha Marker" not in names(output[0]) and 'data-extension="alpha"' in output[1]
    assert (srv.data_dir / "extensions" / "alpha" / "install-runs.txt").is_file()
    status, output = queue_run(srv.url, fn_index(config, "extensions_check"), [], own)
    assert status == 200 and update_cell(output[1], "alpha") == "latest", output
    listed = {e["name"]: e["remote"] for e in srv.get("/sdapi/v1/extensions").json()}
    assert listed["alpha"] == marker.as_uri()
    assert srv.get("/sdapi/v1/options").json()["extensions_index_url"] == str(index)


def test_install_button_of_the_available_table_in_a_browser(index_server):
    """The row's Install button (inline HTML) hands its URL to the hidden button's event."""
    pytest.importorskip("playwright")
    from playwright.sync_api import expect

    from tests.browser import launch_browser

    srv, index, _marker, other = index_server
    with launch_browser() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(srv.url)
        page.locator("#tab_extensions-button").click()
        page.locator("#extensions_available_tab-button").click()
        page.locator("#extensions_index_url textarea, #extensions_index_url input").first.fill(str(index))
        page.locator("#extensions_index_load").click()
        row = page.locator(f'#available_extensions tr[data-url="{other.as_uri()}"]')
        expect(row).to_contain_text("Preload Flag")
        row.locator("button.extension-install").click()
        expect(page.locator("#extensions_available_result")).to_contain_text("Installed into")
        expect(row).to_have_count(0)  # installed: hidden by the default tags
        assert (srv.data_dir / "extensions" / "preload").is_dir()
        page.locator("#extensions_installed_tab-button").click()
        expect(page.locator('#extensions tr[data-extension="preload"]')).to_contain_text(other.as_uri())
