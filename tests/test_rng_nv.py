"""The "NV" randn source: NVIDIA's CUDA ``torch.randn`` numbers computed on the CPU (A1111's GPU RNG),
through the noise functions, the sampling loop, the pipeline and the API.

The recorded CUDA values (no GPU here) come from two published runs of ``torch.randn`` on an NVIDIA
card after ``torch.manual_seed(0)``:

* A1111's ``modules/rng_philox.py`` docstring (AUTOMATIC1111/stable-diffusion-webui): the first 12
  values of a (3, 4) draw, to 8 digits;
* kapilsh/cuda-mode-lecture, ``FusedKernels.ipynb`` / ``README.md`` ("[TRITON] Fused Mul Add Relu"):
  ``get_inputs`` runs ``torch.manual_seed(0); torch.randn((8, 8), device='cuda', dtype=float64)``
  and the notebook prints the tensor (``device='cuda:0'``) to 4 decimals.
"""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from modules.core import denoise, rng
from modules.core.infotext import parse_infotext
from modules.core.pipeline import GenerationSettings, generate
from modules.core.rng_philox import PhiloxRandn
from modules.core.types import GenerationRequest
from tests.api_common import BASE, decode

CUDA_SEED0_3x4 = np.array([
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
])
CUDA_SEED0_8x8 = np.array([
    [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284],
    [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820],
    [-0.1271, 1.2169, 1.4353, 1.0605, -0.4941, -1.4244, -0.7244, -1.2973],
    [0.0697, -0.0074, 1.8969, 0.6878, -0.0779, -0.8373, 1.3506, -0.2879],
    [-0.5965, -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435, 1.5150],
    [0.0141, 0.4532, 1.6349, 0.7124, -0.1806, 1.0252, -1.4622, -0.7554],
    [-0.1836, 0.3824, 0.3918, -0.0830, 0.8971, -1.1123, 0.1116, 0.4863],
    [-0.5499, -0.3231, -0.5469, 0.9049, 0.2837, 0.1210, 0.4730, -1.0823],
])
SHAPE = (4, 8, 8)  # latent C, H, W of a 64x64 picture


def philox(seed: int, shape=SHAPE, offset: int = 0) -> torch.Tensor:
    return torch.from_numpy(PhiloxRandn(seed, offset).randn(shape))


