"""How prompt weights reach the text encoder's output: A1111's option ``emphasis`` ("Emphasis mode").

- "Original" (default): every token's hidden state is multiplied by its weight, then the whole
  encoded chunk batch is rescaled so its mean is what it was before;
- "No norm": multiplied, not rescaled (A1111: works better for SDXL);
- "Ignore": the prompt is parsed (brackets and weights are removed, BREAK works) but every weight
  counts as 1;
- "None": nothing is parsed: brackets, ``(x:1.5)`` and BREAK are literal characters of the prompt.

A1111 applies the mode to each text encoder's output on its own (SDXL: CLIP-L and OpenCLIP-bigG
each get their own mean); the pooled output is never weighted.
"""

from __future__ import annotations

import torch

from . import prompt_parser

ORIGINAL = "Original"
MODES: dict[str, str] = {  # A1111's names and descriptions, in its order
    "None": "disable the mechanism entirely and treat (:.1.1) as literal characters",
    "Ignore": "treat all empasised words as if they have no emphasis",
    "Original": "the original emphasis implementation",
    "No norm": "same as original, but without normalization (seems to work better for SDXL)",
}


def check(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown emphasis mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def segments(prompt: str, mode: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) pieces for the tokenizer under ``mode``."""
    if mode == "None":
        return [(prompt, 1.0)]
    return prompt_parser.parse_prompt_attention(prompt)


def applies_weights(mode: str) -> bool:
    return mode in ("Original", "No norm")


def apply(mode: str, z: torch.Tensor, weights: torch.Tensor, row_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Weight the hidden states ``z`` (rows, tokens, dim) by ``weights`` (rows, tokens).

    ``row_counts`` (rows,) says how many times each row stands in the encoded batch (duplicate
    prompts are encoded once): "Original" restores the mean of the batch A1111 would have encoded.
    """
    if not applies_weights(mode) or torch.all(weights == 1):
        return z  # A1111 multiplies by 1 and divides the mean by itself: the same numbers
    weighted = z * weights.to(z.dtype).unsqueeze(-1)
    if mode == "No norm":
        return weighted
    return weighted * (_mean(z, row_counts) / _mean(weighted, row_counts))


def _mean(z: torch.Tensor, row_counts: torch.Tensor | None) -> torch.Tensor:
    if row_counts is None or torch.all(row_counts == 1):
        return z.mean()
    counts = row_counts.to(z.device, z.dtype)
    return (z.mean(dim=tuple(range(1, z.ndim))) * counts).sum() / counts.sum()
