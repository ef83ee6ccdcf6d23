"""``--upcast-sampling``: half-precision weights, the precision-critical parts in fp32.

Easel's samplers already work in fp32 (the denoiser's prediction is cast to float32 and the latents
stay float32 between steps); what A1111's upcast adds is attention computed in fp32, where fp16 sums
of query-key products overflow (SD2's 768 px models turn black without it). ``install`` gives the
UNet's self- and cross-attention layers a processor that projects in the weights' dtype and runs the
attention itself (scores, softmax, weighted sum) in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class UpcastAttention:
    """Scaled dot-product attention in float32 for a diffusers ``Attention`` (the UNets' attn1/attn2)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2).float()
                             for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(hidden_states.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def install(unet: torch.nn.Module) -> int:
    """Use ``UpcastAttention`` in the UNet's attn1/attn2 layers; returns how many."""
    count = 0
    for name, module in unet.named_modules():
        if name.endswith((".attn1", ".attn2")) and hasattr(module, "set_processor"):
            module.set_processor(UpcastAttention())
            count += 1
    return count
