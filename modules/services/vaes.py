"""The VAE files on disk, as A1111 lists them (``sd_vae.refresh_vae_list``).

Looked for: every .pt/.ckpt/.safetensors under the VAE folder (``--vae-dir``, default
models/VAE), and ``*.vae.pt``/``*.vae.ckpt``/``*.vae.safetensors`` next to the checkpoints.
A1111 names each by its file name; for two files of one name, the one in the VAE folder wins.
Every file is listed; one that cannot be a VAE file (model_files' first look) is named in the log,
and choosing it is refused with that reason.

Choosing the VAE for a checkpoint (A1111's ``sd_vae.resolve_vae``): ``--vae-path`` wins; then,
while sd_vae_overrides_per_model_preferences is on (the default), the option's choice other than
"Automatic" (a file, or "None": the checkpoint's own). Otherwise the checkpoint's preference: the
"vae" of its user metadata (``<stem>.json`` beside it: a VAE's name, or "None"), then a VAE named
like the checkpoint (``<stem>.vae.*`` beside it or in the VAE folder); then the option again
("Automatic": the checkpoint's own). ``apply_vae`` puts the chosen one into the loaded model
(core.vae does the reading and the exact restore).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from modules.core import vae as core_vae
from modules.core.model_loader import LoadedModel

from . import user_metadata
from .model_files import FileProbes

VAE_SUFFIXES = (".pt", ".ckpt", ".safetensors")
AUTOMATIC, NONE = "Automatic", "None"


@dataclass(frozen=True)
class VaeFile:
    model_name: str  # the file name, A1111's key
    filename: Path


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class VaeRegistry:
    def __init__(self, vae_dirs: list[Path], checkpoint_dirs: list[Path] = ()):
        self.vae_dirs = [Path(d) for d in vae_dirs if d]
        self.checkpoint_dirs = [Path(d) for d in checkpoint_dirs if d]
        self._lock = threading.Lock()
        self._items: dict[str, VaeFile] = {}
        self._probes = FileProbes("VAE")
        self.refresh()

    def _candidates(self) -> list[Path]:
        found = []
        for root in self.checkpoint_dirs:  # A1111 looks next to the checkpoints first
            if root.is_dir():
                found += [p for p in sorted(root.rglob("*.vae.*")) if p.suffix.lower() in VAE_SUFFIXES]
        for root in self.vae_dirs:
            if root.is_dir():
                found += [p for p in sorted(root.rglob("*")) if p.suffix.lower() in VAE_SUFFIXES]
        return [p for p in found if p.is_file()]

    def refresh(self) -> list[VaeFile]:
        items: dict[str, VaeFile] = {}
        for path in self._candidates():
            items[path.name] = VaeFile(path.name, path)  # later (VAE folder) wins, as in A1111
        self._probes.check(v.filename for v in items.values())  # logs the files that cannot be VAEs
        with self._lock:
            self._items = dict(sorted(items.items(), key=lambda kv: _natural_key(kv[0])))
        return self.list()

    def list(self) -> list[VaeFile]:
        with self._lock:
            return list(self._items.values())

    def find(self, name: str) -> VaeFile | None:
        with self._lock:
            return self._items.get(name)

    def choices(self) -> tuple[str, ...]:
        """The values of the ``sd_vae`` option: "Automatic", "None" and the file names."""
        return (AUTOMATIC, NONE, *(v.model_name for v in self.list()))

    def near_checkpoint(self, checkpoint: Path) -> VaeFile | None:
        """A1111's ``find_vae_near_checkpoint``: a listed VAE whose file name starts with the
        checkpoint's stem (``model.vae.safetensors`` for ``model.safetensors``)."""
        stem = Path(checkpoint).name.rsplit(".", 1)[0]
        for vae in self.list():
            if vae.model_name.startswith(stem + "."):
                return vae
        return None

    def resolve(self, choice: str | None, checkpoint: Path, vae_path: str | None = None,
                setting_wins: bool = True) -> Path | None:
        """The VAE file for `checkpoint` under the option value `choice`; None: its own VAE.
        `setting_wins`: sd_vae_overrides_per_model_preferences. An unknown file name is a
        ValueError naming it."""
        if vae_path:
            return Path(vae_path)
        if not (setting_wins and choice != AUTOMATIC):
            preferred = user_metadata.text(user_metadata.read(checkpoint), "vae")
            if preferred == NONE:
                return None
            found = self.find(preferred) if preferred not in ("", AUTOMATIC) else None
            if found is not None:
                return found.filename
            near = self.near_checkpoint(checkpoint)
            if near is not None:
                return near.filename
        return self._from_setting(choice)

    def _from_setting(self, choice: str | None) -> Path | None:
        """The option's own VAE: a file's, or None ("None", "Automatic": the checkpoint's own)."""
        if choice in (None, "", NONE, AUTOMATIC):
            return None
        found = self.find(choice)
        if found is None:
            self.refresh()
            found = self.find(choice)
        if found is None:
            raise ValueError(f"unknown VAE '{choice}'; known: {', '.join(self.choices())}")
        return found.filename


def apply_vae(model: LoadedModel, vae_file: Path | None, cache: core_vae.VaeStateCache | None = None) -> None:
    """Put `vae_file` (None: the checkpoint's own VAE) into the loaded model. A file that does
    not fit raises a ValueError naming it, and the model keeps its VAE. ``cache``: VAE files kept
    in RAM (sd_vae_checkpoint_cache)."""
    if vae_file is None:
        core_vae.restore_vae(model)
    else:
        core_vae.load_vae(model, vae_file, cache)
