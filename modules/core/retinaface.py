"""RetinaFace (ResNet-50), the face detector A1111's face restoration uses through facexlib, from the
file facexlib keeps beside the GFPGAN models: ``models/GFPGAN/detection_Resnet50_Final.pth``.

It finds each face's box and five landmarks (eyes, nose tip, mouth corners), so a face can be
aligned — rotated and scaled onto the FFHQ template the restorers were trained on — before it is
restored. Built here from the state dict (``body.*``: ResNet-50's stem and its four stages as
torchvision names them; ``fpn.*``, ``ssh1..3.*``, ``ClassHead/BboxHead/LandmarkHead.N.conv1x1``),
read weights-only, with plain torch: no torchvision (its ``nms`` is replaced below).

The detection follows facexlib's ``detect_faces``: the picture in BGR minus the Caffe means
(104, 117, 123), unscaled; two anchors per cell on the 8/16/32 strides (sizes 16/32, 64/128,
256/512); boxes and landmarks decoded with the variances 0.1/0.2; a softmax face score over a
threshold; non-maximum suppression at IoU 0.4. facexlib's helper first scales a picture up so its
short side is at least 640 px (``resize=640``), and drops faces whose eyes are under 5 px apart.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FILE_NAME = "detection_Resnet50_Final.pth"
STAGES = (3, 4, 6, 3)  # ResNet-50's bottleneck blocks per stage
MEANS_BGR = (104.0, 117.0, 123.0)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STRIDES = (8, 16, 32)
VARIANCES = (0.1, 0.2)


class RetinaFaceError(ValueError):
    """A file that is not RetinaFace ResNet-50 (the message says why)."""


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: float | None = 0.0) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu is not None:
        layers.append(nn.LeakyReLU(relu))
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Body(nn.Module):
    """ResNet-50 up to its last stage; returns stages 2, 3 and 4."""

    def __init__(self, base: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
        cin = base
        for index, blocks in enumerate(STAGES):
            width = base * 2 ** index
            layer = nn.Sequential(*[_Bottleneck(cin if i == 0 else width * 4, width, 2 if i == 0 and index else 1)
                                    for i in range(blocks)])
            setattr(self, f"layer{index + 1}", layer)
            cin = width * 4

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class _SSH(nn.Module):
    def __init__(self, channels: int, leaky: float):
        super().__init__()
        quarter = channels // 4
        self.conv3X3 = _conv_bn(channels, channels // 2, 3, relu=None)
        self.conv5X5_1 = _conv_bn(channels, quarter, 3, relu=leaky)
        self.conv5X5_2 = _conv_bn(quarter, quarter, 3, relu=None)
        self.conv7X7_2 = _conv_bn(quarter, quarter, 3, relu=leaky)
        self.conv7x7_3 = _conv_bn(quarter, quarter, 3, relu=None)

    def forward(self, x):
        first = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(first),
                                 self.conv7x7_3(self.conv7X7_2(first))], dim=1))


class _FPN(nn.Module):
    def __init__(self, inputs: list[int], channels: int, leaky: float):
        super().__init__()
        self.output1, self.output2, self.output3 = (_conv_bn(c, channels, 1, relu=leaky) for c in inputs)
        self.merge1 = _conv_bn(channels, channels, 3, relu=leaky)
        self.merge2 = _conv_bn(channels, channels, 3, relu=leaky)

    def forward(self, c2, c3, c4):
        p3 = self.output3(c4)
        p2 = self.merge2(self.output2(c3) + F.interpolate(p3, size=c3.shape[2:], mode="nearest"))
        p1 = self.output1(c2)
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[2:], mode="nearest"))
        return p1, p2, p3


class _Head(nn.Module):
    def __init__(self, channels: int, per_anchor: int, anchors: int = 2):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * per_anchor, 1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFaceNet(nn.Module):
    def __init__(self, base: int = 64, channels: int = 256):
        super().__init__()
        leaky = 0.1 if channels <= 64 else 0.0  # as the reference network chooses by width
        self.body = _Body(base)
        self.fpn = _FPN([base * 8, base * 16, base * 32], channels, leaky)
        self.ssh1, self.ssh2, self.ssh3 = (_SSH(channels, leaky) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(channels, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(channels, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(channels, 10) for _ in range(3))

    def forward(self, x):
        features = [ssh(p) for ssh, p in zip((self.ssh1, self.ssh2, self.ssh3), self.fpn(*self.body(x)))]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1).softmax(-1)
        marks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, scores, marks


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with code, a broken file: refused, nothing ran
        raise RetinaFaceError(f"not a weights-only PyTorch file ({type(error).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RetinaFaceError("not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load(path: Path) -> RetinaFaceNet:
    """The network in ``path`` (weights only); RetinaFaceError says why a file is not one."""
    state = _read(Path(path))
    stem = state.get("body.conv1.weight")
    head = state.get("ClassHead.0.conv1x1.weight")
    if stem is None or head is None or "body.layer4.0.conv1.weight" not in state:
        raise RetinaFaceError("not RetinaFace ResNet-50 (no body.conv1 / body.layer4 / ClassHead weights)")
    net = RetinaFaceNet(base=stem.shape[0], channels=head.shape[1])
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        raise RetinaFaceError(f"not RetinaFace ResNet-50: {len(missing)} tensors missing, "
                              f"{len(wrong)} of another shape (e.g. {(missing or wrong)[0]})")
    net.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
    return net.eval()


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the picture's pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right (x, y)


def priors(height: int, width: int) -> torch.Tensor:
    """(N, 4) anchor centres and sizes (cx, cy, w, h), relative to the picture, in the order the
    heads emit them: per level, per cell (rows then columns), per anchor size."""
    rows = []
    for sizes, stride in zip(MIN_SIZES, STRIDES):
        cells_y, cells_x = math.ceil(height / stride), math.ceil(width / stride)
        for i, j in itertools.product(range(cells_y), range(cells_x)):
            for size in sizes:
                rows.append(((j + 0.5) * stride / width, (i + 0.5) * stride / height, size / width, size / height))
    return torch.tensor(rows, dtype=torch.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression (highest score first), IoU over ``threshold``
    suppressed; areas count pixels inclusively (+1), as facexlib's py_cpu_nms."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return keep


@torch.inference_mode()
def detect(net: RetinaFaceNet, rgb: np.ndarray, *, threshold: float = 0.8, nms_threshold: float = 0.4,
           min_side: int = 640, min_eye_distance: float = 5.0) -> list[Detection]:
    """The faces of an (H, W, 3) uint8 RGB picture, best first."""
    height, width = rgb.shape[:2]
    scale = max(1.0, min_side / min(height, width))  # facexlib's helper only ever scales up
    picture = rgb
    if scale > 1.0:
        import cv2

        picture = cv2.resize(rgb, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_LINEAR)
    h, w = picture.shape[:2]
    weight = next(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(picture[:, :, ::-1])).float()  # BGR, as the network was trained
    x = (x - torch.tensor(MEANS_BGR)).permute(2, 0, 1).unsqueeze(0).to(weight.device, weight.dtype)
    loc, conf, marks = (t[0].float().cpu() for t in net(x))
    anchors = priors(h, w)
    centres = anchors[:, :2] + loc[:, :2] * VARIANCES[0] * anchors[:, 2:]
    sizes = anchors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1) * torch.tensor([w, h, w, h]) / scale
    points = anchors[:, None, :2] + marks.reshape(-1, 5, 2) * VARIANCES[0] * anchors[:, None, 2:]
    points = points * torch.tensor([w, h]) / scale
    scores = conf[:, 1]
    chosen = torch.nonzero(scores > threshold).flatten()
    boxes_np, scores_np, points_np = boxes[chosen].numpy(), scores[chosen].numpy(), points[chosen].numpy()
    found = []
    for i in nms(boxes_np, scores_np, nms_threshold):
        eyes = points_np[i][0] - points_np[i][1]
        if float(np.hypot(*eyes)) < min_eye_distance:
            continue
        found.append(Detection(tuple(float(v) for v in boxes_np[i]), float(scores_np[i]), points_np[i].astype(np.float64)))
    return found
