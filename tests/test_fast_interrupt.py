"""A1111's live_preview_fast_interrupt: once a job is interrupted, its pictures are decoded with the
live preview method (A1111's decode_first_stage switches to show_progress_type) instead of the VAE."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modules.core.pipeline import generate
from modules.core.preview import latent_preview
from modules.core.types import GenerationRequest
from modules.services import live_previews
from tests.test_generation import Recorder, settings

MAGENTA = (255, 0, 255)


class MarkerDecoder:
    """Stands in for the preview method: records the latents it is given, returns magenta pictures."""

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, model, latents):
        self.calls.append(tuple(latents.shape))
        return [Image.new("RGB", (latents.shape[-1] * 8, latents.shape[-2] * 8), MAGENTA)
                for _ in range(latents.shape[0])]


def test_an_interrupted_job_is_decoded_by_the_preview_method(tmp_path, sd1):
    base = dict(prompt="x", seed=1, width=64, height=64, steps=5, batch_size=2)
    marker = MarkerDecoder()
    whole = generate(GenerationRequest(**base), sd1, settings(tmp_path / "a", interrupt_decode=marker), Recorder())
    assert marker.calls == [] and not whole.interrupted  # not interrupted: the VAE
    assert all(np.asarray(im).reshape(-1, 3).tolist().count(list(MAGENTA)) < 64 for im in whole.images)

    stopped = generate(GenerationRequest(**base), sd1, settings(tmp_path / "b", interrupt_decode=marker),
                       Recorder(interrupt_at=2))
    assert stopped.interrupted and marker.calls == [(2, 4, 8, 8)]
    assert [im.size for im in stopped.images] == [(64, 64)] * 2
    assert all((np.asarray(im) == MAGENTA).all() for im in stopped.images)

    plain = generate(GenerationRequest(**base), sd1, settings(tmp_path / "c"), Recorder(interrupt_at=2))
    assert plain.interrupted and not any((np.asarray(im) == MAGENTA).all() for im in plain.images)


def test_an_interrupt_during_the_hires_pass_uses_it_too(tmp_path, sd1):
    marker = MarkerDecoder()
    request = GenerationRequest(prompt="x", seed=1, width=64, height=64, steps=3, enable_hr=True, hr_scale=2,
                                hr_second_pass_steps=3, denoising_strength=0.5)
    result = generate(request, sd1, settings(tmp_path, interrupt_decode=marker), Recorder(interrupt_at=4))
    assert result.interrupted and marker.calls == [(1, 4, 16, 16)]  # the hires pass's latents, at their size
    assert result.images[0].size == (128, 128) and (np.asarray(result.images[0]) == MAGENTA).all()


def test_the_decoder_follows_the_preview_method(sd1):
    assert live_previews.interrupt_decoder("Full") is None  # the VAE all the same
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    pictures = live_previews.interrupt_decoder("Approx cheap")(sd1, latents)
    assert [p.size for p in pictures] == [(64, 64)] * 2  # the job's size, not the latents'
    for i, picture in enumerate(pictures):
        expected = latent_preview(latents[i:i + 1], sd1.family.preview_factors).resize((64, 64), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(picture), np.asarray(expected))


def test_the_engine_sets_it_from_the_options(tmp_path, tiny_checkpoints):
    import webui
    from modules import cmd_args

    opts = cmd_args.parse_args(["--data-dir", str(tmp_path / "data"), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1)], extra_preloads=[])
    engine = webui.build_engine(opts)
    info = engine.resolve_checkpoint(None)
    assert engine.settings_for(info, "txt2img").interrupt_decode is None  # A1111's default: off
    on = engine.settings_for(info, "txt2img", {"live_preview_fast_interrupt": True, "show_progress_type": "Approx cheap"})
    assert callable(on.interrupt_decode)
    full = engine.settings_for(info, "txt2img", {"live_preview_fast_interrupt": True, "show_progress_type": "Full"})
    assert full.interrupt_decode is None
