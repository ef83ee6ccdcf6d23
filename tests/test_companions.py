"""Companion files (text encoders and VAEs a checkpoint leaves out) found by their tensors, ranked by
what their names say; a broken file in the folder is skipped, never fatal."""

import torch
from safetensors.torch import save_file

from modules.services.companions import CompanionFiles


def _write(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(shape) for k, shape in state.items()}, str(path))


CLIP_L = {"text_model.embeddings.token_embedding.weight": (49408, 768)}
CLIP_G = {"text_model.embeddings.token_embedding.weight": (49408, 1280)}
T5 = {"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8), "shared.weight": (32128, 8)}
VAE16 = {"decoder.conv_in.weight": (8, 16, 3, 3)}
VAE4 = {"decoder.conv_in.weight": (8, 4, 3, 3)}


def test_found_by_contents_and_ranked_by_name(tmp_path):
    te, vae = tmp_path / "text_encoder", tmp_path / "VAE"
    _write(te / "a_encoder.safetensors", CLIP_L)  # a CLIP-L under another name
    _write(te / "clip_l.safetensors", CLIP_L)
    _write(te / "clip_g.safetensors", CLIP_G)
    _write(te / "t5xxl_fp8_e4m3fn.safetensors", T5)
    _write(te / "t5xxl_fp16.safetensors", T5)
    _write(vae / "ae.safetensors", VAE16)
    _write(vae / "sd3_vae.safetensors", VAE16)
    _write(vae / "sdxl_vae.safetensors", VAE4)  # 4 channels: no companion of these kinds
    (te / "broken.safetensors").write_bytes(b"\x00" * 5)
    companions = CompanionFiles([te, tmp_path / "clip"], [vae])
    assert companions("clip_l") == te / "clip_l.safetensors"  # the name says it
    assert companions.candidates("clip_l") == [te / "a_encoder.safetensors", te / "clip_l.safetensors"]
    assert companions("clip_g") == te / "clip_g.safetensors"
    assert companions("t5xxl") == te / "t5xxl_fp16.safetensors"  # fp16 before fp8
    assert companions("flux_vae") == vae / "ae.safetensors"
    assert companions("sd3_vae") == vae / "sd3_vae.safetensors"
    assert str(te) in companions.where["t5xxl"] and str(vae) in companions.where["flux_vae"]


def test_nothing_found_is_none(tmp_path):
    companions = CompanionFiles([tmp_path / "missing"], [tmp_path / "also-missing"])
    assert companions("t5xxl") is None and companions("flux_vae") is None
