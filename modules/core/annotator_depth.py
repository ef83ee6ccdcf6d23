"""The depth networks of sd-webui-controlnet's ``depth`` / ``normal_map`` (MiDaS DPT-Hybrid, the
user's ``midas/dpt_hybrid-midas-501f0c75.pt``), ``depth_anything`` (``depth_anything_vitl14.pth``)
and ``depth_anything_v2`` (``depth_anything_v2_vitl.safetensors``), run with transformers' own
classes (``DPTForDepthEstimation`` with its BiT hybrid backbone, ``DepthAnythingForDepthEstimation``
over DINOv2) from the files in their original layout.

Each file is read weights-only; the configuration is built from its shapes (nothing is fetched) and
its keys are renamed to transformers' (the renaming transformers' conversion scripts do, the fused
``attn.qkv`` split into query, key and value). The networks are cached per file while it is
unchanged. The pre/post-processing is the extension's (``annotator/midas``, ``annotator/depth_anything*.py``):
MiDaS takes the padded picture as is in -1..1 and gives the depth min-max scaled to 0..255 and the
normal map from its Sobel gradients; Depth Anything feeds the picture with its channels swapped (the
extension's BGR2RGB on an RGB picture), resized to at least 518 px in multiples of 14, ImageNet
mean/std, and scales the depth back to the picture and min-max to 0..255.
"""

from __future__ import annotations

import math
import re
import types
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .annotator_files import NetworkCache
from .checkpoint_file import CheckpointError, CheckpointFile

# under the annotator folder, as the extension's annotator/downloads
MIDAS_FILE = "midas/dpt_hybrid-midas-501f0c75.pt"
DEPTH_ANYTHING_FILE = "depth_anything/depth_anything_vitl14.pth"
DEPTH_ANYTHING_V2_FILE = "depth_anything_v2/depth_anything_v2_vitl.safetensors"

HEAD_WIDTH = 64  # ViT-B/L and DINOv2 heads are 64 wide: the head count is not in the file
_NORMAL_Z = np.pi * 2.0  # the extension's ``a`` of apply_midas: the normals' z before normalising
_IMAGENET_MEAN, _IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

# transformers' name -> the original's; a rule gives the original key (and which third of a fused qkv)
Rule = tuple[re.Pattern, Callable[[re.Match], str]]
_QKV = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}  # older and newer transformers


def _rules(pairs: list[tuple[str, Callable[[re.Match], str] | str]]) -> list[Rule]:
    return [(re.compile(p + "$"), t if callable(t) else (lambda m, t=t: m.expand(t))) for p, t in pairs]


def _dpt_neck_rules(scratch: str) -> list[tuple[str, Callable[[re.Match], str] | str]]:
    """The DPT neck and fusion blocks, under ``scratch`` (``scratch.``, ``depth_head.scratch.``): the
    original's refinenet4 (deepest) is transformers' fusion layer 0."""
    return [
        (r"neck\.convs\.(\d)\.weight", lambda m: f"{scratch}layer{int(m[1]) + 1}_rn.weight"),
        (r"neck\.fusion_stage\.layers\.(\d)\.projection\.(\w+)",
         lambda m: f"{scratch}refinenet{4 - int(m[1])}.out_conv.{m[2]}"),
        (r"neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.(\w+)",
         lambda m: f"{scratch}refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}.{m[4]}"),
    ]


