"""A1111's `modules.hashes`: sha256 of model files, cached.

The cache is the running server's hash cache (DATA_DIR/cache.json, the one the checkpoint list
uses), keyed by the file's path, size and modification time; A1111's `title` argument (its cache
key) is accepted and not needed. Before the server exists nothing is cached.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path

BLOCK = 1 << 20
_addnet: dict[tuple[str, float, int], str] = {}  # (path, mtime, size) -> addnet hash, this run only
_lock = threading.Lock()


def _hash_cache():
    shared = sys.modules.get("modules.shared")
    engine = getattr(shared, "engine", None) if shared is not None else None
    return engine.checkpoints.hashes if engine is not None else None


def calculate_sha256(filename) -> str:
    digest = hashlib.sha256()
    with open(filename, "rb") as file:
        for block in iter(lambda: file.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def addnet_hash_safetensors(b) -> str:
    """sha256 of a .safetensors file's tensor data, without its JSON header (kohya's
    "addnet" hash, which LoRA infotexts use)."""
    digest = hashlib.sha256()
    b.seek(0)
    header_length = int.from_bytes(b.read(8), "little")
    b.seek(8 + header_length)
    for block in iter(lambda: b.read(BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def _key(filename) -> tuple[str, float, int]:
    st = os.stat(filename)
    return os.path.realpath(filename), st.st_mtime, st.st_size


def sha256_from_cache(filename, title=None, use_addnet_hash: bool = False) -> str | None:
    """The cached hash of the file, None when it is not known (or the file changed since)."""
    if not os.path.isfile(filename):
        return None
    if use_addnet_hash:
        return _addnet.get(_key(filename))
    cache = _hash_cache()
    return cache.cached(Path(filename)) if cache is not None else None


def sha256(filename, title=None, use_addnet_hash: bool = False) -> str | None:
    """The file's hash, computed (and cached) when not known; None when there is no such file."""
    if not os.path.isfile(filename):
        return None
    if use_addnet_hash:
        key = _key(filename)
        with _lock:
            if key not in _addnet:
                with open(filename, "rb") as file:
                    _addnet[key] = addnet_hash_safetensors(file)
            return _addnet[key]
    cache = _hash_cache()
    return cache.sha256(Path(filename)) if cache is not None else calculate_sha256(filename)


def cache(subsection: str) -> dict:
    """A1111 hands out its cache.json sections here; Easel's cache is not a plain dict, so an
    extension gets a section of its own for this run."""
    with _lock:
        return _sections.setdefault(subsection, {})


def dump_cache() -> None:
    """Easel writes its hash cache as hashes are computed."""


_sections: dict[str, dict] = {}
