"""--torch-compile (issue 16): the UNet's calls go through torch.compile when a checkpoint loads. The
flag is meant for CUDA with inductor; here the CPU runs the same path with the `eager` backend (inductor's
first compile of even the tiny UNet takes minutes on two cores), which makes the compiled pictures
bit-identical to the plain ones, so every difference would be the wiring's: LoRA patches made after the
compile must still reach the compiled calls, and medvram / lowvram leave the UNet uncompiled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import cmd_args
from modules.core.devices import choose_policy
from modules.core.memory import DeviceMemory
from modules.core.model_loader import load_checkpoint
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest
from modules.services.loras import LoraRegistry
from tests.fixtures.tiny_loras import _K, RANK, _T, _tensors, _write, module_of

SMALL = dict(prompt="a red circle", width=64, height=64, steps=2, seed=5, save_images=False)


def _picture(model, settings, prompt=SMALL["prompt"]):
    return np.asarray(generate(GenerationRequest(**{**SMALL, "prompt": prompt}), model, settings).images[0])


def test_compiled_unet_gives_the_same_pictures_and_sees_lora_patches(tiny_checkpoints, tmp_path):
    plain = load_checkpoint(tiny_checkpoints.sd1, choose_policy(precision="full")[0])
    policy, notes = choose_policy(precision="full", compile_backend="eager")
    compiled = load_checkpoint(tiny_checkpoints.sd1, policy)
    assert compiled.extra["torch_compile"] == "compiled with torch.compile (eager)"
    assert compiled.unet._compiled_call_impl is not None and plain.unet._compiled_call_impl is None
    assert "UNet compiled (eager, default)" in policy.describe()
    assert any("--torch-compile on the cpu" in n for n in notes)

    name = "compile_test_lora"
    target = module_of(plain, "unet", f"{_T}.attn1.to_q")
    tensors = _tensors(torch.Generator().manual_seed(3), f"{_K}_attn1_to_q", "lora", tuple(target.weight.shape), {},
                       float(RANK))
    _write(tmp_path / f"{name}.safetensors", {k: v * 40 for k, v in tensors.items()})
    settings = GenerationSettings(find_lora=LoraRegistry([tmp_path]).require)
    lora_prompt = f"{SMALL['prompt']} <lora:{name}:1>"

    without = _picture(compiled, settings)
    assert np.array_equal(without, _picture(plain, settings))
    with_lora = _picture(compiled, settings, lora_prompt)  # patched after the first compiled call
    assert not np.array_equal(with_lora, without)
    assert np.array_equal(with_lora, _picture(plain, settings, lora_prompt))
    assert np.array_equal(_picture(compiled, settings), without)  # and taken off again


def test_medvram_and_lowvram_leave_the_unet_uncompiled(tiny_checkpoints):
    policy, _ = choose_policy(precision="full", compile_backend="eager")
    for mode in ("medvram", "lowvram"):
        model = load_checkpoint(tiny_checkpoints.sd1, policy, memory=DeviceMemory("cpu", policy=mode))
        assert model.extra["torch_compile"] == f"not compiled: the UNet is moved in and out under {mode}"
        assert model.unet._compiled_call_impl is None


def test_the_flags_reach_the_engines_policy(tiny_checkpoints, tmp_path):
    import webui

    opts = cmd_args.parse_args(["--torch-compile", "--torch-compile-mode", "max-autotune"], extra_preloads=[])
    assert opts.torch_compile and opts.torch_compile_backend == "inductor" and opts.torch_compile_mode == "max-autotune"
    assert not cmd_args.parse_args([], extra_preloads=[]).torch_compile
    opts = cmd_args.parse_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_checkpoints.checkpoints_dir),
                                "--torch-compile", "--torch-compile-backend", "eager", "--skip-load-model-at-start"],
                               extra_preloads=[])
    policy = webui.build_engine(opts).models.policy
    assert (policy.compile_backend, policy.compile_mode) == ("eager", "default")
    # a backend torch.compile does not have stops the start with a message, not every checkpoint load
    opts.torch_compile_backend = "no-such-backend"
    with pytest.raises(SystemExit, match="'no-such-backend' is not a torch.compile backend; one of: .*inductor"):
        webui.build_engine(opts)
