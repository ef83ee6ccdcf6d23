"""The LoRA files on disk (A1111's `networks.available_networks`).

Every .safetensors / .pt / .ckpt under the LoRA folders (sub-folders included) is one LoRA, named
by its file stem; its alias is the training output name from the metadata (`ss_output_name`). A
prompt may use either; an alias that two files share is refused as a name (A1111's forbidden
aliases), the file names still work. The first folder wins when two files have the same stem.
Hashes are computed when a job first needs one (`LoraFile.shorthash`) and kept while the file's
size and mtime stay the same.

A file that cannot be a LoRA (an HTML page saved by a failed download, a cut-off copy, an empty
file: its header or magic bytes say so) is not listed; the server log names it once, with the
reason, and a prompt that asks for it gets that reason back.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from modules.core.lora import EXTENSIONS, LoraFile

from .model_files import in_hidden_folder

_SHOWN = 30  # names listed in an unknown-name error


class LoraRegistry:
    def __init__(self, dirs: list[Path | str], show_hidden: Callable[[], bool] = lambda: True):
        self.dirs = [Path(d) for d in dirs if d]
        self.show_hidden = show_hidden  # the list_hidden_files setting: files in ".name" folders listed
        self._lock = threading.Lock()
        self._items: dict[str, LoraFile] = {}
        self._aliases: dict[str, LoraFile] = {}
        self._skipped: dict[str, LoraFile] = {}  # name -> an unreadable file (its `problem` says why)
        self._known: dict[tuple[Path, int, int], LoraFile] = {}  # (path, mtime_ns, size): keeps hashes
        self.refresh()

    def refresh(self) -> list[LoraFile]:
        found: dict[str, LoraFile] = {}
        skipped: dict[str, LoraFile] = {}
        known: dict[tuple[Path, int, int], LoraFile] = {}
        for root in self.dirs:
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                if path.suffix.lower() not in EXTENSIONS or not path.is_file():
                    continue
                if not self.show_hidden() and in_hidden_folder(path, root):  # list_hidden_files
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                stamp = (path.resolve(), st.st_mtime_ns, st.st_size)
                item = self._known.get(stamp)
                if item is None:
                    item = LoraFile.from_path(path)
                    if item.problem:  # said once per file version, not on every refresh
                        print(f"[easel] LoRA {path} skipped: {item.problem}")
                known[stamp] = item
                (skipped if item.problem else found).setdefault(item.name, item)
        aliases: dict[str, LoraFile] = {}
        shared = set()
        for item in found.values():
            if item.alias != item.name:
                if item.alias in aliases:
                    shared.add(item.alias)
                aliases[item.alias] = item
        for alias in shared | {"none"}:
            aliases.pop(alias, None)
        with self._lock:
            self._items, self._aliases, self._known = found, aliases, known
            self._skipped = {name: item for name, item in skipped.items() if name not in found}
        return self.items()

    def skipped(self) -> list[LoraFile]:
        """The files left out of the list because they cannot be read (`problem` says why)."""
        with self._lock:
            return sorted(self._skipped.values(), key=lambda i: i.name.lower())

    def items(self) -> list[LoraFile]:
        with self._lock:
            return sorted(self._items.values(), key=lambda i: i.name.lower())

    def names(self) -> list[str]:
        return [i.name for i in self.items()]

    def _lookup(self, name: str) -> LoraFile | None:
        with self._lock:
            return self._items.get(name) or self._aliases.get(name)

    def find(self, name: str) -> LoraFile | None:
        """By file name or alias; looks at the folders again before giving up (a file just added)."""
        item = self._lookup(name)
        if item is None:
            self.refresh()
            item = self._lookup(name)
        return item

    def require(self, name: str) -> LoraFile:
        """`find`, or LookupError whose message lists the known names (GenerationSettings.find_lora)."""
        item = self.find(name)
        if item is None:
            with self._lock:
                bad = self._skipped.get(name)
            if bad is not None:
                raise LookupError(f"LoRA '{name}' cannot be used: {bad.problem}")
            names = self.names()
            known = ", ".join(names[:_SHOWN]) or "none"
            if len(names) > _SHOWN:
                known += f" and {len(names) - _SHOWN} more"
            raise LookupError(f"unknown LoRA '{name}'; known: {known}")
        return item
