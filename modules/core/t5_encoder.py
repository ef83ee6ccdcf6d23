"""T5 text encoders (Flux's and SD3's T5-XXL): config from shapes, building from a file's tensors, the
tokenizer shipped in the repo, and prompt encoding with A1111's weights.

A prompt becomes its tokens (per weighted segment of the prompt language, ``BREAK`` ignored), then
``</s>``, padded with ``<pad>`` to the model's fixed length (cut to fit); the encoder's last hidden
state is weighted as the emphasis mode says.
"""

from __future__ import annotations

import functools
import re

import torch

from . import emphasis as emphasis_modes
from . import ldm_parts
from .checkpoint_file import CheckpointFile
from .checkpoint_shapes import Shapes, UnsupportedCheckpoint, indices, require

MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"


def config_from_shapes(shapes: Shapes, prefix: str):
    from transformers import T5Config

    vocab, d_model = shapes.get(prefix + "shared.weight") or require(shapes, prefix + "encoder.embed_tokens.weight")
    buckets, heads = require(shapes, prefix + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    inner = require(shapes, prefix + MARKER)[0]
    return T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, num_heads=heads,
                    d_ff=require(shapes, prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0],
                    num_layers=len(indices(shapes, re.escape(prefix) + r"encoder\.block\.(\d+)\.")),
                    relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu",
                    is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)


def build(source: CheckpointFile, prefix: str, dtype: torch.dtype):
    from transformers import T5EncoderModel

    config = config_from_shapes(source.shapes, prefix)
    state = {k[len(prefix):]: v for k, v in source.read_prefix(prefix, dtype).items()}
    shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    state["shared.weight"] = state["encoder.embed_tokens.weight"] = shared  # tied in T5
    with torch.device("meta"):
        model = T5EncoderModel(config)
    ldm_parts.assign(model, state, "T5 text encoder")
    return model


@functools.lru_cache(maxsize=1)
def load_tokenizer():
    from transformers import T5TokenizerFast

    folder = ldm_parts.TOKENIZER_ROOT / "t5"
    if not (folder / "tokenizer.json").is_file():
        raise UnsupportedCheckpoint(f"the shipped T5 tokenizer is missing from {folder}")
    return T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="</s>", pad_token="<pad>",
                           unk_token="<unk>", extra_ids=0)




def tokens(tokenizer, text: str, length: int, emphasis: str) -> tuple[list[int], list[float]]:
    """One prompt's ids and weights, ``</s>`` at the end, padded to ``length``."""
    ids, weights = [], []
    for piece, weight in emphasis_modes.segments(text, emphasis):
        if piece == "BREAK" and weight == -1:
            continue
        found = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += found
        weights += [weight] * len(found)
    ids, weights = ids[: length - 1] + [tokenizer.eos_token_id], weights[: length - 1] + [1.0]
    pad = length - len(ids)
    return ids + [tokenizer.pad_token_id] * pad, weights + [1.0] * pad


@torch.no_grad()
def encode(encoder, tokenizer, prompts: list[str], length: int, emphasis: str) -> torch.Tensor:
    """(rows, length, width) token states, weighted."""
    device = next(encoder.parameters()).device
    rows = [tokens(tokenizer, p, length, emphasis) for p in prompts]
    ids = torch.tensor([r[0] for r in rows], device=device)
    weights = torch.tensor([r[1] for r in rows], device=device)
    hidden = encoder(input_ids=ids).last_hidden_state.float()
    return emphasis_modes.apply(emphasis, hidden, weights)
