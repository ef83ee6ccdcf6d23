"""LoRA end to end on the tiny checkpoints: prompt tags, every file layout, exact deltas, exact
restoring of the base weights, several at once, infotext, the registry and the HTTP API."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from modules.core import lora
from modules.core.extra_networks import LoraRef, parse_loras, parse_prompt
from modules.core.infotext import parse_infotext
from modules.core.pipeline import GenerationSettings, JobObserver, generate
from modules.core.types import GenerationRequest, RequestError
from modules.services.loras import LoraRegistry
from tests.fixtures.tiny_loras import ALPHA, LAYERS, RANK, module_of, write_lora_set

SMALL = dict(width=64, height=64, steps=3, seed=21, save_images=False, negative_prompt="blurry")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, sd1, sdxl):
    folder = tmp_path_factory.mktemp("Lora")
    write_lora_set(folder, sd1, sdxl)
    return folder


@pytest.fixture(scope="module")
def registry(lora_dir):
    return LoraRegistry([lora_dir])


@pytest.fixture(autouse=True)
def base_weights_after_each_test(request):
    yield
    for name in ("sd1", "sdxl"):
        if name in request.fixturenames:
            lora.deactivate(request.getfixturevalue(name))


def settings(registry, **kw) -> GenerationSettings:
    return GenerationSettings(model_name="tiny", model_hash="0123456789", find_lora=registry.require, **kw)


def run(model, registry, prompt, **kw):
    return generate(GenerationRequest(prompt=prompt, **{**SMALL, **kw}), model, settings(registry))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def state_hash(model) -> str:
    digest = hashlib.sha256()
    for part in (model.unet, model.vae, *model.text_encoders):
        for key, tensor in part.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights(model) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, part in (("unet", model.unet), *((f"te{i}", e) for i, e in enumerate(model.text_encoders))):
        out.update({f"{prefix}:{k}": v.detach().clone() for k, v in part.state_dict().items()})
    return out


def weight_key(model, part: str, name: str) -> str:
    """The `weights()` key of a LAYERS target's weight."""
    module = module_of(model, part, name)
    root = model.unet if part == "unet" else model.text_encoders[int(part[2:])]
    for key, param in root.named_parameters():
        if param is module.weight:
            return f"{part}:{key}"
    raise KeyError(name)


# -- the expected deltas, written from the published formulas -------------------------------------

def expected_delta(tensors: dict, key: str, shape: tuple) -> torch.Tensor:
    t = {k[len(key) + 1:]: v.float() for k, v in tensors.items() if k.startswith(key + ".")}
    alpha = float(t["alpha"]) if "alpha" in t else None
    downs = [k for k in ("lora_down", "lora.down", "lora_A", "lora_linear_layer.down") if f"{k}.weight" in t]
    ups = [k for k in ("lora_up", "lora.up", "lora_B", "lora_linear_layer.up") if f"{k}.weight" in t]
    if downs:
        down, up = t[f"{downs[0]}.weight"], t[f"{ups[0]}.weight"]
        rank = down.shape[0]
        if "lora_mid.weight" in t:  # ΔW[o,i,k,l] = Σ_nm mid[n,m,k,l] up[o,n] down[m,i]
            mid, u, d = t["lora_mid.weight"], up.flatten(1), down.flatten(1)
            delta = torch.zeros(u.shape[0], d.shape[1], *mid.shape[2:])
            for n in range(rank):
                for m in range(rank):
                    delta += u[:, n, None, None, None] * d[m, None, :, None, None] * mid[n, m]
        else:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(shape)
        scale = alpha / rank if alpha is not None else 1.0
        return delta.reshape(shape) * scale
    if "hada_w1_a" in t:
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return delta.reshape(shape) * (alpha / t["hada_w1_b"].shape[0])
    if "lokr_w1" in t:  # Kronecker product: block (a, b) of ΔW is w1[a, b] * w2
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        w1 = t["lokr_w1"]
        o2, i2 = w2.shape[0], w2.shape[1]
        kron = torch.zeros(w1.shape[0] * o2, w1.shape[1] * i2, *w2.shape[2:])
        for a in range(w1.shape[0]):
            for b in range(w1.shape[1]):
                kron[a * o2:(a + 1) * o2, b * i2:(b + 1) * i2] = w1[a, b] * w2
        scale = alpha / t["lokr_w2_b"].shape[0] if alpha is not None and "lokr_w2_b" in t else 1.0
        return kron.reshape(shape) * scale
    raise AssertionError(f"no formula for {sorted(t)}")


