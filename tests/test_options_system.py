"""A1111's System / Stable Diffusion options that change how models are read and kept:
disable_mmap_load_safetensors, sd_checkpoints_keep_in_cpu, memmon_poll_rate, print_hypernet_extra."""

from __future__ import annotations

import shutil
import time
import types

import pytest
import torch

from modules.core import hypernetwork
from modules.core.checkpoint_file import CheckpointFile, reading_whole
from modules.core.devices import choose_policy
from modules.core.memory import DeviceMemory, module_bytes
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest
from modules.memmon import MemUsageMonitor
from modules.services import model_cache as cache_module
from modules.services.checkpoints import CheckpointInfo
from modules.services.hypernetworks import HypernetworkRegistry
from modules.services.model_cache import ModelCache

POLICY, _ = choose_policy()


def info(path) -> CheckpointInfo:
    return CheckpointInfo(path, path.stem, path.stem)


def options(**values):
    return lambda key: values.get(key)


# ---- disable_mmap_load_safetensors -----------------------------------------------------------------

def test_read_whole_gives_the_same_tensors_in_storage_of_their_own(tiny_checkpoints, tmp_path):
    path = tmp_path / "copy.safetensors"
    shutil.copyfile(tiny_checkpoints.sd1, path)
    lazy = CheckpointFile(path)
    with reading_whole(True):
        whole = CheckpointFile(path)
    assert whole.read_whole and not lazy.read_whole
    keys = list(lazy.shapes)[:40]
    read = {k: whole.get(k) for k in keys}
    converted = {k: whole.get(k, torch.float32) for k in keys}
    path.write_bytes(b"\0" * path.stat().st_size)  # the file overwritten: what was read does not change
    for key in keys:
        assert torch.equal(read[key], converted[key].to(read[key].dtype))
        assert read[key].untyped_storage().nbytes() == read[key].numel() * read[key].element_size()
    whole.close()
    lazy.close()
    assert all(torch.equal(read[k], CheckpointFile(tiny_checkpoints.sd1).get(k)) for k in keys[:5])


def test_the_option_reads_checkpoints_whole_and_the_model_is_the_same(tiny_checkpoints, tmp_path, monkeypatch):
    path = tmp_path / "sd1.safetensors"
    shutil.copyfile(tiny_checkpoints.sd1, path)
    opened = []
    real = cache_module.load_checkpoint

    def load(*args, **kwargs):  # the real loader; notes how the files it opens are read
        original_init = CheckpointFile.__init__

        def init(self, *a, **k):
            original_init(self, *a, **k)
            opened.append(self.read_whole)

        monkeypatch.setattr(CheckpointFile, "__init__", init)
        try:
            return real(*args, **kwargs)
        finally:
            monkeypatch.setattr(CheckpointFile, "__init__", original_init)

    monkeypatch.setattr(cache_module, "load_checkpoint", load)
    plain = ModelCache(POLICY)
    plain.apply_options(options())
    reference = plain.load(info(tiny_checkpoints.sd1))
    assert opened == [False]
    cache = ModelCache(POLICY)
    cache.apply_options(options(disable_mmap_load_safetensors=True))
    model = cache.load(info(path))
    assert opened == [False, True]
    path.unlink()  # nothing of the model refers to the file
    for mine, theirs in ((model.unet, reference.unet), (model.vae, reference.vae),
                         (model.text_encoders[0], reference.text_encoders[0])):
        ours, others = mine.state_dict(), theirs.state_dict()
        assert ours.keys() == others.keys() and all(torch.equal(ours[k], others[k]) for k in ours)


# ---- sd_checkpoints_keep_in_cpu --------------------------------------------------------------------

@pytest.mark.parametrize("keep_in_cpu", [True, False])
def test_cached_checkpoints_leave_the_device_only_with_keep_in_cpu(tiny_checkpoints, keep_in_cpu):
    memory = DeviceMemory("cpu", None, "all")
    cache = ModelCache(POLICY, memory=memory, limit=2)
    cache.apply_options(options(sd_checkpoints_limit=2, sd_checkpoints_keep_in_cpu=keep_in_cpu))
    a = cache.load(info(tiny_checkpoints.sd1))
    parts_a = [a.unet, a.vae, *a.text_encoders]
    b = cache.load(info(tiny_checkpoints.sd2_v))
    assert all(memory.is_resident(m) for m in (b.unet, b.vae, *b.text_encoders))
    assert all(memory.is_resident(m) == (not keep_in_cpu) for m in parts_a)
    both = sum(module_bytes(m) for m in (*parts_a, b.unet, b.vae, *b.text_encoders))
    assert memory.resident_bytes == (both if not keep_in_cpu else both - sum(module_bytes(m) for m in parts_a))
    outs = [m for m in memory.log if m.direction == "out"]
    assert (not outs) == (not keep_in_cpu)
    cache.unload()
    assert memory.resident_bytes == 0


