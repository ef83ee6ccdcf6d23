"""DeepDanbooru, A1111's "DeepBooru" tagger: the network built from its file, the tag scores, and
the tag string A1111 writes.

- The file is A1111's torch port (``model-resnet_custom_v3.pt``): a state dict of convolutions
  named ``n_Conv_<i>`` plus ``tags``, the list of tag names in the order of the last layer's
  outputs. It is read only with ``torch.load(weights_only=True)``: a pickle that would run code is
  refused before anything in it runs.
- The network is a bottleneck ResNet written out layer by layer; its shape is read from the tensor
  shapes, so any depth and width in that layout loads. ``n_Conv_0`` is the 7x7 stem (stride 2,
  then a 3x3 max-pool of stride 2), the last convolution (1x1, no bias) gives one logit per tag,
  averaged over the picture and squashed by a sigmoid. In between come blocks of three
  convolutions (1x1 reduce, 3x3, 1x1 expand) added to their input, or, where the width or the
  resolution changes, to a 1x1 projection of it: the projection comes before the block's own three
  convolutions, except in the release's one block that keeps its width (1024) and halves the
  resolution, where it comes after them. Every projection block but the first halves the
  resolution (the first follows the max-pool). Paddings are TensorFlow's "same" ones, as in the
  original Keras model: 1 pixel around a 3x3 of stride 1, right and bottom only for stride 2.
- The input is the picture fitted into 512x512 (A1111's resize mode 2: the empty bands filled by
  stretching the edge pixels), RGB in [0, 1], channels last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import masks

MODEL_FILE = "model-resnet_custom_v3.pt"  # A1111's download name
INPUT_SIZE = 512
_CONV_KEY = re.compile(r"^n_Conv_(\d+)\.(weight|bias)$")
RE_SPECIAL = re.compile(r"([\\()])")  # what A1111's deepbooru_escape escapes


class DeepbooruFileError(ValueError):
    """A file that is not a usable DeepDanbooru model; the message says why."""


@dataclass(frozen=True)
class Block:
    """One residual block: the indexes of its convolutions; ``shortcut`` None: the input is added."""

    reduce: int
    middle: int
    expand: int
    shortcut: int | None
    stride: int


@dataclass(frozen=True)
class TagSettings:
    """A1111's interrogate_deepbooru_score_threshold, deepbooru_sort_alpha, deepbooru_use_spaces,
    deepbooru_escape, deepbooru_filter_tags and interrogate_return_ranks."""

    threshold: float = 0.5
    sort_alpha: bool = True
    use_spaces: bool = True
    escape: bool = True
    filter_tags: str = ""
    include_ranks: bool = False


class DeepDanbooruNet(torch.nn.Module):
    """The tagger: pixels (N, H, W, 3) in [0, 1] -> one probability per tag (N, len(tags))."""

    def __init__(self, shapes: dict[int, tuple[int, ...]], biased: set[int], blocks: list[Block], tags: list[str]):
        super().__init__()
        self.tags = list(tags)
        self.blocks = blocks
        self.head = max(shapes)
        strides = {0: 2}
        for block in blocks:
            strides[block.middle] = block.stride
            if block.shortcut is not None:
                strides[block.shortcut] = block.stride
        for i in sorted(shapes):
            out_ch, in_ch, kh, kw = shapes[i]
            conv = torch.nn.Conv2d(in_ch, out_ch, (kh, kw), stride=strides.get(i, 1), bias=i in biased)
            self.add_module(f"n_Conv_{i}", conv)

    def conv(self, i: int) -> torch.nn.Conv2d:
        return getattr(self, f"n_Conv_{i}")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2)
        x = F.relu(self.conv(0)(F.pad(x, [2, 3, 2, 3])))
        x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=float("-inf")), kernel_size=3, stride=2)
        for b in self.blocks:
            h = F.relu(self.conv(b.reduce)(x))
            h = F.pad(h, [0, 1, 0, 1] if b.stride == 2 else [1, 1, 1, 1])
            h = self.conv(b.expand)(F.relu(self.conv(b.middle)(h)))
            skip = x if b.shortcut is None else self.conv(b.shortcut)(x)
            x = F.relu(h + skip)
        logits = self.conv(self.head)(x).mean(dim=(2, 3))
        return torch.sigmoid(logits)


# -- reading and building -------------------------------------------------------------------

def read_file(path: Path) -> dict:
    """The file's state dict (tensors and ``tags``); DeepbooruFileError with the reason otherwise."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file, pickle refusals included
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        if "weights_only" in text or "Unsupported global" in text:
            reason = "the file's pickle holds more than tensors and tag names (refused: only weights are loaded)"
        raise DeepbooruFileError(f"{path.name}: cannot be read: {reason}") from None
    if not isinstance(state, dict):
        raise DeepbooruFileError(f"{path.name}: holds a {type(state).__name__}, not a state dict")
    return state


