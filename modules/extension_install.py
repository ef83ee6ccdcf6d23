"""Installing an extension from a git URL (the Extensions tab's "Install from URL"), and who may.

A1111's rule: changing extensions from the UI (install, enable/disable) is refused when the server
is reachable beyond this computer (--listen, --share, a --server-name that is not loopback), unless
--enable-insecure-extension-access is given: extensions are code that runs with the server's rights.

Standard library only; `git` is run without a shell.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from typing import Any

from modules import extensions, paths_internal

CLONE_TIMEOUT = 600  # seconds


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
