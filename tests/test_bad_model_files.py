"""Bad files in the user's model folders: an HTML page saved by a failed download, a bogus or huge
header length, a cut-off copy, an empty file, a .ckpt that is neither zip nor pickle. The bounded
safetensors header reader refuses each with a message naming the file; over real HTTP, a server
whose folders hold them beside good files starts, names them in its log, keeps listing and using
the good ones, and answers requests that name a bad one with a 4xx naming the field."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from modules.core import embeddings as core_embeddings
from modules.core.infotext import parse_infotext
from modules.core.checkpoint_file import (MAX_HEADER_BYTES, CheckpointError, CheckpointFile, SafetensorsHeaderError,
                                          probe, read_safetensors_header)
from tests.api_common import BASE, assert_error
from tests.fixtures.tiny_embeddings import random_vectors, write_a1111_pt

HTML = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>" + b"<p>wait</p>" * 300 + b"</html>"
TE_LAYER = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"


def _header_file(header: bytes, length: int | None = None, tail: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + tail


# what each bad file holds; every model folder gets a few of them
BAD = {
    "html_page": HTML,
    "bogus_length": _header_file(b'{"a": {}}', length=5000),
    "huge_length": _header_file(b"{}", length=2**62),
    "not_json": _header_file(b"\x00\xffnot json at all"),
    "json_list": _header_file(b"[1, 2, 3]"),
    "zero_bytes": b"",
}


# ------------------------------------------------------------------------------ the bounded reader

@pytest.mark.parametrize("name, reason", [
    ("html_page", "looks like an HTML page"),
    ("bogus_length", "header of 5000 bytes, but the file has"),
    ("huge_length", f"header of {2**62} bytes"),
    ("not_json", "its header is not JSON"),
    ("json_list", "its header is a JSON list, not an object"),
    ("zero_bytes", "the file is empty"),
])
def test_reader_refuses_each_bad_header_naming_the_file(tmp_path, name, reason):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(BAD[name])
    with pytest.raises(SafetensorsHeaderError) as info:
        read_safetensors_header(path)
    assert isinstance(info.value, ValueError) and info.value.path == path
    assert str(info.value).startswith(f"{name}.safetensors is not a readable safetensors file: ")
    assert reason in info.value.reason
    with pytest.raises(CheckpointError, match=f"{name}.safetensors"):  # the loader says the same
        CheckpointFile(path)


def test_reader_checks_the_cap_and_the_tensor_entries(tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as fh:  # a sparse file larger than the cap, with a header claiming all of it
        fh.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        fh.truncate(MAX_HEADER_BYTES + 100)
    with pytest.raises(SafetensorsHeaderError, match="exceeds the 100000000-byte limit"):
        read_safetensors_header(path)
    entries = {
        "offsets": ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "outside the file's 8 data bytes"),
        "size": ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, "its shape [4] needs another size"),
        "dtype": ({"dtype": "Q99", "shape": [1], "data_offsets": [0, 8]}, "unsupported type 'Q99'"),
        "shape": ({"dtype": "U8", "shape": [-8], "data_offsets": [0, 8]}, "invalid shape [-8]"),
        "entry": (7, "not described by an object"),
    }
    for name, (entry, reason) in entries.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(_header_file(json.dumps({"t": entry}).encode(), tail=b"\x00" * 8))
        with pytest.raises(SafetensorsHeaderError) as info:
            read_safetensors_header(path)
        assert reason in info.value.reason


def test_reader_gives_a_good_files_tensors_metadata_and_data_start(tmp_path):
    path = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(path), metadata={"ss_output_name": "g"})
    header = read_safetensors_header(path)
    assert header.metadata == {"ss_output_name": "g"}
    assert header.tensors["w"]["shape"] == [2, 3] and header.tensors["w"]["data_offsets"] == [0, 24]
    assert header.data_start + 24 == path.stat().st_size
    assert probe(path) == header


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"),
    (HTML, "neither a torch zip archive nor a pickle"),
    (b"PK\x03\x04 a zip archive cut short", "corrupt or truncated"),
])
def test_ckpt_that_is_not_a_torch_file_is_refused_naming_it(tmp_path, content, reason):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"bad.ckpt.*{reason}|bad.ckpt is empty"):
        CheckpointFile(path)
    if content[:2] != b"PK":  # the first look sees the magic bytes; a damaged zip needs the full read
        with pytest.raises(CheckpointError, match=reason):
            probe(path)


def test_an_oversized_embedding_file_is_not_read(tmp_path, monkeypatch):
    path = write_a1111_pt(tmp_path / "big.pt", random_vectors(2))
    monkeypatch.setattr(core_embeddings, "MAX_FILE_BYTES", 100)
    with pytest.raises(core_embeddings.EmbeddingFileError, match="more than any embedding"):
        core_embeddings.read_embedding_file(path)


# ----------------------------------------------------------------------------- a real server

def _write_bad(folder, suffix: str, names=tuple(BAD)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}{suffix}").write_bytes(BAD[name])
    return [f"{name}{suffix}" for name in names]


def _good_lora(path, checkpoint) -> None:
    """A kohya LoRA for the tiny SD1's first text-encoder attention layer (its shape from the header)."""
    out_features, in_features = read_safetensors_header(checkpoint).tensors[TE_LAYER]["shape"]
    gen = torch.Generator().manual_seed(5)
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{key}.lora_down.weight": torch.randn(2, in_features, generator=gen),
               f"{key}.lora_up.weight": torch.randn(out_features, 2, generator=gen), f"{key}.alpha": torch.tensor(2.0)},
              str(path))


