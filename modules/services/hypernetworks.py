"""The hypernetwork files on disk, as A1111 lists them (``--hypernetwork-dir``, default
models/hypernetworks): every ``*.pt`` below the folder, named by its stem. Read again on each look,
so a file dropped in is usable at once; an unreadable one is refused when a prompt names it.

With A1111's print_hypernet_extra (``print_extra``), a file a job loads has its description printed
to the console first (layer structure, activation, weight initialisation, layer norm, dropout, as
A1111 prints them when it loads one)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .model_files import in_hidden_folder


class HypernetworkRegistry:
    def __init__(self, folders: list[Path], show_hidden: Callable[[], bool] = lambda: True,
                 print_extra: Callable[[], bool] = lambda: False):
        self.folders = [Path(f) for f in folders if f]
        self.show_hidden = show_hidden  # the list_hidden_files setting: files in ".name" folders listed
        self.print_extra = print_extra  # the print_hypernet_extra setting

    def items(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*.pt")):
                    if self.show_hidden() or not in_hidden_folder(path, folder):
                        found.setdefault(path.stem, path)
        return found

    def require(self, name: str) -> Path | None:
        """The file of a `<hypernet:name>`; LookupError naming the known ones for an unknown name."""
        items = self.items()
        if name in items:
            if self.print_extra():  # a job is about to load it (modules.core.prompt_networks)
                self._print_extra(name, items[name])
            return items[name]
        known = ", ".join(items) or "none: put .pt files in " + " or ".join(str(f) for f in self.folders)
        raise LookupError(f"unknown hypernetwork '{name}'; known: {known}")

    def always(self, name: str | None, strength: float) -> tuple[str, float] | None:
        """A1111's sd_hypernetwork: (name, strength) of the hypernetwork every prompt gets, or None for
        "None" or a name with no file (A1111 adds only a listed one, and says nothing otherwise)."""
        if not name or name == "None" or name not in self.items():
            return None
        return name, float(strength)

    @staticmethod
    def _print_extra(name: str, path: Path) -> None:
        from modules.core import hypernetwork

        try:
            lines = hypernetwork.read_extra_info(path)
        except hypernetwork.HypernetworkError:
            return  # the load that follows refuses it with the reason
        for line in lines:
            print(line)
