"""Tiled VAE decode and encode (modules.core.vae_tiling through model_ops): close to the whole
picture, no seam at the tile borders, and automatic when the picture would not fit the budget."""

import pytest
import torch

from modules.core import model_ops, vae_tiling
from modules.core.devices import RunOptions
from modules.core.memory import DeviceMemory
from modules.core.model_loader import load_checkpoint
from modules.core.devices import choose_policy  # noqa: E402

POLICY, _ = choose_policy()


def smooth_latents(side: int, seed: int = 0) -> torch.Tensor:
    """Latents with a picture's smoothness (a coarse field, upsampled)."""
    coarse = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)


def as_u8(pixels: torch.Tensor) -> torch.Tensor:
    return ((pixels / 2 + 0.5).clamp(0, 1) * 255).round()


def column_jumps(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute step between neighbouring columns, per column border."""
    return (image[..., 1:] - image[..., :-1]).abs().mean(dim=(0, 1, 2))


def decode(model, latents, tiling: str, tile: int = 128, overlap: int = 32) -> torch.Tensor:
    model.run_options = RunOptions(vae_tiling=tiling, vae_tile_size=tile, vae_tile_overlap=overlap)
    return model_ops.decode_pixels(model, latents)


@pytest.fixture(scope="module")
def pictures(sd1):
    latents = smooth_latents(28)  # 224 px: 2 x 2 tiles of 128 px, 32 px overlap, 32 px context
    whole = as_u8(decode(sd1, latents, "Never"))
    calls = []
    original = sd1.vae.decode

    def counted(z, *args, **kwargs):
        calls.append(tuple(z.shape))
        return original(z, *args, **kwargs)

    sd1.vae.decode = counted
    try:
        blended = as_u8(decode(sd1, latents, "Always"))
        shapes = list(calls)
        hard = as_u8(decode(sd1, latents, "Always", overlap=0))  # tiles side by side, no blending
    finally:
        del sd1.vae.decode
        sd1.run_options = RunOptions()
    return whole, blended, hard, shapes


def test_tiled_decode_is_close_to_the_whole_decode(pictures):
    whole, blended, _hard, calls = pictures
    assert whole.shape == blended.shape == (1, 3, 224, 224)
    # the whole picture shrunk to one window for the norms' statistics, then 2 x 2 tiles of 16 latents
    # with 4 of context
    assert calls == [(1, 4, 24, 24)] + [(1, 4, 20, 20)] * 4
    diff = (blended - whole).abs()
    # the tiny random VAE is harsher than a trained one (its attention and norms swing the picture)
    assert diff.mean() < 12 and torch.quantile(diff.flatten(), 0.99) < 60, (diff.mean(), diff.max())


def test_no_seam_where_tiles_meet(pictures):
    whole, blended, hard, _calls = pictures
    assert vae_tiling.starts(28, 16, 4) == [0, 12]
    border = 127  # where the first tile ends (its last column | the next column)
    seam_hard = column_jumps(hard)[border] - column_jumps(whole)[border]
    excess = column_jumps(blended) - column_jumps(whole)
    assert seam_hard > 5  # side by side tiles show a step the metric sees
    assert excess.abs().max() < 2.5 and excess.abs().max() < seam_hard / 3, (excess.abs().max(), seam_hard)


def test_tiled_encode_is_close_to_the_whole_encode(sd1):
    torch.manual_seed(1)
    pixels = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8) * 2 - 1, size=(160, 160), mode="bicubic").clamp(-1, 1)
    sd1.run_options = RunOptions(vae_tiling="Never")
    whole = model_ops.encode_pixels(sd1, pixels)
    sd1.run_options = RunOptions(vae_tiling="Always", vae_tile_size=96, vae_tile_overlap=32)
    tiled = model_ops.encode_pixels(sd1, pixels)
    sd1.run_options = RunOptions()
    assert tiled.shape == whole.shape == (1, 4, 20, 20)
    scale = whole.abs().mean()
    correlation = torch.corrcoef(torch.stack([tiled.flatten(), whole.flatten()]))[0, 1]
    assert (tiled - whole).abs().mean() < 0.3 * scale and correlation > 0.9, ((tiled - whole).abs().mean(), scale,
                                                                               correlation)


def test_automatic_when_the_picture_would_not_fit_the_budget(tiny_checkpoints):
    latents = smooth_latents(20)
    memory = DeviceMemory("cpu", None, "all")
    model = load_checkpoint(tiny_checkpoints.sd1, POLICY, memory=memory)
    config = dict(model.vae.config)
    need = vae_tiling.decode_bytes(config, 1, 160, 160, torch.float32)
    calls = []
    original = model.vae.decode

    def counted(z, *args, **kwargs):
        calls.append(tuple(z.shape))
        return original(z, *args, **kwargs)

    model.vae.decode = counted
    model.run_options = RunOptions(vae_tile_size=96)
    memory.budget_bytes = memory.resident_bytes + need + 1  # room for the whole picture
    model_ops.decode_pixels(model, latents)
    assert len(calls) == 1
    memory.budget_bytes = memory.resident_bytes + need // 2  # not enough: tiles
    calls.clear()
    model_ops.decode_pixels(model, latents)
    assert len(calls) == 5
    calls.clear()
    model.run_options = RunOptions(vae_tiling="Never", vae_tile_size=96)  # the option can turn it off
    model_ops.decode_pixels(model, latents)
    assert len(calls) == 1


def test_decode_estimate_for_a_2048_picture():
    """The stated budget: a whole 2048² decode of SD's VAE needs about 8 GiB in fp16; one 512 px tile
    (plus its 64 px context on each side) about 0.8 GiB."""
    sd_vae = {"block_out_channels": [128, 256, 512, 512]}
    whole = vae_tiling.decode_bytes(sd_vae, 1, 2048, 2048, torch.float16)
    tile = vae_tiling.decode_bytes(sd_vae, 1, 640, 640, torch.float16)
    assert whole == 2048 * 2048 * 2 * (3 * 256 + 2 * 128) == 8 << 30
    assert tile < (1 << 30) and whole / tile > 10
