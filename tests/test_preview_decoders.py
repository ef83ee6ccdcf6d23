"""The live-preview decoders of models/VAE-approx: TAESD (A1111's "TAESD", in the file layout
madebyollin/taesd ships, an nn.Sequential whose entry 0 is the clamp, and in diffusers' layout),
Approx NN (A1111's model.pt), and the live preview service choosing between them."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from modules.core import taesd


def _reference(latent_channels: int = 4):
    torch.manual_seed(0)
    return AutoencoderTiny(latent_channels=latent_channels).decoder.eval()


def _taesd_layout(decoder) -> dict:
    """DecoderTiny's layers.N -> the .pth file's N+1 (entry 0 of its Sequential is the clamp)."""
    out = {}
    for key, value in decoder.state_dict().items():
        index, rest = key[len("layers."):].split(".", 1)
        out[f"{int(index) + 1}.{rest}"] = value.clone()
    return out


def test_the_taesd_file_layout_loads_and_decodes_like_the_reference(tmp_path):
    reference = _reference()
    state = _taesd_layout(reference)
    # the keys of the real taesd_decoder.pth: first conv at 1, first block at 3, last conv at 19
    assert {"1.weight", "3.conv.0.weight", "3.conv.4.bias", "19.weight"} <= set(state)
    torch.save(state, tmp_path / "taesd_decoder.pth")
    decoder = taesd.load_decoder(taesd.decoder_path(tmp_path, "sd1"))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(decoder(latents), reference(latents))
    picture = taesd.decode(decoder, latents)
    assert picture.size == (64, 64) and picture.mode == "RGB"  # 8x upscale, the first image only


def test_sdxl_name_safetensors_and_diffusers_layout(tmp_path):
    reference = _reference()
    save_file({f"decoder.{k}": v.contiguous() for k, v in reference.state_dict().items()},
              str(tmp_path / "taesdxl_decoder.safetensors"))
    path = taesd.decoder_path(tmp_path, "sdxl")
    assert path.name == "taesdxl_decoder.safetensors"
    latents = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(taesd.load_decoder(path)(latents), reference(latents))


def test_missing_or_bad_files_name_the_file(tmp_path):
    with pytest.raises(taesd.TaesdError, match=r"needs taesd_decoder\.pth in .*"):
        taesd.decoder_path(tmp_path, "sd1")
    with pytest.raises(taesd.TaesdError, match="no decoder for flux"):
        taesd.decoder_path(tmp_path, "flux")
    (tmp_path / "taesd_decoder.pth").write_bytes(b"not a model")
    with pytest.raises(taesd.TaesdError, match="taesd_decoder.pth: cannot be read"):
        taesd.load_decoder(tmp_path / "taesd_decoder.pth")
    torch.save({"1.weight": torch.zeros(64, 4, 3, 3)}, tmp_path / "taesd_decoder.pth")
    with pytest.raises(taesd.TaesdError, match="weights missing"):
        taesd.load_decoder(tmp_path / "taesd_decoder.pth")


def test_live_previews_use_taesd_and_name_a_missing_file_once(tmp_path, sd1, capsys):
    """The live preview service (page and API) with show_progress_type "TAESD": the TAESD picture of
    the current step; without the decoder file, the console names it once and the cheap preview shows."""
    import types

    import numpy as np

    from modules.services import live_previews
    from modules.services.jobs import JobState
    from modules.services.options import Options

    options = Options(None)
    options.set("show_progress_type", "TAESD")
    options.set("show_progress_every_n_steps", 1)
    state = JobState()
    engine = types.SimpleNamespace(state=state, options=options, models=types.SimpleNamespace(model=sd1))
    previews = live_previews.LivePreviews(engine)

    def step(n: int, seed: int):
        state.sampling_step, state.id_live_preview = n, n
        state.current_latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        return previews.current()[1]

    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    live_previews.set_folder(folder)
    try:
        state.begin("txt2img", "task-1")
        cheap = step(1, 1)
        assert cheap.size == (8, 8)  # no decoder: Approx cheap, one pixel per latent
        step(2, 2)
        out = capsys.readouterr().out
        assert out.count("taesd_decoder.pth") == 1 and str(folder) in out

        reference = _reference()
        torch.save(_taesd_layout(reference), folder / "taesd_decoder.pth")
        shown = step(3, 3)
        assert shown.size == (64, 64)
        expected = taesd.decode(reference, state.current_latent)
        assert np.array_equal(np.asarray(shown), np.asarray(expected))

        # a batch of 4: A1111's show_progress_grid puts every picture's preview in a 2 x 2 grid
        state.sampling_step, state.id_live_preview = 4, 4
        state.current_latent = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(4))
        grid = previews.current()[1]
        assert grid.size == (128, 128)
        third = taesd.decode(reference, state.current_latent[2:3])
        assert np.array_equal(np.asarray(grid)[64:, :64], np.asarray(third))
        options.set("show_progress_grid", False)
        state.sampling_step, state.id_live_preview = 5, 5
        assert previews.current()[1].size == (64, 64)  # off: the first picture only
    finally:
        live_previews.set_folder(None)


def test_approx_nn_model_file_loads_and_keeps_the_size_contract(tmp_path):
    """A1111's Approx NN file (model.pt: conv1 … conv8, unpadded): nearest 2x upsampling plus the
    11-pixel padding the kernels use up give a picture twice the latent's size."""
    from modules.core import approx_nn

    torch.manual_seed(0)
    shapes = [(8, 4, 7), (16, 8, 5), (32, 16, 3), (64, 32, 3), (32, 64, 3), (16, 32, 3), (8, 16, 3), (3, 8, 3)]
    state = {}
    for i, (out_ch, in_ch, k) in enumerate(shapes, 1):
        state[f"conv{i}.weight"] = torch.randn(out_ch, in_ch, k, k) * 0.1
        state[f"conv{i}.bias"] = torch.zeros(out_ch)
    torch.save(state, tmp_path / "model.pt")
    model = approx_nn.load(approx_nn.model_path(tmp_path, "sd1"))
    latents = torch.randn(2, 4, 6, 10)
    with torch.no_grad():
        out = model(latents)
        manual = torch.nn.functional.pad(torch.nn.functional.interpolate(latents, scale_factor=2.0), (11,) * 4)
        for i in range(1, 9):
            manual = torch.nn.functional.leaky_relu(
                torch.nn.functional.conv2d(manual, state[f"conv{i}.weight"], state[f"conv{i}.bias"]), 0.1)
    assert out.shape == (2, 3, 12, 20) and torch.allclose(out, manual, atol=1e-6)
    assert approx_nn.decode(model, latents).size == (20, 12)
    with pytest.raises(approx_nn.ApproxNNError, match=r"needs vaeapprox-sdxl\.pt in"):
        approx_nn.model_path(tmp_path, "sdxl")
    torch.save({"conv1.weight": torch.zeros(8, 4, 7, 7)}, tmp_path / "bad.pt")
    with pytest.raises(approx_nn.ApproxNNError, match="not an Approx NN model"):
        approx_nn.load(tmp_path / "bad.pt")


