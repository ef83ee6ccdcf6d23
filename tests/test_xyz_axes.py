"""Every X/Y/Z plot axis of A1111 1.10 does its work (none answers "not available"), and A1111's
request fields and options that leave out the negative prompt's pass (Skip Early CFG, NGMS) work
through the API.

Over real HTTP against the session's shared `server` (tiny SD1): each axis runs as the X axis with
two values, the cells come back with `include_lone_images`, and the second cell's infotext shows the
value while the pictures differ where the value changes the sampling. Pictures are 64 px, 2-4 steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modules.core.infotext import parse_infotext
from modules.core.ldm_export import save_single_file, vae_to_ldm
from tests.api_common import BASE, assert_error, decode

XYZ_LABELS = None


def axis(label: str) -> int:
    """The axis's index on the txt2img tab, as A1111's API takes it."""
    global XYZ_LABELS
    if XYZ_LABELS is None:
        import importlib.util

        from tests.conftest import REPO_ROOT

        spec = importlib.util.spec_from_file_location("easel_test_xyz_axes", REPO_ROOT / "scripts" / "xyz_grid.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        XYZ_LABELS = [o.label for o in module.axis_options_for(False)]
    return XYZ_LABELS.index(label)


def cells(server, label: str, values: str, **fields):
    args = [axis(label), values, [], 0, "", [], 0, "", [], False, True, False, False, False, False, False, 0, False]
    r = server.post("/sdapi/v1/txt2img", json={**BASE, **fields, "script_name": "X/Y/Z plot", "script_args": args})
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    pictures = [np.asarray(decode(s).convert("RGB")) for s in data["images"][1:]]
    return pictures, [parse_infotext(t) for t in info["infotexts"][1:]]


def plain(server, **fields) -> np.ndarray:
    r = server.post("/sdapi/v1/txt2img", json={**BASE, **fields})
    assert r.status_code == 200, r.text
    return np.asarray(decode(r.json()["images"][0]).convert("RGB")), parse_infotext(json.loads(r.json()["info"])["infotexts"][0])


EULER = {"sampler_name": "Euler", "steps": 4}
KARRAS = {"sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 3}
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.6,
         "hr_upscaler": "Latent", "steps": 2}

# label, values, request fields, (infotext key, value) of the second cell, second picture differs
CASES = [
    ("Negative Guidance minimum sigma", "0, 15", EULER, ("NGMS", "15.0"), True),
    ("Sigma Churn", "0, 1", EULER, ("Sigma churn", "1.0"), True),
    ("Sigma min", "0, 0.5", EULER, ("Sigma tmin", "0.5"), False),
    ("Sigma max", "0, 5", EULER, ("Sigma tmax", "5.0"), False),
    ("Sigma noise", "1, 0.5", {**EULER, "s_churn": 1.0}, ("Sigma noise", "0.5"), True),
    ("Schedule min sigma", "0, 0.5", KARRAS, ("Schedule min sigma", "0.5"), True),
    ("Schedule max sigma", "0, 3", KARRAS, ("Schedule max sigma", "3.0"), True),
    ("Schedule rho", "0, 3", KARRAS, ("Schedule rho", "3.0"), True),
    ("Skip Early CFG", "0, 0.5", EULER, ("Skip Early CFG", "0.5"), True),
    ("Beta schedule alpha", "0.6, 0.3", {"scheduler": "Beta", "steps": 3}, ("Beta schedule alpha", "0.3"), True),
    ("Beta schedule beta", "0.6, 0.3", {"scheduler": "Beta", "steps": 3}, ("Beta schedule beta", "0.3"), True),
    ("Eta", "1, 0.5", {"sampler_name": "Euler a", "steps": 3}, ("Eta", "0.5"), True),
    ("Extra noise", "0, 0.5", HIRES, ("Extra noise", "0.5"), True),
    ("Token merging ratio", "0, 0.5", {}, ("Token merging ratio", "0.5"), None),
    ("Token merging ratio high-res", "0, 0.5", HIRES, ("Token merging ratio hr", "0.5"), None),
    ("Always discard next-to-last sigma", "False, True", EULER, ("Discard penultimate sigma", "True"), True),
    ("SGM noise multiplier", "False, True", EULER, ("SGM noise multiplier", "True"), True),
    ("UniPC Order", "1, 2", {"sampler_name": "UniPC", "steps": 4}, None, True),
    ("FP8 mode", "Disable, Enable", {}, None, True),
    ("Refiner switch at", "0.3, 0.6", {"refiner_checkpoint": "tiny-sd1.ckpt", "steps": 4},
     ("Refiner switch at", "0.6"), None),
]


@pytest.mark.parametrize("label,values,fields,key,differs", CASES, ids=[c[0] for c in CASES])
def test_each_axis_changes_its_cells(server, label, values, fields, key, differs):
    pictures, infos = cells(server, label, values, **fields)
    assert len(pictures) == 2
    if key is not None:
        name, value = key
        assert str(infos[1].get(name)) == value, infos[1]
        assert infos[0].get(name) != infos[1].get(name)
    if differs:
        assert not np.array_equal(pictures[0], pictures[1]), f"{label}: the value changed nothing"


def test_vae_refiner_and_face_restore_axes(server, tiny_checkpoints):
    folder = server.data_dir / "models" / "VAE"
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().float() for k, v in vae_to_ldm(tiny_checkpoints.components("sd1").vae).items()}
    state["decoder.conv_out.bias"] += 0.3
    vae = folder / "xyz-bright.safetensors"
    save_single_file(vae, state)
    try:
        assert server.post("/sdapi/v1/refresh-vae").status_code == 200
        pictures, infos = cells(server, "VAE", "Automatic, xyz-bright.safetensors")
        assert "VAE" not in infos[0] and infos[1]["VAE"] == "xyz-bright.safetensors"
        assert pictures[1].mean() > pictures[0].mean() + 10  # the brighter decoder
        # the job's VAE only: the next job has the checkpoint's own again
        assert np.array_equal(plain(server)[0], pictures[0])
    finally:
        vae.unlink()
        server.post("/sdapi/v1/refresh-vae")

    pictures, infos = cells(server, "Refiner checkpoint", "None, tiny-sd1.ckpt", refiner_switch_at=0.5, steps=4)
    assert "Refiner" not in infos[0] and infos[1]["Refiner"].startswith("tiny-sd1 [")
    assert infos[1]["Refiner switch at"] == "0.5"

    # Face restore: the model named goes to the restorer (no model file here: the error names it)
    args = [axis("Face restore"), "False, GFPGAN", [], 0, "", [], 0, "", [], False, True, False, False, False,
            False, False, 0, False]
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "X/Y/Z plot", "script_args": args})
    message = assert_error(r, "script_args", status=(422,))
    assert "cell 2,1,1" in message and "GFPGANv1.4.pth" in message and "models/GFPGAN" in message


def test_skip_early_cfg_and_ngms_from_the_options_and_the_fields(server):
    """Skipping the uncond pass on every step is CFG scale 1, bit for bit; NGMS skips every other step
    below its sigma unless "all steps" is on."""
    cfg1, _ = plain(server, **EULER, cfg_scale=1.0)
    guided, _ = plain(server, **EULER)
    assert not np.array_equal(cfg1, guided)
    every, info = plain(server, **EULER, override_settings={"skip_early_cond": 1.0})
    assert np.array_equal(every, cfg1) and info["Skip Early CFG"] == "1.0"
    ngms_all, info = plain(server, **EULER, s_min_uncond=15, override_settings={"s_min_uncond_all": True})
    assert np.array_equal(ngms_all, cfg1) and info["NGMS"] == "15.0" and info["NGMS all steps"] == "True"
    alternate, info = plain(server, **EULER, s_min_uncond=15)  # the field, as A1111's API has it
    assert not np.array_equal(alternate, cfg1) and not np.array_equal(alternate, guided)
    assert "NGMS all steps" not in info
    # the same through the option
    assert np.array_equal(plain(server, **EULER, override_settings={"s_min_uncond": 15})[0], alternate)


def test_request_fields_eta_and_churn_win_over_the_options(server):
    """A1111's API fields eta / s_churn reach the sampler (they were accepted and dropped before)."""
    base, _ = plain(server, sampler_name="Euler a", steps=3)
    low_eta, info = plain(server, sampler_name="Euler a", steps=3, eta=0.3)
    assert not np.array_equal(base, low_eta) and info["Eta"] == "0.3"
    by_option, _ = plain(server, sampler_name="Euler a", steps=3, override_settings={"eta_ancestral": 0.3})
    assert np.array_equal(by_option, low_eta)
    churned, info = plain(server, **EULER, s_churn=1.0)
    assert info["Sigma churn"] == "1.0" and not np.array_equal(churned, plain(server, **EULER)[0])


