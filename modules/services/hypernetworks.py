"""The hypernetwork files on disk, as A1111 lists them (``--hypernetwork-dir``, default
models/hypernetworks): every ``*.pt`` below the folder, named by its stem. Read again on each look,
so a file dropped in is usable at once; an unreadable one is refused when a prompt names it."""

from __future__ import annotations

from pathlib import Path


class HypernetworkRegistry:
    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders if f]

    def items(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*.pt")):
                    found.setdefault(path.stem, path)
        return found

    def require(self, name: str) -> Path | None:
        """The file of a `<hypernet:name>`; LookupError naming the known ones for an unknown name."""
        items = self.items()
        if name in items:
            return items[name]
        known = ", ".join(items) or "none: put .pt files in " + " or ".join(str(f) for f in self.folders)
        raise LookupError(f"unknown hypernetwork '{name}'; known: {known}")
