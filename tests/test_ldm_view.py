"""A1111's ``sd_model.model.diffusion_model`` and its CrossAttention modules (modules/ldm_view.py), used
the way regional prompter uses them (scripts/attention.py: walk ``named_modules()``, take the "attn2"
modules whose class is named CrossAttention, set ``module.forward`` to a function of LDM's arguments
``(x, context=None, mask=None, ...)`` computing with ``to_q``/``to_k``/``to_v``/``to_out``, ``heads``
and ``scale``; ``del module.forward`` to undo)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from diffusers.models.attention_processor import Attention

from modules import ldm_view, processing_run
from modules.core.devices import choose_policy
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest

SMALL = dict(prompt="a red circle", negative_prompt="blue", width=64, height=64, steps=3, seed=11,
             save_images=False)


@pytest.fixture(scope="module")
def model(tiny_checkpoints):
    loaded = load_checkpoint(tiny_checkpoints.sd1, choose_policy(precision="full")[0])
    loaded.plain = _picture(loaded)  # before the view is attached
    loaded.keys = list(loaded.unet.state_dict())
    processing_run.describe_model(loaded, types.SimpleNamespace(name="tiny", shorthash="abc", filename="tiny.ckpt"))
    return loaded


def _picture(model):
    return np.asarray(generate(GenerationRequest(**SMALL), model, GenerationSettings(save_grid=False)).images[0])


def _cross_attentions(model):
    return [(name, m) for name, m in model.model.diffusion_model.named_modules()
            if "attn2" in name and m.__class__.__name__ == "CrossAttention"]


def ldm_attention(module, x, context=None):
    """LDM CrossAttention's forward with the module's own layers: softmax(q k^T * scale) v per head, to_out."""
    context = x if context is None else context
    q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
    b, n, _ = q.shape

    def split(t):
        return t.reshape(b, t.shape[1], module.heads, -1).transpose(1, 2)

    weights = (split(q) @ split(k).transpose(-1, -2) * module.scale).softmax(dim=-1)
    return module.to_out((weights @ split(v)).transpose(1, 2).reshape(b, n, -1))


def test_the_view_changes_nothing_by_itself(model):
    assert model.model.diffusion_model is model.unet
    found = _cross_attentions(model)
    blocks = [n for n, _ in model.unet.named_modules() if n.endswith("transformer_blocks.0")]
    assert len(found) == len(blocks) > 0
    assert all(isinstance(m, Attention) for _, m in found)
    assert list(model.unet.state_dict()) == model.keys  # the same weights under the same keys
    assert np.array_equal(_picture(model), model.plain)
    ldm_view.attach(model)  # again: nothing changes
    assert len(_cross_attentions(model)) == len(found)


def test_an_extensions_ldm_forward_is_called_with_ldm_arguments_and_can_be_removed(model):
    seen = []

    def hook(module):
        def forward(x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
            seen.append((tuple(x.shape), tuple(context.shape), mask))
            return ldm_attention(module, x, context)
        return forward

    modules = [m for _, m in _cross_attentions(model)]
    for module in modules:
        module.forward = hook(module)
    try:
        hooked = _picture(model)
    finally:
        for module in modules:
            del module.forward
    # every cross-attention call went through the extension's forward with (x, context) as LDM passes them
    assert len(seen) == len(modules) * SMALL["steps"]
    assert all(len(x) == 3 and c[0] == x[0] and c[1] == 77 and mask is None for x, c, mask in seen)
    # the same attention computed the extension's way: the same picture up to float rounding
    assert np.abs(hooked.astype(int) - model.plain.astype(int)).max() <= 2
    assert np.array_equal(_picture(model), model.plain)  # removed: diffusers' own path again


def test_a_forward_that_changes_the_context_changes_the_picture(model):
    modules = [m for _, m in _cross_attentions(model)]
    for module in modules:
        module.forward = (lambda m: lambda x, context=None, mask=None: ldm_attention(m, x, context * 0))(module)
    try:
        changed = _picture(model)
    finally:
        for module in modules:
            del module.forward
    assert np.abs(changed.astype(int) - model.plain.astype(int)).max() > 10
