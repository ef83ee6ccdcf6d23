"""sd-webui-controlnet's depth preprocessors run from the user's annotator files: ``depth`` and
``normal_map`` (MiDaS DPT-Hybrid, ``midas/dpt_hybrid-midas-501f0c75.pt``), ``depth_anything``
(``depth_anything_vitl14.pth``) and ``depth_anything_v2`` (``depth_anything_v2_vitl.safetensors``).

Tiny random transformers models are saved in the original layout (their keys renamed back to MiDaS' /
Depth Anything's, query/key/value fused into ``attn.qkv``), put in the server's annotator folder, and
``/controlnet/detect`` is compared with the transformers model run directly, with the extension's
pre/post-processing written out here."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from modules.core import annotator_depth
from modules.services import controlnets
from tests.api_common import assert_error, decode
from tests.pictures import b64, picture
from tests.test_controlnet import _pixels, _txt2img, api_models, cn_files  # noqa: F401 - fixtures


def _annotators(server):
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


def _randomize(model, last_conv, seed: int):
    """Weights far enough from the init for a depth map with contrast; the last convolution's bias
    keeps the depth above the final ReLU."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim > 1 else 0.05))
        last_conv.bias.fill_(1.0)
    return model.eval()


def _fuse_qkv(state: dict, prefix: str, original: str) -> dict:
    """transformers' separate query/key/value of each block (``attention.attention.query`` or, in newer
    versions, ``attention.q_proj``) -> the original's one ``attn.qkv``."""
    out = {}
    for kind in ("weight", "bias"):
        i = 0
        while True:
            for names in (("attention.query", "attention.key", "attention.value"), ("q_proj", "k_proj", "v_proj")):
                keys = [f"{prefix}{i}.attention.{n}.{kind}" for n in names]
                if keys[0] in state:
                    out[f"{original}{i}.attn.qkv.{kind}"] = torch.cat([state.pop(k) for k in keys])
                    break
            else:
                break
            i += 1
    return out


def _neck_to_original(key: str, scratch: str) -> str | None:
    parts = key.split(".")
    if key.startswith("neck.convs."):
        return f"{scratch}layer{int(parts[2]) + 1}_rn.weight"
    if key.startswith("neck.fusion_stage.layers."):
        block = f"{scratch}refinenet{4 - int(parts[3])}"
        if parts[4] == "projection":
            return f"{block}.out_conv.{parts[5]}"
        unit, conv = parts[4].replace("residual_layer", "resConfUnit"), parts[5].replace("convolution", "conv")
        return f"{block}.{unit}.{conv}.{parts[6]}"
    return None


# ------------------------------------------------------------------------------------------ MiDaS

