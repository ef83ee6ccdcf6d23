"""The `sd_vae` option selects an external VAE file (A1111's sd_vae): in the core (LDM and diffusers
layouts, exact restore, refusal of a VAE that does not fit), in the services (A1111's resolution
order) and over real HTTP (options, override_settings, infotext, API info)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from modules.core import vae as core_vae
from modules.core.devices import choose_policy
from modules.core.ldm_export import save_single_file, vae_to_ldm
from modules.core.model_loader import load_checkpoint
from modules.services.vaes import VaeRegistry
from tests.api_common import BASE, assert_error, decode
from tests.fixtures.tiny_models import vae_config


def _perturbed_ldm_vae(tiny_checkpoints, scale: float = 1.5) -> dict[str, torch.Tensor]:
    """The tiny SD1 checkpoint's own VAE in LDM layout, with the decoder's output layer changed."""
    vae = tiny_checkpoints.components("sd1").vae
    state = {k: v.detach().clone().float() for k, v in vae_to_ldm(vae).items()}
    state["decoder.conv_out.weight"] *= scale
    state["decoder.conv_out.bias"] += 0.3
    return state


def _wrong_size_vae() -> AutoencoderKL:
    config = {**vae_config("sd1"), "block_out_channels": (32, 64, 64, 64)}
    torch.manual_seed(3)
    return AutoencoderKL(**config)


@pytest.fixture(scope="module")
def vae_files(tiny_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae-dir")
    save_single_file(folder / "bright.safetensors", _perturbed_ldm_vae(tiny_checkpoints))
    # same weights, `first_stage_model.` prefix, in a .pt file (read with weights_only=True)
    prefixed = {f"first_stage_model.{k}": v for k, v in _perturbed_ldm_vae(tiny_checkpoints, 0.5).items()}
    torch.save(prefixed, folder / "dim.pt")
    save_single_file(folder / "wrong-size.safetensors", vae_to_ldm(_wrong_size_vae()))
    save_single_file(folder / "wrong-size-diffusers.safetensors", _wrong_size_vae().state_dict())
    return folder


def _decode(model, latents):
    with torch.no_grad():
        return model.vae.decode(latents.to(model.device, model.vae.dtype)).sample.float().cpu()


# ------------------------------------------------------------------------------------------ core

def test_core_load_and_exact_restore(tiny_checkpoints, vae_files):
    model = load_checkpoint(tiny_checkpoints.sd1, choose_policy()[0])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = _decode(model, latents)
    own = model.vae

    core_vae.load_vae(model, vae_files / "bright.safetensors")
    assert core_vae.current_vae_file(model) == vae_files / "bright.safetensors"
    bright = _decode(model, latents)
    assert (bright - before).abs().mean() > 1e-3

    core_vae.load_vae(model, vae_files / "dim.pt")  # prefixed LDM keys in a pickle file
    dim = _decode(model, latents)
    assert (dim - bright).abs().mean() > 1e-3 and (dim - before).abs().mean() > 1e-3

    # a diffusers-layout file holding the checkpoint's own weights decodes like the checkpoint
    diffusers_file = vae_files.parent / "own-diffusers.safetensors"
    save_single_file(diffusers_file, {k: v.clone() for k, v in tiny_checkpoints.components("sd1").vae.state_dict().items()},
                     dtype=torch.float16)
    core_vae.load_vae(model, diffusers_file)
    assert torch.allclose(_decode(model, latents), before, atol=1e-3)

    core_vae.restore_vae(model)
    assert model.vae is own and core_vae.current_vae_file(model) is None
    assert torch.equal(_decode(model, latents), before)  # bit-identical


@pytest.mark.parametrize("name", ["wrong-size.safetensors", "wrong-size-diffusers.safetensors"])
def test_core_wrong_size_is_refused_and_model_keeps_its_vae(tiny_checkpoints, vae_files, name):
    model = load_checkpoint(tiny_checkpoints.sd1, choose_policy()[0])
    core_vae.load_vae(model, vae_files / "bright.safetensors")
    in_use = model.vae
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        core_vae.load_vae(model, vae_files / name)
    assert model.vae is in_use and core_vae.current_vae_file(model) == vae_files / "bright.safetensors"


# -------------------------------------------------------------------------------------- services

def test_resolution_follows_a1111(tmp_path):
    ckpt_dir, vae_dir = tmp_path / "Stable-diffusion", tmp_path / "VAE"
    ckpt_dir.mkdir(), vae_dir.mkdir()
    checkpoint = ckpt_dir / "model.safetensors"
    checkpoint.write_bytes(b"")
    (ckpt_dir / "model.vae.pt").write_bytes(b"")
    (vae_dir / "other.safetensors").write_bytes(b"")
    reg = VaeRegistry([vae_dir], [ckpt_dir])
    assert reg.choices() == ("Automatic", "None", "model.vae.pt", "other.safetensors")
    assert reg.resolve("Automatic", checkpoint) == ckpt_dir / "model.vae.pt"
    assert reg.resolve("Automatic", ckpt_dir / "unrelated.safetensors") is None
    assert reg.resolve("None", checkpoint) is None
    assert reg.resolve("other.safetensors", checkpoint) == vae_dir / "other.safetensors"
    assert reg.resolve("None", checkpoint, vae_path="/x/forced.pt").as_posix() == "/x/forced.pt"
    with pytest.raises(ValueError, match="missing.pt"):
        reg.resolve("missing.pt", checkpoint)


# ------------------------------------------------------------------------------------------ HTTP

@pytest.fixture(scope="module")
def vae_server(tiny_checkpoints, vae_files, tmp_path_factory):
    from tests.server import run_server

    data = tmp_path_factory.mktemp("vae-server")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1),
                    "--vae-dir", str(vae_files)) as srv:
        yield srv


def _txt2img(server, **extra):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, **extra}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    return np.asarray(decode(body["images"][0])), body


def _option(server, key):
    return server.get("/sdapi/v1/options").json()[key]


def test_http_sd_vae_selects_the_file(vae_server, vae_files):
    assert [v["model_name"] for v in vae_server.get("/sdapi/v1/sd-vae").json()] == [
        "bright.safetensors", "dim.pt", "wrong-size-diffusers.safetensors", "wrong-size.safetensors"]
    assert _option(vae_server, "sd_vae") == "Automatic"
    own, body = _txt2img(vae_server)
    assert "VAE" not in body["info"] and '"sd_vae_name": null' in body["info"]

    assert vae_server.post("/sdapi/v1/options", json={"sd_vae": "bright.safetensors"}).status_code == 200
    assert _option(vae_server, "sd_vae") == "bright.safetensors"
    bright, body = _txt2img(vae_server)
    assert not np.array_equal(bright, own)
    digest = hashlib.sha256((vae_files / "bright.safetensors").read_bytes()).hexdigest()[:10]
    infotext = body["info"]
    assert f"VAE hash: {digest}, VAE: bright.safetensors" in infotext
    info = json.loads(infotext)
    assert info["sd_vae_name"] == "bright.safetensors" and info["sd_vae_hash"] == digest

    assert vae_server.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    again, body = _txt2img(vae_server)
    assert np.array_equal(again, own)  # the checkpoint's own VAE, bit-identical
    assert "VAE: " not in json.loads(body["info"])["infotexts"][0]


def test_http_override_settings_restores(vae_server):
    assert vae_server.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    own, _ = _txt2img(vae_server)
    dim, body = _txt2img(vae_server, override_settings={"sd_vae": "dim.pt"})
    assert not np.array_equal(dim, own) and "VAE: dim.pt" in body["info"]
    assert _option(vae_server, "sd_vae") == "None"
    after, _ = _txt2img(vae_server)
    assert np.array_equal(after, own)


def test_http_wrong_size_vae_is_refused_and_server_keeps_generating(vae_server):
    assert vae_server.post("/sdapi/v1/options", json={"sd_vae": "bright.safetensors"}).status_code == 200
    bright, _ = _txt2img(vae_server)
    r = vae_server.post("/sdapi/v1/options", json={"sd_vae": "wrong-size.safetensors"})
    assert "wrong-size.safetensors" in assert_error(r, "sd_vae")
    assert _option(vae_server, "sd_vae") == "bright.safetensors"
    r = vae_server.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"sd_vae": "wrong-size-diffusers.safetensors"}})
    assert r.status_code in (400, 422), r.text
    assert "wrong-size-diffusers.safetensors" in r.text
    r = vae_server.post("/sdapi/v1/options", json={"sd_vae": "no-such-file.pt"})
    assert "must be one of Automatic, None, bright.safetensors" in assert_error(r, "sd_vae")
    still, _ = _txt2img(vae_server)
    assert np.array_equal(still, bright)
    assert vae_server.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200


# ------------------------------------------------------------------------------------------ Settings tab

def test_settings_tab_loads_the_vae_on_apply_and_refuses_one_that_does_not_fit(tiny_checkpoints, vae_files, tmp_path):
    """Apply puts the VAE into the model at once: a file that does not fit is the Settings tab's
    message (nothing stored), not an error at the next job."""
    import webui
    from modules import cmd_args
    from modules.core.types import GenerationRequest
    from modules.ui.settings import SettingsTab

    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--ckpt", str(tiny_checkpoints.sd1), "--vae-dir", str(vae_files)], extra_preloads=[])
    engine = webui.build_engine(opts)
    request = GenerationRequest(prompt="a cube", seed=1, steps=1, width=64, height=64, save_images=False)
    own = np.asarray(engine.txt2img(request).images[0])
    tab = SettingsTab(engine.options, appliers={"sd_vae": engine.select_vae})

    def apply(**changed):
        return tab.apply(*[changed.get(k, engine.options.get(k)) for k in tab.keys])[0]

    message = apply(sd_vae="wrong-size.safetensors", jpeg_quality=55)
    assert "class='error'" in message and "wrong-size.safetensors" in message
    assert engine.options.get("sd_vae") == "Automatic" and engine.options.get("jpeg_quality") != 55
    assert np.array_equal(np.asarray(engine.txt2img(request).images[0]), own)  # the next job is fine

    message = apply(sd_vae="bright.safetensors", jpeg_quality=55)
    assert "2 settings changed" in message and "sd_vae" in message
    assert engine.options.get("sd_vae") == "bright.safetensors" and engine.options.get("jpeg_quality") == 55
    result = engine.txt2img(request)
    assert "VAE: bright.safetensors" in result.infotexts[0]
    assert not np.array_equal(np.asarray(result.images[0]), own)
