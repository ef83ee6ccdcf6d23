"""Prompts -> the tensors the UNet is conditioned on, the way A1111 builds them.

- Prompts are tokenized without truncation and cut into 75-token chunks; a chunk that
  fills up moves its tail after the last comma (if within 20 tokens) to the next chunk;
  `BREAK` starts a new chunk. Each chunk becomes BOS + 75 tokens + EOS, padded with
  EOS (SD1's CLIP) or with "!" after the first EOS (OpenCLIP), encoded on its own, and
  the chunk outputs are concatenated along the token axis.
- Every token carries a weight (1.0 unless the prompt language says otherwise); the
  encoder output is scaled by it and its mean restored, as A1111 does by default.
- SD1 honours CLIP skip (hidden state -n, then the final norm). SD2 reads the
  penultimate layer + final norm. SDXL concatenates CLIP-L and OpenCLIP-bigG
  penultimate states and adds the pooled bigG output and size/crop ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

CHUNK = 75
COMMA_BACKTRACK = 20
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def split_segments(prompt: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) segments; BREAK becomes ("BREAK", -1) as in A1111.
    The prompt-language issue replaces this with the full attention parser."""
    out: list[tuple[str, float]] = []
    parts = _BREAK.split(prompt)
    for i, part in enumerate(parts):
        if i:
            out.append(("BREAK", -1.0))
        if part:
            out.append((part, 1.0))
    return out


class PromptChunker:
    """A1111's chunking of weighted segments into 75-token chunks."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.comma = tokenizer.convert_tokens_to_ids(",</w>")

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def chunks(self, segments: list[tuple[str, float]]) -> list[Chunk]:
        chunks: list[Chunk] = []
        chunk = Chunk()
        last_comma = -1

        def close() -> None:
            nonlocal chunk, last_comma
            chunks.append(chunk)
            chunk, last_comma = Chunk(), -1

        texts = [t for t, w in segments if not (t == "BREAK" and w == -1)]
        token_lists = iter(self.tokenize(texts)) if texts else iter(())
        for text, weight in segments:
            if text == "BREAK" and weight == -1:
                close()
                continue
            for token in next(token_lists):
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif len(chunk.tokens) == CHUNK and last_comma != -1 and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK:
                    cut = last_comma + 1
                    moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                    chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                    close()
                    chunk = moved
                if len(chunk.tokens) == CHUNK:
                    close()
                chunk.tokens.append(token)
                chunk.weights.append(weight)
        if chunk.tokens or not chunks:
            close()
        return chunks


def _core(encoder):
    """transformers 5 flattened CLIPTextModel; the projection model still wraps it."""
    return encoder.text_model if hasattr(encoder, "text_model") else encoder


class TextConditioner:
    """Encodes batches of prompts for one loaded model. Caches the last few results."""

    def __init__(self, model, clip_skip: int = 1, cache_size: int = 8):
        self.model = model
        self.family = model.spec.family
        self.clip_skip = max(1, int(clip_skip))
        self.chunker = PromptChunker(model.tokenizers[0])
        self._cache: dict[tuple, dict] = {}
        self._cache_size = cache_size

    def token_count(self, prompt: str) -> tuple[int, int]:
        """(tokens used, token capacity) as A1111's counter shows it."""
        chunks = self.chunker.chunks(split_segments(prompt))
        used = sum(len(c.tokens) for c in chunks[:-1]) + len(chunks[-1].tokens) if chunks else 0
        return used, max(1, len(chunks)) * CHUNK

    def encode(self, prompts: list[str], width: int, height: int) -> dict[str, torch.Tensor]:
        key = (tuple(prompts), width, height, self.clip_skip)
        if key in self._cache:
            return self._cache[key]
        per_prompt = [self.chunker.chunks(split_segments(p)) for p in prompts]
        n_chunks = max(len(c) for c in per_prompt)
        outputs, pooled = [], None
        for i in range(n_chunks):
            batch = [c[i] if i < len(c) else Chunk() for c in per_prompt]
            hidden, pool = self._encode_chunks(batch)
            outputs.append(hidden)
            if pooled is None:
                pooled = pool  # A1111 takes the pooled output of the first chunk
        cond = {"context": torch.cat(outputs, dim=1)}
        if self.family == "sdxl":
            ids = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)
            cond["text_embeds"] = pooled
            cond["time_ids"] = ids.to(pooled.device).repeat(len(prompts), 1)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = cond
        return cond

    @torch.no_grad()
    def _encode_chunks(self, batch: list[Chunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        tok = self.model.tokenizers[0]
        bos, eos = tok.bos_token_id, tok.eos_token_id
        rows, weights = [], []
        for c in batch:
            pad = CHUNK - len(c.tokens)
            rows.append([bos] + c.tokens + [eos] * (pad + 1))
            weights.append([1.0] + c.weights + [1.0] * (pad + 1))
        device = self.model.device
        tokens = torch.tensor(rows, device=device)
        hiddens, pooled = [], None
        for encoder, tokenizer in zip(self.model.text_encoders, self.model.tokenizers):
            ids = tokens
            if tokenizer.pad_token_id != eos:  # OpenCLIP pads after the first EOS with "!"
                ids = tokens.clone()
                for row in range(ids.shape[0]):
                    first_eos = int((ids[row] == eos).nonzero()[0])
                    ids[row, first_eos + 1 :] = tokenizer.pad_token_id
            h, p = self._run_encoder(encoder, ids)
            hiddens.append(h)
            pooled = p if p is not None else pooled
        z = torch.cat(hiddens, dim=-1).float()
        w = torch.tensor(weights, device=z.device, dtype=z.dtype).unsqueeze(-1)
        if not torch.all(w == 1):
            mean_before = z.mean()
            z = z * w
            z = z * (mean_before / z.mean())
        return z, (pooled.float() if pooled is not None else None)

    def _run_encoder(self, encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = encoder(input_ids=ids, output_hidden_states=True)
        pooled = getattr(out, "text_embeds", None)
        if self.family == "sdxl":
            return out.hidden_states[-2], pooled
        if self.family == "sd1" and self.clip_skip > 1:
            h = out.hidden_states[-min(self.clip_skip, len(out.hidden_states) - 1)]
            return _core(encoder).final_layer_norm(h), pooled
        return out.last_hidden_state, pooled
