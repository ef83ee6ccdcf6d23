"""BLIP captioning (A1111's Interrogate CLIP writes a BLIP caption first), from Salesforce's
original checkpoint ``model_base_caption_capfilt_large.pth``.

- The file is read with ``torch.load(weights_only=True)``: ``{"model": state_dict}`` (a bare state
  dict is taken too) with the original names: the ViT under ``visual_encoder.`` (``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  ``norm``) and the BERT decoder under ``text_decoder.`` (``bert.embeddings``, ``bert.encoder.layer.<i>``
  with ``crossattention``, ``cls.predictions``). Those are renamed onto transformers'
  ``BlipForConditionalGeneration`` (the decoder's names are already transformers'), whose config is
  read from the tensors' shapes: widths, depths, the picture size (``pos_embed`` holds one position
  per 16x16 patch plus the class token), the vocabulary; one attention head per 64 channels as in
  BLIP's ViT-B/L and BERT-base. ViT layer norms use BLIP's eps 1e-6, BERT's 1e-12.
- The tokenizer is bert-base-uncased's WordPiece vocabulary, shipped in models/tokenizers/bert,
  with BLIP's two added tokens ``[DEC]`` (30522, the decoder's start) and ``[ENC]`` (30523).
- A caption, as BLIP's ``generate(sample=False)``: the picture resized to the model's size
  (bicubic, 384x384 for the release) and normalised with CLIP's mean and deviation; the decoder
  starts from the prompt "a picture of " with ``[CLS]`` replaced by ``[DEC]``, beam search with
  A1111's ``interrogate_clip_num_beams``, ``interrogate_clip_min_length`` and
  ``interrogate_clip_max_length`` (token counts, prompt included), ``[SEP]`` ends it; the answer is
  the decoded text after the prompt.
"""

from __future__ import annotations

import functools
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

MODEL_FILE = "model_base_caption_capfilt_large.pth"  # A1111's download name, in models/BLIP
VOCAB_FILE = Path(__file__).resolve().parents[2] / "models" / "tokenizers" / "bert" / "vocab.txt"
PROMPT = "a picture of "
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # channels per attention head in BLIP's ViTs, BERT and OpenAI's CLIP

_VISION_RENAMES = (  # original -> transformers, applied in order to the part after "visual_encoder."
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and says why."""


def read_pickle(path: Path):
    """The object of a torch.save file, read weights-only; ModelFileError with the reason otherwise."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(f"{path.name}: refused: its pickle holds more than weights (only weights are "
                             f"loaded; full unpickling can run code) ({str(error).splitlines()[0][:200]})") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError) as error:
        text = str(error).strip()
        raise ModelFileError(f"{path.name}: cannot be read: {text.splitlines()[0] if text else type(error).__name__}"
                             ) from None


def heads(width: int) -> int:
    return width // HEAD_WIDTH if width >= HEAD_WIDTH and width % HEAD_WIDTH == 0 else 1


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if found != set(range(len(found))):
        raise ModelFileError(f"the layers matching {pattern} are not numbered 0..n")
    return len(found)


def convert(state: dict, name: str = "model") -> tuple[BlipConfig, dict[str, torch.Tensor]]:
    """The transformers config and state dict of an original BLIP captioning state dict."""
    if not any(k.startswith("visual_encoder.") for k in state) or not any(k.startswith("text_decoder.") for k in state):
        raise ModelFileError(f"{name}: has no visual_encoder./text_decoder. weights (not a BLIP captioning model)")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or key.endswith("position_ids"):
            continue
        if key.startswith("visual_encoder."):
            tail = key[len("visual_encoder."):]
            for pattern, new in _VISION_RENAMES:
                if re.match(pattern, tail):
                    out["vision_model." + re.sub(pattern, new, tail)] = value
                    break
            else:
                raise ModelFileError(f"{name}: unexpected weight '{key}' (not BLIP's ViT)")
        elif key.startswith("text_decoder."):
            out[key] = value
    # the output layer is tied to the word embeddings and its bias to predictions.bias
    decoder = "text_decoder.cls.predictions."
    if "text_decoder.bert.embeddings.word_embeddings.weight" in out:
        out.setdefault(decoder + "decoder.weight", out["text_decoder.bert.embeddings.word_embeddings.weight"])
    if decoder + "bias" in out:
        out.setdefault(decoder + "decoder.bias", out[decoder + "bias"])
    try:
        config = _config(out)
    except KeyError as error:
        raise ModelFileError(f"{name}: the weight {error} is missing (not a BLIP captioning model)") from None
    return config, out


