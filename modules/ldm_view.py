"""A1111's model layout where extensions reach into it: ``sd_model.model.diffusion_model`` and its
``CrossAttention`` modules.

A1111's model is LDM's ``LatentDiffusion``; extensions such as regional prompter walk
``p.sd_model.model.diffusion_model.named_modules()``, pick the modules whose class is named
``CrossAttention`` (``attn1`` self-attention, ``attn2`` cross-attention) and replace their ``forward``
with a function of LDM's arguments ``(x, context=None, mask=None, ...)`` that computes with the
module's ``to_q`` / ``to_k`` / ``to_v`` / ``to_out``, ``heads`` and ``scale``; deleting ``forward``
undoes it. Easel's UNet is diffusers': its attention modules have those same parts and names, but are
called with ``(hidden_states, encoder_hidden_states=..., attention_mask=...)``. ``attach`` gives each
loaded model that view:

- ``model.model``: a module holding the denoiser as ``diffusion_model`` (A1111's DiffusionWrapper);
- each diffusers ``Attention`` of the UNet becomes an instance of a subclass named ``CrossAttention``
  (the same object, weights and processors; ``isinstance(m, Attention)`` still holds) whose call hands
  an extension's replaced ``forward`` LDM's arguments, and calls diffusers' own path otherwise;
- ``to_out`` is a ``Sequential`` of the same two layers (LDM's type: callable as one; diffusers'
  processors index it, and the state dict keys stay ``to_out.0.*``);
- the text encoders as A1111's prompt chunkers: ``cond_stage_model`` (SD1/SD2) or
  ``conditioner.embedders`` (SDXL), with ``tokenize_line(line) -> (chunks, token count)`` (75-token
  chunks of Easel's own chunking, with A1111's start/end tokens and padding), ``tokenize(texts)``,
  ``wrapped.transformer`` / ``wrapped.tokenizer`` and ``id_start`` / ``id_end`` / ``id_pad``.

Module names stay diffusers' (``down_blocks.1.attentions.0.transformer_blocks.0.attn2``: "attn2" is
where LDM has it; LDM's ``input_blocks`` / ``middle_block`` / ``output_blocks`` numbering is not
reproduced). Models other than the UNet families (SD3, Flux transformers) get ``model.model`` only.
"""

from __future__ import annotations

import types

from torch import nn

_SUBCLASSES: dict[type, type] = {}


def _call_with_ldm_arguments(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
    replaced = self.__dict__.get("forward")  # an extension's LDM-style forward, set on the instance
    if replaced is None:
        return nn.Module.__call__(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=attention_mask, **kwargs)
    return replaced(hidden_states, context=encoder_hidden_states, mask=attention_mask)


def _cross_attention_class(base: type) -> type:
    """``CrossAttention``: ``base`` (diffusers' Attention) with LDM's calling convention for a replaced
    ``forward``; one per base class."""
    found = _SUBCLASSES.get(base)
    if found is None:
        found = type("CrossAttention", (base,), {"__call__": _call_with_ldm_arguments,
                                                 "__module__": __name__,
                                                 "__doc__": "diffusers' Attention under LDM's name (see ldm_view)"})
        _SUBCLASSES[base] = found
    return found


class DiffusionWrapper(nn.Module):
    """A1111's ``sd_model.model``: the denoiser as ``diffusion_model`` (nothing else)."""

    def __init__(self, diffusion_model: nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, *args, **kwargs):
        return self.diffusion_model(*args, **kwargs)


def ldm_attention_modules(unet: nn.Module) -> list[nn.Module]:
    """The UNet's attention modules that LDM names CrossAttention: diffusers' ``Attention`` with to_q/k/v."""
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention) and hasattr(m, "to_q") and hasattr(m, "to_out")]


class PromptChunk:
    """A1111's ``PromptChunk``: 77 token ids (start, 75 tokens or padding, end), their multipliers, and
    the textual-inversion fixes as (offset, embedding)."""

    def __init__(self, tokens=None, multipliers=None, fixes=None):
        self.tokens = tokens or []
        self.multipliers = multipliers or []
        self.fixes = fixes or []


class TextEncoderView:
    """One text encoder as A1111's ``FrozenCLIPEmbedderWithCustomWords`` is used by extensions: its
    chunking of a prompt line. The chunks are Easel's own (``core.conditioning``: emphasis, BREAK, comma
    back-tracking, embeddings), as the job encodes them."""

    def __init__(self, model, index: int):
        self._model = model
        self._index = index
        tokenizer = model.tokenizers[index]
        self.wrapped = types.SimpleNamespace(transformer=model.text_encoders[index], tokenizer=tokenizer)
        self.tokenizer = tokenizer
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        # CLIP ViT-L pads with its end token; OpenCLIP's encoders (SD2, SDXL's second) with 0, as A1111
        self.id_pad = self.id_end if tokenizer.pad_token_id == self.id_end else 0
        self.chunk_length = 75

    def _chunker(self):
        from modules import shared
        from modules.core.conditioning import PromptChunker

        embeddings = getattr(shared.engine, "embeddings", None) if shared.engine is not None else None
        return PromptChunker(self.tokenizer, embeddings.for_model(self._model) if embeddings is not None else None,
                             getattr(shared.opts, "data", {}).get("comma_padding_backtrack", 20))  # as the job chunks

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._chunker().tokenize(list(texts))

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        from modules.core import emphasis as emphasis_modes

        found = self._chunker().chunks(emphasis_modes.segments(line, emphasis_modes.ORIGINAL))
        chunks = []
        for chunk in found:  # A1111 pads with the end token (OpenCLIP's pad id replaces it when encoding)
            pad = self.chunk_length - len(chunk.tokens)
            chunks.append(PromptChunk([self.id_start, *chunk.tokens, *[self.id_end] * pad, self.id_end],
                                      [1.0, *chunk.weights, *[1.0] * pad, 1.0],
                                      [(offset + 1, emb) for offset, emb in chunk.fixes]))
        # A1111's count: every chunk but the last as a full one
        return chunks, self.chunk_length * (len(found) - 1) + len(found[-1].tokens) if found else 0


def attach(model) -> None:
    """Give a loaded model (``LoadedModel``) A1111's ``model.diffusion_model``, its UNet's attention
    modules LDM's class name and calling convention, and its text encoders' chunking (idempotent)."""
    unet = model.unet
    if not isinstance(getattr(model, "model", None), DiffusionWrapper) or model.model.diffusion_model is not unet:
        model.model = DiffusionWrapper(unet)
    clip_like = [i for i, t in enumerate(model.tokenizers)
                 if getattr(t, "bos_token_id", None) is not None and i < len(model.text_encoders)]
    if getattr(model.family, "a1111_flags", {}).get("is_sdxl"):
        model.conditioner = types.SimpleNamespace(embedders=[TextEncoderView(model, i) for i in clip_like])
    elif clip_like:
        model.cond_stage_model = TextEncoderView(model, clip_like[0])
    if not hasattr(unet, "down_blocks"):  # not a UNet (SD3's / Flux's transformers): no LDM CrossAttention
        return
    for module in ldm_attention_modules(unet):
        if type(module).__name__ != "CrossAttention":
            module.__class__ = _cross_attention_class(type(module))
        if isinstance(module.to_out, nn.ModuleList) and not isinstance(module.to_out, nn.Sequential):
            module.to_out = nn.Sequential(*module.to_out)

