"""Checkpoints kept in RAM (A1111's sd_checkpoints_limit) and VAE files (sd_vae_checkpoint_cache):
switching back reads no file, LoRA patches stay with their model, memory is bounded by the limit."""

import gc
import time
import weakref

import numpy as np
import torch
from safetensors.torch import save_file

from modules.core import vae as core_vae
from modules.core.devices import choose_policy
from modules.core.memory import DeviceMemory
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest
from modules.services import model_cache as cache_module
from modules.services.checkpoints import CheckpointInfo
from modules.services.loras import LoraRegistry
from modules.services.model_cache import ModelCache
from tests.fixtures.tiny_loras import _K, RANK, _T, _tensors, _write, module_of

POLICY, _ = choose_policy()
SMALL = dict(prompt="a red circle", width=64, height=64, steps=2, seed=5, save_images=False)


def info(path) -> CheckpointInfo:
    return CheckpointInfo(path, path.stem, path.stem)


def counting(monkeypatch) -> list:
    """Every checkpoint file read by the cache (the real loader underneath)."""
    calls = []
    real = cache_module.load_checkpoint

    def load(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "load_checkpoint", load)
    return calls


def test_switching_back_to_a_cached_checkpoint_reads_no_file(tiny_checkpoints, monkeypatch):
    calls = counting(monkeypatch)
    cache = ModelCache(POLICY, limit=2)
    a, b = tiny_checkpoints.sd1, tiny_checkpoints.sd2_v
    started = time.perf_counter()
    model_a = cache.load(info(a))
    uncached = time.perf_counter() - started
    cache.load(info(b))
    started = time.perf_counter()
    again = cache.load(info(a))
    cached = time.perf_counter() - started
    assert again is model_a and cache.model is model_a and cache.info.filename == a
    assert calls == [str(a), str(b)] and cache.file_loads == 2
    assert cached < uncached / 5, (cached, uncached)
    assert cache.cached_filenames() == [str(b), str(a)]  # least recently used first


def test_the_limit_bounds_memory_least_recently_used_goes(tiny_checkpoints, monkeypatch):
    calls = counting(monkeypatch)
    cache = ModelCache(POLICY, limit=2)
    a, b, c = tiny_checkpoints.sd1, tiny_checkpoints.sd2_v, tiny_checkpoints.sd1_inpainting
    first = weakref.ref(cache.load(info(a)).unet)
    second = weakref.ref(cache.load(info(b)).unet)
    cache.load(info(a))  # a is now the most recently used: b goes when c comes
    cache.load(info(c))
    gc.collect()
    assert cache.cached_filenames() == [str(a), str(c)]
    assert first() is not None and second() is None
    cache.load(info(b))  # read again: it had been released
    assert calls == [str(a), str(b), str(c), str(b)]
    assert cache.cached_filenames() == [str(c), str(b)]
    gc.collect()
    assert first() is None  # released for good, not kept alive anywhere
    cache.set_limit(1)  # a lower limit releases the oldest at once, never the current one
    assert cache.cached_filenames() == [str(b)] and cache.info.filename == b


def test_default_limit_keeps_one_checkpoint(tiny_checkpoints, monkeypatch):
    calls = counting(monkeypatch)
    cache = ModelCache(POLICY)
    for path in (tiny_checkpoints.sd1, tiny_checkpoints.sd2_v, tiny_checkpoints.sd1):
        cache.load(info(path))
    assert len(calls) == 3 and cache.cached_filenames() == [str(tiny_checkpoints.sd1)]


def test_a_cached_checkpoint_is_moved_off_the_device(tiny_checkpoints):
    memory = DeviceMemory("cpu", None, "all")
    cache = ModelCache(POLICY, memory=memory, limit=2)
    a = cache.load(info(tiny_checkpoints.sd1))
    assert memory.is_resident(a.unet)
    b = cache.load(info(tiny_checkpoints.sd2_v))
    assert not memory.is_resident(a.unet) and memory.is_resident(b.unet)
    cache.load(info(tiny_checkpoints.sd1))
    cache.load(info(tiny_checkpoints.sd1_inpainting))  # limit 2: the LRU one (sd2_v) is released
    cache.unload()
    assert memory.resident_bytes == 0 and cache.cached_filenames() == []


def test_lora_patches_never_leak_between_cached_models(tiny_checkpoints, tmp_path):
    cache = ModelCache(POLICY, limit=2)
    a = cache.load(info(tiny_checkpoints.sd1))
    name = "cache_test_lora"
    target = module_of(a, "unet", f"{_T}.attn1.to_q")
    tensors = _tensors(torch.Generator().manual_seed(3), f"{_K}_attn1_to_q", "lora", tuple(target.weight.shape), {},
                       float(RANK))
    tensors = {k: v * 40 for k, v in tensors.items()}  # strong enough to change the tiny picture
    _write(tmp_path / f"{name}.safetensors", tensors)
    settings = GenerationSettings(find_lora=LoraRegistry([tmp_path]).require)

    def picture(model, prompt=SMALL["prompt"]):
        return np.asarray(generate(GenerationRequest(**{**SMALL, "prompt": prompt}), model, settings).images[0])

    original_a = picture(a)
    with_lora_a = picture(a, f"{SMALL['prompt']} <lora:{name}:1>")
    assert not np.array_equal(with_lora_a, original_a)
    b = cache.load(info(tiny_checkpoints.sd1_inpainting))
    picture(b)  # a job on B while A, cached, still holds the LoRA of its last job
    assert cache.load(info(tiny_checkpoints.sd1)) is a  # back to A from the cache: no LoRA asked for
    assert np.array_equal(picture(a), original_a)


def test_vae_files_cached_in_ram(tiny_checkpoints, tmp_path):
    cache = ModelCache(POLICY)
    model = cache.load(info(tiny_checkpoints.sd1))
    path = tmp_path / "other.vae.safetensors"
    save_file({k: v.contiguous() * 1.01 for k, v in model.vae.state_dict().items()}, path)
    own = model.vae
    states = core_vae.VaeStateCache(0)  # sd_vae_checkpoint_cache = 0: every switch reads the file
    for _ in range(2):
        core_vae.load_vae(model, path, states)
        core_vae.restore_vae(model)
    assert states.reads == 2 and model.vae is own
    states.set_limit(1)
    for _ in range(3):
        core_vae.load_vae(model, path, states)
        external = model.vae
        core_vae.restore_vae(model)
    assert states.reads == 3  # one more read, then the cache
    assert torch.equal(next(external.parameters()), next(own.parameters()) * 1.01)


def test_options_reach_the_cache():
    cache = ModelCache(POLICY)
    values = {"sd_checkpoints_limit": 3, "sd_vae_checkpoint_cache": 2, "auto_vae_precision": False,
              "vae_tiling": "Always", "fp8_storage": "Enable for SDXL", "cache_fp16_weight": True}
    cache.apply_options(values.get)
    options = cache.run_options
    assert (cache.limit, cache.vae_cache.limit) == (3, 2)
    assert (options.auto_vae_precision, options.vae_tiling, options.fp8_storage, options.cache_fp16_weight) == \
        (False, "Always", "Enable for SDXL", True)
