"""Prompts -> the tensors the UNet is conditioned on, the way A1111 builds them.

- Prompts are tokenized without truncation and cut into 75-token chunks; a chunk that
  fills up moves its tail after the last comma (if within 20 tokens: the comma_padding_backtrack
  option) to the next chunk;
  `BREAK` starts a new chunk. Each chunk becomes BOS + 75 tokens + EOS, padded with
  EOS (SD1's CLIP) or with "!" after the first EOS (OpenCLIP), encoded on its own, and
  the chunk outputs are concatenated along the token axis.
- Every token carries a weight from the prompt language (``prompt_parser``); each encoder's
  output is scaled by it as the emphasis mode says (``emphasis``: by default scaled, then the
  mean restored, as A1111 does).
- The family (``modules.core.families``) picks each encoder's hidden state (SD1: CLIP skip; SD2 and
  SDXL: the penultimate layer) and adds what the denoiser needs beside the concatenated context
  (SDXL: the pooled bigG output and the size/crop ids; the refiner: an aesthetic score).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from . import emphasis as emphasis_modes
from . import lora, prompt_parser
from .conditioning_options import ConditioningOptions

CHUNK = 75
COMMA_BACKTRACK = 20
EMBEDDING_SLOT = 0  # token id written where an embedding's vectors go (A1111 writes 0 too)


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # textual inversion: (offset in `tokens`, Embedding) for each embedding's run of slots
    fixes: list[tuple[int, object]] = field(default_factory=list)

    def split(self, cut: int) -> "Chunk":
        """Keep tokens[:cut] here, return the rest (with the embeddings that lie there) as a new chunk."""
        tail = Chunk(self.tokens[cut:], self.weights[cut:], [(o - cut, e) for o, e in self.fixes if o >= cut])
        self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
        self.fixes = [(o, e) for o, e in self.fixes if o < cut]
        return tail


class PromptChunker:
    """A1111's chunking of weighted segments into 75-token chunks."""

    def __init__(self, tokenizer, embeddings=None, backtrack: int = COMMA_BACKTRACK):
        self.tokenizer = tokenizer
        self.comma = tokenizer.convert_tokens_to_ids(",</w>")
        self.embeddings = embeddings  # core.embeddings.ModelEmbeddings: names -> vector slots
        self.backtrack = int(backtrack)  # A1111's comma_padding_backtrack (0: a full chunk just ends)

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
            tokens, position = next(token_lists), 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif self.backtrack and len(chunk.tokens) == CHUNK and last_comma != -1 \
                        and len(chunk.tokens) - last_comma <= self.backtrack:
                    moved = chunk.split(last_comma + 1)
                    close()
                    chunk = moved
                if len(chunk.tokens) == CHUNK:
                    close()
                embedding, span = self.embeddings.find_at(tokens, position) if self.embeddings else (None, 0)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    position += 1
                    continue
                # an embedding's name becomes its N vector slots, all in one chunk (A1111)
                if len(chunk.tokens) + embedding.vectors > CHUNK:
                    close()
                chunk.fixes.append((len(chunk.tokens), embedding))
                chunk.tokens += [EMBEDDING_SLOT] * embedding.vectors
                chunk.weights += [weight] * embedding.vectors
                position += span
        if chunk.tokens or not chunks:
            close()
        return chunks


def persistent_cache(model) -> dict:
    """The encoded prompts kept with a loaded model from job to job (A1111's persistent_cond_cache): a
    conditioner given it encodes a text again only when something its result depends on has changed
    (every such thing is in its cache key). It goes with the model (a reload starts empty)."""
    return model.extra.setdefault("persistent_conds", {})


