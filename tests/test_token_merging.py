"""Token merging (A1111's token_merging_ratio settings; modules.core.token_merging): the merge and
unmerge of ToMe's bipartite matching, its installation on a real tiny UNet (fewer tokens reach the
self-attention, the UNet is untouched afterwards), and the settings, infotext and API around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import token_merging
from modules.core.pipeline import generate
from modules.core.types import GenerationRequest
from modules.services.engine import _token_merging
from tests.test_generation import SMALL, pixels, settings


def test_merge_averages_sources_into_their_closest_destination_and_unmerge_copies_back():
    torch.manual_seed(0)
    h, w, r = 6, 5, 8
    x = torch.randn(2, h * w, 4)
    merge, unmerge = token_merging.bipartite_merge(x, h, w, r)
    merged = merge(x)
    assert merged.shape == (2, h * w - r, 4)
    restored = unmerge(merged)
    assert restored.shape == x.shape
    # destinations: the top-left token of each full 2x2 cell (6 of them); 8 of the 24 sources merged
    dst = [row * w + col for row in range(0, 6, 2) for col in range(0, 4, 2)]
    for image in range(2):
        src = [i for i in range(h * w) if i not in dst]
        normed = x[image] / x[image].norm(dim=-1, keepdim=True)
        similarity = normed[src] @ normed[dst].T
        best, closest = similarity.max(dim=-1)
        chosen = best.argsort(descending=True)[:r].tolist()
        groups = {d: [dst[d]] for d in range(len(dst))}
        for s in chosen:
            groups[int(closest[s])].append(src[s])
        for d, members in groups.items():
            mean = x[image, members].mean(dim=0)
            for token in members:  # each merged source gets its destination's (averaged) value back
                assert torch.allclose(restored[image, token], mean, atol=1e-6)
        untouched = [src[s] for s in range(len(src)) if s not in chosen]
        assert torch.equal(restored[image, untouched], x[image, untouched])


def test_each_picture_of_a_batch_is_matched_on_its_own():
    torch.manual_seed(1)
    x = torch.randn(3, 64, 8)
    together = token_merging.bipartite_merge(x, 8, 8, 20)[0](x)
    alone = torch.cat([token_merging.bipartite_merge(x[i:i + 1], 8, 8, 20)[0](x[i:i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


def test_ratio_zero_is_no_merge():
    x = torch.randn(1, 16, 4)
    merge, unmerge = token_merging.bipartite_merge(x, 4, 4, 0)
    assert merge(x) is x and unmerge(x) is x
    with pytest.raises(ValueError, match=r"within \[0, 1\)"):
        with token_merging.merging(torch.nn.Linear(1, 1), 1.0):
            pass


def _unet_call(unet, latents, context):
    with torch.no_grad():
        return unet(latents, torch.tensor([500.0]), encoder_hidden_states=context).sample


def test_merging_on_a_real_unet_feeds_fewer_tokens_to_self_attention_and_leaves_it_untouched(sd1):
    unet = sd1.unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(4))
    before = _unet_call(unet, latents, context)
    seen = []
    blocks = token_merging._transformer_blocks(unet)
    assert blocks  # the tiny SD1 UNet has transformer blocks at full latent resolution and below

    def tokens_at_attention():  # what each self-attention receives (probes run after the merge hooks)
        seen.clear()
        probes = [b.attn1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for b in blocks]
        try:
            return _unet_call(unet, latents, context), list(seen)
        finally:
            for handle in probes:
                handle.remove()

    with token_merging.merging(unet, 0.0) as installed:
        assert installed == 0
        assert torch.equal(_unet_call(unet, latents, context), before)
    _, plain = tokens_at_attention()
    with token_merging.merging(unet, 0.5) as installed:
        assert installed == len(blocks)
        merged, tokens = tokens_at_attention()
    # full resolution (16 x 16 = 256 tokens): half merged away; the lower level (64) untouched
    assert 256 in plain and tokens == [128 if n == 256 else n for n in plain], (plain, tokens)
    assert not torch.equal(merged, before) and torch.isfinite(merged).all()
    assert all(not b.attn1._forward_pre_hooks and not b.attn1._forward_hooks and not b._forward_pre_hooks
               for b in blocks)
    assert not unet._forward_pre_hooks
    assert torch.equal(_unet_call(unet, latents, context), before)  # nothing stays behind


def test_a1111_ratio_rules():
    base = {"token_merging_ratio": 0.3, "token_merging_ratio_img2img": 0.0, "token_merging_ratio_hr": 0.0}
    assert _token_merging(base, "txt2img", {}) == {"token_merging_ratio": 0.3, "token_merging_ratio_hr": 0.3}
    assert _token_merging({**base, "token_merging_ratio_hr": 0.6}, "txt2img", {})["token_merging_ratio_hr"] == 0.6
    with_img2img = {**base, "token_merging_ratio_img2img": 0.5}
    assert _token_merging(with_img2img, "img2img", {})["token_merging_ratio"] == 0.5
    assert _token_merging(with_img2img, "txt2img", {})["token_merging_ratio"] == 0.3
    # a request's own override of token_merging_ratio wins over the img2img setting (A1111)
    assert _token_merging(with_img2img, "img2img", {"token_merging_ratio": 0.3})["token_merging_ratio"] == 0.3


def test_generation_with_token_merging_writes_a1111_infotext(tmp_path, sd1):
    request = GenerationRequest(prompt="a red circle", seed=5, save_images=False, **SMALL)
    plain = generate(request, sd1, settings(tmp_path))
    merged = generate(request, sd1, settings(tmp_path, token_merging_ratio=0.5, token_merging_ratio_hr=0.5))
    assert "Token merging ratio" not in plain.infotexts[0]
    assert "ENSD" not in merged.infotexts[0] and ", Token merging ratio: 0.5, " in merged.infotexts[0] + ", "
    assert "Token merging ratio hr" not in merged.infotexts[0]  # no hires pass, no hr key (A1111)
    assert not np.array_equal(pixels(plain.images[0]), pixels(merged.images[0]))
    again = generate(request, sd1, settings(tmp_path))
    assert np.array_equal(pixels(plain.images[0]), pixels(again.images[0]))  # the model is as before

    hires = GenerationRequest(prompt="a red circle", seed=5, save_images=False, enable_hr=True, hr_scale=1.5,
                              hr_second_pass_steps=2, denoising_strength=0.5, **SMALL)
    result = generate(hires, sd1, settings(tmp_path, token_merging_ratio=0.5, token_merging_ratio_hr=0.3))
    assert "Token merging ratio: 0.5, Token merging ratio hr: 0.3" in result.infotexts[0]


def test_api_override_and_infotext_paste_set_the_ratio(server):
    base = {"prompt": "a red circle", "seed": 5, "steps": 3, "width": 64, "height": 64, "sampler_name": "Euler",
            "save_images": False}
    r = server.post("/sdapi/v1/txt2img", json={**base, "override_settings": {"token_merging_ratio": 0.4}})
    assert r.status_code == 200, r.text
    assert "Token merging ratio: 0.4" in r.json()["info"]
    pasted = "a red circle\nSteps: 3, Sampler: Euler, Token merging ratio: 0.2"
    r = server.post("/sdapi/v1/txt2img", json={**base, "infotext": pasted})
    assert r.status_code == 200, r.text
    assert "Token merging ratio: 0.2" in r.json()["info"]
    r = server.post("/sdapi/v1/txt2img", json={**base, "override_settings": {"token_merging_ratio": 1.5}})
    assert r.status_code == 422 and "token_merging_ratio" in r.text
