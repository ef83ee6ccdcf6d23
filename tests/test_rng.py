"""Seeded noise with A1111's semantics (modules.core.rng)."""

import pytest
import torch

from modules.core import rng

SHAPE = (4, 8, 12)  # latent C, H, W (96 x 64 pixels)


def plain(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_fix_seed():
    assert rng.fix_seed(5) == 5
    assert rng.fix_seed("12") == 12
    assert rng.fix_seed(2**40) == 2**40
    for value in (-1, None, "", "-1", "not a number"):
        seed = rng.fix_seed(value)
        assert isinstance(seed, int) and 0 <= seed < 4294967294


def test_all_seeds_and_subseeds():
    assert rng.all_seeds(10, 3) == [10, 11, 12]
    assert rng.all_seeds(10, 3, subseed_strength=0.3) == [10, 10, 10]  # the variation seed counts up instead
    assert rng.all_subseeds(7, 3) == [7, 8, 9]


def test_noise_is_a_cpu_generator_per_image():
    noise = rng.create_noise(SHAPE, [42, 43])
    assert noise.shape == (2, *SHAPE) and noise.dtype == torch.float32
    assert torch.equal(noise[0], plain(42)) and torch.equal(noise[1], plain(43))


def test_image_noise_does_not_depend_on_batch():
    seeds = rng.all_seeds(1000, 4)
    batch = rng.create_noise(SHAPE, seeds)
    for i, seed in enumerate(seeds):
        assert torch.equal(batch[i], rng.create_noise(SHAPE, [1000 + i])[0])
        assert torch.equal(batch[i], rng.create_noise(SHAPE, [seed])[0])


def test_same_seed_twice_is_identical():
    assert torch.equal(rng.create_noise(SHAPE, [9, 9]), rng.create_noise(SHAPE, [9, 9]))
    assert not torch.equal(rng.create_noise(SHAPE, [9])[0], rng.create_noise(SHAPE, [10])[0])


def test_subseed_strength_endpoints_and_between():
    base = rng.create_noise(SHAPE, [1])
    varied = rng.create_noise(SHAPE, [1], subseeds=[2], subseed_strength=0.0)
    assert torch.equal(varied, base)
    full = rng.create_noise(SHAPE, [1], subseeds=[2], subseed_strength=1.0)
    torch.testing.assert_close(full[0], plain(2), rtol=1e-5, atol=1e-5)
    half = rng.create_noise(SHAPE, [1], subseeds=[2], subseed_strength=0.5)[0]
    assert not torch.allclose(half, plain(1), atol=0.1) and not torch.allclose(half, plain(2), atol=0.1)
    # slerp keeps the noise's scale, a plain average would shrink it by ~1/sqrt(2)
    assert 0.9 < half.std().item() < 1.1


def test_slerp_uses_a1111_axes():
    """A1111 normalises along dim 1 of one image's (C, H, W) noise: each column is slerped alone."""
    low, high = plain(1), plain(2)
    out = rng.slerp(0.3, low, high)
    c, w = 2, 5
    a, b = low[c, :, w].double(), high[c, :, w].double()
    omega = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    expected = (torch.sin(0.7 * omega) * a + torch.sin(0.3 * omega) * b) / torch.sin(omega)
    torch.testing.assert_close(out[c, :, w].double(), expected, rtol=1e-5, atol=1e-5)
    # nearly parallel noises fall back to a linear blend
    torch.testing.assert_close(rng.slerp(0.25, low, low), low)


def test_missing_subseed_counts_as_zero():
    two = rng.create_noise(SHAPE, [5, 6], subseeds=[8], subseed_strength=1.0)
    torch.testing.assert_close(two[1], plain(0), rtol=1e-5, atol=1e-5)


def test_seed_resize_from_same_size_is_plain():
    pixels = (SHAPE[2] * 8, SHAPE[1] * 8)  # (width, height)
    assert torch.equal(rng.create_noise(SHAPE, [3], seed_resize_from=pixels), rng.create_noise(SHAPE, [3]))
    for off in [(0, 0), (-1, 512), None]:
        assert torch.equal(rng.create_noise(SHAPE, [3], seed_resize_from=off), rng.create_noise(SHAPE, [3]))


def test_seed_resize_from_smaller_is_pasted_in_the_centre():
    # noise made for 48 x 32 pixels (latent 4 x 6) inside a 96 x 64 target (latent 8 x 12)
    out = rng.create_noise(SHAPE, [3], seed_resize_from=(48, 32))[0]
    small, own = plain(3, (4, 4, 6)), plain(3)
    assert torch.equal(out[:, 2:6, 3:9], small)
    border = torch.ones(SHAPE, dtype=torch.bool)
    border[:, 2:6, 3:9] = False
    assert torch.equal(out[border], own[border])


def test_seed_resize_from_larger_is_cropped_from_the_centre():
    # noise made for 160 x 96 pixels (latent 12 x 20), target latent 8 x 12
    out = rng.create_noise(SHAPE, [3], seed_resize_from=(160, 96))[0]
    big = plain(3, (4, 12, 20))
    assert torch.equal(out, big[:, 2:10, 4:16])


def test_seed_resize_with_variation_blends_at_the_old_size():
    out = rng.create_noise(SHAPE, [3], subseeds=[4], subseed_strength=1.0, seed_resize_from=(48, 32))[0]
    torch.testing.assert_close(out[:, 2:6, 3:9], plain(4, (4, 4, 6)), rtol=1e-5, atol=1e-5)


def test_step_generators_continue_after_the_initial_noise():
    """ENSD 0: A1111 keeps drawing from the generator that made the image's initial noise."""
    gens = rng.step_generators([11, 12], shape=SHAPE)
    for seed, gen in zip([11, 12], gens):
        reference = torch.Generator().manual_seed(seed)
        first = torch.randn(SHAPE, generator=reference)
        assert torch.equal(first, rng.create_noise(SHAPE, [seed])[0])
        assert torch.equal(torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=reference))


def test_step_generators_with_eta_noise_seed_delta():
    gens = rng.step_generators([11, 12], eta_noise_seed_delta=31337)
    assert torch.equal(torch.randn(SHAPE, generator=gens[1]), plain(12 + 31337))


def test_step_generators_need_the_shape_without_delta():
    with pytest.raises(ValueError, match="shape"):
        rng.step_generators([1])


def test_randn_sources():
    with pytest.raises(ValueError, match="CPU, GPU, NV"):
        rng.create_noise(SHAPE, [1], source="cuda")
    with pytest.raises(ValueError, match="randn source"):
        rng.step_generators([1], 5, source="cuda")
    # "GPU" puts the generator on the target device; on a CPU-only box that is the CPU one
    assert torch.equal(rng.create_noise(SHAPE, [1], source="GPU"), rng.create_noise(SHAPE, [1]))


def test_input_checks():
    with pytest.raises(ValueError, match="C, H, W"):
        rng.create_noise((1, 4, 8, 8), [1])
    with pytest.raises(ValueError, match="at least one"):
        rng.create_noise(SHAPE, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_source_is_machine_independent_on_cuda():
    on_gpu = rng.create_noise(SHAPE, [5, 6], device="cuda")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), rng.create_noise(SHAPE, [5, 6]))
    gpu_source = rng.create_noise(SHAPE, [5], device="cuda", source="GPU")
    assert gpu_source.device.type == "cuda" and gpu_source.shape == (1, *SHAPE)
    gen = rng.step_generators([5], device="cuda", shape=SHAPE, source="GPU")[0]
    assert gen.device.type == "cuda"