_MIDAS_RULES = _rules([
    (r"dpt\.embeddings\.cls_token", "pretrained.model.cls_token"),
    (r"dpt\.embeddings\.position_embeddings", "pretrained.model.pos_embed"),
    (r"dpt\.embeddings\.projection\.(\w+)", r"pretrained.model.patch_embed.proj.\1"),
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.convolution\.weight",
     "pretrained.model.patch_embed.backbone.stem.conv.weight"),
    (r"dpt\.embeddings\.backbone\.bit\.embedder\.norm\.(\w+)", r"pretrained.model.patch_embed.backbone.stem.norm.\1"),
    (r"dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)",
     r"pretrained.model.patch_embed.backbone.stages.\1.blocks.\2.\3"),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.(?:attention\.(?:query|key|value)|[qkv]_proj)\.(\w+)",
     r"pretrained.model.blocks.\1.attn.qkv.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(\w+)",
     r"pretrained.model.blocks.\1.attn.proj.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", r"pretrained.model.blocks.\1.norm1.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", r"pretrained.model.blocks.\1.norm2.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"pretrained.model.blocks.\1.mlp.fc1.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"pretrained.model.blocks.\1.mlp.fc2.\2"),
    (r"dpt\.layernorm\.(\w+)", r"pretrained.model.norm.\1"),
    (r"neck\.reassemble_stage\.readout_projects\.(\d)\.0\.(\w+)",
     lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.0.project.0.{m[2]}"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.(\w+)",
     lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.3.{m[2]}"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.(\w+)",
     lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.4.{m[2]}"),
    *_dpt_neck_rules("scratch."),
    (r"head\.head\.(\d)\.(\w+)", r"scratch.output_conv.\1.\2"),
])

_DEPTH_ANYTHING_RULES = _rules([
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.(\w+)", r"pretrained.patch_embed.proj.\1"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.(?:attention\.(?:query|key|value)|[qkv]_proj)\.(\w+)",
     r"pretrained.blocks.\1.attn.qkv.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(\w+)",
     r"pretrained.blocks.\1.attn.proj.\2"),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1", r"pretrained.blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.(norm\d|mlp\.fc\d)\.(\w+)", r"pretrained.blocks.\1.\2.\3"),
    (r"backbone\.layernorm\.(\w+)", r"pretrained.norm.\1"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.(\w+)", r"depth_head.projects.\1.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.(\w+)", r"depth_head.resize_layers.\1.\2"),
    *_dpt_neck_rules("depth_head.scratch."),
    (r"head\.conv1\.(\w+)", r"depth_head.scratch.output_conv1.\1"),
    (r"head\.conv2\.(\w+)", r"depth_head.scratch.output_conv2.0.\1"),
    (r"head\.conv3\.(\w+)", r"depth_head.scratch.output_conv2.2.\1"),
])


def original_key(name: str, rules: list[Rule]) -> tuple[str, int | None]:
    """transformers' parameter ``name`` -> (the original file's key, the third of a fused qkv or None)."""
    for pattern, make in rules:
        found = pattern.match(name)
        if found:
            part = next((i for word, i in _QKV.items() if f".{word}." in name), None)
            return make(found), part
    raise KeyError(name)


def _count(shapes: dict, pattern: str) -> int:
    """How many distinct indices ``(\\d+)`` in ``pattern`` the file's keys have."""
    compiled = re.compile(pattern)
    return len({m.group(1) for m in map(compiled.match, shapes) if m})


def _grid(positions: int, name: str) -> int:
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise CheckpointError(f"{name}: the position table ({positions} patches) is not a square grid")
    return grid


# ------------------------------------------------------------------------------------- MiDaS DPT-Hybrid