def test_the_uncond_skip_is_cfg_scale_one_in_the_core_loop():
    """The core loop alone, tiny linear model: every step skipped equals CFG off."""
    from modules.core import denoise

    class Scheduler:  # Euler on sigmas, timesteps = indices
        order = 1
        init_noise_sigma = 1.0

        def set_timesteps(self, steps, device=None):
            self.timesteps = torch.arange(steps, 0, -1, dtype=torch.float32)
            self.alphas_cumprod = torch.linspace(0.99, 0.01, 1000)

        def scale_model_input(self, x, t):
            return x

        def step(self, pred, t, x, **_):
            return type("Out", (), {"prev_sample": x - 0.1 * pred, "pred_original_sample": None})()

    def model(x, t, cond):
        return x * cond["context"].mean() + cond["context"].mean()

    cond = {"context": torch.full((1, 2, 4), 0.5)}
    uncond = {"context": torch.full((1, 2, 4), -0.5)}
    noise = torch.ones(1, 4, 8, 8)
    run = lambda **kw: denoise.sample(model, Scheduler(), noise, lambda i: (cond, uncond), steps=4, **kw)  # noqa: E731
    off = run(cfg_scale=1.0)
    assert torch.equal(run(cfg_scale=7.0, uncond_skipping=denoise.UncondSkipping(early=1.0)), off)
    assert not torch.equal(run(cfg_scale=7.0), off)
    # NGMS below sigma 1000 on every other call (the odd ones): not the same as all or none
    half = run(cfg_scale=7.0, uncond_skipping=denoise.UncondSkipping(min_sigma=1000.0))
    assert not torch.equal(half, off) and not torch.equal(half, run(cfg_scale=7.0))
    assert torch.equal(run(cfg_scale=7.0, uncond_skipping=denoise.UncondSkipping(min_sigma=1000.0, every_step=True)),
                       off)