def processor_delta(tensors: dict, parent: str, target: str, shape: tuple) -> torch.Tensor:
    """diffusers' first format: the attention processor `parent.processor` holds `<target>_lora`."""
    up = tensors[f"{parent}.processor.{target}_lora.up.weight"].float()
    down = tensors[f"{parent}.processor.{target}_lora.down.weight"].float()
    return (up @ down).reshape(shape)


def read_tensors(path):
    return load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------ prompt tags

def test_tags_are_cut_out_with_a1111_arguments():
    text, found = parse_prompt("a <lora:one> cat, <lora:two:0.5>, <hypernet:h:1> <lyco:three:0.2:0.7>")
    assert text == "a  cat, ,  "
    assert [p.items for p in found["lora"]] == [("one",), ("two", "0.5")]
    assert found["hypernet"][0].positional == ("h", "1")
    text, refs = parse_loras("x <lora:a> <lora:b:0.5> <lora:c:0.5:0.2> <lora:d:te=0.3:unet=0.7> <lora:e:1:1:8> "
                             "<lora:f:dyn=2:te=-1> <lyco:g:0>")
    assert text.strip() == "x"
    assert refs == [LoraRef("a", 1.0, 1.0), LoraRef("b", 0.5, 0.5), LoraRef("c", 0.5, 0.2), LoraRef("d", 0.3, 0.7),
                    LoraRef("e", 1.0, 1.0, 8), LoraRef("f", -1.0, -1.0, 2), LoraRef("g", 0.0, 0.0)]
    assert refs[-1].is_zero
    with pytest.raises(ValueError, match="'abc' is not a number"):
        parse_loras("<lora:a:abc>")


# -------------------------------------------------------------------- every layout, exact deltas

@pytest.mark.parametrize("stem", [s for s in LAYERS if s.startswith("sd1")] + ["sd1_kohya_pt"])
def test_each_sd1_layout_lands_its_exact_deltas_and_restores(sd1, registry, lora_dir, stem):
    layers = LAYERS["sd1_kohya" if stem == "sd1_kohya_pt" else stem]
    path = registry.find(stem).path
    tensors = read_tensors(path)
    before, digest = weights(sd1), state_hash(sd1)
    job = lora.prepare(f"<lora:{stem}>", registry.require)
    lora.activate(sd1, job)
    after = weights(sd1)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targets = {weight_key(sd1, part, name): (key, kind) for key, kind, (part, name) in layers}
    assert changed == set(targets), "exactly the layers the file names change"
    for wkey, (key, kind) in targets.items():
        shape = tuple(after[wkey].shape)
        if kind.startswith("processor:"):
            want = processor_delta(tensors, key, kind.split(":")[1], shape)
        else:
            want = expected_delta(tensors, key, shape)
        got = after[wkey] - before[wkey]
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (stem, key, (got - want).abs().max())
    lora.deactivate(sd1)
    assert state_hash(sd1) == digest


