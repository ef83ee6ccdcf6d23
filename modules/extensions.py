"""A1111's `modules.extensions`: the extensions on disk and which of them are active.

An extension is a folder in `extensions/` (user-installed, under the data dir) or
`extensions-builtin/` (shipped). Any of these may be in it: `scripts/*.py`, `install.py`,
`preload.py`, `javascript/*.js`, `style.css`, `localizations/*.json`, `metadata.ini`.

Standard library only: launch.py lists extensions (for their preload.py and install.py) before
the venv exists. The enable/disable state lives in the settings under A1111's option names,
`disabled_extensions` (folder names) and `disable_all_extensions` ("none", "extra", "all");
`--disable-all-extensions` / `--disable-extra-extensions` override them for one run.

`list_extensions(settings, cmd_opts)` rescans the folders; the composition root (webui.py) calls
it first with the live settings mapping, later callers (the Extensions tab, the API) call it
without arguments and get the same settings. Problems (a broken preload.py, a failed install.py,
a script that does not import) are recorded with `report_error(name, text)`: printed with the
extension's name and shown in the Extensions tab, never raised.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import threading
import zlib
from collections import namedtuple
from typing import Any, Mapping

from modules.paths_internal import extensions_builtin_dir, extensions_dir, script_path  # noqa: F401

DISABLE_ALL_CHOICES = ("none", "extra", "all")

extensions: list["Extension"] = []  # every extension on disk, built-ins first (A1111 1.9's order)
extension_paths: dict[str, "Extension"] = {}  # path -> extension
loaded_extensions: dict[str, "Extension"] = {}  # canonical name -> extension

_settings: Mapping[str, Any] = {}  # the live settings (Options.data in the server)
_cmd_opts: Any = None  # the parsed flags
_errors: dict[str, list[str]] = {}  # extension name -> problems reported this run
_disabled_for_run: dict[str, str] = {}  # extension name -> why it does not load this run
_lock = threading.Lock()

# A1111 keeps this tuple in modules.scripts; extensions only read its fields.
ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])


# ---- settings --------------------------------------------------------------------------------

def disabled_names(settings: Mapping[str, Any] | None = None) -> set[str]:
    value = (_settings if settings is None else settings).get("disabled_extensions") or []
    return {str(name) for name in value} if isinstance(value, (list, tuple, set)) else set()


def disable_all_mode(settings: Mapping[str, Any] | None = None, cmd_opts: Any = None) -> str:
    """"all", "extra" (built-ins only) or "none": the flags win over the stored setting."""
    cmd_opts = _cmd_opts if cmd_opts is None else cmd_opts
    if getattr(cmd_opts, "disable_all_extensions", False):
        return "all"
    if getattr(cmd_opts, "disable_extra_extensions", False):
        return "extra"
    value = (_settings if settings is None else settings).get("disable_all_extensions", "none")
    return value if value in DISABLE_ALL_CHOICES else "none"


def current_cmd_opts() -> Any:
    """The flags the extensions were last listed with (None before the first listing)."""
    return _cmd_opts


def read_settings_file(path: str | None) -> dict[str, Any]:
    """The settings file as a dict ({} when it is missing or unreadable): launch.py's view of
    the settings, before the services exist."""
    import json

    if not path:
        return {}
    try:
        with open(path, encoding="utf8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        print(f"[extensions] could not read {path}: {error}; all extensions count as enabled", flush=True)
        return {}
    return data if isinstance(data, dict) else {}


def ensure_settings(settings: dict[str, Any]) -> None:
    """Give a settings dict A1111's two extension options (so /sdapi/v1/options lists them),
    replacing values of the wrong type."""
    if not isinstance(settings.get("disabled_extensions"), list):
        settings["disabled_extensions"] = []
    if settings.get("disable_all_extensions") not in DISABLE_ALL_CHOICES:
        settings["disable_all_extensions"] = "none"


# ---- problems --------------------------------------------------------------------------------

def report_error(name: str, text: str) -> None:
    """Record and print a problem of the extension `name` (its folder name); one already recorded
    (a rescan finds the same missing requirement again) is not printed again."""
    with _lock:
        problems = _errors.setdefault(name, [])
        if text in problems:
            return
        problems.append(text)
    print(f"[extensions] {name}: {text}", file=sys.stderr, flush=True)


def disable_for_run(name: str, why: str, output: str = "") -> None:
    """Keep an extension from loading until the next start (its install.py failed); `output`,
    the end of what it printed, goes into the report."""
    _disabled_for_run[name] = why
    report_error(name, f"{why}; the extension is disabled until the next start"
                       + (f". Its last output:\n{output}" if output else ""))
    for ext in extensions:
        if ext.name == name:
            ext.disabled_reason = why


def errors_of(name: str) -> list[str]:
    return list(_errors.get(name, []))


def clear_errors() -> None:
    _errors.clear()
    _disabled_for_run.clear()


# ---- metadata.ini ----------------------------------------------------------------------------

def parse_list(text: str) -> list[str]:
    """A1111's list syntax in metadata.ini: names separated by commas and/or spaces."""
    return [item for item in re.split(r"[,\s]+", text.strip()) if item] if text else []


