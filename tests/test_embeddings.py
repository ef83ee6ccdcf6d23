"""Textual-inversion embeddings on the tiny real checkpoints: every file layout A1111 reads, the
vectors reaching the text encoder exactly, chunking, pixels, infotext, the folder and the API."""

import hashlib
import json

import numpy as np
import pytest
import torch

from modules.core.conditioning import CHUNK, TextConditioner
from modules.core.embeddings import (ModelEmbeddings, encoder_slots, parse_ti_hashes, read_embedding_file,
                                     ti_hashes)
from modules.core.infotext import parse_infotext
from modules.core.pipeline import GenerationSettings, generate
from modules.core.types import GenerationRequest
from modules.services.embeddings import EmbeddingDatabase
from tests.fixtures.tiny_embeddings import (random_vectors, write_a1111_pt, write_bad_files, write_diffusers_bin,
                                            write_emb_params, write_png, write_sdxl)
from tests.fixtures.tiny_models import TEXT_HIDDEN

SMALL = dict(width=64, height=64, steps=3, seed=11, save_images=False)


def token_rows(model, text: str, encoder: int = 0) -> torch.Tensor:
    """The text encoder's own input vectors for `text`: an embedding made of them must act as the text."""
    ids = model.tokenizers[0](text, add_special_tokens=False)["input_ids"]
    return model.text_encoders[encoder].get_input_embeddings().weight[ids].detach().float().cpu().clone()


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def read_all(folder) -> list:
    return [read_embedding_file(p) for p in sorted(folder.iterdir())]