def cpu(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- the numbers -------------------------------------------------------------------------------

def test_philox_gives_the_recorded_cuda_values():
    first = PhiloxRandn(0).randn((3, 4))
    assert first.dtype == np.float32 and first.shape == (3, 4)
    # CUDA computes Box-Muller in float32 intrinsics, A1111's formula in float64: a few float32 ulps apart
    assert np.abs(first - CUDA_SEED0_3x4).max() < 5e-7
    assert np.abs(PhiloxRandn(0).randn((8, 8)) - CUDA_SEED0_8x8).max() <= 0.5e-4 + 1e-6  # printed to 4 decimals
    # the element order does not depend on the shape: the counter is the flat index
    assert np.array_equal(PhiloxRandn(0).randn((64,)), PhiloxRandn(0).randn((8, 8)).ravel())


def test_philox_offsets_keys_and_distribution():
    g = PhiloxRandn(7)
    a, b = g.randn((2, 3)), g.randn((5,))  # each draw moves the offset by one, whatever its size
    assert g.offset == 2
    assert np.array_equal(b, PhiloxRandn(7, offset=1).randn((5,)))
    assert not np.allclose(a.ravel()[:5], b)
    # the key is the whole 64-bit seed: a seed above 2**32 is not its low word
    assert not np.allclose(PhiloxRandn(2**32 + 7).randn((8,)), PhiloxRandn(7).randn((8,)))
    big = PhiloxRandn(123456789).randn((200_000,)).astype(np.float64)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01
    assert np.isfinite(big).all() and 4.0 < np.abs(big).max() < 6.5


# -- noise with the NV source ------------------------------------------------------------------

def test_initial_noise_is_philox_per_image_and_unlike_cpu():
    noise = rng.create_noise(SHAPE, [5, 6], source="NV")
    assert noise.dtype == torch.float32 and noise.shape == (2, *SHAPE)
    assert torch.equal(noise[0], philox(5)) and torch.equal(noise[1], philox(6))
    assert not torch.allclose(noise[0], cpu(5), atol=0.1)
    assert torch.equal(rng.create_noise(SHAPE, [5], source="CPU")[0], cpu(5))  # CPU: torch's CPU randn
    assert torch.equal(rng.create_noise(SHAPE, [5], source="GPU")[0], cpu(5))  # no CUDA: the CPU's generator


def test_variation_seed_and_seed_resize_use_philox():
    mixed = rng.create_noise(SHAPE, [5], subseeds=[9], subseed_strength=0.3, source="NV")
    assert torch.allclose(mixed[0], rng.slerp(0.3, philox(5), philox(9)), atol=1e-6)
    assert not torch.allclose(mixed[0], philox(5), atol=0.05)
    resized = rng.create_noise(SHAPE, [5], seed_resize_from=(32, 32), source="NV")[0]  # 4x4 latent, centred
    assert torch.equal(resized[:, 2:6, 2:6], philox(5, (4, 4, 4)))
    assert torch.equal(resized[:, 0], philox(5)[:, 0])  # the border keeps the full-size draw


def test_step_noise_continues_the_image_generator_or_starts_at_the_delta():
    carried = rng.step_generators([5, 6], 0, shape=SHAPE, source="NV")
    fresh = rng.step_generators([5], 31337, source="NV")
    assert all(isinstance(g, rng.NVGenerator) and isinstance(g, torch.Generator) for g in carried + fresh)
    with rng.step_noise(carried + fresh):  # as a diffusers scheduler draws: one generator per image
        drawn = randn_tensor((3, *SHAPE), generator=carried + fresh, device=torch.device("cpu"), dtype=torch.float16)
        again = torch.randn(SHAPE, generator=carried[0])
    assert drawn.dtype == torch.float16
    assert torch.equal(drawn[0], philox(5, offset=1).half()) and torch.equal(drawn[1], philox(6, offset=1).half())
    assert torch.equal(drawn[2], philox(5 + 31337).half())
    assert torch.equal(again, philox(5, offset=2))
    # outside a sampler step nothing is rerouted: torch's own randn runs on the CPU generator beneath
    plain = torch.randn(SHAPE, generator=rng.NVGenerator(5))
    assert torch.equal(plain, cpu(5))


def test_the_sampling_loop_draws_nv_step_noise():
    seen = []

    class Ancestral:  # the diffusers scheduler API, drawing its noise as EulerAncestral does
        init_noise_sigma, order = 1.0, 1

        def set_timesteps(self, steps, device=None):
            self.timesteps = torch.arange(steps, 0, -1)

        def scale_model_input(self, x, t):
            return x

        def step(self, pred, t, latents, generator=None):
            noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            seen.append(noise)
            return type("Out", (), {"prev_sample": latents + noise, "pred_original_sample": latents})()

    noise = rng.create_noise(SHAPE, [5], source="NV")
    generators = rng.step_generators([5], 0, shape=SHAPE, source="NV")
    cond = {"context": torch.zeros(1, 77, 8)}
    denoise.sample(lambda x, t, cond: torch.zeros_like(x), Ancestral(), noise, lambda i: (cond, None),
                   steps=2, cfg_scale=1.0, generators=generators)
    assert [torch.equal(n[0], philox(5, offset=k)) for k, n in enumerate(seen, start=1)] == [True, True]


# -- the pipeline --------------------------------------------------------------------------------

def settings(**kw) -> GenerationSettings:
    return GenerationSettings(model_name="tiny-sd1", model_hash="0123456789", version="easel-test",
                              today=lambda: datetime.date(2026, 11, 23), **kw)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(model, source: str, **request):
    body = {"prompt": "a red circle", "seed": 3, "width": 64, "height": 64, "steps": 3, "save_images": False,
            "sampler_name": "Euler a", **request}
    return generate(GenerationRequest(**body), model, settings(randn_source=source))


def test_nv_through_the_pipeline(sd1):
    a, b, plain = run(sd1, "NV"), run(sd1, "NV"), run(sd1, "CPU")
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    assert np.abs(px(a.images[0]) - px(plain.images[0])).mean() > 1
    line = a.infotexts[0].splitlines()[-1]
    assert "RNG: NV" in line and parse_infotext(a.infotexts[0])["RNG"] == "NV"
    assert line.index("RNG: NV") > line.index("Model: tiny-sd1")  # A1111's place: after ENSD, before Tiling
    assert parse_infotext(plain.infotexts[0])["RNG"] == "CPU"  # not A1111's default, so it is named
    assert "RNG" not in parse_infotext(run(sd1, "GPU").infotexts[0])  # A1111's default is left out
    # a plain sampler's only noise is the initial one: NV then changes the picture through it alone
    euler = run(sd1, "NV", sampler_name="Euler")
    assert np.abs(px(euler.images[0]) - px(run(sd1, "CPU", sampler_name="Euler").images[0])).mean() > 1


def test_nv_with_variation_seeds_and_ensd(sd1):
    base = run(sd1, "NV")
    varied = run(sd1, "NV", subseed=11, subseed_strength=0.5)
    again = run(sd1, "NV", subseed=11, subseed_strength=0.5)
    assert np.array_equal(px(varied.images[0]), px(again.images[0]))
    assert np.abs(px(varied.images[0]) - px(base.images[0])).mean() > 1
    text = parse_infotext(varied.infotexts[0])
    assert (text["Variation seed"], text["Variation seed strength"], text["RNG"]) == ("11", "0.5", "NV")
    delta = generate(GenerationRequest(prompt="a red circle", seed=3, width=64, height=64, steps=3, save_images=False,
                                       sampler_name="Euler a"), sd1, settings(randn_source="NV", eta_noise_seed_delta=7))
    assert np.abs(px(delta.images[0]) - px(base.images[0])).mean() > 0.5
    assert "ENSD: 7, RNG: NV" in delta.infotexts[0]


def test_nv_in_img2img_and_the_hires_pass(sd1):
    from modules.core.types import Img2ImgRequest
    from tests.pictures import picture

    def img2img(source):
        request = Img2ImgRequest(init_images=[picture()], prompt="a red circle", seed=5, steps=4, save_images=False,
                                 sampler_name="Euler a", denoising_strength=0.6)
        return generate(request, sd1, settings(randn_source=source))

    nv, again, plain = img2img("NV"), img2img("NV"), img2img("CPU")
    assert np.array_equal(px(nv.images[0]), px(again.images[0]))
    assert np.abs(px(nv.images[0]) - px(plain.images[0])).mean() > 0.5 and "RNG: NV" in nv.infotexts[0]
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6)
    nv_hr, plain_hr = run(sd1, "NV", **hires), run(sd1, "CPU", **hires)
    assert nv_hr.images[0].size == (128, 128) and "RNG: NV" in nv_hr.infotexts[0]
    assert np.abs(px(nv_hr.images[0]) - px(plain_hr.images[0])).mean() > 1


