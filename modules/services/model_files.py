"""A first look at the model files in the user's folders, once per file version.

A file dropped in a models folder may be anything: an HTML page saved by a failed download, a
cut-off copy, an empty file. The checkpoint and VAE registries still list every file (as A1111
does; choosing a bad one is refused with its reason), but the server log says at once which ones
cannot be loaded and why. The look is cheap (core.checkpoint_file.probe: a bounded header read or
four magic bytes) and is taken again only when a file's size or mtime changes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

from modules.core.checkpoint_file import CheckpointError, probe


def in_hidden_folder(path: Path, root: Path) -> bool:
    """Whether `path` lies in a folder below `root` whose name starts with "." (A1111's hidden
    directory: with the list_hidden_files setting off, the model lists leave such files out)."""
    return any(part.startswith(".") for part in Path(path).relative_to(root).parts[:-1])


class FileProbes:
    def __init__(self, kind: str):
        self.kind = kind  # "checkpoint", "VAE": how the log names the files
        self._seen: dict[tuple[Path, int, int], str | None] = {}  # (path, mtime_ns, size) -> problem
        self._lock = threading.Lock()

    def check(self, paths: Iterable[Path]) -> dict[Path, str | None]:
        """{path: why it cannot be loaded, None when it looks fine}; a new or changed bad file is
        reported in the log. Files not passed are forgotten."""
        with self._lock:
            seen, self._seen = self._seen, {}
            out = {}
            for path in paths:
                try:
                    st = path.stat()
                except OSError as exc:
                    out[path] = f"{path.name} cannot be read: {exc.strerror or exc}"
                    continue
                key = (path.resolve(), st.st_mtime_ns, st.st_size)
                if key not in seen:
                    seen[key] = self._probe(path)
                self._seen[key] = out[path] = seen[key]
            return out

    def _probe(self, path: Path) -> str | None:
        try:
            probe(path)
        except CheckpointError as exc:
            print(f"[easel] {self.kind} {path} cannot be loaded: {exc}")
            return str(exc)
        return None
