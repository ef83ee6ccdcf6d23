"""What the ControlNet annotator networks share (``annotator_hed``, ``annotator_pidinet``,
``annotator_mlsd``, ``annotator_lineart*``, ``annotator_depth``, ``annotator_openpose*``): reading a
user's file as weights only, loading it strictly into the network built from its shapes, keeping
the built networks while their files are unchanged, and the extension's picture resizing (``hwc3``,
``resize_with_pad``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
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


# the pictures' resizing the extension's preprocessors share (modules.core.controlnet_preprocessors re-exports them)
def hwc3(x: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3); alpha composited over white."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    if x.shape[2] == 3:
        return x
    color, alpha = x[:, :, :3].astype(np.float32), x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def resize_with_pad(image: np.ndarray, resolution: int):
    """The extension's resize: the short side to ``resolution``, edges padded to multiples of 64;
    returns the padded picture and the function that cuts a result back to the unpadded size."""
    h, w = image.shape[:2]
    k = float(resolution) / float(min(h, w))
    target_h, target_w = int(np.round(h * k)), int(np.round(w * k))
    image = cv2.resize(image, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    padded = np.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")

    def remove_pad(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:target_h, :target_w])

    return np.ascontiguousarray(padded), remove_pad
