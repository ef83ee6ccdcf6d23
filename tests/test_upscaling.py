"""The upscaler registry: A1111's latent upscale modes on real tensors, the image upscalers on real
pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import upscaling
from modules.core.upscaling import LATENT_MODES, resize_latents, upscale_image


def latents(h=16, w=12, seed=0) -> torch.Tensor:
    return torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(seed))


def picture(w=24, h=16) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_registry_lists_a1111_names_in_menu_order():
    assert upscaling.latent_modes() == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                        "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]
    rows = upscaling.image_upscalers()
    assert [(u.name, u.scale, u.latent) for u in rows] == [("None", 1.0, False), ("Lanczos", 4.0, False),
                                                          ("Nearest", 4.0, False)]
    assert upscaling.names() == upscaling.latent_modes() + ["None", "Lanczos", "Nearest"]
    assert upscaling.is_latent("Latent (bicubic)") and not upscaling.is_latent("Lanczos")
    assert {m: (v.interpolation, v.antialias) for m, v in LATENT_MODES.items()} == {
        "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        upscaling.register(upscaling.Upscaler("Lanczos", scale=4.0))
    with pytest.raises(ValueError, match="unknown upscaler 'ESRGAN_4x'; known: Latent, .*Nearest"):
        upscaling.get("ESRGAN_4x")
    with pytest.raises(ValueError, match="unknown latent upscale mode"):
        resize_latents(latents(), 8, 8, "Lanczos")
    with pytest.raises(ValueError, match="latent upscale mode"):
        upscale_image(picture(), 48, 32, "Latent")


@pytest.mark.parametrize("mode", list(LATENT_MODES))
def test_every_latent_mode_gives_the_asked_shape(mode):
    x = latents()
    up = resize_latents(x, 32, 24, mode)
    down = resize_latents(x, 5, 7, mode)
    assert up.shape == (2, 4, 32, 24) and down.shape == (2, 4, 5, 7)
    assert up.dtype == torch.float32 and torch.isfinite(up).all()
    # an exact 2x enlargement by a nearest mode keeps every value
    if "nearest" in mode:
        assert torch.equal(up[:, :, ::2, ::2], x)


def test_antialias_matters_when_shrinking_only():
    x = latents(32, 32)
    plain, aa = resize_latents(x, 7, 7, "Latent"), resize_latents(x, 7, 7, "Latent (antialiased)")
    assert (plain - aa).abs().mean() > 0.05
    # antialiasing smooths: the shrunk latents vary less
    assert aa.std() < plain.std()
    bic, bic_aa = resize_latents(x, 7, 7, "Latent (bicubic)"), resize_latents(x, 7, 7, "Latent (bicubic antialiased)")
    assert (bic - bic_aa).abs().mean() > 0.05
    up, up_aa = resize_latents(x, 64, 64, "Latent"), resize_latents(x, 64, 64, "Latent (antialiased)")
    assert torch.allclose(up, up_aa, atol=1e-5)


def test_nearest_and_nearest_exact_pick_different_rows():
    x = torch.arange(3.0).reshape(1, 1, 1, 3).expand(1, 1, 3, 3).contiguous()
    near = resize_latents(x, 3, 5, "Latent (nearest)")[0, 0, 0].tolist()
    exact = resize_latents(x, 3, 5, "Latent (nearest-exact)")[0, 0, 0].tolist()
    assert near == [0.0, 0.0, 1.0, 1.0, 2.0]  # source = floor(i * 3 / 5)
    assert exact == [0.0, 0.0, 1.0, 2.0, 2.0]  # source = floor((i + 0.5) * 3 / 5): pixel centres


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
def test_image_upscalers_give_the_exact_size(name):
    image = picture()
    for size in ((48, 32), (52, 36), (60, 30), (12, 8)):
        out = upscale_image(image, *size, name)
        assert out.size == size and out.mode == "RGB"


def test_nearest_repeats_pixels_and_lanczos_interpolates():
    image = picture()
    near = np.asarray(upscale_image(image, 48, 32, "Nearest"))
    assert np.array_equal(near[::2, ::2], np.asarray(image))
    assert np.array_equal(near[1::2, 1::2], np.asarray(image))
    lanczos = np.asarray(upscale_image(image, 48, 32, "Lanczos"), dtype=np.int16)
    assert np.abs(lanczos - near).mean() > 5
    # "None" is one Lanczos resize, as is Lanczos at an exact factor
    none = np.asarray(upscale_image(image, 48, 32, "None"), dtype=np.int16)
    assert np.array_equal(none, np.asarray(image.resize((48, 32), Image.Resampling.LANCZOS), dtype=np.int16))
    assert np.array_equal(none, lanczos)
