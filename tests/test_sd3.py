"""SD3 / SD3.5 as users have it: Stability's single file (with or without the text encoders), detected
from the weights, read the way diffusers' own converter reads it, and generating what diffusers'
StableDiffusion3Pipeline generates on the same tiny weights, noise and steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import rng, sd3_layout
from modules.core.checkpoint_file import CheckpointFile
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.devices import choose_policy
from modules.core.ldm_export import save_single_file
from modules.core.model_detection import detect
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest, RequestError
from tests.fixtures.tiny_models import build_sd3_components, write_sd3_checkpoint

POLICY, _ = choose_policy()
REQUEST = dict(prompt="a red cube on a table", negative_prompt="blurry", seed=33, steps=4, cfg_scale=4.5, width=64,
               height=64, sampler_name="Euler", scheduler="Automatic", save_images=False)


@pytest.fixture(scope="module")
def sd3_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3")
    components = build_sd3_components(dtype=torch.float16)
    return {"components": components,
            "full": write_sd3_checkpoint(folder / "Stable-diffusion" / "tiny-sd35.safetensors", components),
            "bare": write_sd3_checkpoint(folder / "Stable-diffusion" / "tiny-sd35-bare.safetensors", components,
                                         with_text_encoders=False),
            "folder": folder}


@pytest.fixture(scope="module")
def sd3(sd3_files):
    return load_checkpoint(sd3_files["full"], POLICY)


def test_layout_agrees_with_diffusers_converter(sd3_files):
    """Our writer's layout, read back by diffusers' own SD3 converter, gives the same weights: the
    tables of sd3_layout are the layout diffusers reads."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    transformer = sd3_files["components"].transformer
    config = dict(transformer.config)
    ours = sd3_layout.to_sd3(transformer.state_dict(), config, "model.diffusion_model.")
    found = sd3_layout.config_from_shapes({k: tuple(v.shape) for k, v in ours.items()}, "model.diffusion_model.")
    for key in ("patch_size", "in_channels", "num_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
                "pos_embed_max_size", "qk_norm"):
        assert found[key] == config[key], key
    assert tuple(found["dual_attention_layers"]) == tuple(config["dual_attention_layers"])
    theirs = convert_sd3_transformer_checkpoint_to_diffusers(dict(ours))
    mine = sd3_layout.to_diffusers(ours, found, "model.diffusion_model.")
    assert theirs.keys() == mine.keys() == transformer.state_dict().keys()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)


def test_detects_sd3(sd3_files):
    ckpt = CheckpointFile(sd3_files["full"])
    spec = detect(ckpt.shapes, ckpt.metadata)
    assert (spec.family, spec.label, spec.prediction_type, spec.native_size, spec.latent_channels) == \
        ("sd3", "SD3", "flow", (1024, 1024), 16)
    assert [te.companion for te in spec.text_encoders] == [None, None, None]


def _reference(components, cond, uncond, noise) -> np.ndarray:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(transformer=components.transformer.float(),
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=components.vae.float(),
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=cond["context"], pooled_prompt_embeds=cond["pooled"],
               negative_prompt_embeds=uncond["context"], negative_pooled_prompt_embeds=uncond["pooled"],
               latents=noise[None], num_inference_steps=REQUEST["steps"], guidance_scale=REQUEST["cfg_scale"],
               height=64, width=64, output_type="np")
    return out.images[0]


def test_generation_equals_diffusers_sd3_pipeline(sd3_files, sd3):
    result = generate(GenerationRequest(**REQUEST), sd3, GenerationSettings())
    conditioner = sd3.family.conditioner(sd3)
    cond = conditioner.encode([REQUEST["prompt"]], 64, 64)
    uncond = conditioner.encode([REQUEST["negative_prompt"]], 64, 64, negative=True)
    assert cond["context"].shape == (1, 77 + 256, 160) and cond["pooled"].shape == (1, 128)
    noise = rng.create_noise((16, 8, 8), [REQUEST["seed"]], [0], 0.0, None, device=torch.device("cpu"), source="CPU")
    theirs = _reference(sd3_files["components"], cond, uncond, noise[0] if noise.ndim == 4 else noise)
    ours = np.asarray(result.images[0], dtype=np.float32) / 255
    assert np.abs(ours - theirs).max() <= 2 / 255, np.abs(ours - theirs).max()
    assert "CFG scale: 4.5" in result.infotexts[0] and "Distilled CFG Scale" not in result.infotexts[0]