def midas_config(shapes: dict, name: str):
    """DPTConfig (hybrid: ViT over a BiT ResNet) of a MiDaS dpt_hybrid file, from its shapes."""
    from transformers import BitConfig, DPTConfig

    vit, bit = "pretrained.model.", "pretrained.model.patch_embed.backbone."
    needed = (vit + "cls_token", vit + "pos_embed", bit + "stem.conv.weight", vit + "blocks.0.mlp.fc1.weight",
              "scratch.layer1_rn.weight", "pretrained.act_postprocess4.4.weight")
    if any(k not in shapes for k in needed):
        raise CheckpointError(f"{name} is not a MiDaS DPT-Hybrid state dict (pretrained.model.patch_embed.backbone, "
                              f"pretrained.model.blocks, pretrained.act_postprocess*, scratch.*)")
    hidden = shapes[vit + "cls_token"][-1]
    layers = _count(shapes, re.escape(vit) + r"blocks\.(\d+)\.attn\.qkv\.weight$")
    stages = _count(shapes, re.escape(bit) + r"stages\.(\d+)\.")
    if stages != 3:
        raise CheckpointError(f"{name}: a DPT-Hybrid backbone has 3 ResNet stages, this one {stages}")
    depths = [_count(shapes, re.escape(bit) + rf"stages\.{s}\.blocks\.(\d+)\.conv1\.weight$") for s in range(3)]
    widths = [shapes[f"{bit}stages.{s}.blocks.0.conv3.weight"][0] for s in range(3)]
    grid = _grid(shapes[vit + "pos_embed"][1] - 1, name)
    backbone = BitConfig(global_padding="same", layer_type="bottleneck", depths=depths, hidden_sizes=widths,
                         embedding_size=shapes[bit + "stem.conv.weight"][0], embedding_dynamic_padding=True,
                         out_features=["stage1", "stage2", "stage3"])
    # MiDaS hooks blocks 8 and 11 of its 12 (a shallower file: its last-but-three and last)
    if layers < 4:
        raise CheckpointError(f"{name}: a DPT-Hybrid ViT has at least 4 blocks, this one {layers}")
    return DPTConfig(is_hybrid=True, backbone_config=backbone, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // HEAD_WIDTH),
                     intermediate_size=shapes[vit + "blocks.0.mlp.fc1.weight"][0], layer_norm_eps=1e-6,
                     image_size=grid * 16, patch_size=16, backbone_out_indices=[0, 1, layers - 4, layers - 1],
                     reassemble_factors=[1, 1, 1, 0.5], readout_type="project",
                     neck_hidden_sizes=[shapes[f"scratch.layer{i}_rn.weight"][1] for i in range(1, 5)],
                     fusion_hidden_size=shapes["scratch.layer1_rn.weight"][0],
                     backbone_featmap_shape=[1, widths[-1], grid, grid], use_batch_norm_in_fusion_residual=False)


