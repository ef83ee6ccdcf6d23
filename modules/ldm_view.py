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
  processors index it, and the state dict keys stay ``to_out.0.*``).

Module names stay diffusers' (``down_blocks.1.attentions.0.transformer_blocks.0.attn2``: "attn2" is
where LDM has it; LDM's ``input_blocks`` / ``middle_block`` / ``output_blocks`` numbering is not
reproduced). Models other than the UNet families (SD3, Flux transformers) get ``model.model`` only.
"""

from __future__ import annotations

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


def attach(model) -> None:
    """Give a loaded model (``LoadedModel``) A1111's ``model.diffusion_model`` and its UNet's attention
    modules LDM's class name and calling convention (idempotent)."""
    unet = model.unet
    if not isinstance(getattr(model, "model", None), DiffusionWrapper) or model.model.diffusion_model is not unet:
        model.model = DiffusionWrapper(unet)
    if not hasattr(unet, "down_blocks"):  # not a UNet (SD3's / Flux's transformers): no LDM CrossAttention
        return
    for module in ldm_attention_modules(unet):
        if type(module).__name__ != "CrossAttention":
            module.__class__ = _cross_attention_class(type(module))
        if isinstance(module.to_out, nn.ModuleList) and not isinstance(module.to_out, nn.Sequential):
            module.to_out = nn.Sequential(*module.to_out)