def _good_vae(path, checkpoint) -> None:
    """The tiny SD1's own VAE, as a VAE file with its LDM names."""
    ckpt = CheckpointFile(checkpoint)
    try:
        save_file(ckpt.read_prefix("first_stage_model."), str(path))
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def bad_server(tiny_checkpoints, tmp_path_factory):
    from tests.server import run_server

    root = tmp_path_factory.mktemp("bad-files")
    sd1 = tiny_checkpoints.sd1
    ckpts, loras, embeddings, vaes = root / "Stable-diffusion", root / "Lora", root / "embeddings", root / "VAE"
    bad = {
        # the bad checkpoints sort before the good one: the default must skip them (no --ckpt)
        "checkpoint": _write_bad(ckpts, ".safetensors") + _write_bad(ckpts, ".ckpt", ["html_page", "zero_bytes"]),
        "LoRA": _write_bad(loras, ".safetensors", ["html_page", "bogus_length", "zero_bytes"]) + ["page.pt"],
        "embedding": _write_bad(embeddings, ".safetensors", ["html_page", "huge_length", "json_list"])
        + _write_bad(embeddings, ".pt", ["html_page"]) + _write_bad(embeddings, ".png", ["html_page"]),
        "VAE": _write_bad(vaes, ".safetensors", ["html_page", "not_json"]) + _write_bad(vaes, ".pt", ["html_page"]),
    }
    (loras / "page.pt").write_bytes(HTML)
    data = sd1.read_bytes()
    (ckpts / "a_truncated.safetensors").write_bytes(data[: len(data) // 2])  # header whole, tensors cut off
    bad["checkpoint"].append("a_truncated.safetensors")
    shutil.copy(sd1, ckpts / "tiny-sd1.safetensors")
    _good_lora(loras / "good_lora.safetensors", sd1)
    write_a1111_pt(embeddings / "goodemb.pt", random_vectors(2))
    _good_vae(vaes / "good_vae.safetensors", sd1)
    with run_server(root / "data", ckpts, "--api", "--nowebui", "--lora-dir", str(loras), "--embeddings-dir",
                    str(embeddings), "--vae-dir", str(vaes)) as srv:
        srv.bad = bad
        srv.dirs = {"ckpt": ckpts, "lora": loras}
        yield srv


def test_server_starts_and_its_log_names_each_bad_file(bad_server):
    assert bad_server.post("/sdapi/v1/refresh-embeddings").status_code == 200  # after the start-up load
    log = bad_server.output()
    assert "Traceback" not in log and "MemoryError" not in log
    for kind, names in bad_server.bad.items():
        for name in names:
            lines = [line for line in log.splitlines() if name in line]
            assert lines, f"the log does not name the bad {kind} file {name}:\n{log}"
            assert any(word in " ".join(lines) for word in ("skipped", "cannot be loaded")), lines
    assert "html_page.safetensors is not a readable safetensors file" in log and "failed download" in log


def test_listings_keep_the_good_files_and_refreshes_answer_200(bad_server):
    for route in ("refresh-loras", "refresh-checkpoints", "refresh-embeddings", "refresh-vae"):
        r = bad_server.post(f"/sdapi/v1/{route}")
        assert r.status_code == 200, (route, r.text)
    loras = {item["name"] for item in bad_server.get("/sdapi/v1/loras").json()}
    assert loras == {"good_lora"}  # unreadable LoRAs are not listed (A1111's list has no bad entries)
    models = {item["title"].split(" [")[0] for item in bad_server.get("/sdapi/v1/sd-models").json()}
    assert "tiny-sd1.safetensors" in models and "html_page.safetensors" in models  # listed, refused on use
    body = bad_server.get("/sdapi/v1/embeddings").json()
    assert set(body["loaded"]) == {"goodemb"}
    assert {"html_page", "huge_length", "json_list"} <= set(body["skipped"])
    assert "its header is a JSON list" in body["skipped"]["json_list"]["reason"]
    assert f"header of {2**62} bytes" in body["skipped"]["huge_length"]["reason"]
    vaes = {item["model_name"] for item in bad_server.get("/sdapi/v1/sd-vae").json()}
    assert "good_vae.safetensors" in vaes


@pytest.mark.parametrize("file", ["html_page.safetensors", "bogus_length.safetensors", "zero_bytes.safetensors",
                                  "page.pt"])
def test_a_prompt_naming_a_bad_lora_is_a_4xx_naming_the_file(bad_server, file):
    name = file.split(".")[0]
    r = bad_server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": f"a cube <lora:{name}:1>"})
    message = assert_error(r, "prompt", status=(422,))
    assert f"LoRA '{name}' cannot be used: {file} " in message


@pytest.mark.parametrize("name", ["html_page.safetensors", "bogus_length.safetensors", "huge_length.safetensors",
                                  "zero_bytes.safetensors", "a_truncated.safetensors", "html_page.ckpt",
                                  "zero_bytes.ckpt"])
def test_a_bad_hires_checkpoint_is_a_422_naming_hr_checkpoint_name(bad_server, name):
    r = bad_server.post("/sdapi/v1/txt2img", json={**BASE, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
                                                   "denoising_strength": 0.5, "hr_checkpoint_name": name})
    message = assert_error(r, "hr_checkpoint_name", status=(422,))
    assert name in message


def test_a_bad_main_checkpoint_or_vae_is_a_422_naming_its_field(bad_server):
    r = bad_server.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"sd_model_checkpoint": "huge_length"}})
    assert "huge_length.safetensors" in assert_error(r, "sd_model_checkpoint", status=(422,))
    r = bad_server.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"sd_vae": "html_page.safetensors"}})
    assert "html_page.safetensors" in assert_error(r, "sd_vae", status=(422,))


def test_generation_with_the_good_files_still_works_afterwards(bad_server):
    r = bad_server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "a goodemb cube <lora:good_lora:0.8>",
                                                   "override_settings": {"sd_vae": "good_vae.safetensors"}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sd_model_name"] == "tiny-sd1"  # the readable checkpoint was the default, not a bad one
    assert len(r.json()["images"]) == 1
    infotext = parse_infotext(info["infotexts"][0])
    assert infotext["Lora hashes"].startswith("good_lora: ") and infotext["TI hashes"].startswith("goodemb: ")
    assert info["sd_vae_name"] == "good_vae.safetensors"