@torch.no_grad()
def midas_forward(model, x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in -1..1 (H, W multiples of 32) -> (1, H, W) MiDaS depth (inverse depth: near is
    high). transformers' hybrid forward only takes the square size of the position table, so this runs
    its modules the way the original's forward_vit does for any size: the BiT stages, the position
    table resized to the token grid, the blocks, and the neck told the grid."""
    embeddings, config = model.dpt.embeddings, model.config
    grid_h, grid_w = x.shape[2] // embeddings.patch_size, x.shape[3] // embeddings.patch_size
    features = embeddings.backbone(x).feature_maps
    tokens = embeddings.projection(features[-1]).flatten(2).transpose(1, 2)
    tokens = torch.cat([embeddings.cls_token.expand(len(x), -1, -1), tokens], dim=1)
    tokens = tokens + embeddings._resize_pos_embed(embeddings.position_embeddings, grid_h, grid_w)
    taken, hooks = list(features[:2]), config.backbone_out_indices[2:]
    for index, layer in enumerate(model.dpt.encoder.layer):
        tokens = layer(tokens)
        if index in hooks:
            taken.append(tokens)
    return model.head(model.neck(taken, grid_h, grid_w))


def midas_maps(model, padded: np.ndarray, background: float) -> tuple[np.ndarray, np.ndarray]:
    """The extension's apply_midas on the padded (H, W, 3) uint8 RGB picture: (depth (H, W) uint8,
    normal (H, W, 3) uint8). The normal map: the depth's Sobel gradients (zero where the scaled depth
    is under ``background``), z = 2 pi, normalised, 0..255, channels in the extension's order."""
    x = torch.from_numpy(padded.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    depth = midas_forward(model, x)[0]
    scaled = depth - depth.min()
    top = scaled.max()
    scaled = (scaled / top if top > 0 else scaled).numpy()
    depth_map = (scaled * 255.0).clip(0, 255).astype(np.uint8)
    raw = depth.numpy()
    gx, gy = cv2.Sobel(raw, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(raw, cv2.CV_32F, 0, 1, ksize=3)
    gx[scaled < background] = 0
    gy[scaled < background] = 0
    normal = np.stack([gx, gy, np.full_like(gx, _NORMAL_Z)], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    return depth_map, (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]


# -------------------------------------------------------------------------------------- Depth Anything

# Depth Anything v2's intermediate blocks per depth (vits/vitb 12, vitl 24, vitg 40); v1 takes the last four
_V2_HOOKS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}


def depth_anything_config(shapes: dict, name: str, version: int):
    """DepthAnythingConfig (DINOv2 + DPT head) of a Depth Anything v1/v2 file, from its shapes."""
    from transformers import DepthAnythingConfig, Dinov2Config

    needed = ("pretrained.cls_token", "pretrained.pos_embed", "pretrained.patch_embed.proj.weight",
              "pretrained.blocks.0.mlp.fc1.weight", "depth_head.scratch.layer1_rn.weight",
              "depth_head.scratch.output_conv2.0.weight")
    if any(k not in shapes for k in needed):
        raise CheckpointError(f"{name} is not a Depth Anything state dict (pretrained.* DINOv2, depth_head.*)")
    hidden = shapes["pretrained.cls_token"][-1]
    layers = _count(shapes, r"pretrained\.blocks\.(\d+)\.attn\.qkv\.weight$")
    if _count(shapes, r"pretrained\.blocks\.(\d+)\.mlp\.w12\.weight$"):
        raise CheckpointError(f"{name}: a DINOv2 with SwiGLU blocks (ViT-g) is not supported")
    patch = shapes["pretrained.patch_embed.proj.weight"][-1]
    grid = _grid(shapes["pretrained.pos_embed"][1] - 1, name)
    if layers < 4:
        raise CheckpointError(f"{name}: the DPT head reads 4 DINOv2 blocks, this file has {layers}")
    if version == 2:  # its table per depth; another depth: the blocks at a quarter, half, three quarters, end
        blocks = _V2_HOOKS.get(layers, tuple(round(layers * q) - 1 for q in (0.25, 0.5, 0.75, 1.0)))
    else:
        blocks = tuple(range(layers - 4, layers))
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // HEAD_WIDTH),
                            mlp_ratio=shapes["pretrained.blocks.0.mlp.fc1.weight"][0] // hidden,
                            image_size=grid * patch, patch_size=patch, use_mask_token="pretrained.mask_token" in shapes,
                            out_indices=[b + 1 for b in blocks], apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=patch,
                               neck_hidden_sizes=[shapes[f"depth_head.projects.{i}.weight"][0] for i in range(4)],
                               fusion_hidden_size=shapes["depth_head.scratch.layer1_rn.weight"][0],
                               head_hidden_size=shapes["depth_head.scratch.output_conv2.0.weight"][0])


def dinov2_positions(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The original DINOv2's position table for a (height, width) picture: bicubic with its 0.1 offset
    (transformers resizes to the exact grid, which samples a hair differently off the square)."""
    table = self.position_embeddings
    count = table.shape[1] - 1
    if embeddings.shape[1] - 1 == count and height == width:
        return table
    side, dim = math.isqrt(count), table.shape[-1]
    patch = self.patch_embeddings.patch_size[0]
    rows, cols = height // patch, width // patch
    grid = table[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic",
                         antialias=False)[:, :, :rows, :cols]
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)], dim=1)


def depth_anything_size(height: int, width: int, target: int = 518, multiple: int = 14) -> tuple[int, int]:
    """The extension's Resize(518, 518, keep_aspect_ratio, lower_bound, ensure_multiple_of=14)."""
    scale = max(target / height, target / width)

    def fit(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return int(np.ceil(x / multiple) * multiple) if y < target else y

    return fit(scale * height), fit(scale * width)


@torch.no_grad()
def depth_anything_map(model, padded: np.ndarray) -> np.ndarray:
    """The extension's DepthAnything(V2)Detector (uncoloured) on the padded (H, W, 3) uint8 RGB
    picture: (H, W) uint8, the relative depth (near is high) min-max scaled."""
    h, w = padded.shape[:2]
    x = padded[:, :, ::-1] / 255.0  # its cv2.COLOR_BGR2RGB on the RGB picture: the network sees BGR
    rows, cols = depth_anything_size(h, w)
    x = (cv2.resize(x, (cols, rows), interpolation=cv2.INTER_CUBIC) - _IMAGENET_MEAN) / _IMAGENET_STD
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float()[None]
    depth = model(pixel_values=x).predicted_depth
    depth = F.interpolate(depth[None], (h, w), mode="bilinear", align_corners=False)[0, 0]
    low, high = depth.min(), depth.max()
    depth = (depth - low) / (high - low) * 255.0 if high > low else torch.zeros_like(depth)
    return depth.numpy().astype(np.uint8)


# ------------------------------------------------------------------------------------------ loading

def _load(model, file: CheckpointFile, rules: list[Rule], name: str):
    """Fill ``model`` from the original keys of ``file`` (CheckpointError naming what does not fit)."""
    state, missing = {}, []
    for key in model.state_dict():
        source, part = original_key(key, rules)
        if source not in file.shapes:
            missing.append(source)
            continue
        tensor = file.get(source, torch.float32)
        state[key] = tensor.chunk(3, dim=0)[part] if part is not None else tensor
    if missing:
        raise CheckpointError(f"{name} lacks {', '.join(sorted(set(missing))[:3])}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{name}: {str(exc).splitlines()[-1].strip()}") from None
    return model.eval()


def build(path: Path, kind: str):
    """The transformers network of a depth annotator file; ``kind``: "midas", "depth_anything",
    "depth_anything_v2" (CheckpointError when the file is not that network)."""
    from transformers import DepthAnythingForDepthEstimation, DPTForDepthEstimation

    name = Path(path).name
    file = CheckpointFile(path)
    try:
        try:
            if kind == "midas":
                model = _load(DPTForDepthEstimation(midas_config(file.shapes, name)), file, _MIDAS_RULES, name)
            else:
                config = depth_anything_config(file.shapes, name, 2 if kind == "depth_anything_v2" else 1)
                model = _load(DepthAnythingForDepthEstimation(config), file, _DEPTH_ANYTHING_RULES, name)
                embeddings = model.backbone.embeddings
                embeddings.interpolate_pos_encoding = types.MethodType(dinov2_positions, embeddings)
        except (KeyError, TypeError, ZeroDivisionError) as exc:  # shapes that make no such network
            raise CheckpointError(f"{name}: not a {kind} network ({exc})") from None
    finally:
        file.close()
    return model


_NETWORKS = NetworkCache()


def network(path: Path, kind: str):
    """The built network of ``path``, kept while the file is unchanged (the last two files)."""
    return _NETWORKS.get(path, lambda p: build(p, kind), kind)


# ------------------------------------------------------- the preprocessors (on the extension's padded picture)

def _run(path: Path, kind: str, apply: Callable):
    """``apply(network)``; a file whose shapes load but do not compute (a RuntimeError) is a bad file."""
    model = network(path, kind)
    try:
        return apply(model)
    except RuntimeError as exc:
        raise CheckpointError(f"{Path(path).name} does not run as a {kind} network: {str(exc).splitlines()[0]}") \
            from None


def depth_midas(padded: np.ndarray, files: list[Path], a: float) -> np.ndarray:
    return _run(files[0], "midas", lambda model: midas_maps(model, padded, 0.0)[0])


def normal_midas(padded: np.ndarray, files: list[Path], background: float) -> np.ndarray:
    return _run(files[0], "midas", lambda model: midas_maps(model, padded, background)[1])


def depth_anything(padded: np.ndarray, files: list[Path], a: float) -> np.ndarray:
    return _run(files[0], "depth_anything", lambda model: depth_anything_map(model, padded))


def depth_anything_v2(padded: np.ndarray, files: list[Path], a: float) -> np.ndarray:
    return _run(files[0], "depth_anything_v2", lambda model: depth_anything_map(model, padded))
