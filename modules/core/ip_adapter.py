"""IP-Adapter files and their image prompt, applied as sd-webui-controlnet applies them (SD 1.x, SDXL).

**Files** (weights only, detected from the keys and shapes as the extension's ``PlugableIPAdapter``):
``ip-adapter_sd15.pth`` / ``.bin`` hold ``{"image_proj": {...}, "ip_adapter": {...}}``; the
``.safetensors`` ones hold the same tensors flattened (``image_proj.proj.weight``,
``ip_adapter.1.to_k_ip.weight``). The image projection says the kind:

- **plain** (``proj.weight``, ``norm.*``): the CLIP image embedding -> 4 tokens (diffusers' ``ImageProjection``);
- **plus** (``latents``, ``proj_in``, ``layers.*``: a resampler): the CLIP vision model's penultimate
  hidden states -> 16 tokens (``IPAdapterPlusImageProjection``);
- **full face** (``proj.0`` ... ``proj.3``: an MLP): the penultimate hidden states -> one token per
  patch (``IPAdapterFullImageProjection``).

- **FaceID** (``proj.0``, ``proj.2``, ``norm``: the extension's ``MLPProjModelFaceId``;
  ``ip-adapter-faceid_sd15.bin``, ``ip-adapter-faceid_sdxl.bin``, ``ip-adapter-faceid-portrait_sd15.bin``):
  the insightface embedding (512, normed: ``ip-adapter_face_id``) -> 4 tokens (16: portrait), told by
  the shapes (diffusers' ``IPAdapterFaceIDImageProjection``);
- **FaceID plus** (that MLP plus ``perceiver_resampler.*``: ``ProjModelFaceIdPlus``;
  ``ip-adapter-faceid-plus(v2)_sd15.bin``): the embedding's tokens refined by a resampler reading the
  CLIP-H penultimate hidden states (``ip-adapter_face_id_plus``); a ``v2`` file name adds the tokens
  back (the extension's ``shortcut``) (diffusers' ``IPAdapterFaceIDPlusImageProjection``).

diffusers' own converter builds the projection from the file's names. The FaceID files' LoRA tensors
(``ip_adapter.N.to_q_lora...``) are not applied, as the extension does not: their LoRA file
(``ip-adapter-faceid_sd15_lora.safetensors``) goes in the prompt as any LoRA. InstantID files (a resampler
over the antelopev2 embedding, with its own ControlNet) are refused with that reason. ``ip_adapter.{2j+1}.to_k_ip`` /
``to_v_ip`` are the image tokens' key and value projections of the UNet's j-th cross-attention layer,
in diffusers' ``attn_processors`` order (down blocks, up blocks, middle: the extension's input blocks,
output blocks, middle block).

**CLIP vision encoder**: the extension's ``clip_h.pth`` / ``clip_g.pth`` (its ``annotator/downloads/clip_vision``), in
transformers' ``CLIPVisionModelWithProjection`` names (as ComfyUI's ``clip_vision`` safetensors too),
built from a config read off the shapes (ViT-H/14, ViT-bigG/14, ...). The picture is prepared as
``CLIPImageProcessor`` does: the short side to the model's size (bicubic), the centre cropped,
scaled to [0, 1] and normalised with CLIP's mean and std.

**Running**: the unit's picture gives the conditional tokens; the unconditional rows get the tokens of
a zero embedding (plain) or of a zero picture's hidden states (plus, full face), as the extension and
the original IP-Adapter do. While a unit is inside its guidance range, every cross-attention layer of
the UNet runs diffusers' ``IPAdapterAttnProcessor2_0``: the image tokens' attention, scaled by the
unit's weight, is added to the text attention's output. The processors are put on the layers for one
model call only (:meth:`Injection.attach` / :meth:`Injection.detach`, the latter by a forward hook on
the UNet that runs even when the call raises), so the UNet's own processors are back after every call
and nothing reaches the next job.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.loaders.unet import UNet2DConditionLoadersMixin
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from . import ldm_parts, memory
from .checkpoint_file import CheckpointError, CheckpointFile
from .checkpoint_shapes import Shapes, UnsupportedCheckpoint, indices

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's image_mean / image_std
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def looks_like_ip_adapter(shapes: Shapes) -> bool:
    return any(k.startswith("image_proj.") for k in shapes) and any(k.startswith("ip_adapter.") for k in shapes)


class IPAdapterModule(torch.nn.Module):
    """The file's image projection and its per-layer key/value projections of the image tokens."""

    def __init__(self, image_proj: torch.nn.Module, to_k: list[torch.nn.Linear], to_v: list[torch.nn.Linear]):
        super().__init__()
        self.image_proj = image_proj
        self.to_k = torch.nn.ModuleList(to_k)
        self.to_v = torch.nn.ModuleList(to_v)