class Same:
    """A key part that is one object (an unhashable one, such as an embeddings view) by identity; the
    key keeps it alive, so its id is never another object's while the entry lasts."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, Same) and other.obj is self.obj


class TextConditioner:
    """Encodes batches of prompts for one loaded model. Caches the last few results: its own, or the
    ``cache`` given (:func:`persistent_cache`, shared by the jobs on the model)."""

    def __init__(self, model, clip_skip: int = 1, emphasis: str = emphasis_modes.ORIGINAL, cache_size: int = 8,
                 embeddings=None, options: ConditioningOptions | None = None, cache: dict | None = None):
        self.model = model
        self.family = model.family  # which hidden states, which extra tensors (SDXL's pooled text and ids)
        self.options = options or ConditioningOptions()
        self.clip_skip = max(1, int(clip_skip))
        self.emphasis = emphasis_modes.check(emphasis)  # A1111 option "emphasis"
        # A1111 notes a non-default mode in the infotext once an encoded text has brackets
        self.emphasis_noted = False
        # textual inversion: a database (or one model's view) with for_model(model) -> ModelEmbeddings
        self.embeddings = embeddings.for_model(model) if embeddings is not None else None
        self.used_embeddings: dict[str, str] = {}  # name -> shorthash of the embeddings encoded so far
        self.chunker = PromptChunker(model.tokenizers[0], self.embeddings, self.options.comma_padding_backtrack)
        self._cache: dict[tuple, dict] = cache if cache is not None else {}
        self._cache_size = cache_size

    def chunks(self, text: str) -> list[Chunk]:
        """One prompt text (no scheduling syntax left) -> its 75-token chunks with weights."""
        return self.chunker.chunks(emphasis_modes.segments(text, self.emphasis))

    def token_count(self, prompt: str, steps: int = 1, is_positive: bool = True) -> tuple[int, int]:
        """(tokens used, token capacity) as A1111's counter shows them: the longest of the texts the
        prompt's schedule goes through (positive prompts per AND sub-prompt); every chunk but the
        last counts 75."""
        texts = [text for text, _ in prompt_parser.split_and(prompt)] if is_positive else [prompt]
        used = 0
        for schedule in prompt_parser.prompt_schedules(texts, max(1, int(steps))):
            for _, text in schedule:
                chunks = self.chunks(text)
                used = max(used, CHUNK * (len(chunks) - 1) + len(chunks[-1].tokens))
        return used, -(-max(used, 1) // CHUNK) * CHUNK

    def encode(self, prompts: list[str], width: int, height: int, negative: bool = False) -> dict[str, torch.Tensor]:
        """Texts (prompt language already resolved to one step: weights, BREAK, no schedules) ->
        batched cond tensors, one row per text. Equal texts are encoded once; A1111's batch
        semantics stay (the "Original" emphasis mean counts each row, shorter texts get empty
        chunks up to the longest one). ``negative``: these are negative prompts (the SDXL
        refiner conditions them on the low aesthetic score)."""
        if self.emphasis != emphasis_modes.ORIGINAL and any("(" in p or "[" in p for p in prompts):
            self.emphasis_noted = True
        # the applied LoRAs are part of the key: a job may change them between batches (per-batch prompts)
        key = (tuple(prompts), width, height, negative, self.clip_skip, self.emphasis, lora.active_key(self.model),
               self.options, Same(self.embeddings))
        if key in self._cache:
            if self.embeddings is not None:  # the infotext's TI hashes, as if encoded here
                for text in dict.fromkeys(prompts):
                    for chunk in self.chunks(text):
                        self.used_embeddings.update((emb.name, emb.shorthash) for _, emb in chunk.fixes)
            return self._cache[key]
        unique = list(dict.fromkeys(prompts))
        rows = torch.tensor([unique.index(p) for p in prompts])
        counts = torch.bincount(rows, minlength=len(unique))
        per_prompt = [self.chunks(p) for p in unique]
        n_chunks = max(len(c) for c in per_prompt)
        outputs, pooled = [], None
        for i in range(n_chunks):
            batch = [c[i] if i < len(c) else Chunk() for c in per_prompt]
            hidden, pool = self._encode_chunks(batch, counts)
            outputs.append(hidden)
            if pooled is None:
                pooled = pool  # A1111 takes the pooled output of the first chunk
        context = torch.cat(outputs, dim=1)
        cond = {"context": context if len(unique) == len(prompts) else context[rows.to(context.device)]}
        if pooled is not None and len(unique) != len(prompts):
            pooled = pooled[rows.to(pooled.device)]
        cond.update(self.family.extra_conditioning(pooled, len(prompts), width, height, negative=negative,
                                                   options=self.options))
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = cond
        return cond

    def empty_context(self, width: int, height: int) -> torch.Tensor:
        """The empty prompt's context (1, 77, D): one chunk, what A1111 pads a shorter context with
        (its cond_stage_model_empty_prompt, pad_cond_uncond)."""
        return self.encode([""], width, height)["context"]

    @torch.no_grad()
    def _encode_chunks(self, batch: list[Chunk], row_counts: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tok = self.model.tokenizers[0]
        bos, eos = tok.bos_token_id, tok.eos_token_id
        rows, weights = [], []
        for c in batch:
            pad = CHUNK - len(c.tokens)
            rows.append([bos] + c.tokens + [eos] * (pad + 1))
            weights.append([1.0] + c.weights + [1.0] * (pad + 1))
        device = self.model.device
        tokens = torch.tensor(rows, device=device)
        hiddens, pooleds = [], []
        for index, (encoder, tokenizer) in enumerate(zip(self.model.text_encoders, self.model.tokenizers)):
            ids = tokens
            if tokenizer.pad_token_id != eos:  # OpenCLIP pads after the first EOS with "!"
                ids = tokens.clone()
                for row in range(ids.shape[0]):
                    first_eos = int((ids[row] == eos).nonzero()[0])
                    ids[row, first_eos + 1 :] = tokenizer.pad_token_id
            with self._embedding_vectors(encoder, index, batch):
                h, p = self._run_encoder(encoder, ids)
            h = h.float()  # each encoder's output weighted on its own, as A1111's hijack of each one does
            hiddens.append(emphasis_modes.apply(self.emphasis, h, torch.tensor(weights, device=h.device), row_counts))
            pooleds.append(p)
        z = torch.cat(hiddens, dim=-1)
        pooled = self.family.pooled(pooleds)
        return z, (pooled.float() if pooled is not None else None)

    @contextlib.contextmanager
    def _embedding_vectors(self, encoder, index: int, batch: list[Chunk]):
        """During this encoder call, the token embeddings at each embedding's slots are its vectors
        (SDXL: each encoder its own, clip_l / clip_g). A forward hook, removed right after."""
        fixes = [(row, offset, emb) for row, c in enumerate(batch) for offset, emb in c.fixes]
        if not fixes:
            yield
            return
        keys = self.embeddings.keys if self.embeddings is not None else []
        key = keys[index] if index < len(keys) else None
        for _, _, emb in fixes:
            self.used_embeddings[emb.name] = emb.shorthash

        def replace(module, args, output):
            output = output.clone()
            for row, offset, emb in fixes:
                vec = emb.tensor_for(key).to(output.device, output.dtype)
                output[row, 1 + offset : 1 + offset + vec.shape[0]] = vec  # 1 +: after BOS
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def _run_encoder(self, encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = encoder(input_ids=ids, output_hidden_states=True)
        return self.family.context_for(out, encoder, self.clip_skip, self.options), getattr(out, "text_embeds", None)
