"""Sole owner of the loaded checkpoint.

Switching checkpoints checks the new file first (header + architecture detection) so a
corrupt or unsupported file is refused while the current model stays loaded; then the
previous model is released completely before the new one is read, so memory after N
switches stays where one load left it.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from typing import Callable

import torch

from modules.core.checkpoint_file import CheckpointFile
from modules.core.devices import DevicePolicy
from modules.core.model_detection import detect
from modules.core.model_loader import LoadedModel, load_checkpoint

from .checkpoints import CheckpointInfo
from .console_progress import console_line


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # give freed heap pages back to the OS (glibc); harmless elsewhere
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelCache:
    def __init__(self, policy: DevicePolicy, on_loaded: Callable[[LoadedModel, CheckpointInfo], None] | None = None,
                 companions: Callable[[str], object] | None = None):
        self.policy = policy
        self.companions = companions  # text encoders / VAE a checkpoint leaves out (services.companions)
        self.model: LoadedModel | None = None
        self.info: CheckpointInfo | None = None
        self._lock = threading.RLock()
        self._on_loaded = on_loaded

    def load(self, info: CheckpointInfo) -> LoadedModel:
        with self._lock:
            if self.model is not None and self.info is not None and self.info.filename == info.filename:
                return self.model
            # refuse a bad file before giving up the current model
            probe = CheckpointFile(info.filename)
            try:
                detect(probe.shapes, probe.metadata, probe.yaml_parameterization())
            finally:
                probe.close()
            previous = self.info
            self.unload()
            try:
                self.model = load_checkpoint(info.filename, self.policy, self.companions)
            except Exception:
                release_memory()
                if previous is not None:  # put the old one back so the server keeps working
                    self.model = load_checkpoint(previous.filename, self.policy, self.companions)
                    self.info = previous
                raise
            self.info = info
            console_line(f"Model loaded: {info.name} ({self.model.spec.label}) in {self.model.load_seconds:.1f}s")
            if self._on_loaded:
                self._on_loaded(self.model, info)
            return self.model

    def unload(self) -> None:
        with self._lock:
            self.model = None
            self.info = None
            release_memory()
