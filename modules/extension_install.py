"""Installing an extension from a git URL (the Extensions tab's "Install from URL"), who may, and
the index of available extensions (the tab's "Available").

A1111's rule: changing extensions from the UI (install, enable/disable) is refused when the server
is reachable beyond this computer (--listen, --share, a --server-name that is not loopback), unless
--enable-insecure-extension-access is given: extensions are code that runs with the server's rights.

The index is A1111's index.json (`{"tags": {tag: description}, "extensions": [{name, url,
description, tags, added, created_at, commit_time, stars}]}`), loaded from an http(s) URL, a file://
URL or a local path only when the user asks; an entry's Install goes through `install_from_url`, so
the same rules apply. Reading a file on the server for the index follows the install rule too.

Standard library only; `git` is run without a shell.
"""

from __future__ import annotations

import html
import http.client
import ipaddress
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterable

from modules import extensions, paths_internal

CLONE_TIMEOUT = 600  # seconds
INDEX_TIMEOUT = 30  # seconds to wait for the index's server
INDEX_MAX_BYTES = 64 * 1024 * 1024

# A1111's Available tab: the tag filter (its choices before an index is loaded and its default) and
# the orders, each (newest first, ...) -> (reverse, key of an index entry)
HIDE_TAG_CHOICES = ("script", "ads", "localization", "installed")
DEFAULT_HIDDEN_TAGS = ("ads", "localization", "installed")


def _field(name: str, missing: str):
    return lambda entry: entry.get(name) if isinstance(entry.get(name), str) else missing


def _stars(entry: dict) -> float:
    stars = entry.get("stars")
    return stars if isinstance(stars, (int, float)) and not isinstance(stars, bool) else 0


SORT_ORDERS = {
    "newest first": (True, _field("added", "z")),
    "oldest first": (False, _field("added", "z")),
    "a-z": (False, _field("name", "z")),
    "z-a": (True, _field("name", "z")),
    "internal order": (False, lambda entry: 0),
    "update time": (True, _field("commit_time", "")),
    "create time": (True, _field("created_at", "")),
    "stars": (True, _stars),
}


class ExtensionAccessError(PermissionError):
    """Changing extensions from the UI is not allowed with these flags."""