def test_kohya_delta_is_scale_times_up_at_down(sd1, registry):
    """W' - W == weight * alpha / rank * up @ down for one layer, by hand."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = load_file(str(registry.find("sd1_kohya").path))
    up, down = tensors[f"{key}.lora_up.weight"], tensors[f"{key}.lora_down.weight"]
    assert float(tensors[f"{key}.alpha"]) == ALPHA["sd1_kohya"] and down.shape[0] == RANK
    layer = sd1.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    base = layer.weight.detach().clone()
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya:0.8>", registry.require))
    want = 0.8 * (ALPHA["sd1_kohya"] / RANK) * (up @ down)
    assert torch.allclose(layer.weight - base, want, atol=1e-6)


@pytest.mark.parametrize("layout", ["lycoris", "peft"])
def test_dora_renormalises_to_the_stored_magnitude(sd1, tmp_path, layout):
    """DoRA: W' = m * (W + s·ΔW) / ||W + s·ΔW|| per input column (LyCORIS / kohya's dora_scale, shape
    (1, in)) or per output row (PEFT's lora_magnitude_vector, shape (out,)), then times the user's
    weight as a delta (A1111's apply_weight_decompose)."""
    layer = sd1.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    out_dim, in_dim = layer.weight.shape
    g = torch.Generator().manual_seed(5)
    up, down = torch.randn(out_dim, RANK, generator=g) * 0.1, torch.randn(RANK, in_dim, generator=g) * 0.1
    base = layer.weight.detach().clone().float()
    if layout == "lycoris":
        key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        magnitude = torch.rand(1, in_dim, generator=g) + 0.5
        state = {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(2.0),
                 f"{key}.dora_scale": magnitude}
        scale = 2.0 / RANK
    else:
        key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        magnitude = torch.rand(out_dim, generator=g) + 0.5
        state = {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up, f"{key}.lora_magnitude_vector": magnitude}
        scale = 1.0
    path = tmp_path / f"dora_{layout}.safetensors"
    save_file(state, str(path))
    file = lora.LoraFile.from_path(path)
    lora.activate(sd1, lora.prepare(f"<lora:dora_{layout}:0.7>", {f"dora_{layout}": file}.get))
    merged = base + scale * (up @ down)
    if layout == "lycoris":
        renormalised = merged * magnitude / merged.norm(dim=0, keepdim=True)
    else:
        renormalised = merged * magnitude[:, None] / merged.norm(dim=1, keepdim=True)
    assert torch.allclose(layer.weight.float(), base + 0.7 * (renormalised - base), atol=1e-5)
    lora.deactivate(sd1)
    assert torch.equal(layer.weight.float(), base)


@pytest.mark.parametrize("stem", [s for s in LAYERS if s.startswith("sdxl")])
def test_sdxl_layouts_reach_both_text_encoders_and_ldm_names(sdxl, registry, stem):
    tensors = read_tensors(registry.find(stem).path)
    before, digest = weights(sdxl), state_hash(sdxl)
    lora.activate(sdxl, lora.prepare(f"<lora:{stem}>", registry.require))
    after = weights(sdxl)
    targets = {weight_key(sdxl, part, name): key for key, _kind, (part, name) in LAYERS[stem]}
    assert {k for k in before if not torch.equal(before[k], after[k])} == set(targets)
    assert {t.split(":")[0] for t in targets} >= {"unet", "te0", "te1"}
    for wkey, key in targets.items():
        want = expected_delta(tensors, key, tuple(after[wkey].shape))
        assert torch.allclose(after[wkey] - before[wkey], want, atol=1e-5, rtol=1e-4), key
    lora.deactivate(sdxl)
    assert state_hash(sdxl) == digest


def test_pt_file_equals_its_safetensors_twin(sd1, registry):
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya>", registry.require))
    from_safetensors = weights(sd1)
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya_pt>", registry.require))
    assert all(torch.equal(from_safetensors[k], v) for k, v in weights(sd1).items())


# ---------------------------------------------------------------------------------- generations

@pytest.mark.parametrize("stem", ["sd1_kohya", "sd1_kohya_ldm", "sd1_diffusers", "sd1_peft", "sd1_peft_base",
                                  "sd1_locon", "sd1_loha", "sd1_lokr"])
def test_each_sd1_file_changes_the_picture(sd1, registry, stem):
    plain = pixels(run(sd1, registry, "a red cube").images[0])
    changed = pixels(run(sd1, registry, f"a red cube <lora:{stem}>").images[0])
    assert np.abs(plain - changed).mean() > 1, stem


@pytest.mark.parametrize("stem", ["sdxl_kohya", "sdxl_peft"])
def test_each_sdxl_file_changes_the_picture(sdxl, registry, stem):
    plain = pixels(run(sdxl, registry, "a red cube").images[0])
    changed = pixels(run(sdxl, registry, f"a red cube <lora:{stem}>").images[0])
    assert np.abs(plain - changed).mean() > 1, stem


def test_weight_zero_and_no_lora_give_identical_pixels_and_weights(sd1, registry):
    digest = state_hash(sd1)
    plain = run(sd1, registry, "a red cube")
    zero = run(sd1, registry, "a red cube <lora:sd1_kohya:0> <lora:sd1_loha:0:0>")
    assert np.array_equal(pixels(plain.images[0]), pixels(zero.images[0]))
    assert state_hash(sd1) == digest
    assert "<lora:sd1_kohya:0>" in zero.infotexts[0]  # the prompt keeps its tags; hashes still listed (A1111)
    assert "Lora hashes" in zero.infotexts[0]


def test_base_weights_come_back_exactly_after_jobs(sd1, registry):
    digest = state_hash(sd1)
    first = run(sd1, registry, "a red cube <lora:sd1_kohya> <lora:sd1_locon:0.7>")
    assert state_hash(sd1) != digest  # kept applied for the next job (A1111)
    again = run(sd1, registry, "a red cube <lora:sd1_kohya> <lora:sd1_locon:0.7>")
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    run(sd1, registry, "a red cube")  # a job without LoRAs restores
    assert state_hash(sd1) == digest
    # a changed set restores before it applies: B after A equals B alone
    run(sd1, registry, "<lora:sd1_loha>")
    after_a = weights(sd1)
    run(sd1, registry, "<lora:sd1_lokr>")
    b_after_a = weights(sd1)
    lora.deactivate(sd1)
    assert state_hash(sd1) == digest
    run(sd1, registry, "<lora:sd1_lokr>")
    assert all(torch.equal(b_after_a[k], v) for k, v in weights(sd1).items())
    assert any(not torch.equal(after_a[k], v) for k, v in weights(sd1).items())


class FailingObserver(JobObserver):
    def on_step(self, step, total, latents, denoised):
        if step == 1:
            raise RuntimeError("boom")


def test_a_failing_job_restores_the_base_weights(sd1, registry):
    digest = state_hash(sd1)
    request = GenerationRequest(prompt="<lora:sd1_kohya> <lora:sd1_lokr:-1>", **SMALL)
    with pytest.raises(RuntimeError, match="boom"):
        generate(request, sd1, settings(registry), FailingObserver())
    assert state_hash(sd1) == digest
    # a file that does not fit, after a good one was applied: refused, nothing left behind
    run(sd1, registry, "<lora:sd1_kohya>")
    with pytest.raises(RequestError, match="LoRA 'sd1_wrong_shape': layer .*the model's weight is") as info:
        run(sd1, registry, "<lora:sd1_peft> <lora:sd1_wrong_shape>")
    assert info.value.field == "prompt"
    assert state_hash(sd1) == digest


def test_two_loras_add_up_and_negative_weights_subtract(sd1, registry):
    key = weight_key(sd1, "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")  # in kohya, peft, loha
    base = weights(sd1)[key]
    deltas = {}
    for stem in ("sd1_kohya", "sd1_peft"):
        lora.activate(sd1, lora.prepare(f"<lora:{stem}>", registry.require))
        deltas[stem] = weights(sd1)[key] - base
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya> <lora:sd1_peft:0.5>", registry.require))
    assert torch.allclose(weights(sd1)[key] - base, deltas["sd1_kohya"] + 0.5 * deltas["sd1_peft"], atol=1e-5)
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya:-1>", registry.require))
    assert torch.allclose(weights(sd1)[key] - base, -deltas["sd1_kohya"], atol=1e-6)
    lora.deactivate(sd1)
    plain = pixels(run(sd1, registry, "a cube").images[0])
    both = pixels(run(sd1, registry, "a cube <lora:sd1_kohya> <lora:sd1_peft>").images[0])
    one = pixels(run(sd1, registry, "a cube <lora:sd1_kohya>").images[0])
    negative = pixels(run(sd1, registry, "a cube <lora:sd1_kohya:-1>").images[0])
    assert np.abs(both - one).mean() > 1 and np.abs(negative - one).mean() > 1 and np.abs(negative - plain).mean() > 1


def test_text_encoder_and_unet_weights_apart(sd1, registry):
    before = weights(sd1)
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya:0:1>", registry.require))
    unet_only = {k for k, v in weights(sd1).items() if not torch.equal(before[k], v)}
    lora.activate(sd1, lora.prepare("<lora:sd1_kohya:te=1:unet=0>", registry.require))
    te_only = {k for k, v in weights(sd1).items() if not torch.equal(before[k], v)}
    assert unet_only and all(k.startswith("unet:") for k in unet_only)
    assert te_only and all(k.startswith("te0:") for k in te_only)


# ------------------------------------------------------------------------------------- infotext

def addnet_hash(path) -> str:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()[:12]


def test_infotext_lora_hashes_round_trip(sd1, registry):
    prompt = "a red cube <lora:sd1_kohya:0.6>, <lora:kohya_alias:0.1> <lora:sd1_kohya_pt:0.2>"
    result = run(sd1, registry, prompt)
    text = result.infotexts[0]
    assert text.splitlines()[0] == prompt  # the tags stay in the infotext's prompt (A1111)
    assert result.prompts == [prompt]
    kohya = addnet_hash(registry.find("sd1_kohya").path)  # hash of the tensor data after the header
    pt = hashlib.sha256(registry.find("sd1_kohya_pt").path.read_bytes()).hexdigest()[:12]
    want = f"sd1_kohya: {kohya}, kohya_alias: {kohya}, sd1_kohya_pt: {pt}"
    assert f'Lora hashes: "{want}"' in text
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == want and parsed["Prompt"] == prompt
    assert result.extra_generation_params["Lora hashes"] == want
    assert registry.find("sd1_kohya").shorthash == kohya
    quiet = generate(GenerationRequest(prompt=prompt, **SMALL), sd1,
                     settings(registry, add_lora_hashes_to_info=False))  # lora_add_hashes_to_infotext off
    assert "Lora hashes" not in quiet.infotexts[0]
    assert np.array_equal(pixels(quiet.images[0]), pixels(result.images[0]))


def test_hires_pass_uses_the_hires_prompts_loras(sd1, registry):
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.9, hr_second_pass_steps=3)
    with_lora = run(sd1, registry, "a cube <lora:sd1_kohya>", **hires)
    same = run(sd1, registry, "a cube <lora:sd1_kohya>", hr_prompt="a cube <lora:sd1_kohya>", **hires)
    assert np.array_equal(pixels(with_lora.images[0]), pixels(same.images[0]))
    plain_second = run(sd1, registry, "a cube <lora:sd1_kohya>", hr_prompt="a cube", **hires)
    other_second = run(sd1, registry, "a cube <lora:sd1_kohya>", hr_prompt="a cube <lora:sd1_loha>", **hires)
    assert np.abs(pixels(with_lora.images[0]) - pixels(plain_second.images[0])).mean() > 1
    assert np.abs(pixels(with_lora.images[0]) - pixels(other_second.images[0])).mean() > 1
    hashes = parse_infotext(other_second.infotexts[0])["Lora hashes"]
    assert hashes.startswith("sd1_kohya: ") and ", sd1_loha: " in hashes
    assert parse_infotext(other_second.infotexts[0])["Hires prompt"] == "a cube <lora:sd1_loha>"


# ------------------------------------------------------------------------------- refusals, files

def test_unknown_names_and_bad_files_are_request_errors(sd1, sdxl, registry):
    digest, digest_xl = state_hash(sd1), state_hash(sdxl)
    with pytest.raises(RequestError, match=r"unknown LoRA 'nope'; known: .*sd1_kohya") as info:
        run(sd1, registry, "<lora:nope>")
    assert info.value.field == "prompt"
    with pytest.raises(RequestError, match="LoRA 'not_a_lora'.*not a LoRA"):
        run(sd1, registry, "<lora:not_a_lora>")
    # files made for another model: no layer of it exists here, or a layer's sizes differ
    with pytest.raises(RequestError, match="LoRA 'sd1_peft_base': none of its 2 layers"):
        run(sdxl, registry, "<lora:sd1_peft_base>")
    with pytest.raises(RequestError, match="LoRA 'sd1_kohya': layer lora_unet_up_blocks_1_attentions_1"):
        run(sdxl, registry, "<lora:sd1_kohya>")
    assert state_hash(sdxl) == digest_xl
    with pytest.raises(RequestError, match="'abc' is not a number"):
        run(sd1, registry, "<lora:sd1_kohya:abc>")
    with pytest.raises(RequestError, match="hr_prompt"):
        run(sd1, registry, "x", enable_hr=True, hr_prompt="<lora:nope>", hr_upscaler="Latent")
    with pytest.raises(RequestError, match="no LoRA folder"):
        generate(GenerationRequest(prompt="<lora:sd1_kohya>", **SMALL), sd1, GenerationSettings())
    dora = load_file(str(registry.find("sd1_peft").path))
    dora.update({k.replace("lora_A.weight", "dora_scale"): torch.ones(7) for k, v in dora.items()
                 if k.endswith("lora_A.weight")})  # a magnitude that fits no side of any weight
    save_file(dora, str(registry.dirs[0] / "sd1_dora.safetensors"))
    try:
        with pytest.raises(RequestError, match="LoRA 'sd1_dora'.*DoRA magnitude"):  # refused, base weights kept
            run(sd1, registry, "<lora:sd1_dora>")
    finally:
        (registry.dirs[0] / "sd1_dora.safetensors").unlink()
        registry.refresh()
    assert state_hash(sd1) == digest


def test_registry_names_aliases_refresh_and_cache(lora_dir, sd1):
    registry = LoraRegistry([lora_dir])
    names = registry.names()
    assert {"sd1_kohya", "sd1_kohya_pt", "sd1_nested", "sdxl_peft", "not_a_lora"} <= set(names)
    item = registry.find("sd1_kohya")
    assert item.alias == "kohya_alias" and registry.find("kohya_alias") is item
    assert item.metadata["ss_tag_frequency"] == {"set": {"cube": 3}}  # JSON values decoded (A1111)
    assert registry.find("sd1_nested").path.parent.name == "sub"
    with pytest.raises(LookupError, match="unknown LoRA 'fresh'"):
        registry.require("fresh")
    shutil.copy(item.path, lora_dir / "fresh.safetensors")
    try:
        assert registry.find("fresh").path.name == "fresh.safetensors"  # a miss looks at the folder again
        first = lora.load_network(lora_dir / "fresh.safetensors")
        assert lora.load_network(lora_dir / "fresh.safetensors") is first  # cached
        tensors = load_file(str(item.path))
        key = next(iter(tensors))
        tensors[key] = tensors[key] * 2
        save_file(tensors, str(lora_dir / "fresh.safetensors"))
        assert lora.load_network(lora_dir / "fresh.safetensors") is not first  # changed file: read again
    finally:
        (lora_dir / "fresh.safetensors").unlink()
    registry.refresh()
    assert registry.find("fresh") is None


# ------------------------------------------------------------------------------------- HTTP API

@pytest.fixture(scope="module")
def lora_server(tiny_checkpoints, lora_dir, tmp_path_factory):
    from tests.server import run_server

    data = tmp_path_factory.mktemp("lora-server")
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--nowebui", "--ckpt", str(tiny_checkpoints.sd1),
                    "--lora-dir", str(lora_dir)) as srv:
        yield srv


