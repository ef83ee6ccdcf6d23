"""A1111-format hypernetworks on the tiny SD1 model: the file as A1111 writes it (read weights-only),
the cross-attention keys and values computed from the reshaped context, the prompt tag, restoring
the model after the job, and clear refusals."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from modules.core import hypernetwork
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest, RequestError
from modules.services.hypernetworks import HypernetworkRegistry

SMALL = dict(width=64, height=64, steps=3, seed=12, save_images=False, prompt="a red cube")


def _mlp_state(width: int, generator: torch.Generator) -> dict:
    """linear.0 (width -> 2 width), ReLU at index 1, linear.2 (2 width -> width): A1111's numbering for
    layer_structure [1, 2, 1] with an activation and no norm / dropout."""
    return {"linear.0.weight": torch.randn(2 * width, width, generator=generator) * 0.2,
            "linear.0.bias": torch.randn(2 * width, generator=generator) * 0.1,
            "linear.2.weight": torch.randn(width, 2 * width, generator=generator) * 0.2,
            "linear.2.bias": torch.randn(width, generator=generator) * 0.1}


@pytest.fixture(scope="module")
def hn_dir(tmp_path_factory, sd1):
    folder = tmp_path_factory.mktemp("hypernetworks")
    width = sd1.unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(3)
    torch.save({width: [_mlp_state(width, g), _mlp_state(width, g)], "layer_structure": [1, 2, 1],
                "activation_func": "relu", "is_layer_norm": False, "use_dropout": False, "activate_output": False,
                "name": "shapes", "step": 1000}, folder / "shapes.pt")
    torch.save({1280: [_mlp_state(1280, g), _mlp_state(1280, g)], "activation_func": "relu"},
               folder / "wide.pt")  # another model's widths

    class Evil:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    with open(folder / "evil.pt", "wb") as fh:  # a zip-less pickle that would run code when unpickled
        pickle.dump({"x": Evil()}, fh)
    return folder


@pytest.fixture(scope="module")
def registry(hn_dir):
    return HypernetworkRegistry([hn_dir])


def test_registry_lists_and_refuses_unknown_names(registry):
    assert sorted(registry.items()) == ["evil", "shapes", "wide"]
    with pytest.raises(LookupError, match="unknown hypernetwork 'nope'; known: evil, shapes, wide"):
        registry.require("nope")


def test_keys_and_values_come_from_the_reshaped_context(sd1, registry):
    network = hypernetwork.load(registry.require("shapes"))
    attn = sd1.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 16, attn.to_q.in_features, generator=g)
    context = torch.randn(1, 77, attn.to_k.in_features, generator=g)
    k_mlp, v_mlp = network.layers[context.shape[-1]]
    with torch.no_grad():
        context_k = context + k_mlp.linear(context) * 0.6
        context_v = context + v_mlp.linear(context) * 0.6
        q, k, v = attn.to_q(hidden), attn.to_k(context_k), attn.to_v(context_v)
        heads, d = attn.heads, k.shape[-1] // attn.heads
        split = lambda t: t.view(1, -1, heads, d).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d ** 0.5, dim=-1)
        want = attn.to_out[0]((weights @ split(v)).transpose(1, 2).reshape(1, -1, heads * d))
        hypernetwork.activate(sd1, [(network, 0.6)])
        try:
            got = attn(hidden, encoder_hidden_states=context)
        finally:
            hypernetwork.deactivate(sd1)
    assert torch.allclose(got, want, atol=1e-5)


def test_prompt_tag_changes_the_picture_for_the_job_only(sd1, registry):
    settings = GenerationSettings(find_hypernetwork=registry.require)
    processors = {n: type(m.processor) for n, m in sd1.unet.named_modules() if n.endswith("attn2")}
    plain = generate(GenerationRequest(**SMALL), sd1, settings)
    tagged = generate(GenerationRequest(**{**SMALL, "prompt": "a red cube <hypernet:shapes:1.5>"}), sd1, settings)
    zero = generate(GenerationRequest(**{**SMALL, "prompt": "a red cube <hypernet:shapes:0>"}), sd1, settings)
    as_array = lambda im: np.asarray(im, dtype=np.int16)  # noqa: E731
    assert np.abs(as_array(plain.images[0]) - as_array(tagged.images[0])).max() > 4
    assert np.array_equal(as_array(plain.images[0]), as_array(zero.images[0]))
    assert "<hypernet:shapes:1.5>" in tagged.infotexts[0]  # the tag stays in the infotext's prompt (A1111)
    assert {n: type(m.processor) for n, m in sd1.unet.named_modules() if n.endswith("attn2")} == processors
    again = generate(GenerationRequest(**SMALL), sd1, settings)
    assert np.array_equal(as_array(plain.images[0]), as_array(again.images[0]))


def test_refusals_name_the_field_and_run_nothing(sd1, registry, hn_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = GenerationSettings(find_hypernetwork=registry.require)
    cases = [("a <hypernet:nope>", "unknown hypernetwork 'nope'"), ("a <hypernet:evil>", "weights only"),
             ("a <hypernet:wide>", "another model type"), ("a <hypernet:shapes:lots>", "'lots' is not a number")]
    for prompt, message in cases:
        with pytest.raises(RequestError) as info:
            generate(GenerationRequest(**{**SMALL, "prompt": prompt}), sd1, settings)
        assert info.value.field == "prompt" and message in info.value.message, info.value.message
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(RequestError, match="no hypernetwork folder"):
        generate(GenerationRequest(**{**SMALL, "prompt": "a <hypernet:shapes>"}), sd1, GenerationSettings())


def test_a_file_silent_on_activate_output_activates_the_last_layer(tmp_path):
    """A1111 reads a missing ``activate_output`` as True (older files lack the key): the last layer's
    output goes through the activation too."""
    g = torch.Generator().manual_seed(5)
    torch.save({8: [_mlp_state(8, g), _mlp_state(8, g)], "layer_structure": [1, 2, 1], "activation_func": "relu"},
               tmp_path / "old.pt")
    network = hypernetwork.load(tmp_path / "old.pt")
    keys = network.layers[8][0].linear
    assert [type(m).__name__ for m in keys] == ["Linear", "ReLU", "Linear", "ReLU"]
    x = torch.randn(3, 8, generator=g)
    assert (keys(x) >= 0).all()  # a ReLU last
