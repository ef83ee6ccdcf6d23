"""The PiDiNet soft-edge network of sd-webui-controlnet's ``softedge_pidinet``, ``softedge_pidisafe``,
``scribble_pidinet`` and ``t2ia_sketch_pidi``, run from the user's ``pidinet/table5_pidinet.pth`` (Zhuo Su
and Wenzhe Liu's MIT-licensed Pixel Difference Network, the "carv4" model with attention and dilation).

The file holds the training weights (a state dict, possibly under ``state_dict``, keys possibly with
DataParallel's ``module.`` prefix): ``init_block`` (3 -> C, 3x3, no bias), fifteen blocks ``block1_1`` ..
``block4_4`` (a depthwise 3x3 ``conv1``, ReLU, a 1x1 ``conv2``; the first block of stages 2..4 pools by 2
and adds a 1x1 ``shortcut``), then per stage a ``dilations.i`` module (1x1 ``conv1``, four dilated 3x3
convolutions summed), an ``attentions.i`` module (spatial attention) and a 1x1 ``conv_reduces.i``, and a
``classifier`` fusing the four maps. The 3x3 kernels of ``init_block`` and the blocks' ``conv1`` are
pixel-difference kernels whose kind goes round "cd, ad, rd, cv": central differences, angular
differences, radial differences (a 5x5 ring) and plain. The angular and radial ones are turned once, when
the file is read, into the plain kernel that computes the same sums; a central-difference layer runs its
kernel and subtracts the centre pixel times the kernel's sum, as the original computes it (folding that
into the kernel would sum in another order and move a few pixels of the map by a level). The widths come
from the file's shapes. It takes BGR in 0..1; the edge map is the sigmoid of the classifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .annotator_files import NetworkCache, load_named
from .checkpoint_file import CheckpointError, CheckpointFile

FILE = "pidinet/table5_pidinet.pth"  # under the annotator folder, as the extension's annotator/downloads
STAGES = (3, 4, 4, 4)  # blocks per stage: block1_1..block1_3, block2_1..block2_4, ...
KINDS = ("cd", "ad", "rd", "cv") * 4  # carv4: init_block, then the fifteen blocks in order
DILATIONS = (5, 7, 9, 11)  # the four 3x3 convolutions of each dilation module
_ANGULAR = [3, 0, 1, 6, 4, 2, 7, 8, 5]  # in a flattened 3x3 kernel, the tap before each one going clockwise
_RING_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]  # a 5x5 kernel's taps two steps out, and one step out
_RING_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def plain_kernel(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The ordinary kernel of an "ad" or "rd" 3x3 kernel: (O, I, 3, 3), or (O, I, 5, 5) for "rd"; the
    others as they are ("cd": its centre term is subtracted when it runs, ``centre_difference``)."""
    out, into = weight.shape[:2]
    flat = weight.reshape(out, into, 9)
    if kind == "ad":  # sum_k w_k (x_k - x_clockwise(k))
        return (flat - flat[:, :, _ANGULAR]).reshape(out, into, 3, 3)
    if kind == "rd":  # sum_k w_k (x_outer(k) - x_inner(k)) over the eight directions
        ring = weight.new_zeros(out, into, 25)
        ring[:, :, _RING_OUTER] = flat[:, :, 1:]
        ring[:, :, _RING_INNER] = -flat[:, :, 1:]
        return ring.reshape(out, into, 5, 5)
    return weight