def tiny_midas():
    """A DPT-Hybrid like MiDaS' (ViT over a BiT ResNet, 12 blocks hooked at 8 and 11), much narrower."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    backbone = BitConfig(global_padding="same", layer_type="bottleneck", depths=[1, 1, 2], hidden_sizes=[128, 256, 512],
                         embedding_size=32, embedding_dynamic_padding=True, out_features=["stage1", "stage2", "stage3"])
    config = DPTConfig(is_hybrid=True, backbone_config=backbone, hidden_size=128, num_hidden_layers=12,
                       num_attention_heads=2, intermediate_size=256, layer_norm_eps=1e-6, image_size=64, patch_size=16,
                       reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[128, 256, 96, 64], fusion_hidden_size=32,
                       backbone_featmap_shape=[1, 512, 4, 4], readout_type="project")
    model = DPTForDepthEstimation(config)
    return _randomize(model, model.head.head[4], 1)


def midas_original_state(model) -> dict:
    """The model's weights under MiDaS' names (as torch.hub's DPTDepthModel saves them), timm's unused
    classifier head included, as in the real file."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = _fuse_qkv(state, "dpt.encoder.layer.", "pretrained.model.blocks.")
    vit_names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
                 "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
    for key, value in state.items():
        name = _neck_to_original(key, "scratch.")
        if name is None and key.startswith("dpt.encoder.layer."):
            block, rest = key.split(".")[3], ".".join(key.split(".")[4:])
            inner, kind = rest.rsplit(".", 1)
            name = f"pretrained.model.blocks.{block}.{vit_names[inner]}.{kind}"
        elif name is None and key.startswith("dpt.embeddings.backbone.bit."):
            rest = key[len("dpt.embeddings.backbone.bit."):]
            rest = rest.replace("embedder.convolution", "stem.conv").replace("embedder.norm", "stem.norm")
            rest = rest.replace("encoder.stages", "stages").replace(".layers.", ".blocks.")
            name = "pretrained.model.patch_embed.backbone." + rest
        elif name is None and key.startswith("neck.reassemble_stage.readout_projects."):
            stage, kind = int(key.split(".")[3]), key.split(".")[-1]
            name = f"pretrained.act_postprocess{stage + 1}.0.project.0.{kind}"
        elif name is None and key.startswith("neck.reassemble_stage.layers."):
            stage, part, kind = int(key.split(".")[3]), key.split(".")[4], key.split(".")[5]
            name = f"pretrained.act_postprocess{stage + 1}.{3 if part == 'projection' else 4}.{kind}"
        elif name is None:
            name = {"dpt.embeddings.cls_token": "pretrained.model.cls_token",
                    "dpt.embeddings.position_embeddings": "pretrained.model.pos_embed",
                    "dpt.embeddings.projection.weight": "pretrained.model.patch_embed.proj.weight",
                    "dpt.embeddings.projection.bias": "pretrained.model.patch_embed.proj.bias",
                    "dpt.layernorm.weight": "pretrained.model.norm.weight",
                    "dpt.layernorm.bias": "pretrained.model.norm.bias"}.get(key)
            if name is None and key.startswith("head.head."):
                name = "scratch.output_conv." + key[len("head.head."):]
        assert name is not None, key
        out[name] = value
    out["pretrained.model.head.weight"], out["pretrained.model.head.bias"] = torch.zeros(10, 128), torch.zeros(10)
    return out


def extension_resize_with_pad(image: np.ndarray, resolution: int):
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -th % 64], [0, -tw % 64], [0, 0]], mode="edge")
    return padded, (th, tw)


def midas_reference(model, image: np.ndarray, resolution: int, background: float):
    """The extension's midas / midas_normal around transformers' DPTForDepthEstimation."""
    padded, (th, tw) = extension_resize_with_pad(image, resolution)
    x = torch.from_numpy(padded.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        depth = model(pixel_values=x).predicted_depth[0].numpy()
    scaled = (depth - depth.min()) / (depth - depth.min()).max()
    depth_map = (scaled * 255).clip(0, 255).astype(np.uint8)
    gx, gy = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    gx[scaled < background], gy[scaled < background] = 0, 0
    normal = np.stack([gx, gy, np.ones_like(gx) * 2 * np.pi], axis=2)
    normal = normal / np.linalg.norm(normal, axis=2, keepdims=True)
    normal_map = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]
    return depth_map[:th, :tw], normal_map[:th, :tw]


def _detect(server, module, image, **extra):
    return requests.post(server.url + "/controlnet/detect", timeout=120, json={
        "controlnet_module": module, "controlnet_input_images": [b64(image)], **extra})


def _map(response, mode="L") -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.json()["images"][0]).convert(mode))


