"""The embeddings folder(s): which textual-inversion files there are, read once, per model.

`refresh(model)` runs on the worker before each job (A1111 reloads embeddings in
``process_images``) and when a checkpoint is loaded: a scan stats every file and re-reads only
new or changed ones, so an unchanged folder costs a directory walk. `loaded` / `skipped` are
for the model of the last refresh (the API and the extra-networks panel show them);
`for_model(model)` gives any model its own view (the hires checkpoint may differ), cached per
encoder widths and tokenizer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable

from modules.core.embeddings import (Embedding, EmbeddingFileError, ModelEmbeddings, encoder_slots, is_candidate,
                                     read_embedding_file, unreadable)


class EmbeddingDatabase:
    def __init__(self, dirs: Iterable[Path | str]):
        self.dirs = [Path(d) for d in dirs]
        self._files: dict[Path, tuple[tuple[int, int], Embedding | None]] = {}
        self._views: dict[tuple, ModelEmbeddings] = {}
        self._current = ModelEmbeddings.build([], None)
        self._lock = threading.RLock()
        self._announced: tuple | None = None  # the (loaded, skipped) names last printed

    # -- files -------------------------------------------------------------------------------------
    def _candidates(self) -> list[Path]:
        found = []
        for root in self.dirs:
            if not root.is_dir():
                continue
            for folder, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames.sort()
                found += [Path(folder) / f for f in sorted(filenames) if is_candidate(Path(f))]
        return found

    def scan(self, force: bool = False) -> bool:
        """Re-read new and changed files (all of them with `force`); True when anything changed."""
        with self._lock:
            files: dict[Path, tuple[tuple[int, int], Embedding | None]] = {}
            for path in self._candidates():
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished while scanning
                if st.st_size == 0:
                    continue  # A1111 skips empty files silently (a file still being written)
                signature = (st.st_mtime_ns, st.st_size)
                known = self._files.get(path)
                if known is not None and known[0] == signature and not force:
                    files[path] = known
                    continue
                try:
                    embedding = read_embedding_file(path)
                except (EmbeddingFileError, OSError) as exc:
                    print(f"[easel] embedding {path.name} skipped: {exc}")
                    embedding = unreadable(path, str(exc))
                files[path] = (signature, embedding)
            def signatures(table):
                return {p: sig for p, (sig, _) in table.items()}

            changed = force or signatures(files) != signatures(self._files)
            if changed:
                self._files = files
                self._views.clear()
            return changed

    def embeddings(self) -> list[Embedding]:
        """Every file's entry in path order (later files win a name clash, as in A1111's walk)."""
        return [e for _, e in self._files.values() if e is not None]

    # -- per model ---------------------------------------------------------------------------------
    def for_model(self, model) -> ModelEmbeddings:
        """The view for `model` (None: no model yet, everything readable counts as loaded)."""
        with self._lock:
            if model is None:
                return ModelEmbeddings.build(self.embeddings(), None)
            tokenizer = model.tokenizers[0]
            slots = encoder_slots(model)
            key = (tuple(slots), id(tokenizer))
            view = self._views.get(key)
            if view is None or view.tokenizer is not tokenizer:
                view = ModelEmbeddings.build(self.embeddings(), slots, tokenizer)
                self._views[key] = view
            return view

    def refresh(self, model=None, force: bool = False, announce: bool = False) -> ModelEmbeddings:
        """Scan the folders and make `model` the one `loaded` / `skipped` describe. `announce`
        (A1111's textual_inversion_print_at_load): print the names when they differ from the
        ones printed last."""
        with self._lock:
            self.scan(force)
            self._current = current = self.for_model(model)
            names = (tuple(current.loaded), tuple(current.skipped))
            if announce and names != self._announced:
                self._announced = names
                print(f"Textual inversion embeddings loaded({len(names[0])}): {', '.join(names[0])}")
                if names[1]:
                    print(f"Textual inversion embeddings skipped({len(names[1])}): {', '.join(names[1])}")
            return current

    @property
    def loaded(self) -> dict[str, Embedding]:
        return self._current.loaded

    @property
    def skipped(self) -> dict[str, Embedding]:
        return self._current.skipped
