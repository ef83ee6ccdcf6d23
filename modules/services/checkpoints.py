"""The checkpoints on disk: discovery, A1111 titles and lazily cached hashes.

A1111's naming: `name` is the path relative to its models folder
(`sub/model.safetensors`), `model_name` the stem with sub-folders
(`sub/model`), `title` is `name [shorthash]` once the hash is known, where the short
hash is the first 10 hex digits of the file's sha256. Hashes are computed on demand
and cached in cache.json keyed by path, size and mtime.

Every file is listed, as in A1111; one that cannot be a checkpoint (model_files' first look) is
named in the log with its `problem`, and is not the default while a readable one exists.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modules.core import atomic_write

from .model_files import FileProbes, in_hidden_folder

EXTENSIONS = (".safetensors", ".ckpt")


@dataclass
class CheckpointInfo:
    filename: Path
    name: str
    model_name: str
    sha256: str | None = None
    problem: str | None = None  # why it cannot be loaded, by a first look at the file (None: looks fine)

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def short_title(self) -> str:
        """A1111's: the file's stem without its folders, and the short hash once known."""
        return f"{self.filename.stem} [{self.shorthash}]" if self.shorthash else self.filename.stem


class HashCache:
    """sha256 of files, cached on disk (A1111 keeps these in cache.json too)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if path and path.is_file():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8")).get("hashes", {})
            except (OSError, json.JSONDecodeError, AttributeError):
                self._data = {}

    def _key(self, file: Path) -> tuple[str, float, int]:
        st = file.stat()
        return str(file.resolve()), st.st_mtime, st.st_size

    def cached(self, file: Path) -> str | None:
        try:
            key, mtime, size = self._key(file)
        except OSError:
            return None
        entry = self._data.get(key)
        if entry and entry.get("mtime") == mtime and entry.get("size") == size:
            return entry["sha256"]
        return None

    def sha256(self, file: Path) -> str:
        found = self.cached(file)
        if found:
            return found
        digest = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        key, mtime, size = self._key(file)
        with self._lock:
            self._data[key] = {"sha256": digest.hexdigest(), "mtime": mtime, "size": size}
            self._save()
        return digest.hexdigest()

    def _save(self) -> None:
        if not self.path:
            return
        atomic_write.write_text(self.path, json.dumps({"hashes": self._data}, indent=1))  # under self._lock


class CheckpointRegistry:
    def __init__(self, dirs: list[Path], hashes: HashCache, default_name: str | None = None,
                 builtin: Path | None = None, extra_files: list[Path] = (), hashing: bool = True,
                 show_hidden: Callable[[], bool] = lambda: True):
        self.dirs = [d for d in dirs if d]
        self.show_hidden = show_hidden  # the list_hidden_files setting: files in ".name" folders listed
        self.hashing = hashing  # False (--no-hashing): no sha256 of checkpoints, so no "Model hash" either
        self.extra_files = [Path(f) for f in extra_files]  # --ckpt FILE: listed whatever its folder and suffix
        self.hashes = hashes
        self.default_name = default_name
        self.builtin = builtin.resolve() if builtin else None
        self._items: dict[str, CheckpointInfo] = {}
        self._probes = FileProbes("checkpoint")
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        found: dict[str, CheckpointInfo] = {}
        for root in self.dirs:
            if not root.is_dir():
                continue
            for file in sorted(root.rglob("*")):
                if file.suffix.lower() not in EXTENSIONS or not file.is_file():
                    continue
                if not self.show_hidden() and in_hidden_folder(file, root):  # list_hidden_files
                    continue
                name = file.relative_to(root).as_posix()
                info = CheckpointInfo(file, name, name.rsplit(".", 1)[0], self.hashes.cached(file))
                found.setdefault(name, info)
        for file in self.extra_files:
            if file.is_file() and file.resolve() not in {i.filename.resolve() for i in found.values()}:
                found.setdefault(file.name, CheckpointInfo(file.resolve(), file.name, file.stem, self.hashes.cached(file)))
        problems = self._probes.check(info.filename for info in found.values())
        for info in found.values():
            info.problem = problems.get(info.filename)
        self._items = found
        return self.list()

    def list(self) -> list[CheckpointInfo]:
        return sorted(self._items.values(), key=lambda i: i.name.lower())

    def titles(self) -> list[str]:
        return [i.title for i in self.list()]

    def ensure_hash(self, info: CheckpointInfo) -> CheckpointInfo:
        if info.sha256 is None and self.hashing:
            info.sha256 = self.hashes.sha256(info.filename)
        return info

    def find(self, text: str | None) -> CheckpointInfo | None:
        """Accepts A1111's ways of naming a checkpoint: title, name, model_name, the
        bare file name or stem, a short hash, or a full path."""
        if not text:
            return None
        text = text.strip()
        bare = text.split(" [")[0] if text.endswith("]") else text
        for info in self.list():
            if text in (info.title, info.name, info.model_name) or bare in (info.name, info.model_name):
                return info
        for info in self.list():
            if bare in (info.filename.name, info.filename.stem) or (info.shorthash and text in (info.shorthash, info.sha256)):
                return info
        path = Path(text).expanduser()
        if not path.is_file():
            return None
        listed = next((info for info in self.list() if info.filename.resolve() == path.resolve()), None)
        if listed is not None or path.suffix.lower() not in EXTENSIONS:
            return listed
        return CheckpointInfo(path.resolve(), path.name, path.stem, self.hashes.cached(path))

    def default(self) -> CheckpointInfo | None:
        """The one to load at start: the preferred name if present, else the user's first
        readable checkpoint, else the built-in model (else the first file, to report why)."""
        preferred = self.find(self.default_name)
        if preferred:
            return preferred
        items = self.list()
        readable = [i for i in items if i.problem is None]
        users = [i for i in readable if i.filename.resolve() != self.builtin]
        return (users or readable or items or [None])[0]
