"""The VAE files on disk, as A1111 lists them (``sd_vae.refresh_vae_list``).

Looked for: every .pt/.ckpt/.safetensors under the VAE folder (``--vae-dir``, default
models/VAE), and ``*.vae.pt``/``*.vae.ckpt``/``*.vae.safetensors`` next to the checkpoints.
A1111 names each by its file name; for two files of one name, the one in the VAE folder wins. Listing only:
selecting an external VAE (the ``sd_vae`` option) is not implemented yet.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

VAE_SUFFIXES = (".pt", ".ckpt", ".safetensors")


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
        with self._lock:
            self._items = dict(sorted(items.items(), key=lambda kv: _natural_key(kv[0])))
        return self.list()

    def list(self) -> list[VaeFile]:
        with self._lock:
            return list(self._items.values())