def test_api_lists_refreshes_and_uses_loras(lora_server, lora_dir):
    from tests.api_common import BASE, assert_error

    r = lora_server.get("/sdapi/v1/loras")
    assert r.status_code == 200
    items = {i["name"]: i for i in r.json()}
    assert {"sd1_kohya", "sd1_locon", "sdxl_kohya", "sd1_nested"} <= set(items)
    kohya = items["sd1_kohya"]
    assert kohya["alias"] == "kohya_alias" and kohya["path"].endswith("sd1_kohya.safetensors")
    assert kohya["metadata"]["ss_network_dim"] == str(RANK) and set(kohya) == {"name", "alias", "path", "metadata"}

    shutil.copy(lora_dir / "sd1_loha.safetensors", lora_dir / "added_later.safetensors")
    try:
        assert "added_later" not in {i["name"] for i in lora_server.get("/sdapi/v1/loras").json()}
        assert lora_server.post("/sdapi/v1/refresh-loras").status_code == 200
        assert "added_later" in {i["name"] for i in lora_server.get("/sdapi/v1/loras").json()}
    finally:
        (lora_dir / "added_later.safetensors").unlink()
        lora_server.post("/sdapi/v1/refresh-loras")

    message = assert_error(lora_server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "a <lora:nope:1>"}), "prompt",
                           status=(422,))
    assert "unknown LoRA 'nope'" in message and "sd1_kohya" in message

    r = lora_server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "a red cube <lora:sd1_kohya:0.5>"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["a red cube <lora:sd1_kohya:0.5>"]
    want = f"sd1_kohya: {addnet_hash(lora_dir / 'sd1_kohya.safetensors')}"
    assert info["extra_generation_params"]["Lora hashes"] == want
    assert "Lora hashes: " in info["infotexts"][0]
