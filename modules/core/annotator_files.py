"""What the ControlNet annotator networks share (``annotator_hed``, ``annotator_pidinet``,
``annotator_mlsd``, ``annotator_lineart*``, ``annotator_depth``, ``annotator_openpose*``): reading a
user's file as weights only, loading it strictly into the network built from its shapes, and keeping
the built networks while their files are unchanged."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint_file import CheckpointError, CheckpointFile


def read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of an annotator file, floats as float32, without the ``module.`` prefix a
    DataParallel save puts on each key; CheckpointError naming ``what`` when it cannot be read."""
    try:
        file = CheckpointFile(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    try:
        return {str(key).removeprefix("module."): file.get(key, torch.float32) for key in file.shapes}
    finally:
        file.close()


def load(net: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    """``state`` into ``net`` strictly (every key, every shape), else a CheckpointError naming the file."""
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{what}: {Path(path).name} does not fit the network: {detail[:400]}") from None
    return net.eval()


def load_named(net: nn.Module, state: dict[str, torch.Tensor], name: str) -> nn.Module:
    """``state`` into ``net`` strictly, else a CheckpointError with the file's name and torch's first
    mismatch."""
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{name}: {lines[1] if len(lines) > 1 else lines[0]}") from None
    return net.eval()


def not_this(path: Path, what: str, layout: str) -> CheckpointError:
    return CheckpointError(f"{what}: {Path(path).name} is not that network's state dict ({layout})")


class NetworkCache:
    """Networks built from files, each kept while its file is unchanged (the last ``size`` built)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._built: OrderedDict[tuple, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, build: Callable[[Path], nn.Module], *key) -> nn.Module:
        """``build(path)``, or the network built before from the same file; ``key`` tells apart
        networks built differently from one file."""
        stat = Path(path).stat()
        full = (str(path), stat.st_mtime_ns, stat.st_size, *key)
        with self._lock:
            if full not in self._built:
                self._built[full] = build(Path(path))
                while len(self._built) > self.size:
                    self._built.popitem(last=False)
            self._built.move_to_end(full)
            return self._built[full]