class ExtensionMetadata:
    """metadata.ini (configparser): [Extension] Name (canonical name) and Requires, and per
    script/callback sections ([scripts/x.py], [callbacks/...]) with Requires, Before, After."""

    filename = "metadata.ini"

    def __init__(self, path: str, canonical_name: str):
        self.path = path
        self.config = configparser.ConfigParser(interpolation=None)
        self.error: str | None = None
        filepath = os.path.join(path, self.filename)
        if os.path.isfile(filepath):
            try:
                self.config.read(filepath, encoding="utf8")
            except (configparser.Error, UnicodeDecodeError) as error:
                self.error = f"{self.filename} is not readable: {error}"
        self.canonical_name = self.config.get("Extension", "Name", fallback=canonical_name).lower().strip()
        self.requires = self.get_script_requirements("Requires", "Extension")

    def get_script_requirements(self, field: str, section: str, extra_section: str | None = None) -> list[str]:
        """The names listed under `field` in `section` (and `extra_section`), lower case."""
        text = self.config.get(section, field, fallback="")
        if extra_section:
            text = text + ", " + self.config.get(extra_section, field, fallback="")
        return [name.lower() for name in parse_list(text)]

    @property
    def name(self) -> str | None:
        return self.config.get("Extension", "Name", fallback=None)


# ---- git information, read from .git without running anything where possible ------------------