def is_loopback(host: str | None) -> bool:
    if host is None or host.strip().lower() in ("", "localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def access_refusal(cmd_opts: Any) -> str | None:
    """Why the UI may not change extensions with these flags; None when it may."""
    if getattr(cmd_opts, "enable_insecure_extension_access", False):
        return None
    reasons = []
    if getattr(cmd_opts, "listen", False):
        reasons.append("--listen")
    if getattr(cmd_opts, "share", False):
        reasons.append("--share")
    server_name = getattr(cmd_opts, "server_name", None)
    if not getattr(cmd_opts, "listen", False) and not is_loopback(server_name):
        reasons.append(f"--server-name {server_name}")
    if not reasons:
        return None
    return (f"Extension access is disabled because the server is reachable from other computers "
            f"({', '.join(reasons)}). Start Easel with --enable-insecure-extension-access to install or "
            f"change extensions from the UI.")


def check_access(cmd_opts: Any) -> None:
    refusal = access_refusal(cmd_opts)
    if refusal:
        raise ExtensionAccessError(refusal)


def normalize_git_url(url: str | None) -> str:
    if not url:
        return ""
    url = url.strip().rstrip("/")
    return url[:-4] if url.endswith(".git") else url


def dirname_from_url(url: str) -> str:
    return normalize_git_url(url).replace("\\", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def check_dirname(name: str) -> str:
    name = name.strip()
    if not name or name in (".", "..") or name.startswith(".") or re.search(r"[/\\:\x00]", name):
        raise ValueError(f"Not a usable folder name for an extension: {name!r}")
    return name


def install_from_url(url: str, branch: str | None = None, dirname: str | None = None, *, cmd_opts: Any,
                     run_installer: bool = True) -> str:
    """Clone `url` (at `branch`) into extensions/<dirname> and run its install.py; returns the
    folder. Raises ExtensionAccessError when refused, ValueError for a bad request, RuntimeError
    when git fails."""
    check_access(cmd_opts)
    url = (url or "").strip()
    if not url:
        raise ValueError("No URL specified")
    if url.startswith("-"):
        raise ValueError(f"Not a git URL: {url}")
    branch = (branch or "").strip() or None
    if branch and branch.startswith("-"):
        raise ValueError(f"Not a branch name: {branch}")
    name = check_dirname(dirname or dirname_from_url(url))
    target = os.path.join(extensions.extensions_dir, name)
    if os.path.exists(target):
        raise ValueError(f"Extension directory already exists: {target}")
    extensions.list_extensions()
    for ext in extensions.extensions:
        ext.read_info_from_repo()
        if ext.remote and normalize_git_url(ext.remote) == normalize_git_url(url):
            raise ValueError(f"Extension with this URL is already installed: {ext.name}")

    tmpdir = os.path.join(paths_internal.data_path, "tmp", name)
    shutil.rmtree(tmpdir, ignore_errors=True)
    os.makedirs(os.path.dirname(tmpdir), exist_ok=True)
    command = ["git", "clone", "--recurse-submodules", *(["--branch", branch] if branch else []), "--", url, tmpdir]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # never wait for a password on the server's console
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=CLONE_TIMEOUT)
        except FileNotFoundError as error:
            raise RuntimeError("git is not installed; it is needed to install extensions") from error
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"git clone took longer than {CLONE_TIMEOUT} seconds: {url}") from error
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise RuntimeError(f"git clone failed: {message[-1] if message else f'exit code {result.returncode}'}")
        os.makedirs(extensions.extensions_dir, exist_ok=True)
        shutil.move(tmpdir, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    print(f"[extensions] installed {url} into {target}", flush=True)
    if run_installer:
        from modules import installer

        installer.install_extension(target)
    extensions.list_extensions()
    return target


# ---- the index of available extensions --------------------------------------------------------

class ExtensionIndexError(RuntimeError):
    """The index could not be loaded (offline, a wrong address, not an index); the message says why."""


def load_index(source: str, *, cmd_opts: Any) -> dict[str, Any]:
    """The index at `source` (an http(s) URL, a file:// URL or a path) as {"tags": {...},
    "extensions": [...]}, keeping only entries with a URL. Raises ExtensionIndexError, or
    ExtensionAccessError for a file on a server that others can reach."""
    source = (source or "").strip()
    if not source:
        raise ExtensionIndexError("No extension index URL given")
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        data = _download(source)
    elif scheme == "file" or len(scheme) <= 1:  # no scheme, or a Windows drive letter
        check_access(cmd_opts)
        path = urllib.request.url2pathname(parts.path) if scheme == "file" else os.path.expanduser(source)
        try:
            with open(path, "rb") as file:
                data = file.read(INDEX_MAX_BYTES + 1)
        except OSError as error:
            raise ExtensionIndexError(f"Could not read the extension index {path}: {error.strerror or error}") from error
    else:
        raise ExtensionIndexError(f"Not an address an extension index can be loaded from: {source} "
                                  f"(use https://, file:// or the path of an index.json)")
    if len(data) > INDEX_MAX_BYTES:
        raise ExtensionIndexError(f"The extension index at {source} is larger than {INDEX_MAX_BYTES} bytes")
    try:
        payload = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ExtensionIndexError(f"{source} is not an extension index (not JSON: {error})") from error
    return parse_index(payload, source)


def _download(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "Easel extension index"})
    try:
        with urllib.request.urlopen(request, timeout=INDEX_TIMEOUT) as response:
            return response.read(INDEX_MAX_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ExtensionIndexError(f"Could not load the extension index from {url}: the server answered "
                                  f"{error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise ExtensionIndexError(f"Could not load the extension index from {url}: {reason}. Easel may be offline "
                                  f"or the address may be wrong; installed extensions and Install from URL still "
                                  f"work.") from error


def parse_index(payload: Any, source: str = "the index") -> dict[str, Any]:
    """A1111's index.json checked: a "tags" mapping (optional) and an "extensions" list; entries
    without a URL are left out (A1111 skips them too)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("extensions"), list):
        raise ExtensionIndexError(f'{source} is not an extension index: it has no "extensions" list')
    tags = payload.get("tags")
    tags = {str(key): str(value) for key, value in tags.items()} if isinstance(tags, dict) else {}
    entries = [entry for entry in payload["extensions"]
               if isinstance(entry, dict) and isinstance(entry.get("url"), str) and entry["url"].strip()]
    return {"tags": tags, "extensions": entries}


def _tags_of(entry: dict) -> list[str]:
    tags = entry.get("tags")
    return [str(tag) for tag in tags] if isinstance(tags, list) else []


def _text(entry: dict, key: str, missing: str = "") -> str:
    value = entry.get(key)
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else missing


def installed_urls() -> dict[str, str]:
    """normalized remote URL -> folder name of the installed git extensions (rescanned)."""
    found = {}
    for ext in extensions.list_extensions():
        ext.read_info_from_repo()
        if ext.remote:
            found[normalize_git_url(ext.remote)] = ext.name
    return found


def tag_choices(index: dict[str, Any]) -> list[str]:
    """The tags to filter by: the index's, those its entries use, and "installed" (A1111)."""
    tags = dict.fromkeys(index.get("tags", {}))
    for entry in index.get("extensions", []):
        tags.update(dict.fromkeys(_tags_of(entry)))
    tags.update(dict.fromkeys(["installed"]))
    return list(tags)


def available_table(index: dict[str, Any], hide_tags: Iterable[str] = DEFAULT_HIDDEN_TAGS,
                    order: str = "newest first", search: str = "") -> str:
    """A1111's `#available_extensions` table: the index's entries minus those with a hidden tag
    or not matching `search` (in name or description), in `order`; an installed one is tagged
    "installed" and its button says Installed. Each Install button carries its URL in data-url."""
    installed = installed_urls()
    tag_titles = index.get("tags", {})
    hidden_tags = set(hide_tags or ())
    search = (search or "").strip().lower()
    reverse, key = SORT_ORDERS.get(order, SORT_ORDERS["newest first"])
    rows, hidden = [], 0
    for entry in sorted(index.get("extensions", []), key=key, reverse=reverse):
        url = entry["url"].strip()
        name, description = _text(entry, "name", "noname"), _text(entry, "description")
        existing = installed.get(normalize_git_url(url))
        tags = _tags_of(entry) + (["installed"] if existing else [])
        if hidden_tags.intersection(tags) or (search and search not in name.lower()
                                              and search not in description.lower()):
            hidden += 1
            continue
        link = html.escape(name)
        if urllib.parse.urlsplit(url).scheme.lower() in ("http", "https"):
            link = f'<a href="{html.escape(url)}" target="_blank">{link}</a>'
        tag_text = ", ".join(f'<span class="extension-tag" title="{html.escape(tag_titles.get(tag, ""))}">'
                             f"{html.escape(tag)}</span>" for tag in tags)
        button = (f'<button class="lg secondary gradio-button custom-button extension-install" '
                  f'data-url="{html.escape(url)}"{" disabled" if existing else ""}>'
                  f'{"Installed" if existing else "Install"}</button>')
        rows.append(
            f'<tr class="available-extension{" extension-installed" if existing else ""}" data-url="{html.escape(url)}">'
            f"<td>{link}<br>{tag_text}</td>"
            f'<td>{html.escape(description)}<p class="info"><span class="date_added">'
            f'Update: {html.escape(_text(entry, "commit_time", "unknown"))} '
            f'Added: {html.escape(_text(entry, "added", "unknown"))} '
            f'Created: {html.escape(_text(entry, "created_at", "unknown"))}</span> '
            f'<span class="star_count">stars: <b>{html.escape(_text(entry, "stars", "0"))}</b></span></p></td>'
            f"<td>{button}</td></tr>")
    code = ('<table id="available_extensions"><thead><tr><th>Extension</th><th>Description</th><th>Action</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    if hidden:
        code += f'<p class="extensions-hidden">Extension hidden: {hidden}</p>'
    return code
