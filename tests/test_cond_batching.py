"""A1111's "Optimizations" for the prompt / negative prompt model calls: batch_cond_uncond (one call or
two), pad_cond_uncond (the shorter context padded with the empty prompt's chunks) and pad_cond_uncond_v0
(the negative prompt's context cut or lengthened by its last vector), with their "Pad conds" infotext keys;
checked on the calls the real tiny UNet receives and on the pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import denoise, model_ops
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest

LONG = ", ".join(["a red cube on a wooden table"] * 14)  # more than 75 tokens: two chunks
REQUEST = dict(prompt=LONG, negative_prompt="blurry", seed=5, steps=3, cfg_scale=6.0, width=64, height=64,
               sampler_name="Euler", scheduler="Automatic", save_images=False)


class _Calls:
    """The real UNet call, recording the rows and context lengths of each call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = model_ops.denoiser

        def recording(model, *args, **kwargs):
            call = real(model, *args, **kwargs)

            def wrapped(x, t, cond):
                self.calls.append((x.shape[0], cond["context"].shape[1]))
                return call(x, t, cond)
            return wrapped
        monkeypatch.setattr(model_ops, "denoiser", recording)


def _run(sd1, monkeypatch, **settings):
    calls = _Calls(monkeypatch)
    result = generate(GenerationRequest(**REQUEST), sd1, GenerationSettings(**settings))
    return result, calls.calls, np.asarray(result.images[0], dtype=np.float32) / 255


def test_pad_pair_modes():
    empty = torch.full((1, 3, 2), 7.0)
    cond, uncond = {"context": torch.zeros(2, 6, 2), "x": 1}, {"context": torch.ones(2, 3, 2), "x": 2}
    plain = denoise.CondBatching()
    assert plain.pad_pair(cond, uncond) == (cond, uncond) and not plain.padded

    padding = denoise.CondBatching(pad="empty", empty=lambda: empty)
    c, u = padding.pad_pair(cond, uncond)
    assert c is cond and u["x"] == 2 and u["context"].shape == (2, 6, 2)
    assert torch.equal(u["context"][:, :3], uncond["context"]) and (u["context"][:, 3:] == 7).all()
    c, u = padding.pad_pair(uncond, cond)  # a shorter prompt is padded the same way
    assert u is cond and c["context"].shape == (2, 6, 2) and (c["context"][:, 3:] == 7).all()
    assert padding.padded == {"empty"}
    # a difference smaller than a chunk pads nothing (A1111's whole chunks)
    short = denoise.CondBatching(pad="empty", empty=lambda: torch.zeros(1, 4, 2))
    assert short.pad_pair(cond, uncond) == (cond, uncond) and not short.padded

    v0 = denoise.CondBatching(pad="v0", empty=lambda: empty)
    _, u = v0.pad_pair(cond, {"context": torch.arange(6.0).view(1, 3, 2).expand(2, -1, -1)})
    assert u["context"].shape == (2, 6, 2) and (u["context"][:, 3:] == torch.tensor([4.0, 5.0])).all()
    _, u = v0.pad_pair(uncond, cond)  # a longer negative context is cut to the prompt's length
    assert u["context"].shape == (2, 3, 2) and v0.padded == {"v0"}
    # a conditioning that is not made of text chunks (SD3, Flux: no empty context) is left alone
    flow = denoise.CondBatching(pad="empty", empty=lambda: None)
    assert flow.pad_pair(cond, uncond) == (cond, uncond) and not flow.padded
    with pytest.raises(ValueError, match="pad must be one of"):
        denoise.CondBatching(pad="yes")


