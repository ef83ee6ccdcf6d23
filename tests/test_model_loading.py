"""The real loader on tiny checkpoints in the real single-file layouts.

Each family is detected from shapes alone, and the loaded modules compute exactly
what the diffusers/transformers modules the file was written from compute (which
proves key mapping, head counts and layer choices, not just that loading "worked").
"""

import pickle
import weakref

import pytest
import torch

from modules.core.checkpoint_file import CheckpointError, CheckpointFile
from modules.core.devices import choose_policy
from modules.core.model_detection import UnsupportedCheckpoint, detect
from modules.core.model_loader import load_checkpoint

POLICY, _ = choose_policy()

EXPECTED = {
    "sd1": ("sd1", False, "epsilon", (512, 512)),
    "sd1_ckpt": ("sd1", False, "epsilon", (512, 512)),
    "sd2_v": ("sd2", False, "v_prediction", (768, 768)),
    "sdxl": ("sdxl", False, "epsilon", (1024, 1024)),
    "sd1_inpainting": ("sd1", True, "epsilon", (512, 512)),
}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    return {name: load_checkpoint(tiny_checkpoints[name], POLICY) for name in EXPECTED}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_detects_family_from_shapes(tiny_checkpoints, name):
    ckpt = CheckpointFile(tiny_checkpoints[name])
    spec = detect(ckpt.shapes, ckpt.metadata, ckpt.yaml_parameterization())
    assert (spec.family, spec.inpainting, spec.prediction_type, spec.native_size) == EXPECTED[name]
    reference = tiny_checkpoints.components(name.removesuffix("_ckpt") if name != "sd1_ckpt" else "sd1").unet.config
    for key in ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
                "use_linear_projection", "down_block_types", "up_block_types"):
        assert tuple(spec.unet_config[key]) == tuple(reference[key]) if isinstance(reference[key], (list, tuple)) \
            else spec.unet_config[key] == reference[key], key


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_loaded_modules_compute_like_the_originals(tiny_checkpoints, loaded, name):
    model = loaded[name]
    ref = tiny_checkpoints.components("sd1" if name == "sd1_ckpt" else name)
    torch.manual_seed(0)
    cfg = model.unet.config
    x = torch.randn(2, cfg.in_channels, 8, 8)
    t = torch.tensor([999, 10])
    ctx = torch.randn(2, 7, cfg.cross_attention_dim)
    added = None
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        _same(model.unet(x, t, ctx, added_cond_kwargs=added).sample, ref.unet(x, t, ctx, added_cond_kwargs=added).sample)
        img = torch.rand(1, 3, 32, 32) * 2 - 1
        _same(model.vae.decode(model.vae.encode(img).latent_dist.mean).sample,
              ref.vae.decode(ref.vae.encode(img).latent_dist.mean).sample)
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
        encoders = [ref.text_encoder] + ([ref.text_encoder_2] if ref.text_encoder_2 is not None else [])
        for ours, theirs in zip(model.text_encoders, encoders, strict=True):
            a, b = ours(input_ids=ids, output_hidden_states=True), theirs(input_ids=ids, output_hidden_states=True)
            _same(a.last_hidden_state, b.last_hidden_state)
            if hasattr(b, "text_embeds"):
                _same(a.text_embeds, b.text_embeds)


def test_ckpt_equals_safetensors(loaded):
    a, b = loaded["sd1"].unet.state_dict(), loaded["sd1_ckpt"].unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_stay_in_file_dtype_until_cast_once(tiny_checkpoints):
    """fp16 file -> fp32 policy: every parameter arrives in the policy's dtype."""
    model = load_checkpoint(tiny_checkpoints.sd1, POLICY)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    assert not any(b.is_meta for m in (model.unet, model.vae, *model.text_encoders) for b in m.buffers())


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on full unpickling",))


def test_ckpt_needing_full_unpickling_is_refused(tmp_path, tiny_checkpoints):
    sd = torch.load(tiny_checkpoints.sd1_ckpt, weights_only=True)["state_dict"]
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": sd, "callback": _Payload()}, path)
    with pytest.raises(CheckpointError, match="full unpickling"):
        load_checkpoint(path, POLICY)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"])
def test_corrupt_safetensors_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_checkpoint(path, POLICY)


def test_truncated_safetensors_is_refused(tmp_path, tiny_checkpoints):
    data = tiny_checkpoints.sd1.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path, POLICY)


def test_corrupt_ckpt_is_refused(tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(pickle.dumps("x")[:3] + b"\x00" * 50)
    with pytest.raises(CheckpointError, match="broken.ckpt"):
        load_checkpoint(path, POLICY)


def test_training_checkpoints_are_read_from_their_state_dict_or_model_entry(tmp_path):
    """{"state_dict": ...} (LDM) and {"model": ..., "epoch": ...} (annotators' training saves) hold the weights
    one level down; a top level that holds tensors itself is read as it is."""
    weights = {"a.weight": torch.ones(2, 2), "b.bias": torch.zeros(3)}
    for name, saved in (("ldm.ckpt", {"state_dict": weights, "global_step": 1}),
                        ("annotator.pt", {"model": weights, "epoch": 7}),
                        ("res101.pth", {"depth_model": weights}),  # LeReS
                        ("flat.pth", {**weights, "model": {"x": torch.ones(1)}})):
        torch.save(saved, tmp_path / name)
        file = CheckpointFile(tmp_path / name)
        try:
            assert set(file.shapes) == set(weights), name  # (flat.pth's nested "model" is not a tensor)
            assert torch.equal(file.get("a.weight"), torch.ones(2, 2))
        finally:
            file.close()


def test_file_that_is_not_a_full_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(UnsupportedCheckpoint, match="not a full Stable Diffusion checkpoint"):
        load_checkpoint(path, POLICY)


def test_switching_releases_the_previous_model(tiny_checkpoints):
    """Five switches leave no previous model alive (memory returns to one model's worth)."""
    from modules.services.checkpoints import CheckpointInfo
    from modules.services.model_cache import ModelCache

    cache = ModelCache(POLICY)
    names = ["sd1", "sdxl", "sd2_v", "sd1_inpainting", "sd1", "sdxl"]
    refs = []
    for name in names:
        path = tiny_checkpoints[name]
        model = cache.load(CheckpointInfo(path, path.name, path.stem))
        refs.append(weakref.ref(model.unet))
        del model
    assert refs[-1]() is not None
    assert [r() is None for r in refs[:-1]] == [True] * (len(names) - 1)


def test_bad_checkpoint_keeps_current_model(tmp_path, tiny_checkpoints):
    from modules.services.checkpoints import CheckpointInfo
    from modules.services.model_cache import ModelCache

    cache = ModelCache(POLICY)
    good = cache.load(CheckpointInfo(tiny_checkpoints.sd1, "sd1", "sd1"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        cache.load(CheckpointInfo(bad, bad.name, bad.stem))
    assert cache.model is good and cache.info.name == "sd1"


def test_safetensors_are_read_without_mapping_the_file(tiny_checkpoints):
    """A memory-mapped checkpoint's touched pages count in the process's RSS and doubled the
    peak of a load (benchmark: 3.2x the file in fp32); the reader uses positioned reads."""
    ckpt = CheckpointFile(tiny_checkpoints.sd1)
    tensors = ckpt.read_prefix("model.diffusion_model.", torch.float32)
    with open("/proc/self/maps") as maps:
        mapped = maps.read()
    assert str(tiny_checkpoints.sd1) not in mapped
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    ckpt.close()
