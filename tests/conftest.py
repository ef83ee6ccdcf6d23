"""Shared test set-up: offline hub, repo root importable, session-wide tiny checkpoints."""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may ever be fetched from a model hub

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402

from modules.core import devices as _devices  # noqa: E402

# The suite compares pictures with fp32 references (diffusers, k-diffusion, stored values), so the engines
# it builds in this process compute in fp32 on every CPU; servers it starts get `--precision full`
# (tests/server.py). tests/test_precision_default.py checks the automatic bf16 choice with the real probe.
REAL_CPU_NATIVE_BF16 = getattr(_devices.cpu_native_bf16, "real", _devices.cpu_native_bf16)  # (imported twice)


def _suite_in_fp32() -> bool:
    return False


_suite_in_fp32.real = REAL_CPU_NATIVE_BF16
_devices.cpu_native_bf16 = _suite_in_fp32

QUICKSETTINGS = ["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"]  # the shared server's
UI_CONFIG = {"txt2img/Sampling steps/maximum": 151}  # the shared server's ui-config.json (only its browser test reads it)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Tiny random-weight single files in the real LDM layouts, under a temp `models/` folder.

    Returns tests.fixtures.tiny_models.TinyCheckpoints: `.models_dir`, `.checkpoints_dir`
    (models/Stable-diffusion) and the paths `.sd1`, `.sd1_ckpt`, `.sd2_v` (+ tiny-sd2-v.yaml),
    `.sdxl`, `.sd1_inpainting`; `.components(name)` rebuilds the identical diffusers modules.
    """
    from tests.fixtures.tiny_models import write_fixture_set

    return write_fixture_set(tmp_path_factory.mktemp("tiny") / "models")


def _load(path):
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint

    return load_checkpoint(path, choose_policy()[0])


# Loaded models, one per test module: a module may change its model (LoRA weights stay applied
# between jobs, tiling switches padding), and that must not reach another module's tests.
@pytest.fixture(scope="module")
def sd1(tiny_checkpoints):
    return _load(tiny_checkpoints.sd1)


@pytest.fixture(scope="module")
def sdxl(tiny_checkpoints):
    return _load(tiny_checkpoints.sdxl)


@pytest.fixture(scope="module")
def sd1_inpainting(tiny_checkpoints):
    return _load(tiny_checkpoints.sd1_inpainting)


@pytest.fixture(scope="session")
def server(tiny_checkpoints, tmp_path_factory):
    """One real Easel server (UI + API) over the tiny checkpoints, shared by the HTTP and browser
    tests. Its data dir (settings, outputs) is a fresh temp folder. The default checkpoint is the
    tiny SD1 one."""
    from tests.server import run_server

    data = tmp_path_factory.mktemp("server-data")
    # as many A1111 users have it: the VAE and Clip skip beside the checkpoint picker
    (data / "config.json").write_text(json.dumps({"quicksettings_list": QUICKSETTINGS}), encoding="utf-8")
    (data / "ui-config.json").write_text(json.dumps(UI_CONFIG), encoding="utf-8")  # A1111's --ui-config-file
    with run_server(data, tiny_checkpoints.checkpoints_dir, "--api", "--ckpt", str(tiny_checkpoints.sd1)) as srv:
        yield srv