def test_unpadded_lengths_run_apart_and_padding_batches_them(sd1, monkeypatch):
    plain, calls, plain_pixels = _run(sd1, monkeypatch)
    # prompt 2 chunks, negative 1: A1111 (and Easel) run them as two calls per step
    assert calls[:2] == [(1, 154), (1, 77)] and len(calls) == 2 * REQUEST["steps"]
    assert "Pad conds" not in plain.infotexts[0]

    padded, calls, padded_pixels = _run(sd1, monkeypatch, pad_cond_uncond="empty")
    assert calls == [(2, 154)] * REQUEST["steps"]  # one call of both, the negative padded to two chunks
    assert "Pad conds: True" in padded.infotexts[0] and "Pad conds v0" not in padded.infotexts[0]
    assert np.abs(padded_pixels - plain_pixels).max() > 2 / 255  # it changes the picture ("changes seeds")

    v0, calls, v0_pixels = _run(sd1, monkeypatch, pad_cond_uncond="v0")
    assert calls == [(2, 154)] * REQUEST["steps"]
    assert "Pad conds v0: True" in v0.infotexts[0] and "Pad conds: True" not in v0.infotexts[0]
    assert np.abs(v0_pixels - padded_pixels).max() > 2 / 255  # a different padding


def test_batch_cond_uncond_off_makes_two_calls_with_the_same_picture(sd1, monkeypatch):
    short = dict(REQUEST, prompt="a red cube")
    calls = _Calls(monkeypatch)
    together = generate(GenerationRequest(**short), sd1, GenerationSettings())
    assert calls.calls == [(2, 77)] * REQUEST["steps"]
    calls.calls.clear()
    apart = generate(GenerationRequest(**short), sd1, GenerationSettings(batch_cond_uncond=False))
    assert calls.calls == [(1, 77), (1, 77)] * REQUEST["steps"]
    a, b = (np.asarray(r.images[0], dtype=np.float32) / 255 for r in (together, apart))
    assert np.abs(a - b).max() <= 1 / 255  # the same picture, up to a batch's rounding
    assert together.infotexts[0] == apart.infotexts[0]


def test_options_reach_the_job_and_the_infotext_pastes_back(server):
    import requests

    body = dict(REQUEST, override_settings={"pad_cond_uncond": True}, override_settings_restore_afterwards=True)
    body.pop("save_images")
    r = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert "Pad conds: True" in info
    infotext = __import__("json").loads(info)["infotexts"][0]
    r = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"infotext": infotext, "steps": 1, "width": 64,
                                                             "height": 64}, timeout=300)
    assert r.status_code == 200, r.text
    assert "Pad conds: True" in r.json()["info"]  # the pasted key set the option for that job
    r = requests.post(f"{server.url}/sdapi/v1/txt2img", json=dict(body, override_settings={}), timeout=300)
    assert r.status_code == 200 and "Pad conds" not in r.json()["info"]  # and only for those jobs


def test_persistent_cond_cache_skips_the_text_encoder_for_unchanged_prompts(tiny_checkpoints):
    """On (A1111's default): a second job with the same prompts runs no text encoder and makes the same
    picture; a changed prompt is encoded; off: every job encodes again."""
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint

    model = load_checkpoint(tiny_checkpoints.sd1, choose_policy()[0])  # its own: the cache goes with the model
    encoder_calls = []
    model.text_encoders[0].register_forward_hook(lambda *a: encoder_calls.append(1))
    short = dict(REQUEST, prompt="a red cube")

    def job(persistent, settings=None, **changes):
        encoder_calls.clear()
        result = generate(GenerationRequest(**{**short, **changes}), model,
                          GenerationSettings(persistent_cond_cache=persistent, **(settings or {})))
        return len(encoder_calls), np.asarray(result.images[0])

    first, picture = job(True)
    assert first > 0
    again, same = job(True)
    assert again == 0 and np.array_equal(picture, same)
    assert job(True, prompt="a blue cube")[0] > 0  # a changed prompt is encoded
    assert job(True, negative_prompt="dark")[0] > 0
    assert job(False)[0] == first  # off: encoded again, as many calls as the first time
    assert job(True, {"clip_skip": 2})[0] > 0  # what the result depends on is in the key