def test_clip_conditioning_is_diffusers_layout(sd3_files, sd3):
    """The context: CLIP-L and CLIP-G penultimate states side by side, zero-padded to T5's width, then
    T5's 256 token states; the pooled vector: both CLIPs' projections."""
    components = sd3_files["components"]
    conditioner = sd3.family.conditioner(sd3)
    cond = conditioner.encode(["a cat"], 64, 64)
    tokens = conditioner.clip.chunks("a cat")[0].tokens
    bos, eos = sd3.tokenizers[0].bos_token_id, sd3.tokenizers[0].eos_token_id
    ids_l = torch.tensor([[bos] + tokens + [eos] * (76 - len(tokens))])
    ids_g = ids_l.clone()
    ids_g[0, len(tokens) + 2:] = 0  # CLIP-G pads with "!" after the first end token
    with torch.no_grad():
        out_l = components.text_encoder.float()(input_ids=ids_l, output_hidden_states=True)
        out_g = components.text_encoder_2.float()(input_ids=ids_g, output_hidden_states=True)
    clip = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
    assert torch.allclose(cond["context"][:, :77, :128], clip, atol=2e-3)
    assert torch.all(cond["context"][:, :77, 128:] == 0)
    assert torch.allclose(cond["pooled"], torch.cat([out_l.text_embeds, out_g.text_embeds], dim=-1), atol=2e-3)


def test_without_text_encoders_companions_and_no_t5(sd3_files):
    bare = sd3_files["bare"]
    with pytest.raises(UnsupportedCheckpoint, match="CLIP-L"):
        load_checkpoint(bare, POLICY)
    folder = sd3_files["folder"] / "text_encoder"
    folder.mkdir(exist_ok=True)
    components = sd3_files["components"]
    paths = {"clip_l": folder / "clip_l.safetensors", "clip_g": folder / "clip_g.safetensors"}
    save_single_file(paths["clip_l"], components.text_encoder.state_dict(), dtype=torch.float16)
    save_single_file(paths["clip_g"], components.text_encoder_2.state_dict(), dtype=torch.float16)
    model = load_checkpoint(bare, POLICY, paths.get)
    assert any("no T5-XXL" in note for note in model.spec.notes)
    cond = model.family.conditioner(model).encode(["a cat"], 64, 64)
    assert cond["context"].shape == (1, 77 + 77, 160) and torch.all(cond["context"][:, 77:] == 0)
    result = generate(GenerationRequest(**REQUEST), model, GenerationSettings())
    assert result.images[0].size == (64, 64) and np.asarray(result.images[0]).std() > 1


def test_sd3_refuses_schedules_it_cannot_run(sd3):
    with pytest.raises(RequestError) as info:  # every sampler runs; Align Your Steps has no flow form
        generate(GenerationRequest(**{**REQUEST, "scheduler": "Align Your Steps"}), sd3, GenerationSettings())
    assert info.value.field == "scheduler"


def test_sd3_lora_in_kohya_layout(sd3, tmp_path):
    from safetensors.torch import save_file

    from modules.core import lora

    block = sd3.unet.transformer_blocks[0]
    hidden = block.attn.to_q.weight.shape[0]
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(4, hidden, generator=g), torch.randn(3 * hidden, 4, generator=g)
    key = "lora_unet_joint_blocks_0_context_block_attn_qkv"
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}, str(tmp_path / "sd3-kohya.safetensors"))
    file = lora.LoraFile.from_path(tmp_path / "sd3-kohya.safetensors")
    before = block.attn.add_k_proj.weight.detach().clone()
    lora.activate(sd3, lora.prepare("<lora:sd3-kohya:0.5>", {"sd3-kohya": file}.get))
    try:
        assert torch.allclose(block.attn.add_k_proj.weight, before + 0.5 * (up @ down)[hidden:2 * hidden], atol=1e-3)
    finally:
        lora.deactivate(sd3)
    assert torch.equal(block.attn.add_k_proj.weight, before)


def test_sd3_lora_in_diffusers_layout(sd3, tmp_path):
    """diffusers / PEFT SD3 LoRAs name the transformer's own modules (`transformer.` prefix, lora_A/B)."""
    from safetensors.torch import save_file

    from modules.core import lora

    block = sd3.unet.transformer_blocks[0]
    hidden = block.attn.to_q.weight.shape[0]
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, hidden, generator=g), torch.randn(hidden, 4, generator=g)
    prefix = "transformer.transformer_blocks.0.attn.to_q"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, str(tmp_path / "sd3-peft.safetensors"))
    file = lora.LoraFile.from_path(tmp_path / "sd3-peft.safetensors")
    before, other = block.attn.to_q.weight.detach().clone(), block.attn.to_k.weight.detach().clone()
    lora.activate(sd3, lora.prepare("<lora:sd3-peft:0.8>", {"sd3-peft": file}.get))
    try:
        assert torch.allclose(block.attn.to_q.weight, before + 0.8 * (b @ a), atol=1e-3)
        assert torch.equal(block.attn.to_k.weight, other)  # only the named module moved
    finally:
        lora.deactivate(sd3)
    assert torch.equal(block.attn.to_q.weight, before)