@dataclass
class IPAdapterFile:
    """A built IP-Adapter (on the CPU, in the dtype asked for) and what it fits."""

    path: Path
    kind: str  # "plain", "plus", "full", "faceid", "faceid_plus"
    cross_attention_dim: int
    layers: int  # the cross-attention layers it has projections for
    embed_dim: int  # the CLIP width it reads: the projected embedding (plain) or the hidden states;
    # FaceID: the face embedding's width (512); FaceID plus: the CLIP hidden states'
    module: IPAdapterModule
    shortcut: bool = False  # FaceID plus v2: the embedding's tokens added to the resampler's

    @property
    def reads_face(self) -> bool:
        """Whether it reads an insightface face embedding (FaceID, FaceID plus)."""
        return self.kind in ("faceid", "faceid_plus")


def read_tensors(path: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's tensors as flat ``image_proj.*`` / ``ip_adapter.*`` names: a safetensors file as it
    is, a torch file's two nested dicts flattened (weights only)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        ckpt = CheckpointFile(path)
        try:
            return {k: ckpt.get(k, dtype) for k in ckpt.shapes}
        finally:
            ckpt.close()
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refused to load {path.name}: it holds Python objects that only full "
                              f"unpickling could restore ({str(exc).splitlines()[0]})") from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path.name} is corrupt or truncated: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} does not hold a state dict")
    out = {}
    for part in ("image_proj", "ip_adapter"):
        for key, value in (data.get(part) or {}).items():
            if isinstance(value, torch.Tensor):
                out[f"{part}.{key}"] = value.to(dtype) if value.is_floating_point() else value
    return out