# -- over the API --------------------------------------------------------------------------------

def txt2img(server, body: dict):
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return [decode(s) for s in data["images"]], json.loads(data["info"])


def test_api_nv_per_job_by_options_and_by_pasted_infotext(server):
    default = server.get("/sdapi/v1/options").json()["randn_source"]
    plain_images, plain_info = txt2img(server, BASE)
    nv_images, nv_info = txt2img(server, {**BASE, "override_settings": {"randn_source": "NV"}})
    assert "RNG: NV" in nv_info["infotexts"][0]
    assert np.abs(px(nv_images[0]) - px(plain_images[0])).mean() > 1
    # the override was for that job only: the next one is the plain one again
    after_images, after_info = txt2img(server, BASE)
    assert np.array_equal(px(after_images[0]), px(plain_images[0])) and "RNG: NV" not in after_info["infotexts"][0]
    assert server.get("/sdapi/v1/options").json()["randn_source"] == default

    # the infotext pasted back: the same picture and the same text
    pasted_images, pasted_info = txt2img(server, {"infotext": nv_info["infotexts"][0]})
    assert np.array_equal(px(pasted_images[0]), px(nv_images[0]))
    assert pasted_info["infotexts"][0] == nv_info["infotexts"][0]

    try:
        r = server.post("/sdapi/v1/options", json={"randn_source": "NV"})
        assert r.status_code == 200, r.text
        opt_images, opt_info = txt2img(server, BASE)
        assert np.array_equal(px(opt_images[0]), px(nv_images[0])) and "RNG: NV" in opt_info["infotexts"][0]
        varied, varied_info = txt2img(server, {**BASE, "subseed": 5, "subseed_strength": 0.4})
        assert "Variation seed: 5" in varied_info["infotexts"][0] and "RNG: NV" in varied_info["infotexts"][0]
        assert np.abs(px(varied[0]) - px(nv_images[0])).mean() > 1
    finally:
        assert server.post("/sdapi/v1/options", json={"randn_source": default}).status_code == 200
    back_images, _ = txt2img(server, BASE)
    assert np.array_equal(px(back_images[0]), px(plain_images[0]))