def residual_blocks(shapes: dict[int, tuple[int, ...]], width: int) -> list[Block]:
    """The residual blocks between the stem and the head, read from the convolutions' shapes."""
    head, blocks, i = max(shapes), [], 1

    def kernel(j: int) -> int:
        return shapes[j][2] if j < head else 0

    while i < head:
        if i + 2 >= head:
            raise DeepbooruFileError(f"the convolutions end inside a block (n_Conv_{i})")
        if kernel(i + 1) == 1:  # projection first: shortcut, reduce, 3x3, expand
            block = Block(i + 1, i + 2, i + 3, i, 1 if not blocks else 2)
            i += 4
        elif i + 3 < head and kernel(i + 3) == 1 and shapes[i + 3][1] == width and shapes[i + 3][0] == shapes[i + 2][0]:
            # a 1x1 from the block's input to its output width after the expand: its projection
            # (an identity block's follower reduces the width instead)
            block = Block(i, i + 1, i + 2, i + 3, 2)  # projection last: reduce, 3x3, expand, shortcut
            i += 4
        else:  # identity: reduce, 3x3, expand
            block = Block(i, i + 1, i + 2, None, 1)
            i += 3
        if i > head:
            raise DeepbooruFileError(f"the convolutions end inside a block (n_Conv_{block.reduce})")
        _check_block(shapes, block, width)
        width = shapes[block.expand][0]
        blocks.append(block)
    return blocks


def _check_block(shapes: dict[int, tuple[int, ...]], b: Block, width: int) -> None:
    reduce, middle, expand = shapes[b.reduce], shapes[b.middle], shapes[b.expand]
    fits = (reduce[1] == width and reduce[2:] == (1, 1) and middle[1] == reduce[0] and middle[2:] == (3, 3)
            and expand[1] == middle[0] and expand[2:] == (1, 1))
    if b.shortcut is None:
        fits = fits and expand[0] == width
    else:
        shortcut = shapes[b.shortcut]
        fits = fits and shortcut[1] == width and shortcut[0] == expand[0] and shortcut[2:] == (1, 1)
    if not fits:
        raise DeepbooruFileError(f"the convolutions from n_Conv_{min(b.reduce, b.shortcut or b.reduce)} do not "
                                 "form a residual block of the DeepDanbooru layout")


def build(state: dict, name: str = "model") -> DeepDanbooruNet:
    """The network of a state dict in A1111's layout, its weights loaded (in float32, on the CPU)."""
    tags = state.get("tags")
    if not isinstance(tags, (list, tuple)) or not tags or not all(isinstance(t, str) for t in tags):
        raise DeepbooruFileError(f"{name}: has no 'tags' list of tag names (not a DeepDanbooru model)")
    shapes, biased, tensors = {}, set(), {}
    for key, value in state.items():
        if key == "tags":
            continue
        match = _CONV_KEY.match(key)
        if match is None or not isinstance(value, torch.Tensor):
            raise DeepbooruFileError(f"{name}: unexpected entry '{key}' (not a DeepDanbooru model)")
        index = int(match.group(1))
        if match.group(2) == "weight":
            if value.ndim != 4:
                raise DeepbooruFileError(f"{name}: {key} is not a convolution weight")
            shapes[index] = tuple(value.shape)
        else:
            biased.add(index)
        tensors[key] = value.float()
    if not shapes or sorted(shapes) != list(range(len(shapes))) or not biased <= set(shapes):
        raise DeepbooruFileError(f"{name}: the n_Conv_<i> layers are not numbered 0..n (not a DeepDanbooru model)")
    head = max(shapes)
    if shapes[0][1:] != (3, 7, 7) or head == 0:
        raise DeepbooruFileError(f"{name}: n_Conv_0 is not a 7x7 convolution of an RGB picture")
    try:
        blocks = residual_blocks(shapes, shapes[0][0])
    except DeepbooruFileError as error:
        raise DeepbooruFileError(f"{name}: {error}") from None
    width = shapes[blocks[-1].expand][0] if blocks else shapes[0][0]
    if shapes[head][1:] != (width, 1, 1) or shapes[head][0] != len(tags) or head in biased:
        raise DeepbooruFileError(f"{name}: the last convolution n_Conv_{head} does not give one score for each "
                                 f"of the {len(tags)} tags")
    net = DeepDanbooruNet(shapes, biased, blocks, tags)
    net.load_state_dict(tensors, strict=True)
    return net.eval().requires_grad_(False)


def load(path: Path) -> DeepDanbooruNet:
    return build(read_file(path), path.name)


# -- running --------------------------------------------------------------------------------

def prepare(image: Image.Image) -> torch.Tensor:
    """The network's input: the picture fitted into 512x512 (edges stretched), (1, 512, 512, 3)."""
    fitted = masks.resize_image(2, image.convert("RGB"), INPUT_SIZE, INPUT_SIZE)
    return torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0).unsqueeze(0)


@torch.inference_mode()
def scores(net: DeepDanbooruNet, image: Image.Image, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Each tag's probability for ``image``, in the model's tag order (the net must already be on
    ``device`` in ``dtype``)."""
    probabilities = net(prepare(image).to(device=device, dtype=dtype))[0].float().cpu().tolist()
    return dict(zip(net.tags, probabilities))


def tag_string(probabilities: dict[str, float], s: TagSettings) -> str:
    """A1111's caption: the tags scoring at least the threshold, rating tags left out, sorted by
    name or by score (highest first), the filtered ones dropped, then underscores to spaces, ``\\``
    ``(`` ``)`` escaped with a backslash, and ``(tag:0.123)`` with the ranks, joined by ", "."""
    kept = {t: p for t, p in probabilities.items() if p >= s.threshold and not t.startswith("rating:")}
    ordered = sorted(kept) if s.sort_alpha else sorted(kept, key=lambda t: -kept[t])
    dropped = {x.strip().replace(" ", "_") for x in s.filter_tags.split(",")}
    out = []
    for tag in ordered:
        if tag in dropped:
            continue
        text = tag.replace("_", " ") if s.use_spaces else tag
        if s.escape:
            text = RE_SPECIAL.sub(r"\\\1", text)
        out.append(f"({text}:{kept[tag]:.3f})" if s.include_ranks else text)
    return ", ".join(out)
