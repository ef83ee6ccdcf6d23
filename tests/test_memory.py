"""The memory owner (modules.core.memory) on the CPU with an explicit budget: the moves are CPU to CPU,
but the account and the hooks really run. Under every policy the bytes resident never pass the
budget during a job, and the pictures equal the all-resident ones bit for bit."""

import numpy as np
import pytest
import torch

from modules.core import model_ops
from modules.core.devices import choose_policy
from modules.core.memory import DeviceMemory, module_bytes, policy_from_flags
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import generate
from modules.core.types import GenerationRequest

POLICY, _ = choose_policy()
REQUEST = dict(prompt="a red circle", negative_prompt="blue", seed=7, width=64, height=64, steps=2)


def picture(model, **kw) -> np.ndarray:
    return np.asarray(generate(GenerationRequest(**{**REQUEST, **kw}), model).images[0])


def stages(model) -> list[torch.nn.Module]:
    return [model.unet, model.vae, *model.text_encoders]


def load(path, policy: str, budget: int | None):
    memory = DeviceMemory("cpu", budget, policy)
    model = load_checkpoint(path, POLICY, memory=memory)
    model.run_options.vae_tiling = "Never"  # placement only: the VAE decodes whole as in the reference
    return model, memory


@pytest.fixture(scope="module")
def reference(sd1):
    return picture(sd1)


@pytest.mark.parametrize("policy, resolved", [("medvram", "medvram"), ("lowvram", "lowvram"),
                                              ("auto", "lowvram")])  # auto: the biggest stage + reserve do not fit
def test_job_stays_within_budget_and_pictures_are_bit_identical(tiny_checkpoints, sd1, reference, policy, resolved):
    budget = max(module_bytes(m) for m in stages(sd1))  # room for the biggest stage, not for two
    assert budget < sum(module_bytes(m) for m in stages(sd1))
    model, memory = load(tiny_checkpoints.sd1, policy, budget)
    assert model.memory_policy == resolved and memory.resident_bytes == 0  # nothing placed before use
    out = picture(model)
    assert np.array_equal(out, reference)
    assert memory.overflows == 0 and 0 < memory.peak_bytes <= budget
    assert max(m.resident_after for m in memory.log) <= budget
    names = [(m.direction, m.name.split(":", 1)[1]) for m in memory.log]
    assert ("in", "text_encoder_0") in names and ("out", "text_encoder_0") in names and ("in", "vae") in names
    if resolved == "medvram":
        assert ("in", "unet") in names and ("out", "unet") in names
    else:  # streamed: the UNet never comes in whole, its blocks move in and out as they run
        assert ("in", "unet") not in names
        blocks = [n for d, n in names if n.startswith("unet:block") and d == "in"]
        assert len(set(blocks)) > 5 and len(blocks) == len([n for d, n in names if n.startswith("unet:block") and d == "out"])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_lowvram_runs_a_unet_bigger_than_the_budget(tiny_checkpoints, request, family):
    whole = request.getfixturevalue(family)
    budget = module_bytes(whole.unet) // 2
    model, memory = load(getattr(tiny_checkpoints, family), "lowvram", budget)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500.0, 500.0])
    cond = {"context": torch.randn(2, 77, whole.unet.config.cross_attention_dim)}
    if family == "sdxl":
        config = whole.unet.config
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        cond.update(text_embeds=torch.randn(2, pooled), time_ids=torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2))
    expected = model_ops.denoiser(whole)(x, t, cond)
    got = model_ops.denoiser(model)(x, t, cond)
    assert torch.equal(got, expected)
    assert memory.overflows == 0 and memory.peak_bytes <= budget
    assert sum(1 for m in memory.log if m.direction == "in") > 5


def test_all_resident_needs_more_than_the_medvram_budget(tiny_checkpoints, sd1, reference):
    """The account is real: everything resident (no budget) peaks above what medvram keeps to, and
    nothing leaves the device during the job."""
    budget = max(module_bytes(m) for m in stages(sd1))
    model, memory = load(tiny_checkpoints.sd1, "all", None)
    memory.reset_peak()
    assert np.array_equal(picture(model), reference)
    assert memory.peak_bytes == sum(module_bytes(m) for m in stages(model)) > budget
    assert memory.log == []  # no move at all: everything was placed at load


def test_auto_policy_from_budget_and_model_size(tiny_checkpoints, sd1, sdxl):
    sizes = [module_bytes(m) for m in stages(sd1)]
    total, biggest = sum(sizes), max(sizes)
    assert DeviceMemory("cpu", None, "auto").resolve("sd1", sizes) == "all"  # the CPU: no budget
    assert DeviceMemory("cpu", total, "auto", reserve_bytes=0).resolve("sd1", sizes) == "all"
    assert DeviceMemory("cpu", total - 1, "auto", reserve_bytes=0).resolve("sd1", sizes) == "medvram"
    assert DeviceMemory("cpu", biggest - 1, "auto", reserve_bytes=0).resolve("sd1", sizes) == "lowvram"
    # a budget of 4 GiB keeps 20 % for activations (at most 2 GiB)
    assert DeviceMemory("cpu", 4 << 30, "auto").reserve_bytes == (4 << 30) // 5
    # the flags override the automatic choice; --medvram-sdxl only touches SDXL
    assert policy_from_flags() == "auto" and policy_from_flags(lowvram=True, medvram=True) == "lowvram"
    assert policy_from_flags(medvram=True) == "medvram" and policy_from_flags(medvram_sdxl=True) == "medvram-sdxl"
    shared = DeviceMemory("cpu", None, "medvram-sdxl")
    a = load_checkpoint(tiny_checkpoints.sd1, POLICY, memory=shared)
    b = load_checkpoint(tiny_checkpoints.sdxl, POLICY, memory=shared)
    assert (a.memory_policy, b.memory_policy) == ("all", "medvram")
    with pytest.raises(ValueError, match="unknown memory policy"):
        DeviceMemory("cpu", None, "highvram")


def test_all_resident_places_everything_at_load_and_offload_frees_it(tiny_checkpoints, sd1):
    memory = DeviceMemory("cpu", None, "all")
    model = load_checkpoint(tiny_checkpoints.sd1, POLICY, memory=memory)
    assert memory.resident_bytes == sum(module_bytes(m) for m in stages(model))
    assert all(memory.is_resident(m) for m in stages(model))
    memory.offload(model)
    assert memory.resident_bytes == 0 and not memory.is_resident(model.unet)
    memory.release(model)
    memory.bring(model.unet)  # forgotten: no longer placed by the owner
    assert memory.resident_bytes == 0
