"""The HED soft-edge network of sd-webui-controlnet's ``softedge_hed``, ``softedge_hedsafe`` and
``scribble_hed``, run from the user's ``hed/ControlNetHED.pth`` (lllyasviel's Apache-2.0 HED).

The file is a plain state dict: ``norm`` (1, 3, 1, 1), then blocks ``block1`` .. ``block5``, each a
few 3x3 convolutions (``convs.N``, ReLU after each) and a 1x1 ``projection`` to one channel; every
block after the first starts with a 2x2 max pool. The network is built from the file's shapes (block
count, widths, depth), read with weights only. It takes RGB in 0..255; the edge map is the sigmoid of
the mean of the five projections, each resized to the picture.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .annotator_files import NetworkCache
from .checkpoint_file import CheckpointError, CheckpointFile

FILE = "hed/ControlNetHED.pth"  # under the annotator folder, as the extension's annotator/downloads
_CONV = re.compile(r"^block(\d+)\.convs\.(\d+)\.weight$")


class HedNetwork(torch.nn.Module):
    """``norm`` and the blocks; ``forward`` gives the projections (one (1, 1, h, w) map per block)."""

    def __init__(self, depths: list[int], widths: list[int]):
        super().__init__()
        self.norm = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        blocks, channels = [], 3
        for depth, width in zip(depths, widths):
            block = torch.nn.Module()
            block.convs = torch.nn.Sequential(*[torch.nn.Conv2d(channels if i == 0 else width, width, 3, padding=1)
                                                for i in range(depth)])
            block.projection = torch.nn.Conv2d(width, 1, 1)
            blocks.append(block)
            channels = width
        for index, block in enumerate(blocks, start=1):
            self.add_module(f"block{index}", block)
        self.count = len(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, outs = x - self.norm, []
        for index in range(1, self.count + 1):
            block = getattr(self, f"block{index}")
            if index > 1:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            for conv in block.convs:
                h = F.relu(conv(h))
            outs.append(block.projection(h))
        return outs


def build(path: Path) -> HedNetwork:
    """The network of a ControlNetHED file (CheckpointError when it is not one)."""
    file = CheckpointFile(path)
    try:
        depth: dict[int, int] = {}
        width: dict[int, int] = {}
        for key, shape in file.shapes.items():
            found = _CONV.match(key)
            if found:
                block, conv = int(found.group(1)), int(found.group(2))
                depth[block] = max(depth.get(block, 0), conv + 1)
                width[block] = shape[0]
        if "norm" not in file.shapes or not depth or sorted(depth) != list(range(1, len(depth) + 1)):
            raise CheckpointError(f"{Path(path).name} is not a ControlNetHED state dict "
                                  f"(norm, block1..blockN.convs.*, block*.projection)")
        net = HedNetwork([depth[i] for i in sorted(depth)], [width[i] for i in sorted(width)])
        missing = [k for k in net.state_dict() if k not in file.shapes]
        if missing:
            raise CheckpointError(f"{Path(path).name} lacks {', '.join(missing[:3])}")
        state = {k: file.get(k, torch.float32) for k in net.state_dict()}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{Path(path).name}: {str(exc).splitlines()[0]}") from None
    finally:
        file.close()
    return net.eval()


_NETWORKS = NetworkCache()


def network(path: Path) -> HedNetwork:
    """The built network of ``path``, kept while the file is unchanged (the last two files)."""
    return _NETWORKS.get(path, build)


@torch.no_grad()
def edges(net: HedNetwork, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 edge strength in [0, 1]."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]
    maps = [cv2.resize(o[0, 0].numpy().astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            for o in net(x)]
    return 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