def centre_difference(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A "cd" layer: sum_k w_k (x_k - x_centre), the kernel's output less the centre times its sum."""
    centre = conv.weight.sum(dim=(2, 3), keepdim=True)
    return conv(x) - F.conv2d(x, centre, groups=conv.groups)


class Block(torch.nn.Module):
    """A depthwise pixel-difference convolution, ReLU, a 1x1 convolution, and the input added back."""

    def __init__(self, kind: str, channels: int, out: int, pool: bool):
        super().__init__()
        size, self.centre = 5 if kind == "rd" else 3, kind == "cd"
        self.conv1 = torch.nn.Conv2d(channels, channels, size, padding=size // 2, groups=channels, bias=False)
        self.conv2 = torch.nn.Conv2d(channels, out, 1, bias=False)
        self.shortcut = torch.nn.Conv2d(channels, out, 1) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        y = self.conv2(F.relu(centre_difference(self.conv1, x) if self.centre else self.conv1(x)))
        return y + (self.shortcut(x) if self.shortcut is not None else x)


class Dilation(torch.nn.Module):
    """ReLU, a 1x1 convolution, and the sum of four dilated 3x3 convolutions of it."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, width, 1)
        for index, rate in enumerate(DILATIONS, start=1):
            self.add_module(f"conv2_{index}", torch.nn.Conv2d(width, width, 3, padding=rate, dilation=rate, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return sum(getattr(self, f"conv2_{i}")(x) for i in range(1, len(DILATIONS) + 1))


class Attention(torch.nn.Module):
    """The input weighted by a one-channel sigmoid map of it."""

    def __init__(self, channels: int, middle: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, middle, 1)
        self.conv2 = torch.nn.Conv2d(middle, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


def block_names() -> list[str]:
    return [f"block{stage}_{i}" for stage, count in enumerate(STAGES, start=1) for i in range(1, count + 1)]


class PiDiNet(torch.nn.Module):
    """``widths``: each block's output channels; ``width``: the dilation modules' width;
    ``middle``: the attention modules'. Its keys are the file's, its kernels the plain ones."""

    def __init__(self, stem: int, widths: list[int], width: int, middle: int):
        super().__init__()
        self.init_block = torch.nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.stage_ends, index, channels = [], 0, stem
        for stage, count in enumerate(STAGES, start=1):
            for i in range(1, count + 1):
                block = Block(KINDS[index + 1], channels, widths[index], pool=i == 1 and stage > 1)
                self.add_module(f"block{stage}_{i}", block)
                channels, index = widths[index], index + 1
            self.stage_ends.append(channels)
        self.dilations = torch.nn.ModuleList(Dilation(c, width) for c in self.stage_ends)
        self.attentions = torch.nn.ModuleList(Attention(width, middle) for _ in self.stage_ends)
        self.conv_reduces = torch.nn.ModuleList(torch.nn.Module() for _ in self.stage_ends)
        for reduce in self.conv_reduces:
            reduce.conv = torch.nn.Conv2d(width, 1, 1)
        self.classifier = torch.nn.Conv2d(len(STAGES), 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) BGR in 0..1 -> (1, 1, H, W) edge strength in 0..1."""
        size, x, maps = x.shape[2:], centre_difference(self.init_block, x), []  # carv4 starts with "cd"
        names = iter(block_names())
        for stage, count in enumerate(STAGES):
            for _ in range(count):
                x = getattr(self, next(names))(x)
            side = self.conv_reduces[stage].conv(self.attentions[stage](self.dilations[stage](x)))
            maps.append(F.interpolate(side, size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(maps, dim=1)))


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def build(path: Path) -> PiDiNet:
    """The network of a table5_pidinet file (CheckpointError when it is not one)."""
    name = Path(path).name
    file = CheckpointFile(path)
    try:
        keys = {_strip(k): k for k in file.shapes}
        shapes = {k: file.shapes[original] for k, original in keys.items()}
        needed = ["init_block.weight", "dilations.0.conv1.weight", "attentions.0.conv1.weight",
                  *[f"{b}.conv2.weight" for b in block_names()]]
        if any(k not in shapes or len(shapes[k]) != 4 for k in needed):
            raise CheckpointError(f"{name} is not a PiDiNet state dict (init_block, block1_1..block4_4, "
                                  f"dilations, attentions, conv_reduces, classifier)")
        widths = [shapes[f"{b}.conv2.weight"][0] for b in block_names()]
        net = PiDiNet(shapes["init_block.weight"][0], widths, shapes["dilations.0.conv1.weight"][0],
                      shapes["attentions.0.conv1.weight"][0])
        missing = [k for k in net.state_dict() if k not in shapes]
        if missing:
            raise CheckpointError(f"{name} lacks {', '.join(missing[:3])}")
        state = {k: file.get(keys[k], torch.float32) for k in net.state_dict()}
    finally:
        file.close()
    kinds = dict(zip(["init_block", *block_names()], KINDS))
    for layer, kind in kinds.items():
        key = f"{layer}.weight" if layer == "init_block" else f"{layer}.conv1.weight"
        if tuple(state[key].shape[2:]) != (3, 3):
            raise CheckpointError(f"{name}: {key} is {tuple(state[key].shape)}, a PiDiNet kernel is 3x3")
        state[key] = plain_kernel(state[key], kind)
    return load_named(net, state, name)


_NETWORKS = NetworkCache()


def network(path: Path) -> PiDiNet:
    """The built network of ``path``, kept while the file is unchanged (the last two files)."""
    return _NETWORKS.get(path, build)


@torch.no_grad()
def edges(net: PiDiNet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 edge strength in [0, 1] (the network reads BGR)."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    x = torch.from_numpy(bgr).float().div(255.0).permute(2, 0, 1)[None]
    return net(x)[0, 0].numpy()