def _config(state: dict) -> BlipConfig:
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    positions = state["vision_model.embeddings.position_embedding"].shape[-2] - 1
    grid = round(positions ** 0.5)
    if grid * grid != positions:
        raise ModelFileError(f"pos_embed holds {positions + 1} positions, not a square grid plus the class token")
    vision_width = patch.shape[0]
    words = state["text_decoder.bert.embeddings.word_embeddings.weight"]
    text_width = words.shape[1]
    vision = dict(hidden_size=vision_width,
                  intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                  num_hidden_layers=_count(state, r"vision_model\.encoder\.layers\.(\d+)\."),
                  num_attention_heads=heads(vision_width), image_size=patch.shape[-1] * grid,
                  patch_size=patch.shape[-1],
                  layer_norm_eps=1e-6)
    layer = "text_decoder.bert.encoder.layer.0."
    text = dict(vocab_size=words.shape[0], hidden_size=text_width,
                encoder_hidden_size=state[layer + "crossattention.self.key.weight"].shape[1],
                intermediate_size=state[layer + "intermediate.dense.weight"].shape[0],
                num_hidden_layers=_count(state, r"text_decoder\.bert\.encoder\.layer\.(\d+)\."),
                num_attention_heads=heads(text_width),
                max_position_embeddings=state["text_decoder.bert.embeddings.position_embeddings.weight"].shape[0],
                layer_norm_eps=1e-12, tie_word_embeddings=False)
    return BlipConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def adopt(make: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], name: str, what: str) -> torch.nn.Module:
    """``make()`` built without random init (meta device) and given ``state``'s tensors in float32;
    ModelFileError naming ``what`` when a weight is missing or does not fit."""
    with torch.device("meta"):
        model = make()
    expected = set(model.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.endswith("position_ids"))
    if missing:
        raise ModelFileError(f"{name}: the weights do not form {what} (missing {missing[:4]})")
    try:
        model.load_state_dict({k: v.float() for k, v in state.items() if k in expected}, strict=False, assign=True)
    except RuntimeError as error:
        reason = str(error).splitlines()[-1].strip()
        raise ModelFileError(f"{name}: the weights do not fit together: {reason}") from None
    for module in model.modules():  # non-persistent buffers: not in files
        if getattr(module, "position_ids", None) is not None and module.position_ids.is_meta:
            ids = module.position_ids
            module.register_buffer("position_ids", torch.arange(ids.shape[-1]).expand(ids.shape), persistent=False)
    return model.eval().requires_grad_(False)


def build(config: BlipConfig, state: dict[str, torch.Tensor], name: str = "model") -> BlipForConditionalGeneration:
    return adopt(lambda: BlipForConditionalGeneration(config), state, name, "a BLIP captioning model")


def load(path: Path) -> BlipForConditionalGeneration:
    data = read_pickle(path)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path.name}: holds a {type(data).__name__}, not a state dict")
    config, converted = convert(state, path.name)
    return build(config, converted, path.name)


@functools.lru_cache(maxsize=1)
def tokenizer() -> BertTokenizer:
    """bert-base-uncased's tokenizer with BLIP's [DEC] (bos) and [ENC], from the shipped vocabulary."""
    if not VOCAB_FILE.is_file():
        raise ModelFileError(f"the shipped BERT vocabulary is missing: {VOCAB_FILE}")
    with open(VOCAB_FILE, encoding="utf-8") as file:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(file)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_tokens(["[ENC]"], special_tokens=True)
    return tok


def prepare(image: Image.Image, size: int) -> torch.Tensor:
    """BLIP's input: the picture resized to size x size (bicubic), normalised, (1, 3, size, size)."""
    resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)


@torch.inference_mode()
def caption(model: BlipForConditionalGeneration, image: Image.Image, num_beams: int = 1, min_length: int = 24,
            max_length: int = 48, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """BLIP's caption of ``image`` (the model must already be on ``device`` in ``dtype``)."""
    tok = tokenizer()
    pixels = prepare(image, model.config.vision_config.image_size).to(device=device, dtype=dtype)
    prompt = tok(PROMPT, return_tensors="pt").input_ids.to(device)
    max_length = max(int(max_length), prompt.shape[1])
    out = model.generate(pixel_values=pixels, input_ids=prompt, num_beams=max(1, int(num_beams)),
                         min_length=min(int(min_length), max_length), max_length=max_length, do_sample=False,
                         repetition_penalty=1.0)
    text = tok.decode(out[0], skip_special_tokens=True)
    return text[len(PROMPT):] if text.startswith(PROMPT) else text.removeprefix(PROMPT.strip()).strip()