def _git_dir(path: str) -> str | None:
    dot_git = os.path.join(path, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    if os.path.isfile(dot_git):  # a worktree or submodule: "gitdir: <path>"
        try:
            with open(dot_git, encoding="utf8") as file:
                text = file.read().strip()
        except OSError:
            return None
        if text.startswith("gitdir:"):
            target = text[len("gitdir:"):].strip()
            target = target if os.path.isabs(target) else os.path.normpath(os.path.join(path, target))
            return target if os.path.isdir(target) else None
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf8") as file:
            return file.read().strip()
    except OSError:
        return None


def _common_dir(git_dir: str) -> str:
    common = _read(os.path.join(git_dir, "commondir"))  # worktrees keep refs in the main .git
    return os.path.normpath(os.path.join(git_dir, common)) if common else git_dir


def _resolve_ref(git_dir: str, ref: str) -> str | None:
    for base in dict.fromkeys([git_dir, _common_dir(git_dir)]):
        value = _read(os.path.join(base, *ref.split("/")))
        if value:
            return value
        packed = _read(os.path.join(base, "packed-refs"))
        for line in (packed or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and not line.startswith(("#", "^")):
                return parts[0]
    return None


def _remote_url(git_dir: str) -> str | None:
    """origin's URL from .git/config (else the first remote's)."""
    text = _read(os.path.join(_common_dir(git_dir), "config")) or ""
    urls: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        header = re.match(r'^\[\s*remote\s+"(.*)"\s*\]$', line)
        if header:
            section = header.group(1)
        elif line.startswith("["):
            section = None
        elif section is not None:
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "url" and section not in urls:
                urls[section] = value.strip()
    return urls.get("origin") or next(iter(urls.values()), None)


def _commit_time_loose(git_dir: str, sha: str) -> int | None:
    """The committer time of a loose commit object (a fresh clone's objects are packed: None)."""
    path = os.path.join(_common_dir(git_dir), "objects", sha[:2], sha[2:])
    try:
        with open(path, "rb") as file:
            data = zlib.decompress(file.read())
    except (OSError, zlib.error):
        return None
    match = re.search(rb"^committer .* (\d+) [+-]\d{4}$", data, re.MULTILINE)
    return int(match.group(1)) if match else None


_commit_times: dict[tuple[str, str], int | None] = {}  # (path, sha) -> time: `git show` once per commit


def _commit_time_git(path: str, sha: str) -> int | None:
    key = (os.path.realpath(path), sha)
    if key not in _commit_times:
        _commit_times[key] = _run_git_commit_time(path)
    return _commit_times[key]


def _run_git_commit_time(path: str) -> int | None:
    try:
        result = subprocess.run(["git", "-C", path, "show", "-s", "--format=%ct", "HEAD"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else None


UPDATE_TIMEOUT = 60  # seconds for one extension's `git fetch`
_update_checks: dict[str, tuple] = {}  # realpath -> (commit, status, can_update, update_error) of the last check


def _git(path: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run git in `path` (no shell; hooks and fsmonitor off, never a password prompt); a git that
    is missing or too slow comes back as a failed run with the reason in stderr."""
    command = ["git", "-c", "core.hooksPath=" + os.devnull, "-c", "core.fsmonitor=false", "-C", path, *args]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(command, 127, "", "git is not installed")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"git took longer than {timeout:g} seconds")


def read_git_info(path: str) -> dict[str, Any] | None:
    """remote, branch, commit_hash, commit_date of the git checkout at `path`; None if it is not one."""
    git_dir = _git_dir(path)
    if git_dir is None:
        return None
    head = _read(os.path.join(git_dir, "HEAD")) or ""
    branch = None
    if head.startswith("ref:"):
        ref = head[4:].strip()
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref
        commit = _resolve_ref(git_dir, ref)
    else:
        commit = head or None  # detached HEAD
    if commit and not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
        commit = None
    date = None
    if commit:
        date = _commit_time_loose(git_dir, commit) or _commit_time_git(path, commit)
    return {"remote": _remote_url(git_dir), "branch": branch, "commit_hash": commit or "", "commit_date": date}


# ---- the extension ---------------------------------------------------------------------------

class Extension:
    lock = threading.Lock()

    def __init__(self, name: str, path: str, enabled: bool = True, is_builtin: bool = False,
                 metadata: ExtensionMetadata | None = None):
        self.name = name
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin
        self.metadata = metadata or ExtensionMetadata(path, name)
        self.canonical_name = self.metadata.canonical_name
        self.status = ""
        self.can_update = False
        self.commit_hash = ""
        self.commit_date: int | None = None
        self.version = ""
        self.branch: str | None = None
        self.remote: str | None = None
        self.have_info_from_repo = False
        self.update_error: str | None = None  # why the last check for updates could not tell
        self.disabled_reason: str | None = _disabled_for_run.get(name)

    def __repr__(self) -> str:
        return f"Extension({self.name!r}, enabled={self.enabled}, builtin={self.is_builtin})"

    @property
    def error(self) -> str | None:
        """Every problem reported for this extension this run, one per line; None if none."""
        problems = errors_of(self.name)
        if self.metadata.error and self.metadata.error not in problems:
            problems.insert(0, self.metadata.error)
        return "\n".join(problems) if problems else None

    def read_info_from_repo(self) -> None:
        if self.have_info_from_repo:
            return
        with self.lock:
            if self.have_info_from_repo:
                return
            self.do_read_info_from_repo()

    def do_read_info_from_repo(self) -> None:
        info = read_git_info(self.path)
        if info is not None:
            self.remote = info["remote"]
            self.branch = info["branch"]
            self.commit_hash = info["commit_hash"]
            self.commit_date = info["commit_date"]
            self.version = self.commit_hash[:8]
            self.status = "unknown"
            checked = _update_checks.get(os.path.realpath(self.path))
            if checked and checked[0] == self.commit_hash:  # the last check still holds for this commit
                self.status, self.can_update, self.update_error = checked[1:]
        self.have_info_from_repo = True

    def check_updates(self) -> None:
        """A1111's check for updates: `git fetch` the remote, then compare HEAD with the fetched
        branch. Sets `status` to "latest", "behind HEAD" or "unknown (remote error)" (then
        `update_error` says why: offline, a remote that is gone), and `can_update`. Only git runs,
        with no hooks, no terminal prompt and a time limit; nothing of the extension is executed.
        The result is remembered for this folder and commit, so the rescanned table shows it."""
        self.read_info_from_repo()
        if not self.remote:
            return
        self.can_update, self.update_error = False, None
        ref = f"refs/remotes/origin/{self.branch}" if self.branch else "refs/remotes/origin/HEAD"
        fetched = _git(self.path, "fetch", "--quiet", "--no-recurse-submodules", "origin", timeout=UPDATE_TIMEOUT)
        if fetched.returncode != 0:
            lines = (fetched.stderr or fetched.stdout).strip().splitlines()
            self.update_error = f"could not fetch {self.remote}: {lines[-1] if lines else 'git failed'}"
            self.status = "unknown (remote error)"
        else:
            remote = _git(self.path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
            if remote.returncode != 0 or not remote.stdout.strip():
                self.update_error = f"the remote has no branch {self.branch or 'HEAD'}"
                self.status = "unknown (remote error)"
            elif remote.stdout.strip() != self.commit_hash:
                self.can_update, self.status = True, "behind HEAD"
            else:
                self.status = "latest"
        _update_checks[os.path.realpath(self.path)] = (self.commit_hash, self.status, self.can_update, self.update_error)

    def list_files(self, subdir: str, extension: str) -> list:
        """The files of `subdir` ending in `extension` (".py", ".js"), sorted, as A1111's ScriptFile."""
        dirpath = os.path.join(self.path, subdir)
        if not os.path.isdir(dirpath):
            return []
        tuple_type = ScriptFile
        scripts = sys.modules.get("modules.scripts")
        if scripts is not None and hasattr(scripts, "ScriptFile"):
            tuple_type = scripts.ScriptFile
        files = [tuple_type(self.path, filename, os.path.join(dirpath, filename)) for filename in sorted(os.listdir(dirpath))]
        return [f for f in files if os.path.splitext(f.path)[1].lower() == extension and os.path.isfile(f.path)]

    def to_dict(self) -> dict[str, Any]:
        """The fields of A1111's /sdapi/v1/extensions item, plus Easel's is_builtin and error."""
        self.read_info_from_repo()
        return {"name": self.name, "remote": self.remote or "", "branch": self.branch or "",
                "commit_hash": self.commit_hash, "version": self.version, "commit_date": self.commit_date or 0,
                "enabled": self.enabled, "is_builtin": self.is_builtin, "error": self.error}


# ---- discovery -------------------------------------------------------------------------------

def _folders(dirname: str) -> list[tuple[str, str]]:
    if not os.path.isdir(dirname):
        return []
    names = sorted(n for n in os.listdir(dirname) if not n.startswith(".") and os.path.isdir(os.path.join(dirname, n)))
    return [(n, os.path.join(dirname, n)) for n in names]


def list_extensions(settings: Mapping[str, Any] | None = None, cmd_opts: Any = None) -> list[Extension]:
    """Rescan both folders. `settings` (kept by reference, so later changes count) and `cmd_opts`
    replace the remembered ones when given; a settings dict gets A1111's two extension options
    when it lacks them (see ensure_settings)."""
    global _settings, _cmd_opts
    if settings is not None:
        if isinstance(settings, dict):
            ensure_settings(settings)
        _settings = settings
    if cmd_opts is not None:
        _cmd_opts = cmd_opts
    disabled = disabled_names()
    found: list[Extension] = []
    by_name: dict[str, Extension] = {}
    for dirname, is_builtin in ((extensions_builtin_dir, True), (extensions_dir, False)):
        for name, path in _folders(dirname):
            metadata = ExtensionMetadata(path, name)
            earlier = by_name.get(metadata.canonical_name)
            if earlier is not None:
                report_error(name, f'has the canonical name "{metadata.canonical_name}" of "{earlier.name}" '
                                   f"({earlier.path}); it is not loaded")
                continue
            extension = Extension(name, path, enabled=name not in disabled, is_builtin=is_builtin, metadata=metadata)
            found.append(extension)
            by_name[metadata.canonical_name] = extension
    with _lock:
        extensions[:] = found
        extension_paths.clear()
        extension_paths.update((e.path, e) for e in found)
        loaded_extensions.clear()
        loaded_extensions.update(by_name)
    _check_requirements(found, by_name)
    return list(found)


def _check_requirements(found: list[Extension], by_name: dict[str, Extension]) -> None:
    for extension in found:
        if not extension.enabled:
            continue
        for requirement in extension.metadata.requires:
            required = by_name.get(requirement)
            if required is None:
                report_error(extension.name, f'requires "{requirement}", which is not installed')
            elif not required.enabled:
                report_error(extension.name, f'requires "{required.name}", which is disabled')


def active() -> list[Extension]:
    """The extensions that load this run: enabled, not cut by the disable-all setting or flags,
    and not disabled for this run (a failed install.py)."""
    mode = disable_all_mode()
    if mode == "all":
        return []
    return [e for e in extensions if e.enabled and (e.is_builtin or mode != "extra") and e.name not in _disabled_for_run]


def find_extension(filename: str) -> Extension | None:
    """The extension a file belongs to (for crediting an error to it)."""
    target = os.path.realpath(filename)
    for extension in extensions:
        root = os.path.realpath(extension.path)
        if target == root or target.startswith(root + os.sep):
            return extension
    return None


# ---- files for the page ----------------------------------------------------------------------

def javascript_files() -> list[str]:
    """The javascript/*.js (and *.mjs) files of the active extensions, in load order."""
    return [f.path for e in active() for ext in (".js", ".mjs") for f in e.list_files("javascript", ext)]


def css_files() -> list[str]:
    """The style.css files of the active extensions."""
    return [path for e in active() if os.path.isfile(path := os.path.join(e.path, "style.css"))]


def localization_files() -> dict[str, str]:
    """Localization name -> its .json file; a later extension's file of the same name replaces an
    earlier one (A1111)."""
    return {os.path.splitext(f.filename)[0]: f.path for e in active() for f in e.list_files("localizations", ".json")}


# ---- preload.py ------------------------------------------------------------------------------

def active_folders(settings: Mapping[str, Any], cmd_opts: Any = None) -> list[tuple[str, str]]:
    """(name, path) of the extensions that would be active with these settings and flags, without
    listing them: built-ins first, then user extensions, each sorted by folder name. launch.py
    uses this for preload.py and install.py before the services exist."""
    mode = disable_all_mode(settings, cmd_opts if cmd_opts is not None else object())
    if mode == "all":
        return []
    disabled = disabled_names(settings)
    roots = [extensions_builtin_dir] + ([extensions_dir] if mode == "none" else [])
    return [(name, path) for root in roots for name, path in _folders(root) if name not in disabled]


def preload_scripts(settings: Mapping[str, Any], cmd_opts: Any = None) -> list[tuple[str, str]]:
    """(extension name, preload.py path) of the extensions that would be active."""
    return [(name, os.path.join(path, "preload.py")) for name, path in active_folders(settings, cmd_opts)
            if os.path.isfile(os.path.join(path, "preload.py"))]


def load_module(path: str, module_name: str | None = None):
    """Import a file as a module of its own (A1111's script_loading.load_module)."""
    import importlib.util

    name = module_name or os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preload_functions(settings: Mapping[str, Any], cmd_opts: Any = None) -> list:
    """Each active extension's `preload(parser)`, wrapped so that a failure (at import or in the
    call) is reported with the extension's name and the other flags still parse."""
    functions = []
    for name, script in preload_scripts(settings, cmd_opts):
        try:
            module = load_module(script, f"preload_{re.sub(r'[^0-9A-Za-z_]', '_', name)}")
        except BaseException as error:  # noqa: BLE001 - a broken preload.py must not stop the launch
            if isinstance(error, KeyboardInterrupt):
                raise
            report_error(name, f"preload.py failed to load: {type(error).__name__}: {error}")
            continue
        preload = getattr(module, "preload", None)
        if callable(preload):
            functions.append(_guarded_preload(name, preload))
    return functions


def _guarded_preload(name: str, preload):
    def run(parser) -> None:
        try:
            preload(parser)
        except Exception as error:  # noqa: BLE001 - e.g. a flag that clashes with one of ours
            report_error(name, f"preload(parser) failed: {type(error).__name__}: {error}")
    return run
