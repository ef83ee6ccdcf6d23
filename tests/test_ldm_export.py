"""diffusers -> LDM export, verified against diffusers' own LDM -> diffusers converters.

Round trip: diffusers module -> our LDM dict -> diffusers' converter -> strict load into a fresh
module of the same config -> every tensor identical. Plus real key names, and the fixture files.
"""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from modules.core.ldm_export import save_single_file, to_ldm_state_dict
from tests.fixtures import tiny_models as tm

MB = 1024 * 1024


@pytest.fixture(scope="module")
def components():
    return {family: tm.build_components(family, seed=1) for family in ("sd1", "sd2", "sdxl")}


def assert_same_tensors(expected: dict, actual: dict):
    assert set(expected) == set(actual)
    for key, tensor in expected.items():
        assert actual[key].shape == tensor.shape, key
        assert torch.equal(actual[key], tensor), key


def strict_roundtrip(model, converted: dict):
    """Strict load into a fresh model of the same config; every tensor must come back unchanged."""
    if hasattr(model, "from_config"):
        fresh = type(model).from_config(model.config)
    else:
        fresh = type(model)(model.config)
    fresh.load_state_dict(converted, strict=True)
    assert_same_tensors(model.state_dict(), fresh.state_dict())


def flatten_for(model, converted: dict) -> dict:
    """diffusers' CLIP converters emit `text_model.` keys (and position_ids, which transformers no
    longer persists); transformers >= 5.6 CLIPTextModel has neither."""
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
    if not hasattr(model, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


# ------------------------------------------------------------------------ round trips, per family

@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_unet_roundtrip(components, family):
    unet = components[family].unet
    ldm = to_ldm_state_dict(family, unet=unet, include_extras=False)
    assert all(k.startswith("model.diffusion_model.") for k in ldm)
    strict_roundtrip(unet, convert_ldm_unet_checkpoint(ldm, unet.config))


def test_unet_roundtrip_inpainting():
    unet = UNet2DConditionModel(**tm.unet_config("sd1", inpainting=True))
    ldm = to_ldm_state_dict("sd1", unet=unet)
    assert ldm["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    strict_roundtrip(unet, convert_ldm_unet_checkpoint(ldm, unet.config))


@pytest.mark.parametrize(
    "config",
    [
        # real SD1 pattern: 4 levels, attention on all but the last, 2 layers per block
        dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, attention_head_dim=8,
             down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        # real SDXL pattern: no attention on level 0, depth varying per level, 3 layers per block
        dict(block_out_channels=(32, 64, 64), layers_per_block=3, attention_head_dim=(1, 1, 1),
             transformer_layers_per_block=(1, 2, 3), use_linear_projection=True,
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
        # attention everywhere, a single level (no down/upsamplers at all)
        dict(block_out_channels=(32,), layers_per_block=1, attention_head_dim=2,
             down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",)),
    ],
    ids=["sd1-like-4-levels", "sdxl-like-depths", "one-level"],
)
def test_unet_roundtrip_other_configs(config):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, cross_attention_dim=32, norm_num_groups=32, **config)
    ldm = to_ldm_state_dict("sd1", unet=unet)
    strict_roundtrip(unet, convert_ldm_unet_checkpoint(ldm, unet.config))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_vae_roundtrip(components, family):
    vae = components[family].vae
    ldm = to_ldm_state_dict(family, vae=vae, include_extras=False)
    assert all(k.startswith("first_stage_model.") for k in ldm)
    strict_roundtrip(vae, convert_ldm_vae_checkpoint(ldm, vae.config))


def test_vae_roundtrip_other_config():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    ldm = to_ldm_state_dict("sd1", vae=vae)
    assert ldm["first_stage_model.decoder.up.2.block.2.conv1.weight"].shape[0] == 64
    strict_roundtrip(vae, convert_ldm_vae_checkpoint(ldm, vae.config))


def test_sd1_clip_roundtrip(components):
    te = components["sd1"].text_encoder
    ldm = to_ldm_state_dict("sd1", text_encoder=te)
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in ldm if k.startswith("cond_"))
    strict_roundtrip(te, flatten_for(te, convert_ldm_clip_checkpoint(ldm)))


def test_sd2_openclip_roundtrip(components):
    c = components["sd2"]
    full = c.ldm_text_encoder  # OpenCLIP as the file holds it: one more layer, with projection
    ldm = to_ldm_state_dict("sd2", text_encoder=full)
    prefix = "cond_stage_model.model."
    converted = convert_open_clip_checkpoint(full, ldm, prefix=prefix)
    # diffusers drops SD2's text_projection (SD_2_TEXT_ENCODER_KEYS_TO_IGNORE): check it ourselves
    assert "text_projection.weight" not in converted
    assert torch.equal(ldm[prefix + "text_projection"], full.text_projection.weight.T)
    without_projection = CLIPTextModel(full.config)
    without_projection.load_state_dict(flatten_for(without_projection, converted), strict=True)
    expected = {k.removeprefix("text_model."): v for k, v in full.state_dict().items() if k != "text_projection.weight"}
    assert_same_tensors(expected, without_projection.state_dict())
    # diffusers' SD2 text encoder is the same minus the last layer
    last = full.config.num_hidden_layers - 1
    pipeline_part = {k: v for k, v in flatten_for(c.text_encoder, converted).items() if f"layers.{last}." not in k}
    strict_roundtrip(c.text_encoder, pipeline_part)


def test_sdxl_text_encoders_roundtrip(components):
    c = components["sdxl"]
    ldm = to_ldm_state_dict("sdxl", text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2)
    clip_l = {k: v for k, v in ldm.items() if k.startswith("conditioner.embedders.0.")}
    strict_roundtrip(c.text_encoder, flatten_for(c.text_encoder, convert_ldm_clip_checkpoint(clip_l)))
    converted = convert_open_clip_checkpoint(c.text_encoder_2, ldm, prefix="conditioner.embedders.1.model.")
    strict_roundtrip(c.text_encoder_2, flatten_for(c.text_encoder_2, converted))


def test_whole_checkpoint_roundtrip_has_no_stray_keys(components):
    c = components["sdxl"]
    ldm = c.ldm_state_dict()
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.",
                "conditioner.embedders.1.model.")
    assert all(k.startswith(prefixes) for k in ldm)
    assert "alphas_cumprod" not in ldm  # SDXL (sgm) files carry no DDPM buffers
    n_params = sum(sum(p.numel() for p in m.parameters()) for m in (c.unet, c.vae, c.text_encoder, c.text_encoder_2))
    # every parameter exported once; extras: position_ids and logit_scale
    assert sum(t.numel() for t in ldm.values()) == n_params + 77 + 1


def test_openclip_projection_narrower_than_width():
    """OpenCLIP stores text_projection as [width, proj]: diffusers splits the fused qkv by its
    shape[0], i.e. the width, so a projection narrower than the width must still round-trip."""
    config = tm.open_clip_config(vocab_size=100, num_hidden_layers=1, projection_dim=32)
    te = CLIPTextModelWithProjection(config)
    ldm = to_ldm_state_dict("sdxl", text_encoder_2=te)
    assert ldm["conditioner.embedders.1.model.text_projection"].shape == (64, 32)
    converted = convert_open_clip_checkpoint(te, ldm, prefix="conditioner.embedders.1.model.")
    strict_roundtrip(te, flatten_for(te, converted))


def test_sd1_extras_match_real_files():
    from diffusers import DDPMScheduler

    ldm = to_ldm_state_dict("sd1", text_encoder=CLIPTextModel(tm.clip_l_config(vocab_size=100, num_hidden_layers=1)))
    assert torch.equal(ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"], torch.arange(77)[None])
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    torch.testing.assert_close(ldm["alphas_cumprod"], scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert abs(ldm["alphas_cumprod"][-1].item() - 0.0047) < 1e-4  # SD1.5's known final alpha_bar
    bare = to_ldm_state_dict("sd1", text_encoder=CLIPTextModel(tm.clip_l_config(vocab_size=100, num_hidden_layers=1)),
                             include_extras=False)
    assert "alphas_cumprod" not in bare and not any(k.endswith("position_ids") for k in bare)


# -------------------------------------------------------------------------------- loud failures

def test_unknown_keys_fail_loudly():
    with pytest.raises(ValueError, match="no LDM name"):
        to_ldm_state_dict("sd1", unet={"mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="family"):
        to_ldm_state_dict("sd3")
    with pytest.raises(ValueError, match="text_encoder_2"):
        to_ldm_state_dict("sd1", text_encoder_2={})


def test_save_single_file_casts_floats_only(tmp_path):
    sd = {"a": torch.ones(2, 3), "b": torch.arange(3)[None], "c": torch.ones(4)[:2]}
    path = save_single_file(tmp_path / "x.safetensors", sd, {"k": "v"}, dtype=torch.float16)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}
        assert f.get_tensor("a").dtype == torch.float16
        assert f.get_tensor("b").dtype == torch.int64
    ckpt = save_single_file(tmp_path / "x.ckpt", sd)
    assert torch.equal(torch.load(ckpt, weights_only=True)["state_dict"]["c"], torch.ones(2))
    with pytest.raises(ValueError, match="extension"):
        save_single_file(tmp_path / "x.bin", sd)


# ------------------------------------------------------------------------- the fixture files

REAL_KEYS = {
    # names every real file of the family carries (facts about SD1.5 / SD2.1 / SDXL base files)
    "sd1": [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
        "model.diffusion_model.middle_block.2.in_layers.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "alphas_cumprod",
    ],
    "sd2": [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "cond_stage_model.model.token_embedding.weight",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
        "cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight",
        "cond_stage_model.model.transformer.resblocks.0.ln_1.weight",
        "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight",
        "cond_stage_model.model.transformer.resblocks.0.mlp.c_proj.weight",
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.text_projection",
        "cond_stage_model.model.logit_scale",
        "alphas_cumprod",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.weight",
        "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",  # real (2 per level): 4.1
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.ln_final.weight",
    ],
}


def read_safetensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_fixture_files_exist_small_and_open(tiny_checkpoints):
    names = {p.name for p in tiny_checkpoints.checkpoints_dir.iterdir()}
    assert names == {"tiny-sd1.safetensors", "tiny-sd1.ckpt", "tiny-sd2-v.safetensors", "tiny-sd2-v.yaml",
                     "tiny-sdxl.safetensors", "tiny-sd1-inpainting.safetensors", "tiny-sdxl-refiner.safetensors"}
    # two 49408 x 64 token embeddings alone are 12.6 MB in fp16: SDXL cannot be under 15 MB
    limits = {"sd1": 15, "sd1_ckpt": 15, "sd1_inpainting": 15, "sd2_v": 16, "sdxl": 28, "sdxl_refiner": 20}
    for name, path in tiny_checkpoints.paths.items():
        assert path.stat().st_size < limits[name] * MB, name
    sd, _ = read_safetensors(tiny_checkpoints.sd1)
    ckpt = torch.load(tiny_checkpoints.sd1_ckpt, weights_only=True)
    assert set(ckpt) == {"state_dict"}
    assert_same_tensors(sd, ckpt["state_dict"])


@pytest.mark.parametrize("name,family", [("sd1", "sd1"), ("sd2_v", "sd2"), ("sdxl", "sdxl")])
def test_fixture_real_key_names(tiny_checkpoints, name, family):
    sd, _ = read_safetensors(tiny_checkpoints[name])
    missing = [k for k in REAL_KEYS[family] if k not in sd]
    assert not missing
    floats = {t.dtype for t in sd.values() if t.is_floating_point()}
    assert floats == {torch.float16}
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    if family == "sd1":
        assert sd["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
        assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4  # conv proj_in
        assert "model.diffusion_model.input_blocks.2.0.op.weight" in sd
    if family == "sd2":
        assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # linear proj_in
        width = sd["cond_stage_model.model.ln_final.weight"].shape[0]
        assert sd["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
        # the file holds the layer diffusers drops (real: 24 resblocks, 23 used)
        assert f"cond_stage_model.model.transformer.resblocks.{tm.TEXT_LAYERS}.ln_1.weight" in sd
    if family == "sdxl":
        assert not any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in sd)  # no attention
        assert "model.diffusion_model.input_blocks.5.1.transformer_blocks.1.attn1.to_q.weight" in sd
        assert sd["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 6 * 256 + tm.TEXT_HIDDEN


def test_fixture_v_prediction_markers(tiny_checkpoints):
    _, metadata = read_safetensors(tiny_checkpoints.sd2_v)
    assert metadata["modelspec.prediction_type"] == "v"
    yaml_text = tiny_checkpoints.sd2_v.with_suffix(".yaml").read_text()
    assert yaml_text == 'model:\n  params:\n    parameterization: "v"\n'
    _, sd1_metadata = read_safetensors(tiny_checkpoints.sd1)
    assert not sd1_metadata or "modelspec.prediction_type" not in sd1_metadata


def test_fixture_file_equals_rebuilt_components(tiny_checkpoints):
    """What other tests rely on: components(name) is exactly what the file holds."""
    sd, _ = read_safetensors(tiny_checkpoints.sd1_inpainting)
    c = tiny_checkpoints.components("sd1_inpainting")
    assert c.unet.config.in_channels == 9
    sd = {k: v.float() for k, v in sd.items()}
    strict_roundtrip(c.unet, convert_ldm_unet_checkpoint(sd, c.unet.config))
    strict_roundtrip(c.vae, convert_ldm_vae_checkpoint(sd, c.vae.config))
    strict_roundtrip(c.text_encoder, flatten_for(c.text_encoder, convert_ldm_clip_checkpoint(sd)))


def test_tiny_unet_output_not_degenerate(components):
    unet = components["sd1"].unet
    assert unet.conv_out.weight.abs().sum() > 0
    assert unet.down_blocks[0].attentions[0].proj_out.weight.abs().sum() > 0
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 77, tm.TEXT_HIDDEN)
    with torch.no_grad():
        a = unet(x, 10, encoder_hidden_states=context).sample
        b = unet(x, 900, encoder_hidden_states=context).sample
        c = unet(x, 10, encoder_hidden_states=torch.randn(1, 77, tm.TEXT_HIDDEN)).sample
    assert a.std() > 0.05
    assert (a - b).abs().mean() > 1e-3 and (a - c).abs().mean() > 1e-3