def from_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> IPAdapterFile:
    """Build an IP-Adapter from its flat tensors; UnsupportedCheckpoint says what is wrong."""
    proj = {k[len("image_proj."):]: v for k, v in tensors.items() if k.startswith("image_proj.")}
    layers = {k[len("ip_adapter."):]: v for k, v in tensors.items() if k.startswith("ip_adapter.")}
    if not proj or not layers:
        raise UnsupportedCheckpoint("not an IP-Adapter (no image_proj / ip_adapter tensors)")
    name = Path(path).name.lower()
    if "instant_id" in name:
        raise UnsupportedCheckpoint("this is an InstantID IP-Adapter (it reads the antelopev2 face embedding "
                                    "through a resampler); those are not supported")
    faceid_mlp = all(k in proj for k in ("proj.0.weight", "proj.2.weight", "norm.weight")) and "proj.3.weight" not in proj
    if faceid_mlp and "perceiver_resampler.proj_in.weight" in proj:
        kind, embed_dim = "faceid_plus", proj["perceiver_resampler.proj_in.weight"].shape[1]
    elif faceid_mlp:
        kind, embed_dim = "faceid", proj["proj.0.weight"].shape[1]
    elif "faceid" in name or "perceiver_resampler.proj_in.weight" in proj:
        raise UnsupportedCheckpoint("a FaceID IP-Adapter whose image projection is not FaceID's "
                                    "(image_proj.proj.0 / proj.2 / norm, and perceiver_resampler.* for plus)")
    elif "proj.3.weight" in proj:
        kind, embed_dim = "full", proj["proj.0.weight"].shape[1]
    elif "latents" in proj:
        kind, embed_dim = "plus", proj["proj_in.weight"].shape[1]
    elif "proj.weight" in proj:
        kind, embed_dim = "plain", proj["proj.weight"].shape[1]
    else:
        raise UnsupportedCheckpoint("IP-Adapter image projection of an unknown kind")
    ids = indices(layers, r"(\d+)\.to_k_ip\.weight")
    if ids != list(range(1, 2 * len(ids), 2)) or any(f"{i}.to_v_ip.weight" not in layers for i in ids):
        raise UnsupportedCheckpoint("IP-Adapter layers (ip_adapter.N.to_k_ip / to_v_ip) are incomplete")
    try:  # diffusers' converter: the file's names -> its projection classes (self is not used unmapped)
        image_proj = UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
            None, proj, low_cpu_mem_usage=False)
    except (RuntimeError, KeyError) as exc:
        label = {"faceid": "FaceID", "faceid_plus": "FaceID plus"}.get(kind, kind)
        raise UnsupportedCheckpoint(f"IP-Adapter image projection does not match its kind ({label}): "
                                    f"{str(exc).splitlines()[0]}") from None
    image_proj = image_proj.to(next(iter(proj.values())).dtype)

    def linear(weight: torch.Tensor) -> torch.nn.Linear:
        with torch.device("meta"):
            out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        out.weight = torch.nn.Parameter(weight, requires_grad=False)
        return out

    to_k = [linear(layers[f"{i}.to_k_ip.weight"]) for i in ids]
    to_v = [linear(layers[f"{i}.to_v_ip.weight"]) for i in ids]
    module = IPAdapterModule(image_proj, to_k, to_v).eval().requires_grad_(False)
    return IPAdapterFile(Path(path), kind, to_k[0].in_features, len(ids), embed_dim, module,
                         shortcut=kind == "faceid_plus" and "v2" in name)


def load(path: str | Path, dtype: torch.dtype = torch.float32) -> IPAdapterFile:
    return from_tensors(path, read_tensors(path, dtype))


# -- CLIP vision --------------------------------------------------------------------------------------

def clip_vision_config(shapes: Shapes) -> CLIPVisionConfig:
    """CLIPVisionConfig from transformers-named shapes: the widths, depth, patch and picture size.
    The released encoders (ViT-L/14, ViT-H/14, ViT-bigG/14) all have 16 heads; OpenAI's ViT-L uses
    quick GELU, the LAION ones GELU."""
    p = "vision_model."
    need = (p + "embeddings.class_embedding", p + "embeddings.patch_embedding.weight",
            p + "embeddings.position_embedding.weight", "visual_projection.weight")
    if any(k not in shapes for k in need):
        raise UnsupportedCheckpoint("not a CLIP vision model (no vision_model.embeddings / visual_projection)")
    hidden = shapes[need[0]][0]
    patch = shapes[need[1]][2]
    positions = shapes[need[2]][0]
    if math.isqrt(positions - 1) ** 2 != positions - 1 or hidden % 16:
        raise UnsupportedCheckpoint("CLIP vision model of an unknown shape")
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=shapes[p + "encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=len(indices(shapes, re.escape(p) + r"encoder\.layers\.(\d+)\.")),
        num_attention_heads=16, image_size=patch * math.isqrt(positions - 1), patch_size=patch,
        projection_dim=shapes[need[3]][0], hidden_act="quick_gelu" if hidden == 1024 else "gelu",
        layer_norm_eps=1e-5)


def load_clip_vision(path: str | Path, dtype: torch.dtype = torch.float32) -> CLIPVisionModelWithProjection:
    """The user's CLIP vision file (weights only) as transformers' CLIPVisionModelWithProjection."""
    path = Path(path)
    ckpt = CheckpointFile(path)
    try:
        keys = [k for k in ckpt.shapes if k.startswith(("vision_model.", "visual_projection."))]
        config = clip_vision_config({k: ckpt.shapes[k] for k in keys})
        state = {k: ckpt.get(k, dtype) for k in keys}
    finally:
        ckpt.close()
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    ldm_parts.assign(model, state, f"CLIP vision ({path.name})")
    return model.eval().requires_grad_(False)