def test_depth_and_normal_midas_run_from_the_users_file(server, api_models):
    model = tiny_midas()
    path = _annotators(server) / "midas" / "dpt_hybrid-midas-501f0c75.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(midas_original_state(model), path)
    image = picture(64, 64)
    source = np.asarray(image.convert("RGB"))
    try:
        depth_ref, normal_ref = midas_reference(model, source, 64, 0.4)
        assert depth_ref.min() == 0 and depth_ref.max() == 255
        depth = _map(_detect(server, "depth_midas", image, controlnet_processor_res=64))
        assert depth.shape == (64, 64) and np.abs(depth.astype(int) - depth_ref).max() <= 1
        normal = _map(_detect(server, "normal_map", image, controlnet_processor_res=64), "RGB")
        assert np.abs(normal.astype(int) - normal_ref).max() <= 1
        # the background slider: below the threshold the gradients are dropped (a flat (127, 127, 255)-ish normal)
        _, strict_ref = midas_reference(model, source, 64, 0.9)
        strict = _map(_detect(server, "normal_map", image, controlnet_processor_res=64,
                              controlnet_threshold_a=0.9), "RGB")
        assert np.abs(strict.astype(int) - strict_ref).max() <= 1 and not np.array_equal(strict, normal)
        # any picture shape: padded to multiples of 64 for the network, cut back afterwards
        wide = _map(_detect(server, "depth", picture(96, 64), controlnet_processor_res=64))
        assert wide.shape == (64, 96) and wide.max() > wide.min()

        unit = {"enabled": True, "module": "depth", "model": api_models["ldm"], "image": b64(image),
                "processor_res": 64}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert "Module: depth, " in r.json()["info"]
        path.write_bytes(b"PK\x03\x04 not a state dict")  # a broken file: a 422 naming the module
        assert "module(depth)" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
        torch.save({"norm": torch.zeros(1, 3, 1, 1)}, path)  # a state dict of another network
        r = _detect(server, "depth", image)
        assert r.status_code == 422 and "not a MiDaS DPT-Hybrid" in r.json()["detail"]
    finally:
        path.unlink()


# --------------------------------------------------------------------------------- Depth Anything

def tiny_depth_anything(version: int):
    """DINOv2 (patch 14, the real 37 x 37 position table) + the DPT head, narrow and 4 blocks deep: v1
    reads the last four blocks, v2 its blocks at a quarter, half, three quarters and the end."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=518,
                            patch_size=14, out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=128, patch_size=14,
                                 neck_hidden_sizes=[16, 32, 48, 64], fusion_hidden_size=16, head_hidden_size=8)
    model = DepthAnythingForDepthEstimation(config)
    return _randomize(model, model.head.conv3, 2 + version)


def depth_anything_original_state(model) -> dict:
    """The model's weights under Depth Anything's names (``pretrained.*`` DINOv2, ``depth_head.*``)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = _fuse_qkv(state, "backbone.encoder.layer.", "pretrained.blocks.")
    for key, value in state.items():
        name = _neck_to_original(key, "depth_head.scratch.")
        parts = key.split(".")
        if name is None and key.startswith("backbone.encoder.layer."):
            rest = ".".join(parts[4:]).replace("attention.output.dense", "attn.proj")
            rest = rest.replace("attention.o_proj", "attn.proj")
            rest = rest.replace("layer_scale1.lambda1", "ls1.gamma").replace("layer_scale2.lambda1", "ls2.gamma")
            name = f"pretrained.blocks.{parts[3]}.{rest}"
        elif name is None and key.startswith("neck.reassemble_stage.layers."):
            name = f"depth_head.{'projects' if parts[4] == 'projection' else 'resize_layers'}.{parts[3]}.{parts[5]}"
        elif name is None and key.startswith("head.conv"):
            name = {"1": "depth_head.scratch.output_conv1", "2": "depth_head.scratch.output_conv2.0",
                    "3": "depth_head.scratch.output_conv2.2"}[parts[1][-1]] + "." + parts[2]
        elif name is None:
            name = {"backbone.embeddings.cls_token": "pretrained.cls_token",
                    "backbone.embeddings.mask_token": "pretrained.mask_token",
                    "backbone.embeddings.position_embeddings": "pretrained.pos_embed",
                    "backbone.embeddings.patch_embeddings.projection.weight": "pretrained.patch_embed.proj.weight",
                    "backbone.embeddings.patch_embeddings.projection.bias": "pretrained.patch_embed.proj.bias",
                    "backbone.layernorm.weight": "pretrained.norm.weight",
                    "backbone.layernorm.bias": "pretrained.norm.bias"}[key]
        out[name] = value
    return {k: v.contiguous() for k, v in out.items()}


