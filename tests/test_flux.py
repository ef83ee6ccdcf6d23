"""Flux.1 as users have it: detection from the weights, the all-in-one and the split layouts (companion
text encoder and VAE files), and generation equal to diffusers' FluxPipeline on the same tiny weights,
noise and steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.core import flux_layout
from modules.core.checkpoint_file import CheckpointFile
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.devices import choose_policy
from modules.core.families.flux import pack
from modules.core.t5_encoder import load_tokenizer as load_t5_tokenizer
from modules.core.model_detection import detect
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest, RequestError
from tests.fixtures.tiny_models import build_flux_components, write_flux_checkpoint

POLICY, _ = choose_policy()
REQUEST = dict(prompt="a red cube on a table", seed=21, steps=4, cfg_scale=1.0, width=64, height=64,
               sampler_name="Euler", scheduler="Automatic", save_images=False)


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory):
    """The dev-like (guidance-distilled) tiny model in both layouts, plus a schnell-like one."""
    folder = tmp_path_factory.mktemp("flux")
    dev = build_flux_components(guidance=True, dtype=torch.float16)
    schnell = build_flux_components(guidance=False, seed=1, dtype=torch.float16)
    return {"components": dev, "all": write_flux_checkpoint(folder / "all", dev),
            "split": write_flux_checkpoint(folder / "split", dev, layout="split"),
            "schnell": write_flux_checkpoint(folder / "schnell", schnell), "schnell_components": schnell}


@pytest.fixture(scope="module")
def flux(flux_files):
    return load_checkpoint(flux_files["all"]["checkpoint"], POLICY)


def test_t5_tokenizer_ships_with_the_repo():
    tokenizer = load_t5_tokenizer()
    assert tokenizer("Hello world").input_ids == [8774, 296, 1]  # T5's own ids
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, len(tokenizer)) == (0, 1, 32100)


def test_layout_round_trip_and_config_from_shapes(flux_files):
    transformer = flux_files["components"].transformer
    config = dict(transformer.config)
    bfl = flux_layout.to_bfl(transformer.state_dict(), config)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.weight" in bfl
    shapes = {k: tuple(v.shape) for k, v in bfl.items()}
    found = flux_layout.config_from_shapes(shapes, "")
    for key in ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "pooled_projection_dim", "guidance_embeds"):
        assert found[key] == config[key], key
    assert tuple(found["axes_dims_rope"]) == tuple(config["axes_dims_rope"])
    back = flux_layout.to_diffusers(bfl, found)
    assert back.keys() == transformer.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in transformer.state_dict().items())


def test_detects_flux_in_both_layouts(flux_files):
    for layout in ("all", "split"):
        ckpt = CheckpointFile(flux_files[layout]["checkpoint"])
        spec = detect(ckpt.shapes, ckpt.metadata)
        assert (spec.family, spec.label, spec.prediction_type, spec.native_size) == ("flux", "Flux.1", "flow",
                                                                                   (1024, 1024))
        assert spec.unet_config["guidance_embeds"] is True
        companions = [te.companion for te in spec.text_encoders]
        assert companions == ([None, None] if layout == "all" else ["clip_l", "t5xxl"])


def test_split_layout_needs_its_companions_and_names_them(flux_files):
    paths = flux_files["split"]
    with pytest.raises(UnsupportedCheckpoint, match="T5-XXL|VAE|CLIP-L"):
        load_checkpoint(paths["checkpoint"], POLICY)

    def companions(kind):
        return {"clip_l": paths["clip_l"], "t5xxl": paths["t5xxl"], "flux_vae": paths["vae"]}.get(kind)

    model = load_checkpoint(paths["checkpoint"], POLICY, companions)
    reference = flux_files["components"]
    for ours, theirs in ((model.unet, reference.transformer), (model.vae, reference.vae),
                         (model.text_encoders[1], reference.text_encoder_2)):
        state = theirs.state_dict()
        assert all(torch.allclose(v.float(), state[k].float()) for k, v in ours.state_dict().items()), type(ours)


def _diffusers_reference(components, conditioner_cond, noise, steps, guidance, dynamic: bool) -> np.ndarray:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=dynamic, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=components.vae.float(), text_encoder=components.text_encoder.float(),
                        tokenizer=None, text_encoder_2=components.text_encoder_2.float(),
                        tokenizer_2=load_t5_tokenizer(), transformer=components.transformer.float())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=conditioner_cond["context"], pooled_prompt_embeds=conditioner_cond["pooled"],
               latents=pack(noise), num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
               output_type="np", max_sequence_length=conditioner_cond["context"].shape[1])
    return out.images[0]


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_generation_equals_diffusers_flux_pipeline(flux_files, flux, variant):
    from modules.core import rng

    model = flux if variant == "dev" else load_checkpoint(flux_files["schnell"]["checkpoint"], POLICY)
    components = flux_files["components" if variant == "dev" else "schnell_components"]
    result = generate(GenerationRequest(**REQUEST, distilled_cfg_scale=2.5), model, GenerationSettings())
    cond = model.family.conditioner(model, options=GenerationSettings().conditioning).encode([REQUEST["prompt"]], 64, 64)
    assert cond["context"].shape == (1, 512 if variant == "dev" else 256, 32)
    noise = rng.create_noise((16, 8, 8), [REQUEST["seed"]], [0], 0.0, None, device=torch.device("cpu"), source="CPU")
    theirs = _diffusers_reference(components, cond, noise, REQUEST["steps"], 2.5, dynamic=variant == "dev")
    ours = np.asarray(result.images[0], dtype=np.float32) / 255
    assert np.abs(ours - theirs).max() <= 2 / 255, np.abs(ours - theirs).max()
    text = result.infotexts[0]
    assert ("Distilled CFG Scale: 2.5" in text) is (variant == "dev")
    assert "Sampler: Euler" in text and "Size: 64x64" in text


def test_t5_conditioning_equals_diffusers_encode_prompt(flux_files, flux):
    from diffusers import FluxPipeline

    components = flux_files["components"]
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=components.text_encoder.float(),
                        tokenizer=flux.tokenizers[0], text_encoder_2=components.text_encoder_2.float(),
                        tokenizer_2=load_t5_tokenizer(), transformer=None)
    embeds, pooled, _ids = pipe.encode_prompt(prompt=REQUEST["prompt"], prompt_2=None, max_sequence_length=512)
    cond = flux.family.conditioner(flux).encode([REQUEST["prompt"]], 64, 64)
    assert torch.allclose(cond["context"], embeds.float(), atol=2e-3)
    assert torch.allclose(cond["pooled"], pooled.float(), atol=2e-3)


def test_flux_refuses_schedules_and_sizes_it_cannot_run(flux):
    # every sampler runs on flow models (tests/test_flow_samplers.py); Align Your Steps has no flow form
    with pytest.raises(RequestError) as info:
        generate(GenerationRequest(**{**REQUEST, "scheduler": "Align Your Steps"}), flux, GenerationSettings())
    assert info.value.field == "scheduler" and "Karras" in info.value.message
    with pytest.raises(RequestError) as info:
        generate(GenerationRequest(**{**REQUEST, "width": 72}), flux, GenerationSettings())
    assert info.value.field == "width" and "16" in info.value.message


def test_weights_and_negative_prompt_change_the_picture(flux):
    base = generate(GenerationRequest(**REQUEST), flux, GenerationSettings()).images[0]
    weighted = generate(GenerationRequest(**{**REQUEST, "prompt": "a (red:1.6) cube on a table"}), flux,
                        GenerationSettings()).images[0]
    negative = generate(GenerationRequest(**{**REQUEST, "cfg_scale": 3.0, "negative_prompt": "blue"}), flux,
                        GenerationSettings()).images[0]
    as_array = lambda im: np.asarray(im, dtype=np.float32)  # noqa: E731
    assert np.abs(as_array(base) - as_array(weighted)).max() > 2
    assert np.abs(as_array(base) - as_array(negative)).max() > 2


def test_split_flux_through_the_api(tmp_path, flux_files):
    """A user's folders: the transformer in Stable-diffusion, clip_l / t5xxl in text_encoder, ae in
    VAE; the server finds the companions and generates over HTTP."""
    import base64
    import io

    import requests
    from PIL import Image

    from tests.server import run_server

    data = tmp_path / "data"
    paths = write_flux_checkpoint(data / "models", flux_files["components"], layout="split")
    with run_server(data, paths["checkpoint"].parent, "--api", "--ckpt", str(paths["checkpoint"])) as server:
        body = {**REQUEST, "steps": 2, "distilled_cfg_scale": 3.0}
        reply = requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        picture = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0])))
        assert picture.size == (64, 64) and np.asarray(picture).std() > 1
        assert "Distilled CFG Scale: 3" in reply.json()["info"]
        refused = requests.post(server.url + "/sdapi/v1/txt2img", json={**body, "scheduler": "Align Your Steps"},
                                timeout=60)
        assert refused.status_code == 422 and "Align Your Steps" in refused.text
        _page_follows_the_family(server.url)


def _page_follows_the_family(url: str) -> None:
    """With Flux dev loaded the page shows Forge's Distilled CFG Scale and starts CFG at 1, and its
    Generate makes a Flux picture with the scale the page gave."""
    from playwright.sync_api import expect

    from modules.core import samplers
    from tests.browser import launch_browser, require_chromium
    from tests.test_ui_browser import JOB_TIMEOUT_MS, fill_job, info_text, set_number

    require_chromium()
    with launch_browser() as browser:
        page = browser.new_page()
        page.goto(url)
        for tab in ("txt2img", "img2img"):
            slider = page.locator(f"#{tab}_distilled_cfg_scale")
            slider.wait_for(state="attached", timeout=60_000)
            assert page.locator(f"#{tab}_distilled_cfg_scale input[type=number]").input_value() == "3.5"
            assert page.locator(f"#{tab}_cfg_scale input[type=number]").input_value() == "1"
        page.locator("#txt2img_sampling input").click()  # the sampler list: every A1111 sampler runs on Flux
        options = page.locator("ul[role=listbox] li").all_inner_texts()
        assert sorted(o.replace("✓", "").strip() for o in options) == sorted(samplers.SAMPLER_NAMES), options
        assert page.locator("#txt2img_distilled_cfg_scale").is_visible()
        page.keyboard.press("Escape")
        fill_job(page, "a red cube on a table", steps=2)
        set_number(page, "txt2img_distilled_cfg_scale", 2.5, on_step=False)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#html_info_txt2img")).to_contain_text("Distilled CFG Scale: 2.5", timeout=JOB_TIMEOUT_MS)
        info = info_text(page)
        assert "Steps: 2," in info and "Size: 64x64" in info and "CFG scale: 1," in info, info


def test_flux_loras_in_kohya_and_diffusers_layouts(tmp_path, flux):
    """kohya names BFL's fused layers (q/k/v in one, the single blocks' q/k/v/MLP in one): the delta's
    rows go to the matching diffusers modules. diffusers / PEFT names the modules themselves."""
    from safetensors.torch import save_file

    from modules.core import lora

    net = flux.unet
    hidden = net.config.attention_head_dim * net.config.num_attention_heads
    mlp = net.single_transformer_blocks[0].proj_mlp.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    rank = 4
    kohya = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(rank, hidden, generator=g),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(3 * hidden, rank, generator=g),
        "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0),
        "lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(rank, hidden, generator=g),
        "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(3 * hidden + mlp, rank, generator=g),
        "lora_unet_double_blocks_0_txt_mlp_0.lora_down.weight": torch.randn(rank, hidden, generator=g),
        "lora_unet_double_blocks_0_txt_mlp_0.lora_up.weight": torch.randn(4 * hidden, rank, generator=g),
    }
    peft = {"transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight": torch.randn(rank, hidden, generator=g),
            "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight": torch.randn(hidden, rank, generator=g)}
    paths = {}
    for name, state in (("flux-kohya", kohya), ("flux-peft", peft)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[name]))
    files = {name: lora.LoraFile.from_path(path) for name, path in paths.items()}

    block, single = net.transformer_blocks[0], net.single_transformer_blocks[0]
    before = {n: m.weight.detach().clone() for n, m in (("q", block.attn.to_q), ("v", block.attn.to_v),
                                                        ("mlp", single.proj_mlp), ("ff", block.ff_context.net[0].proj),
                                                        ("out", block.attn.to_out[0]))}
    job = lora.prepare("<lora:flux-kohya:1> <lora:flux-peft:0.5>", files.get)
    lora.activate(flux, job)
    try:
        qkv = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] @ \
            kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"] * (2.0 / rank)
        assert torch.allclose(block.attn.to_q.weight, before["q"] + qkv[:hidden], atol=1e-3)
        assert torch.allclose(block.attn.to_v.weight, before["v"] + qkv[2 * hidden:], atol=1e-3)
        fused = kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"] @ \
            kohya["lora_unet_single_blocks_0_linear1.lora_down.weight"]
        assert torch.allclose(single.proj_mlp.weight, before["mlp"] + fused[3 * hidden:], atol=1e-3)
        ff = kohya["lora_unet_double_blocks_0_txt_mlp_0.lora_up.weight"] @ \
            kohya["lora_unet_double_blocks_0_txt_mlp_0.lora_down.weight"]
        assert torch.allclose(block.ff_context.net[0].proj.weight, before["ff"] + ff, atol=1e-3)
        out = peft["transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight"] @ \
            peft["transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight"]
        assert torch.allclose(block.attn.to_out[0].weight, before["out"] + 0.5 * out, atol=1e-3)
        result = generate(GenerationRequest(**{**REQUEST, "prompt": "a red cube <lora:flux-kohya:1>"}), flux,
                          GenerationSettings(find_lora=files.get))
        assert "Lora hashes: \"flux-kohya:" in result.infotexts[0]
    finally:
        lora.deactivate(flux)
    assert torch.equal(block.attn.to_q.weight, before["q"]) and torch.equal(single.proj_mlp.weight, before["mlp"])


def test_fp8_file_loads_like_its_fp16_twin(tmp_path, flux_files, flux):
    """fp8 (e4m3) files as Forge / ComfyUI users have them: read into the working precision."""
    paths = write_flux_checkpoint(tmp_path, flux_files["components"], dtype=torch.float8_e4m3fn)
    model = load_checkpoint(paths["checkpoint"], POLICY)
    ours, theirs = model.unet.transformer_blocks[0].attn.to_q.weight, flux.unet.transformer_blocks[0].attn.to_q.weight
    assert ours.dtype == theirs.dtype == POLICY.unet_dtype
    assert torch.allclose(ours.float(), theirs.float(), atol=0.07 * theirs.abs().max().item())  # fp8's precision
    result = generate(GenerationRequest(**REQUEST), model, GenerationSettings())
    assert np.asarray(result.images[0]).std() > 1


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Heun"])
def test_k_diffusion_samplers_run_flux_jobs(flux, sampler):
    euler = generate(GenerationRequest(**REQUEST), flux, GenerationSettings()).images[0]
    result = generate(GenerationRequest(**{**REQUEST, "sampler_name": sampler}), flux, GenerationSettings())
    assert f"Sampler: {sampler}," in result.infotexts[0]
    ours = np.asarray(result.images[0], dtype=np.float32)
    assert ours.std() > 1 and np.abs(ours - np.asarray(euler, dtype=np.float32)).max() > 0