# -- A1111's live_preview_content: the preview's subject ----------------------------------------

class _FirstPreview:
    def __init__(self):
        self.shown = None

    def step_end(self, step, total, latents, denoised):
        if step == 0:
            self.shown = denoised.clone()


@pytest.mark.parametrize("sampler", ["Euler", "LMS", "DDIM"])  # (DPM++ 2M reports no x0: its previews show latents)
def test_the_preview_subject_is_the_prompts_or_the_negative_prompts_own_prediction(sd1, sampler):
    """At the first step every run sees the same latents, so "Prompt" (with a negative prompt and
    CFG 7) must show what a run whose negative prompt is the prompt shows as "Combined" (guidance
    then changes nothing), and "Negative prompt" what a run on the negative prompt alone shows."""
    from modules.core import denoise, model_ops, samplers
    from modules.core.scheduled_conditioning import ScheduledConditioning

    conditioner = sd1.family.conditioner(sd1)

    def first_preview(prompt, negative, content):
        conds = ScheduledConditioning(conditioner, [prompt], [negative], 4, 64, 64)
        hooks = type("Hooks", (_FirstPreview, denoise.DenoiseHooks), {})()
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
        denoise.sample(model_ops.denoiser(sd1), samplers.build_scheduler(sampler, "Automatic"), noise,
                       conds.cond_for_step, steps=4, cfg_scale=7.0, hooks=hooks, preview_content=content)
        return hooks.shown

    prompt, negative = "a red house", "blurry, dark"
    combined = first_preview(prompt, negative, "Combined")
    own = first_preview(prompt, negative, "Prompt")
    negative_own = first_preview(prompt, negative, "Negative prompt")
    assert torch.allclose(own, first_preview(prompt, prompt, "Combined"), atol=1e-4)
    assert torch.allclose(negative_own, first_preview(negative, negative, "Combined"), atol=1e-4)
    assert not torch.allclose(own, combined, atol=1e-3) and not torch.allclose(own, negative_own, atol=1e-3)
    with pytest.raises(ValueError, match="preview_content"):
        first_preview(prompt, negative, "Both")
