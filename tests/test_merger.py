"""The Checkpoint Merger: the arithmetic tensor for tensor (modules.core.merge), the service's names,
metadata, VAE bake, discard and float16 (modules.services.merger), outputs that the real loader loads
and generates with, refusals with messages; and the tab in a real browser."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import requests
import torch

from modules.core.checkpoint_file import CheckpointFile
from modules.core.merge import MergeError, MergeSpec, merge
from tests.fixtures.tiny_models import write_checkpoint

M = 0.3


@pytest.fixture(scope="module")
def files(tiny_checkpoints, tmp_path_factory):
    """A models folder of its own: A (the fixture's SD1), B and C (SD1 of other seeds), an SD1 in
    float32, the fixture's SDXL and inpainting SD1, and a VAE file (another seed's SD1 VAE)."""
    models = tmp_path_factory.mktemp("merge") / "models"
    ckpts = models / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    out = {"models": models, "ckpts": ckpts}
    for name in ("sd1", "sdxl", "sd1_inpainting"):
        out[name] = shutil.copy(tiny_checkpoints[name], ckpts)
    out["b"] = write_checkpoint(ckpts / "tiny-b.safetensors", "sd1", seed=1)
    out["c"] = write_checkpoint(ckpts / "tiny-c.ckpt", "sd1", seed=2)
    out["fp32"] = write_checkpoint(ckpts / "tiny-fp32.safetensors", "sd1", seed=3, dtype=torch.float32)
    donor = CheckpointFile(write_checkpoint(models / "donor.safetensors", "sd1", seed=4))
    vae = {k.removeprefix("first_stage_model."): donor.get(k) for k in donor.keys_with_prefix("first_stage_model.")}
    donor.close()
    (models / "VAE").mkdir()
    from safetensors.torch import save_file
    save_file(vae, str(models / "VAE" / "donor.vae.safetensors"))
    out["vae"] = models / "VAE" / "donor.vae.safetensors"
    return out


@pytest.fixture(scope="module")
def engine(files, tmp_path_factory):
    import webui
    from modules import cmd_args

    opts = cmd_args.parse_args(["--data-dir", str(tmp_path_factory.mktemp("merge-data")),
                                "--ckpt-dir", str(files["ckpts"]), "--vae-dir", str(files["models"] / "VAE")],
                               extra_preloads=[])
    return webui.build_engine(opts)


def _read(path):
    f = CheckpointFile(path)
    try:
        return {k: f.get(k) for k in f.shapes}, f.metadata
    finally:
        f.close()


def _merged_keys(sd):
    return [k for k in sd if "model" in k and sd[k].is_floating_point()]


def test_weighted_sum_is_one_minus_m_a_plus_m_b_tensor_for_tensor(files, tmp_path):
    result = merge(MergeSpec(files["sd1"], tmp_path / "ws.safetensors", secondary=files["b"], multiplier=M))
    (a, _), (b, _), (out, _) = _read(files["sd1"]), _read(files["b"]), _read(result.path)
    assert out.keys() == a.keys() and result.family == "sd1"
    for key in _merged_keys(a):
        expected = ((1 - M) * a[key].float() + M * b[key].float()).to(a[key].dtype)
        assert out[key].dtype == a[key].dtype and torch.equal(out[key], expected), key
    # A1111's exceptions: position ids are A's
    pos = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    if pos in a:
        assert torch.equal(out[pos], a[pos])


def test_add_difference_is_a_plus_m_times_b_minus_c(files, tmp_path):
    result = merge(MergeSpec(files["sd1"], tmp_path / "ad.ckpt", method="Add difference",
                             secondary=files["b"], tertiary=files["c"], multiplier=M))
    (a, _), (b, _), (c, _), (out, _) = (_read(p) for p in (files["sd1"], files["b"], files["c"], result.path))
    assert out.keys() == a.keys()
    for key in _merged_keys(a):
        expected = (a[key].float() + M * (b[key].float() - c[key].float())).to(a[key].dtype)
        assert torch.equal(out[key], expected), key
    raw = torch.load(result.path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict"}  # the LDM single-file layout A1111 and Easel read


def test_no_interpolation_bakes_vae_discards_halves_and_writes_a1111_metadata(engine, files):
    from modules.services.merger import MergeRequest

    outcome = engine_merge(engine, MergeRequest(
        primary_model_name="tiny-fp32.safetensors", interp_method="No interpolation", save_as_half=True,
        custom_name="converted", bake_in_vae="donor.vae.safetensors", discard_weights=r"^model_ema\.|\.time_embed\.0\.bias$"))
    assert outcome.path == files["ckpts"] / "converted.safetensors"
    (out, meta), (a, _), (vae, _) = _read(outcome.path), _read(files["fp32"]), _read(files["vae"])
    assert "model.diffusion_model.time_embed.0.bias" not in out
    assert set(out) == set(a) - {"model.diffusion_model.time_embed.0.bias"}
    assert all(t.dtype == torch.float16 for t in out.values() if t.is_floating_point())
    for key, tensor in vae.items():
        assert torch.equal(out["first_stage_model." + key], tensor.half()), key
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(out[key], a[key].half())
    # A1111 1.10's metadata keys and values
    assert meta["format"] == "pt"
    recipe = json.loads(meta["sd_merge_recipe"])
    sha_a = engine.checkpoints.hashes.sha256(files["fp32"])
    assert recipe["type"] == "webui" and recipe["primary_model_hash"] == sha_a
    assert recipe["secondary_model_hash"] is None and recipe["interp_method"] == "No interpolation"
    assert recipe["save_as_half"] is True and recipe["bake_in_vae"] == "donor.vae.safetensors"
    models = json.loads(meta["sd_merge_models"])
    assert models[sha_a]["name"] == "tiny-fp32.safetensors" and len(models[sha_a]["legacy_hash"]) == 8
    # listed, with its hash
    assert outcome.checkpoint is not None and outcome.checkpoint.title in engine.checkpoints.titles()


def engine_merge(engine, request):
    from modules.services.merger import Merger

    return Merger(engine).merge(request)


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_merged_file_loads_through_the_real_loader_and_generates(engine, files, fmt):
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint
    from modules.core.pipeline import generate
    from modules.core.types import GenerationRequest
    from modules.services.merger import MergeRequest

    outcome = engine_merge(engine, MergeRequest(primary_model_name="tiny-sd1.safetensors",
                                                secondary_model_name="tiny-b.safetensors", multiplier=0.5,
                                                checkpoint_format=fmt))
    assert outcome.path.name == f"0.5(tiny-sd1) + 0.5(tiny-b).{fmt}"  # A1111's generated name
    model = load_checkpoint(outcome.path, choose_policy()[0])
    assert model.spec.family == "sd1"
    result = generate(GenerationRequest(prompt="a cat", steps=2, seed=1, width=64, height=64, save_images=False), model)
    assert result.images[0].size == (64, 64)
    # and through the engine, by its listed title, as a user picks it
    picked = engine.txt2img(GenerationRequest(prompt="a cat", steps=1, seed=1, width=64, height=64, save_images=False,
                                              checkpoint=outcome.checkpoint.title))
    assert picked.images[0].size == (64, 64)


def test_mismatched_families_are_refused_naming_them(files, tmp_path):
    with pytest.raises(MergeError, match=r"different architectures.*tiny-sd1\.safetensors \(SD1.*tiny-sdxl\.safetensors \(SDXL"):
        merge(MergeSpec(files["sd1"], tmp_path / "x.safetensors", secondary=files["sdxl"]))
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


def test_inpainting_a_merges_its_first_channels_and_the_reverse_is_refused(files, tmp_path):
    result = merge(MergeSpec(files["sd1_inpainting"], tmp_path / "ip.safetensors", secondary=files["b"], multiplier=M))
    assert result.inpainting and result.path.name == "ip.inpainting.safetensors"  # A1111's name mark
    (a, _), (b, _), (out, _) = _read(files["sd1_inpainting"]), _read(files["b"]), _read(result.path)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert out[key].shape[1] == 9
    assert torch.equal(out[key][:, :4], ((1 - M) * a[key][:, :4].float() + M * b[key].float()).half())
    assert torch.equal(out[key][:, 4:], a[key][:, 4:])
    with pytest.raises(MergeError, match="A must be the inpainting model"):
        merge(MergeSpec(files["b"], tmp_path / "bad.safetensors", secondary=files["sd1_inpainting"]))


def test_service_messages(engine):
    from modules.services.merger import MergeRequest

    with pytest.raises(MergeError, match="requires a tertiary model"):
        engine_merge(engine, MergeRequest("tiny-sd1.safetensors", "tiny-b.safetensors", interp_method="Add difference"))
    with pytest.raises(MergeError, match="requires a secondary model"):
        engine_merge(engine, MergeRequest("tiny-sd1.safetensors"))
    with pytest.raises(MergeError, match="not a valid regular expression"):
        engine_merge(engine, MergeRequest("tiny-sd1.safetensors", interp_method="No interpolation", discard_weights="(("))
    with pytest.raises(MergeError, match="file name, not a path"):
        engine_merge(engine, MergeRequest("tiny-sd1.safetensors", interp_method="No interpolation", custom_name="../x"))


# ------------------------------------------------------------------------------------ browser

def test_tab_merges_and_the_new_checkpoint_is_listed(server, tiny_checkpoints):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect

    from tests.browser import launch_browser

    out = tiny_checkpoints.checkpoints_dir / "browser-merge.safetensors"
    try:
        with launch_browser() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server.url)
            page.locator("#tab_modelmerger-button, button[role=tab]:has-text('Checkpoint Merger')").first.click()
            for elem_id, name in (("modelmerger_primary_model_name", "tiny-sd1.safetensors"),
                                  ("modelmerger_secondary_model_name", "tiny-sd1.ckpt")):
                field = page.locator(f"#{elem_id} input")
                field.click()
                page.locator(f"#{elem_id} [role=option]").filter(has_text=name).first.click()
                expect(field).to_have_value(re.compile(re.escape(name)))
            page.locator("#modelmerger_custom_name textarea, #modelmerger_custom_name input").first.fill("browser-merge")
            page.locator("#modelmerger_merge").click()
            expect(page.locator("#modelmerger_result")).to_contain_text("Checkpoint saved to", timeout=120_000)
            assert out.is_file()
            # the new file is in the page's checkpoint picker (and the merger's own)
            picker = page.locator("#setting_sd_model_checkpoint input")
            picker.blur()
            picker.click()
            expect(page.locator("#setting_sd_model_checkpoint [role=option]").filter(
                has_text="browser-merge.safetensors")).to_have_count(1)
        titles = [m["title"] for m in requests.get(server.url + "/sdapi/v1/sd-models", timeout=30).json()]
        assert any(t.startswith("browser-merge.safetensors") for t in titles)
    finally:  # the shared server's folder: leave it as other tests expect it
        out.unlink(missing_ok=True)
        requests.post(server.url + "/sdapi/v1/refresh-checkpoints", timeout=30)