def original_dinov2_positions(embeddings, tokens, height, width):
    """facebookresearch/dinov2's interpolate_pos_encoding (bicubic, the 0.1 offset, no antialias)."""
    table = embeddings.position_embeddings
    n = table.shape[1] - 1
    if tokens.shape[1] - 1 == n and height == width:
        return table
    m = int(math.sqrt(n))
    h0, w0 = height // 14 + 0.1, width // 14 + 0.1
    grid = F.interpolate(table[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2), scale_factor=(h0 / m, w0 / m),
                         mode="bicubic", antialias=False)
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)


def depth_anything_reference(model, image: np.ndarray) -> np.ndarray:
    """The extension's depth_anything (resolution 512) around transformers' DepthAnythingForDepthEstimation."""
    padded, (th, tw) = extension_resize_with_pad(image, 512)
    h, w = padded.shape[:2]
    x = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB) / 255.0
    scale = max(518 / h, 518 / w)
    size = []
    for side in (w, h):
        y = int(np.round(scale * side / 14) * 14)
        size.append(y if y >= 518 else int(np.ceil(scale * side / 14) * 14))
    x = cv2.resize(x, tuple(size), interpolation=cv2.INTER_CUBIC)
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    embeddings = model.backbone.embeddings
    embeddings.interpolate_pos_encoding = lambda tokens, hh, ww: original_dinov2_positions(embeddings, tokens, hh, ww)
    with torch.no_grad():
        depth = model(pixel_values=torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]).predicted_depth
    depth = F.interpolate(depth[None], (h, w), mode="bilinear", align_corners=False)[0, 0]
    depth = ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).numpy().astype(np.uint8)
    return depth[:th, :tw]


@pytest.mark.parametrize("version", [1, 2])
def test_depth_anything_runs_from_the_users_file(server, api_models, version):
    model = tiny_depth_anything(version)
    # v2 picks its blocks by depth: of 4 blocks, all four, as v1's last four
    module = "depth_anything_v2" if version == 2 else "depth_anything"
    path = _annotators(server) / (annotator_depth.DEPTH_ANYTHING_V2_FILE if version == 2
                                  else annotator_depth.DEPTH_ANYTHING_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = depth_anything_original_state(model)
    if version == 2:
        save_file(state, str(path))  # the extension's v2 file is a .safetensors
    else:
        torch.save(state, path)
    square, wide = picture(64, 64), picture(96, 64)  # 512 x 512 -> 518 x 518; 512 x 768 -> 518 x 784
    try:
        for image in (square, wide):
            reference = depth_anything_reference(model, np.asarray(image.convert("RGB")))
            depth = _map(_detect(server, module, image))  # detect's processor_res: 512 (no slider shown)
            assert depth.shape == reference.shape == ((512, 512) if image is square else (512, 768))
            assert reference.max() - reference.min() > 100
            assert np.abs(depth.astype(int) - reference).max() <= 1
        listed = requests.get(server.url + "/controlnet/module_list", timeout=30).json()["module_detail"]
        assert listed[module]["sliders"] == []
        unit = {"enabled": True, "module": module, "model": api_models["ldm"], "image": b64(square)}
        r = _txt2img(server, [unit])
        assert not np.array_equal(_pixels(r), _pixels(_txt2img(server)))
        assert f"Module: {module}, " in r.json()["info"]
        path.write_bytes(b"not a state dict")  # a broken file: a 422 naming the module
        assert f"module({module})" in assert_error(_txt2img(server, [unit]), "alwayson_scripts")
    finally:
        path.unlink()