def test_without_keep_in_cpu_the_budget_still_decides(tiny_checkpoints):
    """keep_in_cpu off: the previous checkpoint stays on the device only while the budget has room;
    the memory owner evicts its parts (least recently used first) when the current one needs it."""
    memory = DeviceMemory("cpu", None, "all")
    cache = ModelCache(POLICY, memory=memory, limit=2)
    cache.apply_options(options(sd_checkpoints_limit=2, sd_checkpoints_keep_in_cpu=False))
    a = cache.load(info(tiny_checkpoints.sd1))
    size_a = memory.resident_bytes
    memory.budget_bytes = size_a + size_a // 2  # room for one checkpoint and a half
    b = cache.load(info(tiny_checkpoints.sd1_inpainting))
    assert memory.overflows == 0 and memory.resident_bytes <= memory.budget_bytes
    assert all(memory.is_resident(m) for m in (b.unet, b.vae, *b.text_encoders))
    assert not memory.is_resident(a.unet)  # the biggest, least recently used part went
    cache.unload()


# ---- memmon_poll_rate ------------------------------------------------------------------------------

def _job(monitor: MemUsageMonitor, seconds: float) -> dict:
    monitor.monitor()
    time.sleep(seconds)
    data = monitor.stop()
    time.sleep(0.15)  # the poll under way ends
    return data


@pytest.mark.parametrize("rate", [0, 8, 40])
def test_the_monitor_polls_as_often_as_the_option_says(rate):
    opts = types.SimpleNamespace(memmon_poll_rate=rate)
    monitor = MemUsageMonitor("MemMon", torch.device("cpu"), opts)
    data = _job(monitor, 0.5)
    expected = rate * 0.5
    if rate == 0:
        assert monitor.polls == 0 and "min_free" not in data
    else:
        assert expected * 0.4 <= monitor.polls <= expected + 2
        assert data["min_free"] > 0
    opts.memmon_poll_rate = 20  # read at each job
    _job(monitor, 0.3)
    assert 2 <= monitor.polls <= 8


# ---- print_hypernet_extra --------------------------------------------------------------------------

def _mlp(width: int, generator: torch.Generator) -> dict:
    return {"linear.0.weight": torch.randn(2 * width, width, generator=generator) * 0.1,
            "linear.0.bias": torch.zeros(2 * width),
            "linear.2.weight": torch.randn(width, 2 * width, generator=generator) * 0.1,
            "linear.2.bias": torch.zeros(width)}


def test_print_hypernet_extra_prints_a1111s_description_when_a_job_loads_one(sd1, tmp_path, capsys):
    width = sd1.unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(1)
    torch.save({width: [_mlp(width, g), _mlp(width, g)], "layer_structure": [1, 2, 1], "activation_func": "relu",
                "is_layer_norm": False, "use_dropout": False, "activate_output": False,
                "weight_initialization": "XavierUniform", "optional_info": "made for a test"}, tmp_path / "tiny.pt")
    flag = {"on": False}
    registry = HypernetworkRegistry([tmp_path], print_extra=lambda: flag["on"])
    request = GenerationRequest(prompt="a cube <hypernet:tiny:1>", width=64, height=64, steps=1, seed=1,
                                save_images=False)
    settings = GenerationSettings(find_hypernetwork=registry.require)
    generate(request, sd1, settings)
    assert "Layer structure" not in capsys.readouterr().out
    flag["on"] = True
    generate(request, sd1, settings)
    out = capsys.readouterr().out
    expected = ["  INFO:\n made for a test\n", "  Layer structure: [1, 2, 1]", "  Activation function: relu",
                "  Weight initialization: XavierUniform", "  Layer norm: False", "  Dropout usage: False",
                "  Activate last layer: False", "  Dropout structure: [0, 0, 0]"]
    assert "\n".join(expected) in out


def test_the_description_takes_a1111s_defaults():
    lines = hypernetwork.extra_info({"layer_structure": [1, 1.5, 1.5, 1], "use_dropout": True,
                                     "last_layer_dropout": True})
    assert lines == ["  Layer structure: [1, 1.5, 1.5, 1]", "  Activation function: None",
                     "  Weight initialization: Normal", "  Layer norm: False", "  Dropout usage: True",
                     "  Activate last layer: True", "  Dropout structure: [0, 0.3, 0.3, 0]"]
