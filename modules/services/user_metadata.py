"""A1111's user metadata of an extra network: the `.json` file beside the model file, with the same
stem (`models/Lora/foo.safetensors` -> `models/Lora/foo.json`).

A1111's keys: `description` and `notes` for every kind; for a LoRA also `activation text` (added
to the prompt with the `<lora:...>` tag), `preferred weight` (the tag's weight; 0: the default
multiplier), `negative text` (added to the negative prompt) and `sd version`. Other keys (an
extension's, a newer version's) are kept as they are: a save merges into what the file holds.

Reading never fails: a missing file is no metadata, a file that is not a JSON object is no
metadata either, said once in the server log per version of the file. Writing refuses a file
that is not JSON (rewriting it would lose what the user had) and any place outside the models
folders it is given (the caller's folders for that kind of network).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable

from modules.core import atomic_write

DESCRIPTION, NOTES = "description", "notes"
ACTIVATION_TEXT, PREFERRED_WEIGHT = "activation text", "preferred weight"
NEGATIVE_TEXT, SD_VERSION = "negative text", "sd version"
SD_VERSIONS = ("SD1", "SD2", "SDXL", "SD3", "Unknown")  # the choices of A1111's Lora editor


class MetadataError(ValueError):
    """A save that cannot be done; the message says why, for the editor's status line."""


def metadata_path(model: Path | str) -> Path:
    """`foo.safetensors` -> `foo.json` (only the last suffix goes, as A1111's splitext)."""
    model = Path(model)
    return model.with_name(f"{model.stem}.json") if model.suffix else model.with_name(f"{model.name}.json")


_cache: dict[Path, tuple[tuple[int, int], dict]] = {}  # json path -> ((mtime_ns, size), values)
_reported: set[tuple[Path, tuple[int, int]]] = set()
_lock = threading.Lock()


def _load(path: Path) -> tuple[tuple[int, int] | None, dict | None, str | None]:
    """(stamp, values, problem): stamp None when there is no file; values None when it is not usable."""
    try:
        st = path.stat()
    except OSError:
        return None, {}, None
    stamp = (st.st_mtime_ns, st.st_size)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8 (a ValueError), not JSON
        return stamp, None, str(exc)
    if not isinstance(data, dict):
        return stamp, None, f"holds a JSON {type(data).__name__}, not an object"
    return stamp, data, None


def read(model: Path | str | None) -> dict[str, Any]:
    """The user metadata of the model file (a copy; {} when there is none or it cannot be read)."""
    if model is None:
        return {}
    path = metadata_path(model)
    with _lock:
        known = _cache.get(path)
    try:
        st = path.stat()
        if known and known[0] == (st.st_mtime_ns, st.st_size):
            return dict(known[1])
    except OSError:
        return {}
    stamp, data, problem = _load(path)
    if stamp is None:
        return {}
    if data is None:
        with _lock:
            first = (path, stamp) not in _reported
            _reported.add((path, stamp))
        if first:
            print(f"[easel] user metadata {path} ignored: {problem}")
        return {}
    with _lock:
        _cache[path] = (stamp, data)
    return dict(data)


def text(values: dict, key: str) -> str:
    """A text value of the metadata ('' when absent or not text)."""
    value = values.get(key)
    return value if isinstance(value, str) else ""


def preferred_weight(values: dict) -> float:
    """`preferred weight` as a number; 0 (no preference) when absent, not a number or not finite."""
    value = values.get(PREFERRED_WEIGHT, 0.0)
    if isinstance(value, bool):
        return 0.0
    try:
        weight = float(value)
    except (TypeError, ValueError):
        return 0.0
    return weight if weight == weight and abs(weight) != float("inf") else 0.0


def inside(path: Path, roots: Iterable[Path | str]) -> bool:
    """Whether `path` lies under one of the folders, by its normalised absolute path (`..` undone;
    links within the folders are the user's own set-up and stay allowed)."""
    where = os.path.normcase(os.path.abspath(path))
    for root in roots:
        top = os.path.normcase(os.path.abspath(root))
        try:
            if where != top and os.path.commonpath([where, top]) == top:
                return True
        except ValueError:  # another drive
            continue
    return False


def write(model: Path | str, changes: dict[str, Any], roots: Iterable[Path | str]) -> dict[str, Any]:
    """Merge `changes` into the model's json (keys the file has and `changes` does not stay) and
    write it whole (a temporary file, then a rename). Returns what the file now holds.
    MetadataError: the model file is not in `roots`, it is gone, or its json is not a JSON object."""
    model = Path(model)
    path = metadata_path(model)
    roots = [Path(r) for r in roots if r]
    if not inside(model, roots) or not inside(path, roots):
        raise MetadataError(f"{model.name} is not in the models folders; nothing saved")
    if not model.is_file():
        raise MetadataError(f"{model.name} is gone; press Refresh")
    stamp, existing, problem = _load(path)
    if existing is None:
        raise MetadataError(f"{path.name} cannot be read ({problem}); fix or remove it first, nothing saved")
    merged = {**existing, **changes}
    atomic_write.write_text(path, json.dumps(merged, indent=4, ensure_ascii=False) + "\n")
    with _lock:
        _cache.pop(path, None)
    return dict(merged)
