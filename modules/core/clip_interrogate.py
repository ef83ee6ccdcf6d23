"""CLIP's half of A1111's Interrogate CLIP: OpenAI's CLIP ViT-L/14 loaded from its file as
transformers' ``CLIPModel``, the category lists, and the ranking of their lines against a picture.

- The file is A1111's ``ViT-L-14.pt`` (what ``clip.load("ViT-L/14")`` reads): OpenAI's TorchScript
  archive, read weights-only by ``modules.core.torchscript_weights`` (no TorchScript runs). A
  ``torch.save`` state dict (read with ``weights_only=True``) or a ``.safetensors`` file is taken
  too, with OpenAI's names (``visual.conv1.weight``, ``transformer.resblocks.<i>.attn.in_proj_weight``)
  or transformers' (``vision_model.embeddings.patch_embedding.weight``). OpenAI's names are renamed
  onto ``CLIPModel`` (the fused q/k/v projection split in three, the projections transposed) and
  the config is read from the shapes: widths, depths, patch and picture size, context length,
  vocabulary, embedding width; one head per 64 channels and QuickGELU, as OpenAI's ``build_model``.
  Only ViT image towers: OpenAI's ResNet ones (RN50...) are refused, naming the reason.
- Text is tokenized as ``clip.tokenize(truncate=True)``: start token, the BPE tokens of the shipped
  SD1 tokenizer (models/tokenizers/clip), end token, cut to the context length with the end token
  kept last, zero-padded. The picture as OpenAI's preprocess: its short side resized to the
  model's size (bicubic), the centre square cropped, normalised with CLIP's mean and deviation.
- The categories (A1111's ``interrogate`` folder, pharmapsychotic/clip-interrogator's lists): one
  per ``.txt`` file, named by its stem, one candidate per line; ``name.topN.txt`` gives N matches
  (A1111 looks for ``.topN.`` in the stem, which never ends with a dot; here the file name is
  searched, so the documented ``.topN.txt`` form works). ``interrogate_clip_skip_categories``
  leaves categories out, ``interrogate_clip_dict_limit`` (0: no limit) keeps each list's first lines.
- Ranking, as A1111's ``InterrogateModels.rank``: the image and text embeddings normalised, the
  softmax of 100 x their cosine similarities over the category's lines, the best ``topn``; the
  answer is the BLIP caption, then each match as ``, text`` or, with ``interrogate_return_ranks``,
  ``, (text:0.123)`` (the softmax probability).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from . import torchscript_weights
from .blip import CLIP_MEAN, CLIP_STD, ModelFileError, adopt, heads, read_pickle

MODEL_FILE = "ViT-L-14.pt"  # clip.load("ViT-L/14")'s file name in its download root
TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "models" / "tokenizers" / "clip"
SOT, EOT = 49406, 49407
TEXT_BATCH = 256  # lines encoded at once (A1111 encodes a whole list in one batch)
_TOPN = re.compile(r"\.top(\d+)\.")
_BLOCK_RENAMES = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
                  ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj."))


@dataclass(frozen=True)
class Category:
    """A1111's ``Category``: a list's name (its file's stem), how many matches it gives, its lines."""

    name: str
    topn: int
    items: tuple[str, ...]


# -- reading the model ----------------------------------------------------------------------

def read_file(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, weights only: a TorchScript archive, a torch.save state dict or safetensors."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - a damaged file: its reason
            raise ModelFileError(f"{path.name}: not a readable safetensors file ({error})") from None
    if torchscript_weights.is_torchscript(path):
        try:
            return torchscript_weights.read_state_dict(path)
        except torchscript_weights.TorchScriptError as error:
            raise ModelFileError(str(error)) from None
    data = read_pickle(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFileError(f"{path.name}: holds a {type(data).__name__}, not a state dict")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _layers(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not found or found != set(range(len(found))):
        raise ModelFileError(f"the layers under {prefix} are missing or not numbered 0..n")
    return len(found)


def _block(state: dict, old: str, new: str, out: dict) -> None:
    """One OpenAI residual block (``old``: ``...resblocks.<i>.``) under transformers' ``new`` names."""
    for kind in ("weight", "bias"):
        q, k, v = state[f"{old}attn.in_proj_{kind}"].chunk(3, dim=0)
        for part, tensor in (("q", q), ("k", k), ("v", v)):
            out[f"{new}self_attn.{part}_proj.{kind}"] = tensor
    for key, value in state.items():
        if key.startswith(old):
            tail = key[len(old):]
            for before, after in _BLOCK_RENAMES:
                if tail.startswith(before):
                    out[new + after + tail[len(before):]] = value


def openai_to_hf(state: dict) -> dict[str, torch.Tensor]:
    """OpenAI's CLIP names -> ``CLIPModel``'s."""
    out = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "logit_scale": state["logit_scale"].reshape(()),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],  # transformers' spelling
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
    }
    for i in range(_layers(state, "transformer.resblocks.")):
        _block(state, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out)
    for i in range(_layers(state, "visual.transformer.resblocks.")):
        _block(state, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", out)
    return out


def config_from_shapes(state: dict) -> CLIPConfig:
    """``CLIPModel``'s config from a state dict in transformers' names."""
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0] - 1
    grid = round(positions ** 0.5)
    if grid * grid != positions:
        raise ModelFileError(f"the image tower holds {positions + 1} positions, not a square grid plus the class token")
    vision_width, text_width = patch.shape[0], state["text_model.final_layer_norm.weight"].shape[0]
    embed = state["text_projection.weight"].shape[0]
    text = dict(vocab_size=state["text_model.embeddings.token_embedding.weight"].shape[0], hidden_size=text_width,
                intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                num_hidden_layers=_layers(state, "text_model.encoder.layers."), num_attention_heads=heads(text_width),
                max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
                projection_dim=embed, hidden_act="quick_gelu", bos_token_id=SOT, eos_token_id=EOT)
    vision = dict(hidden_size=vision_width,
                  intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=_layers(state, "vision_model.encoder.layers."),
                  num_attention_heads=heads(vision_width), image_size=patch.shape[-1] * grid,
                  patch_size=patch.shape[-1], projection_dim=embed, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def build(state: dict[str, torch.Tensor], name: str = "model") -> CLIPModel:
    """``CLIPModel`` from a state dict in OpenAI's or transformers' names (float32, on the CPU)."""
    if "visual.conv1.weight" in state and "visual.class_embedding" not in state:
        raise ModelFileError(f"{name}: a CLIP with a ResNet image tower; A1111's Interrogate CLIP uses ViT-L/14")
    try:
        if "visual.class_embedding" in state:
            state = openai_to_hf(state)
        config = config_from_shapes(state)
    except KeyError as error:
        raise ModelFileError(f"{name}: the weight {error} is missing (not an OpenAI CLIP ViT model)") from None
    except ModelFileError as error:
        raise ModelFileError(f"{name}: {error}") from None
    return adopt(lambda: CLIPModel(config), state, name, "a CLIP model")


def load(path: Path) -> CLIPModel:
    return build(read_file(path), path.name)


# -- inputs -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def tokenizer() -> CLIPTokenizer:
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        raise ModelFileError(f"the shipped CLIP tokenizer is missing from {TOKENIZER_DIR}")
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """``clip.tokenize(texts, context_length, truncate=True)``: (len(texts), context_length) ids."""
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    encoded = tokenizer()(list(texts), add_special_tokens=False).input_ids if texts else []
    for row, pieces in enumerate(encoded):
        tokens = [SOT, *pieces, EOT]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = EOT
        ids[row, :len(tokens)] = torch.tensor(tokens)
    return ids


def prepare(image: Image.Image, size: int) -> torch.Tensor:
    """OpenAI's preprocess: short side to ``size`` (bicubic), centre crop, normalised; (1, 3, size, size)."""
    image = image.convert("RGB")
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new != (w, h):
        image = image.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)


# -- categories and ranking -----------------------------------------------------------------------

def category_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.txt") if p.is_file()) if folder.is_dir() else []


def load_categories(folder: Path, skip: list[str] | tuple[str, ...] = (), dict_limit: int = 0) -> list[Category]:
    """The folder's lists in name order, the skipped ones left out, each cut to ``dict_limit`` lines."""
    out = []
    for path in category_files(folder):
        if path.stem in skip:
            continue
        match = _TOPN.search(path.name)
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        items = tuple(line for line in lines if line)
        if dict_limit:
            items = items[:int(dict_limit)]
        out.append(Category(path.stem, 1 if match is None else int(match.group(1)), items))
    return out


def _features(output) -> torch.Tensor:
    """transformers >= 5 returns the projected embedding as ``pooler_output``; older ones a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.inference_mode()
def image_features(model: CLIPModel, image: Image.Image, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The picture's normalised embedding, (1, D) in float32."""
    pixels = prepare(image, model.config.vision_config.image_size).to(device=device, dtype=dtype)
    features = _features(model.get_image_features(pixel_values=pixels)).float()
    return features / features.norm(dim=-1, keepdim=True)


@torch.inference_mode()
def text_features(model: CLIPModel, texts: tuple[str, ...], device="cpu") -> torch.Tensor:
    """The lines' normalised embeddings, (len(texts), D) in float32."""
    context = model.config.text_config.max_position_embeddings
    parts = []
    for start in range(0, len(texts), TEXT_BATCH):
        ids = tokenize(list(texts[start:start + TEXT_BATCH]), context).to(device)
        parts.append(_features(model.get_text_features(input_ids=ids)).float())
    features = torch.cat(parts) if parts else torch.zeros(0, model.config.projection_dim)
    return features / features.norm(dim=-1, keepdim=True)


def rank(image_embedding: torch.Tensor, texts: tuple[str, ...], embeddings: torch.Tensor,
         top_count: int = 1) -> list[tuple[str, float]]:
    """A1111's rank: the ``top_count`` best lines by softmax(100 x cosine), with their probability."""
    if not texts:
        return []
    similarity = (100.0 * image_embedding.to(embeddings) @ embeddings.T).softmax(dim=-1).mean(dim=0)
    probs, labels = similarity.cpu().topk(min(top_count, len(texts)))
    return [(texts[int(i)], float(p)) for p, i in zip(probs, labels)]


def caption_string(caption: str, matches: list[tuple[str, float]], include_ranks: bool = False) -> str:
    """A1111's answer: the caption, then ", match" (", (match:0.123)" with the ranks) for each match."""
    parts = [caption]
    for text, score in matches:
        parts.append(f", ({text}:{score:.3f})" if include_ranks else f", {text}")
    return "".join(parts)
