"""A1111's user metadata of extra networks (modules/services/user_metadata.py): the `.json` beside a
model file, read into the cards (modules/ui/extra_networks.py) and written by the ✏️ editor. No
server, no model: files in a temporary folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from modules.services import user_metadata as um


def test_the_json_beside_the_file_is_read_and_a_save_keeps_keys_it_does_not_know(tmp_path):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    model = lora_dir / "style.v2.safetensors"
    model.write_bytes(b"x")
    assert um.metadata_path(model) == lora_dir / "style.v2.json"
    assert um.read(model) == {} and um.read(None) == {}

    (lora_dir / "style.v2.json").write_text(json.dumps({"activation text": "in blue", "preferred weight": 0.7,
                                                          "civitai id": 123}), encoding="utf-8")
    values = um.read(model)
    assert um.text(values, um.ACTIVATION_TEXT) == "in blue" and um.preferred_weight(values) == 0.7
    assert um.text(values, um.NOTES) == ""

    saved = um.write(model, {"description": "Blue things", "preferred weight": 0.5}, [lora_dir])
    on_disk = json.loads((lora_dir / "style.v2.json").read_text(encoding="utf-8"))
    assert on_disk == saved == {"activation text": "in blue", "preferred weight": 0.5, "civitai id": 123,
                                "description": "Blue things"}
    assert um.read(model)["description"] == "Blue things"  # the cache follows the file


def test_a_bad_json_reads_as_nothing_once_in_the_log_and_is_never_overwritten(tmp_path, capsys):
    model = tmp_path / "broken.safetensors"
    model.write_bytes(b"x")
    bad = tmp_path / "broken.json"
    for text in ("{not json", "[1, 2]", "\xff\xfe"):
        bad.write_text(text, encoding="latin-1")
        assert um.read(model) == {}
        assert um.read(model) == {}
        assert capsys.readouterr().out.count("broken.json ignored") == 1
        with pytest.raises(um.MetadataError, match="cannot be read"):
            um.write(model, {"description": "x"}, [tmp_path])
        assert bad.read_text(encoding="latin-1") == text
    assert um.preferred_weight({"preferred weight": "heavy"}) == 0.0
    assert um.preferred_weight({"preferred weight": float("nan")}) == 0.0
    assert um.preferred_weight({"preferred weight": True}) == 0.0


def test_a_save_writes_only_inside_the_models_folders(tmp_path):
    models, elsewhere = tmp_path / "models" / "Lora", tmp_path / "other"
    models.mkdir(parents=True)
    elsewhere.mkdir()
    outside = elsewhere / "x.safetensors"
    outside.write_bytes(b"x")
    for model in (outside, models / ".." / ".." / "other" / "x.safetensors"):
        with pytest.raises(um.MetadataError, match="not in the models folders"):
            um.write(model, {"notes": "n"}, [models])
    assert not (elsewhere / "x.json").exists()
    with pytest.raises(um.MetadataError, match="gone"):
        um.write(models / "missing.safetensors", {"notes": "n"}, [models])
    assert not um.inside(models, [models])  # the folder itself is no file in it


def test_lora_cards_take_weight_activation_and_negative_text_and_description_from_the_json(tmp_path):
    from modules.ui import extra_networks

    def lora(name):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(b"x")
        return SimpleNamespace(name=name, alias=name, path=str(path))

    plain, tuned = lora("plain"), lora("tuned")
    (tmp_path / "tuned.json").write_text(json.dumps({
        "description": "Made by me", "activation text": "shiny style", "preferred weight": 0.7,
        "negative text": "dull"}), encoding="utf-8")
    engine = SimpleNamespace(options={"extra_networks_default_multiplier": 0.8},
                             loras=SimpleNamespace(items=lambda: [plain, tuned]))
    cards = {c.name: c for c in extra_networks.lora_cards(engine)}
    assert (cards["plain"].insert, cards["plain"].negative, cards["plain"].description) == ("<lora:plain:0.8>", "", "")
    assert cards["tuned"].insert == "<lora:tuned:0.7> shiny style"
    assert (cards["tuned"].negative, cards["tuned"].description, cards["tuned"].key) == ("dull", "Made by me", "tuned")
    html = extra_networks.card_html(cards["tuned"])
    assert "data-negative='dull'" in html and "class='card-button edit-button' title='Edit metadata'" in html
    assert "<span class='description'>Made by me</span>" in html