def clip_pixels(picture: Image.Image, size: int) -> torch.Tensor:
    """(1, 3, size, size): CLIPImageProcessor's preparation (short side to ``size`` bicubic, centre
    crop, [0, 1], CLIP mean/std)."""
    picture = picture.convert("RGB")
    w, h = picture.size
    short = min(w, h)
    new_w, new_h = (size, max(size, int(size * h / w))) if w == short else (max(size, int(size * w / h)), size)
    picture = picture.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    picture = picture.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


@torch.no_grad()
def image_tokens(adapter: IPAdapterFile, clip: CLIPVisionModelWithProjection,
                 picture: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional, unconditional) image tokens, each (1, tokens, cross_attention_dim), on the
    adapter's device and dtype."""
    param = next(clip.parameters())
    pixels = clip_pixels(picture, clip.config.image_size).to(param.device, param.dtype)
    proj = adapter.module.image_proj
    dtype = next(proj.parameters()).dtype
    if adapter.kind == "plain":
        embeds = clip(pixel_values=pixels).image_embeds
        width, cond_in, uncond_in = embeds.shape[-1], embeds, torch.zeros_like(embeds)
    else:
        width = clip.config.hidden_size
        cond_in = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        uncond_in = clip(pixel_values=torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    if width != adapter.embed_dim:
        raise ValueError(f"the IP-Adapter '{adapter.path.name}' reads CLIP features of width {adapter.embed_dim}, "
                         f"the CLIP vision model gives {width}")
    return proj(cond_in.to(dtype)), proj(uncond_in.to(dtype))


@torch.no_grad()
def face_tokens(adapter: IPAdapterFile, embedding, clip: CLIPVisionModelWithProjection | None = None,
                picture: Image.Image | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A FaceID adapter's (conditional, unconditional) tokens, each (1, tokens, cross_attention_dim):
    the face embedding's, and a zero embedding's (FaceID plus: with the picture's CLIP penultimate hidden
    states, and a zero picture's for the unconditional ones)."""
    proj = adapter.module.image_proj
    param = next(proj.parameters())
    face = torch.as_tensor(np.asarray(embedding, np.float32)).reshape(1, -1).to(param.device, param.dtype)
    if face.shape[-1] != adapter.embed_dim and adapter.kind == "faceid":
        raise ValueError(f"the IP-Adapter '{adapter.path.name}' reads a face embedding of width {adapter.embed_dim}, "
                         f"got {face.shape[-1]}")
    if adapter.kind == "faceid":
        return proj(face), proj(torch.zeros_like(face))
    if clip is None or picture is None:
        raise ValueError(f"the FaceID plus IP-Adapter '{adapter.path.name}' needs the picture's CLIP-H features")
    if clip.config.hidden_size != adapter.embed_dim:
        raise ValueError(f"the IP-Adapter '{adapter.path.name}' reads CLIP features of width {adapter.embed_dim}, "
                         f"the CLIP vision model gives {clip.config.hidden_size}")
    clip_param = next(clip.parameters())
    pixels = clip_pixels(picture, clip.config.image_size).to(clip_param.device, clip_param.dtype)
    cond_clip = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    uncond_clip = clip(pixel_values=torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    proj.shortcut, proj.shortcut_scale = adapter.shortcut, 1.0
    out = []
    for face_in, clip_in in ((face, cond_clip), (torch.zeros_like(face), uncond_clip)):
        proj.clip_embeds = clip_in.to(param.dtype)[:, None]  # diffusers' (batch, images, tokens, width)
        out.append(proj(face_in))
    proj.clip_embeds = None
    return out[0], out[1]


# -- the UNet's cross-attention layers ----------------------------------------------------------------

def cross_attention_layers(unet) -> list[tuple[str, torch.nn.Module]]:
    """(name, Attention) of the UNet's cross-attention layers, in the order of the files' layers."""
    names = [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor")]
    return [(n, unet.get_submodule(n)) for n in names]


def check_fits(adapter: IPAdapterFile, unet) -> str | None:
    """Why the adapter cannot run on ``unet`` (None: it can)."""
    layers = cross_attention_layers(unet)
    cross = unet.config.cross_attention_dim
    if adapter.cross_attention_dim != cross or adapter.layers != len(layers):
        return (f"the IP-Adapter '{adapter.path.name}' is for a UNet with {adapter.layers} cross-attention layers "
                f"reading width {adapter.cross_attention_dim}; this one has {len(layers)} reading width {cross}")
    for (name, attn), k in zip(layers, adapter.module.to_k):
        if attn.to_k.out_features != k.out_features:
            return f"the IP-Adapter '{adapter.path.name}' does not fit the layer {name}"
    return None


class _Processor(IPAdapterAttnProcessor2_0):
    """diffusers' IP-Adapter attention on one layer, fed the image tokens and weights of the model
    call in progress; outside one (``injection.live`` false) the layer's own processor runs."""

    def __init__(self, injection: "Injection", original, hidden: int, cross: int,
                 to_k: list[torch.nn.Linear], to_v: list[torch.nn.Linear]):
        with torch.device("meta"):  # the projections are the adapters' own modules, set below
            super().__init__(hidden, cross, num_tokens=[1] * len(to_k), scale=[0.0] * len(to_k))
        self.to_k_ip, self.to_v_ip = torch.nn.ModuleList(to_k), torch.nn.ModuleList(to_v)
        self.injection, self.original = injection, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        injection = self.injection
        if not injection.live:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        self.scale = injection.scales
        return super().__call__(attn, hidden_states, (encoder_hidden_states, injection.tokens), attention_mask, temb)


def restore(unet) -> None:
    """Put back the UNet's own processors where an IP-Adapter's are left (a call that raised)."""
    for _name, attn in cross_attention_layers(unet):
        if isinstance(attn.processor, _Processor):
            attn.set_processor(attn.processor.original)


class Injection:
    """One pass's IP-Adapters on one UNet: ``attach`` before a model call puts the processors on the
    cross-attention layers with the call's tokens and weights, ``detach`` after it puts back the
    UNet's own."""

    def __init__(self, unet, adapters: list[IPAdapterFile]):
        restore(unet)
        self.unet = unet
        self._hook = None
        dtype = unet.dtype
        for adapter in adapters:  # the image tokens meet the UNet's queries: the UNet's dtype
            if adapter.module.to_k[0].weight.dtype != dtype:
                memory.move(adapter.module, dtype=dtype)
        self.layers = cross_attention_layers(unet)
        self.adapters = adapters
        self.live = False
        self.scales: list[float] = [0.0] * len(adapters)
        self.tokens: list[torch.Tensor] = []
        self.processors = [
            _Processor(self, attn.processor, attn.to_k.out_features, unet.config.cross_attention_dim,
                       [a.module.to_k[j] for a in adapters], [a.module.to_v[j] for a in adapters])
            for j, (_name, attn) in enumerate(self.layers)]

    def attach(self, scales: list[float], tokens: list[torch.Tensor]) -> None:
        """``scales``: each adapter's weight for this call (0: not acting); ``tokens``: its image tokens,
        one row per row of the call's batch."""
        self.scales, self.tokens, self.live = list(scales), tokens, True
        for proc, (_name, attn) in zip(self.processors, self.layers):
            proc.original = attn.processor if not isinstance(attn.processor, _Processor) else proc.original
            attn.set_processor(proc)
        if self._hook is None:  # the UNet's call ends the attachment, however it ends
            self._hook = self.unet.register_forward_hook(lambda *_: self.detach(), always_call=True)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if not self.live:
            return
        for proc, (_name, attn) in zip(self.processors, self.layers):
            attn.set_processor(proc.original)
        self.live, self.tokens = False, []