def sha12(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# -- files ---------------------------------------------------------------------------------------

def test_every_layout_is_read_with_a1111_fields(tmp_path):
    vec = random_vectors(3)
    pt = read_embedding_file(write_a1111_pt(tmp_path / "style-a.pt", vec, step=1500))
    assert (pt.name, pt.shape, pt.vectors, pt.step, pt.sd_checkpoint, pt.sd_checkpoint_name) == \
        ("style-a", TEXT_HIDDEN, 3, 1500, "0123abcd", "tiny-sd1")
    assert torch.equal(pt.vec, vec)
    assert pt.hash == hashlib.sha256((tmp_path / "style-a.pt").read_bytes()).hexdigest() and pt.shorthash == pt.hash[:12]

    one = random_vectors(1, seed=1)[0]
    concept = read_embedding_file(write_diffusers_bin(tmp_path / "concept.bin", one))
    assert (concept.vectors, concept.shape, concept.step) == (1, TEXT_HIDDEN, None)
    assert torch.equal(concept.vec, one.unsqueeze(0))

    params = read_embedding_file(write_emb_params(tmp_path / "params.safetensors", random_vectors(2, seed=2)))
    assert (params.vectors, params.shape) == (2, TEXT_HIDDEN)

    l, g = random_vectors(2, seed=3), random_vectors(2, width=2 * TEXT_HIDDEN, seed=4)
    xl = read_embedding_file(write_sdxl(tmp_path / "xl.safetensors", l, g))
    assert (xl.vectors, xl.shape) == (2, 3 * TEXT_HIDDEN)  # A1111: clip_l width + clip_g width
    assert torch.equal(xl.tensor_for("clip_l"), l) and torch.equal(xl.tensor_for("clip_g"), g)

    png_vec = random_vectors(2, seed=5)
    png = read_embedding_file(write_png(tmp_path / "card.png", png_vec, name="from-png"))
    assert (png.name, png.vectors, png.step) == ("from-png", 2, 100)  # the name stored in the image wins
    assert torch.allclose(png.vec, png_vec)


def test_images_without_an_embedding_are_not_embeddings(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert read_embedding_file(tmp_path / "plain.png") is None
    write_a1111_pt(tmp_path / "thing.pt", random_vectors(1))
    Image.new("RGB", (4, 4)).save(tmp_path / "thing.preview.png")  # A1111's card picture
    db = EmbeddingDatabase([tmp_path])
    db.refresh()
    assert list(db.loaded) == ["thing"] and db.skipped == {}


def test_bad_files_are_skipped_with_a_reason_and_the_good_ones_still_load(tmp_path, sd1):
    bad = write_bad_files(tmp_path / "bad")
    write_a1111_pt(tmp_path / "good.pt", random_vectors(2))
    (tmp_path / "empty.pt").write_bytes(b"")  # being written: ignored, as A1111 does
    db = EmbeddingDatabase([tmp_path])
    db.refresh(sd1)
    assert list(db.loaded) == ["good"]
    assert set(db.skipped) == set(bad)
    reasons = {name: e.reason for name, e in db.skipped.items()}
    assert "not readable as a torch file" in reasons["garbage"]
    assert "not readable as a safetensors file" in reasons["truncated"]
    assert "exactly one term" in reasons["two_terms"]
    assert "weights_only" in reasons["pickled_module"]
    assert "found tensors ['a', 'b']" in reasons["two_tensors"]
    assert "NaN" in reasons["nan"]
    assert all(e.vec is None and e.vectors == 0 for e in db.skipped.values())


def test_wrong_width_is_skipped_per_model(tmp_path, sd1, sdxl):
    write_a1111_pt(tmp_path / "sd1-style.pt", random_vectors(2))
    write_a1111_pt(tmp_path / "real-sd1.pt", random_vectors(1, width=768))
    write_sdxl(tmp_path / "xl-style.safetensors", random_vectors(2), random_vectors(2, seed=1))
    write_sdxl(tmp_path / "xl-wrong.safetensors", random_vectors(2), random_vectors(2, width=1280))
    db = EmbeddingDatabase([tmp_path])

    db.refresh(sd1)
    assert list(db.loaded) == ["sd1-style"]
    assert set(db.skipped) == {"real-sd1", "xl-style", "xl-wrong"}
    assert db.skipped["real-sd1"].reason == "its vectors have width 768; this model needs 64"
    assert db.skipped["real-sd1"].shape == 768 and db.skipped["real-sd1"].vectors == 1
    assert "SDXL embedding" in db.skipped["xl-style"].reason

    db.refresh(sdxl)  # the same files, another family: the lists follow the model
    assert list(db.loaded) == ["xl-style"]
    assert set(db.skipped) == {"real-sd1", "sd1-style", "xl-wrong"}
    assert "clip_l and clip_g" in db.skipped["sd1-style"].reason
    assert db.skipped["xl-wrong"].reason == "its clip_g vectors have width 1280; this model needs 64"


def test_refresh_reads_new_and_changed_files_only(tmp_path, sd1):
    db = EmbeddingDatabase([tmp_path, tmp_path / "missing-folder"])
    db.refresh(sd1)
    assert db.loaded == {}
    write_a1111_pt(tmp_path / "sub" / "deep.pt", random_vectors(1))  # folders are searched recursively
    db.refresh(sd1)
    first = db.loaded["deep"]
    assert first.vectors == 1
    db.refresh(sd1)
    assert db.loaded["deep"] is first  # unchanged file: not read again
    write_a1111_pt(tmp_path / "sub" / "deep.pt", random_vectors(4))
    db.refresh(sd1)
    assert db.loaded["deep"].vectors == 4
    (tmp_path / "sub" / "deep.pt").unlink()
    db.refresh(sd1)
    assert db.loaded == {}


# -- the encoder input ---------------------------------------------------------------------------

def test_embedding_vectors_are_the_encoder_input_at_its_slots(tmp_path, sd1):
    """An embedding made of the token vectors of "red cube" conditions exactly like the words."""
    write_a1111_pt(tmp_path / "copycat.pt", token_rows(sd1, "red cube"))
    db = EmbeddingDatabase([tmp_path])
    db.refresh(sd1)
    with_ti = TextConditioner(sd1, embeddings=db)
    plain = TextConditioner(sd1)
    a = with_ti.encode(["a copycat on a table"], 64, 64)["context"]
    b = plain.encode(["a red cube on a table"], 64, 64)["context"]
    assert torch.equal(a, b)
    assert with_ti.used_embeddings == {"copycat": sha12(tmp_path / "copycat.pt")}
    # emphasis weighs the embedding's slots as it weighs the words' tokens
    a = with_ti.encode(["a (copycat:1.3) on a [table]"], 64, 64)["context"]
    b = plain.encode(["a (red cube:1.3) on a [table]"], 64, 64)["context"]
    assert torch.equal(a, b)
    # without the database the name is ordinary text, and the encoder's hook is gone afterwards
    c = plain.encode(["a copycat on a table"], 64, 64)["context"]
    assert not torch.allclose(a, c)
    assert not sd1.text_encoders[0].get_input_embeddings()._forward_hooks
    assert plain.used_embeddings == {}


def test_sdxl_feeds_clip_l_and_clip_g_vectors_to_their_own_encoders(tmp_path, sdxl):
    write_sdxl(tmp_path / "xlcat.safetensors", token_rows(sdxl, "red cube", 0), token_rows(sdxl, "red cube", 1))
    write_sdxl(tmp_path / "swapped.safetensors", token_rows(sdxl, "red cube", 1), token_rows(sdxl, "red cube", 0))
    db = EmbeddingDatabase([tmp_path])
    db.refresh(sdxl)
    assert set(db.loaded) == {"xlcat", "swapped"}
    conditioner = TextConditioner(sdxl, embeddings=db)
    words = TextConditioner(sdxl).encode(["a red cube"], 64, 64)
    ti = conditioner.encode(["a xlcat"], 64, 64)
    assert torch.equal(ti["context"], words["context"]) and torch.equal(ti["text_embeds"], words["text_embeds"])
    swapped = conditioner.encode(["a swapped"], 64, 64)
    assert not torch.allclose(swapped["context"], words["context"])


def test_multi_vector_embedding_takes_n_slots_and_moves_whole_to_the_next_chunk(tmp_path, sd1):
    write_a1111_pt(tmp_path / "fourfold.pt", random_vectors(4))
    db = EmbeddingDatabase([tmp_path])
    db.refresh(sd1)
    conditioner = TextConditioner(sd1, embeddings=db)
    assert conditioner.token_count("a fourfold") == (1 + 4, CHUNK)
    assert TextConditioner(sd1).token_count("a fourfold")[0] != 5  # as text it is other tokens

    words = " ".join(["cat"] * 73)  # 73 tokens: the 4 slots do not fit after them
    chunks = conditioner.chunker.chunks([(f"{words} fourfold", 1.0)])
    assert [len(c.tokens) for c in chunks] == [73, 4]
    assert chunks[0].fixes == [] and [(o, e.name) for o, e in chunks[1].fixes] == [(0, "fourfold")]
    fits = conditioner.chunker.chunks([(" ".join(["cat"] * 71) + " fourfold", 1.0)])
    assert [len(c.tokens) for c in fits] == [75] and [o for o, _ in fits[0].fixes] == [71]


def test_comma_backtrack_carries_the_embedding_to_the_next_chunk(tmp_path, sd1):
    write_a1111_pt(tmp_path / "pair.pt", random_vectors(2))
    db = EmbeddingDatabase([tmp_path])
    db.refresh(sd1)
    chunker = TextConditioner(sd1, embeddings=db).chunker
    # 70 words, a comma (71 tokens), the 2 slots (73), 2 more words fill the chunk; the next word
    # sends everything after the comma to the next chunk, the embedding with it
    chunks = chunker.chunks([(" ".join(["cat"] * 70) + ", pair dog dog dog", 1.0)])
    assert [len(c.tokens) for c in chunks] == [71, 5]
    assert chunks[0].fixes == [] and [(o, e.name) for o, e in chunks[1].fixes] == [(0, "pair")]


def test_longest_name_wins_and_lookup_uses_token_ids(tmp_path, sd1):
    write_a1111_pt(tmp_path / "cat.pt", random_vectors(1))
    write_a1111_pt(tmp_path / "cat-ears.pt", random_vectors(3))
    view = ModelEmbeddings.build(read_all(tmp_path), encoder_slots(sd1), sd1.tokenizers[0])
    assert set(view.loaded) == {"cat", "cat-ears"}
    chunks = TextConditioner(sd1, embeddings=view).chunker.chunks([("a cat-ears and a CAT", 1.0)])
    assert [(o, e.name) for o, e in chunks[0].fixes] == [(1, "cat-ears"), (6, "cat")]  # the tokenizer lowercases


# -- generation ----------------------------------------------------------------------------------

@pytest.fixture()
def ti_folder(tmp_path, sd1):
    write_a1111_pt(tmp_path / "emb" / "tiemb.pt", random_vectors(2, scale=2.0))
    write_emb_params(tmp_path / "emb" / "negemb.safetensors", random_vectors(1, seed=9, scale=2.0))
    db = EmbeddingDatabase([tmp_path / "emb"])
    db.refresh(sd1)
    return db


def test_using_the_name_changes_pixels_and_absence_is_bit_identical(tmp_path, sd1, ti_folder):
    base = generate(GenerationRequest(prompt="a cat", **SMALL), sd1, GenerationSettings()).images[0]
    same = generate(GenerationRequest(prompt="a cat", **SMALL), sd1, GenerationSettings(embeddings=ti_folder))
    assert np.array_equal(pixels(base), pixels(same.images[0]))
    assert "TI hashes" not in same.infotexts[0]
    text = generate(GenerationRequest(prompt="a tiemb", **SMALL), sd1, GenerationSettings()).images[0]
    ti = generate(GenerationRequest(prompt="a tiemb", **SMALL), sd1, GenerationSettings(embeddings=ti_folder))
    assert np.abs(pixels(ti.images[0]) - pixels(text)).mean() > 0.5


def test_ti_hashes_infotext_round_trips(tmp_path, sd1, ti_folder):
    request = GenerationRequest(prompt="a tiemb, a cat", negative_prompt="negemb", **SMALL)
    result = generate(request, sd1, GenerationSettings(embeddings=ti_folder))
    expected = (f"tiemb: {sha12(tmp_path / 'emb' / 'tiemb.pt')}, "
                f"negemb: {sha12(tmp_path / 'emb' / 'negemb.safetensors')}")
    assert f'TI hashes: "{expected}"' in result.infotexts[0]
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["TI hashes"] == expected and parsed["Prompt"] == "a tiemb, a cat"
    assert parse_ti_hashes(parsed["TI hashes"]) == {"tiemb": sha12(tmp_path / "emb" / "tiemb.pt"),
                                                    "negemb": sha12(tmp_path / "emb" / "negemb.safetensors")}
    assert result.extra_generation_params["TI hashes"] == expected
    off = generate(request, sd1, GenerationSettings(embeddings=ti_folder, add_ti_hashes_to_info=False))
    assert "TI hashes" not in off.infotexts[0]
    assert np.array_equal(pixels(off.images[0]), pixels(result.images[0]))


def test_hires_prompt_embedding_is_used_and_listed(tmp_path, sd1, ti_folder):
    hr = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)
    plain = generate(GenerationRequest(prompt="a cat", hr_prompt="a tiemb", **hr, **SMALL), sd1, GenerationSettings())
    ti = generate(GenerationRequest(prompt="a cat", hr_prompt="a tiemb", **hr, **SMALL), sd1,
                  GenerationSettings(embeddings=ti_folder))
    assert ti.images[0].size == (128, 128)
    assert not np.array_equal(pixels(ti.images[0]), pixels(plain.images[0]))
    assert parse_infotext(ti.infotexts[0])["TI hashes"] == f"tiemb: {sha12(tmp_path / 'emb' / 'tiemb.pt')}"
    assert "TI hashes" not in plain.infotexts[0]


def test_ti_hashes_value_drops_separators_from_names():
    assert ti_hashes({"a:b,c": "0123456789ab", "plain": "ba9876543210", "nohash": ""}) == \
        "abc: 0123456789ab, plain: ba9876543210"
    assert ti_hashes({}) is None


# -- API -----------------------------------------------------------------------------------------

def test_api_lists_loaded_and_skipped_and_generates_with_the_embedding(server):
    from tests.api_common import BASE

    folder = server.data_dir / "embeddings"
    pt = write_a1111_pt(folder / "api-emb.pt", random_vectors(3, scale=2.0), step=250)
    write_a1111_pt(folder / "api-wide.pt", random_vectors(2, width=768))
    write_bad_files(folder / "broken")
    r = server.post("/sdapi/v1/refresh-embeddings")
    assert r.status_code == 200
    body = server.get("/sdapi/v1/embeddings").json()
    assert body["loaded"]["api-emb"] == {"step": 250, "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny-sd1",
                                         "shape": TEXT_HIDDEN, "vectors": 3, "reason": None}
    wide = body["skipped"]["api-wide"]
    assert (wide["shape"], wide["vectors"]) == (768, 2) and "width 768" in wide["reason"]
    assert {"garbage", "truncated", "pickled_module"} <= set(body["skipped"])
    assert "api-wide" not in body["loaded"] and "garbage" not in body["loaded"]

    r = server.post("/sdapi/v1/txt2img", json={**BASE, "prompt": "a api-emb", "steps": 2})
    assert r.status_code == 200, r.text
    infotext = json.loads(r.json()["info"])["infotexts"][0]
    assert parse_infotext(infotext)["TI hashes"] == f"api-emb: {sha12(pt)}"


def test_refresh_from_the_ui_or_api_waits_for_the_running_job(tmp_path, sd1):
    """Embedding names are tokenized with the model's tokenizer, which the running job also uses:
    Engine.refresh_embeddings runs on the worker, after the job, never beside it."""
    import threading
    import types

    from modules.services.checkpoints import CheckpointRegistry, HashCache
    from modules.services.engine import Engine
    from modules.services.jobs import JobState, WorkQueue
    from modules.services.options import Options

    state = JobState()
    engine = Engine(Options(None), CheckpointRegistry([tmp_path], HashCache(None)), types.SimpleNamespace(model=sd1),
                    state, WorkQueue(state), tmp_path, embeddings=EmbeddingDatabase([tmp_path / "emb"]))
    write_a1111_pt(tmp_path / "emb" / "late.pt", random_vectors(2))
    release = threading.Event()
    job = engine.queue.submit("txt2img", release.wait, 10)
    refresher = threading.Thread(target=engine.refresh_embeddings)
    refresher.start()
    refresher.join(0.5)
    assert refresher.is_alive() and "late" not in engine.embeddings.loaded  # still waiting for the job
    release.set()
    refresher.join(10)
    assert job.result(timeout=10) is True and not refresher.is_alive()
    assert engine.embeddings.loaded["late"].vectors == 2
