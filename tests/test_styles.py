"""Prompt styles: A1111's styles.csv (reading, saving with a backup, several files), how a style
expands a prompt, and the API: /sdapi/v1/prompt-styles and txt2img's `styles` over real HTTP.

The HTTP tests use the session's shared server; its default styles file is DATA_DIR/styles.csv,
which these tests write (the server re-reads a changed file).
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from modules.core.infotext import parse_infotext
from modules.core.types import GenerationRequest, RequestError
from modules.services.styles import StyleDatabase, apply_styles_to_prompt, merge_prompts
from tests.api_common import BASE, assert_error, decode

HEADER = "name,prompt,negative_prompt\n"


def write_csv(path, rows: list[dict], fields=("name", "prompt", "negative_prompt")) -> None:
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------- merging

def test_merge_rules_match_a1111():
    # {prompt} is replaced; anything else is appended after ", " (empty parts left out)
    assert merge_prompts("{prompt}, oil painting", "a cat") == "a cat, oil painting"
    assert merge_prompts("masterpiece, {prompt} by rembrandt", "a cat") == "masterpiece, a cat by rembrandt"
    assert merge_prompts("oil painting", "a cat") == "a cat, oil painting"
    assert merge_prompts("  oil painting ", " a cat ") == "a cat, oil painting"
    assert merge_prompts("oil painting", "") == "oil painting"
    assert merge_prompts("", "a cat") == "a cat"
    assert merge_prompts("{prompt}", "") == ""
    # several styles apply in order, each to the result of the one before
    assert apply_styles_to_prompt("a cat", ["{prompt} in a hat", "oil painting"]) == "a cat in a hat, oil painting"
    assert apply_styles_to_prompt("a cat", ["oil painting", "{prompt} in a hat"]) == "a cat, oil painting in a hat"


# ------------------------------------------------------------------------------- the file

def test_csv_round_trip_with_quoting_backup_and_placeholder(tmp_path):
    path = tmp_path / "styles.csv"
    db = StyleDatabase([path])
    assert db.items() == [] and not path.exists()

    tricky = 'a "quoted" word, a comma,\nand a second line, ünïcødé ✓'
    db.save_style("Tricky, name", tricky, 'neg "with" quotes, and commas')
    assert not (tmp_path / "styles.csv.bak").exists()  # nothing to back up yet
    one_style = path.read_bytes()
    db.save_style("Wrap", "masterpiece, {prompt}, highly detailed", "")
    assert (tmp_path / "styles.csv.bak").read_bytes() == one_style
    first = path.read_bytes()
    assert first.startswith(b"\xef\xbb\xbf")  # utf-8-sig, as A1111 writes it
    assert read_rows(path) == [
        {"name": "Tricky, name", "prompt": tricky, "negative_prompt": 'neg "with" quotes, and commas'},
        {"name": "Wrap", "prompt": "masterpiece, {prompt}, highly detailed", "negative_prompt": ""},
    ]

    again = StyleDatabase([path])  # a fresh read gives back exactly what was saved
    assert [s.as_dict() for s in again.items()] == [s.as_dict() for s in db.items()]
    assert again.apply("a cat", "", ["Wrap"]) == ("masterpiece, a cat, highly detailed", "")
    assert again.apply("a cat", "ugly", ["Tricky, name"]) == (
        f"a cat, {tricky}", 'ugly, neg "with" quotes, and commas')

    # saving again keeps the previous file as .bak (A1111) and replaces a style in place
    again.save_style("Wrap", "{prompt}, watercolor", "blurry")
    assert (tmp_path / "styles.csv.bak").read_bytes() == first
    assert [r["name"] for r in read_rows(path)] == ["Tricky, name", "Wrap"]
    assert read_rows(path)[1] == {"name": "Wrap", "prompt": "{prompt}, watercolor", "negative_prompt": "blurry"}

    assert again.delete_style("Tricky, name") is True
    assert [r["name"] for r in read_rows(path)] == ["Wrap"]
    with pytest.raises(RequestError) as err:
        again.save_style("  ", "x", "")
    assert err.value.field == "name"


def test_old_format_comments_and_spaces_are_read(tmp_path):
    path = tmp_path / "styles.csv"
    # A1111's oldest files: "name, text" columns; rows named "#..." are comments
    path.write_text('name, text\n"Old", "{prompt}, sepia"\n# comment,ignored\n"", "no name"\n', encoding="utf-8")
    db = StyleDatabase([path])
    assert [s.as_dict() for s in db.items()] == [{"name": "Old", "prompt": "{prompt}, sepia", "negative_prompt": ""}]
    assert db.apply("a dog", "", ["Old"]) == ("a dog, sepia", "")


def test_several_files_default_file_and_patterns(tmp_path):
    main, extra = tmp_path / "styles.csv", tmp_path / "more" / "extra-styles.csv"
    extra.parent.mkdir()
    write_csv(main, [{"name": "A", "prompt": "from main", "negative_prompt": ""},
                     {"name": "Both", "prompt": "main wins?", "negative_prompt": ""}])
    write_csv(extra, [{"name": "B", "prompt": "from extra", "negative_prompt": "n"},
                      {"name": "Both", "prompt": "the later file wins", "negative_prompt": ""}])
    db = StyleDatabase([main, str(tmp_path / "more" / "*.csv")])
    assert db.default_path == main
    assert db.get("Both").prompt == "the later file wins" and db.get("Both").path == extra
    assert set(db.names()) == {"A", "Both", "B"}

    db.save_style("New", "new one", "")  # a new style goes to the default (first) file
    db.save_style("B", "changed in extra", "n2")  # a known one stays in its own file
    assert [r["name"] for r in read_rows(main)] == ["A", "New", "Both"]  # its "Both" is kept, unused
    assert read_rows(main)[2]["prompt"] == "main wins?"
    assert read_rows(extra) == [{"name": "B", "prompt": "changed in extra", "negative_prompt": "n2"},
                                {"name": "Both", "prompt": "the later file wins", "negative_prompt": ""}]

    # a pattern first: its first match is the default file, else styles.csv in its folder
    only_pattern = StyleDatabase([str(tmp_path / "more" / "*.csv")])
    assert only_pattern.default_path == extra
    none_yet = StyleDatabase([str(tmp_path / "empty" / "*.csv")])
    assert none_yet.default_path == tmp_path / "empty" / "styles.csv"
    none_yet.save_style("X", "x", "")
    assert read_rows(tmp_path / "empty" / "styles.csv") == [{"name": "X", "prompt": "x", "negative_prompt": ""}]


def test_requests_unknown_names_reload_and_extract(tmp_path):
    path = tmp_path / "styles.csv"
    write_csv(path, [{"name": "Oil", "prompt": "{prompt}, oil painting", "negative_prompt": "photo"},
                     {"name": "Sharp", "prompt": "sharp focus", "negative_prompt": "blurry"}])
    db = StyleDatabase([path])
    request = GenerationRequest(prompt="a cat", negative_prompt="ugly", hr_prompt="", hr_negative_prompt="low res",
                                steps=3)
    styled = db.apply_to_request(request, ["Oil", "Sharp"])
    assert styled.prompt == "a cat, oil painting, sharp focus"
    assert styled.negative_prompt == "ugly, photo, blurry"
    assert styled.hr_prompt == ""  # empty means "the prompt", which already has the styles
    assert styled.hr_negative_prompt == "low res, photo, blurry"
    assert dataclasses.replace(styled, prompt="a cat", negative_prompt="ugly", hr_negative_prompt="low res") == request
    assert db.apply_to_request(request, []) is request

    with pytest.raises(RequestError) as err:
        db.apply_to_request(request, ["Oil", "Nope"])
    assert err.value.field == "styles" and "'Nope'" in err.value.message and "'Oil'" in err.value.message

    # a style added to the file by hand is found without a restart
    write_csv(path, [{"name": "Oil", "prompt": "{prompt}, oil painting", "negative_prompt": "photo"},
                     {"name": "Nope", "prompt": "now known", "negative_prompt": ""}])
    assert db.apply("a cat", "", ["Nope"]) == ("a cat, now known", "")

    # extracting the styles from an expanded prompt gives back the names and the prompts as typed
    prompt, negative = db.apply("a cat", "ugly", ["Oil", "Nope"])
    assert db.extract(prompt, negative) == (["Oil", "Nope"], "a cat", "ugly")


# ------------------------------------------------------------------------------- the API

@pytest.fixture
def server_styles(server):
    """The shared server's default styles file with three styles (put back empty after)."""
    path = server.data_dir / "styles.csv"
    write_csv(path, [
        {"name": "Oil painting", "prompt": "{prompt}, oil painting, thick brush strokes", "negative_prompt": "photo"},
        {"name": "Quoted, \"style\"", "prompt": "glowing, neon", "negative_prompt": "dull, \"grey\""},
        {"name": "Empty negative", "prompt": "masterpiece, {prompt}", "negative_prompt": ""},
    ])
    yield path
    path.write_text(HEADER, encoding="utf-8")


def test_prompt_styles_lists_the_file(server, server_styles):
    r = server.get("/sdapi/v1/prompt-styles")
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"name": "Oil painting", "prompt": "{prompt}, oil painting, thick brush strokes", "negative_prompt": "photo"},
        {"name": "Quoted, \"style\"", "prompt": "glowing, neon", "negative_prompt": "dull, \"grey\""},
        {"name": "Empty negative", "prompt": "masterpiece, {prompt}", "negative_prompt": ""},
    ]
    # edited on disk: the next call shows it
    write_csv(server_styles, [{"name": "Only", "prompt": "p", "negative_prompt": "n"}])
    assert server.get("/sdapi/v1/prompt-styles").json() == [{"name": "Only", "prompt": "p", "negative_prompt": "n"}]


def test_txt2img_styles_expand_the_prompts(server, server_styles):
    body = {**BASE, "prompt": "a red cube", "negative_prompt": "blurry", "seed": 321, "steps": 2,
            "styles": ["Oil painting", "Quoted, \"style\""]}
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    expanded = "a red cube, oil painting, thick brush strokes, glowing, neon"
    expanded_negative = "blurry, photo, dull, \"grey\""
    # A1111: `prompt` as sent, the styles by name; all_prompts and the infotext expanded
    assert info["prompt"] == "a red cube" and info["negative_prompt"] == "blurry"
    assert info["styles"] == ["Oil painting", "Quoted, \"style\""]
    assert info["all_prompts"] == [expanded] and info["all_negative_prompts"] == [expanded_negative]
    parsed = parse_infotext(info["infotexts"][0])
    assert parsed["Prompt"] == expanded and parsed["Negative prompt"] == expanded_negative
    image = decode(data["images"][0])
    assert parse_infotext(image.info["parameters"])["Prompt"] == expanded

    # the model was conditioned on the expanded prompts: the same job typed out in full gives the same pixels
    plain = server.post("/sdapi/v1/txt2img", json={**body, "styles": [], "prompt": expanded,
                                                   "negative_prompt": expanded_negative})
    assert plain.status_code == 200, plain.text
    assert np.array_equal(np.asarray(decode(plain.json()["images"][0]).convert("RGB")),
                          np.asarray(image.convert("RGB")))
    unstyled = server.post("/sdapi/v1/txt2img", json={**body, "styles": []})
    assert not np.array_equal(np.asarray(decode(unstyled.json()["images"][0]).convert("RGB")),
                              np.asarray(image.convert("RGB")))
    assert json.loads(unstyled.json()["info"])["styles"] == []


def test_unknown_style_is_refused_naming_it(server, server_styles):
    r = server.post("/sdapi/v1/txt2img", json={**BASE, "styles": ["Oil painting", "No such style"]})
    message = assert_error(r, "styles", (422,))
    assert "No such style" in message and "Oil painting" in message


def test_img2img_styles_expand_the_prompts(server, server_styles):
    from tests.test_api_img2img import i2i_body, img2img

    _, info, _ = img2img(server, i2i_body(prompt="a house", negative_prompt="", steps=1,
                                          styles=["Empty negative", "Oil painting"]))
    assert info["prompt"] == "a house" and info["styles"] == ["Empty negative", "Oil painting"]
    parsed = parse_infotext(info["infotexts"][0])
    assert parsed["Prompt"] == "masterpiece, a house, oil painting, thick brush strokes"
    assert parsed["Negative prompt"] == "photo"
    r = server.post("/sdapi/v1/img2img", json=i2i_body(steps=1, styles=["Gone"]))
    assert "Gone" in assert_error(r, "styles", (422,))


# ------------------------------------------------------------------------------- infotext_styles

def _db(tmp_path):
    path = tmp_path / "styles.csv"
    write_csv(path, [{"name": "Oil", "prompt": "{prompt}, oil painting", "negative_prompt": "photo"},
                     {"name": "Neon", "prompt": "neon", "negative_prompt": ""}])
    return StyleDatabase([path])


def test_infotext_styles_follow_a1111(tmp_path):
    from modules.services.styles import infer_styles

    db = _db(tmp_path)

    def params(**extra):
        return {"Prompt": "a cat, oil painting, neon", "Negative prompt": "ugly, photo", **extra}

    assert infer_styles(params(), "Ignore", db.extract) == params()
    applied = infer_styles(params(), "Apply if any", db.extract)
    assert applied["Styles array"] == ["Oil", "Neon"]  # in the order they were applied
    assert applied["Prompt"] == "a cat" and applied["Negative prompt"] == "ugly"
    discarded = infer_styles(params(), "Discard", db.extract)
    assert discarded["Prompt"] == "a cat" and "Styles array" not in discarded
    plain = {"Prompt": "a dog", "Negative prompt": ""}
    assert "Styles array" not in infer_styles(dict(plain), "Apply if any", db.extract)
    assert infer_styles(dict(plain), "Apply", db.extract)["Styles array"] == []  # "Apply" clears the menu
    # hires prompts with the same styles lose them too (empty: the same as the first pass's)
    hires = infer_styles(params(**{"Hires prompt": "a cat, oil painting, neon", "Hires negative prompt": "ugly, photo"}),
                         "Apply if any", db.extract)
    assert hires["Hires prompt"] == "" and hires["Hires negative prompt"] == "" and hires["Styles array"] == ["Oil", "Neon"]
    # other styles in the hires prompt: nothing is taken out anywhere
    mixed = infer_styles(params(**{"Hires prompt": "a cat, oil painting"}), "Apply if any", db.extract)
    assert mixed["Prompt"] == "a cat, oil painting, neon" and "Styles array" not in mixed
    # before A1111 1.8.0 the hires prompts never carried styles: only the first pass is read
    old = infer_styles(params(**{"Hires prompt": "a cat, oil painting", "Version": "v1.7.0"}), "Apply if any",
                       db.extract)
    assert old["Styles array"] == ["Oil", "Neon"] and old["Hires prompt"] == "a cat, oil painting"


def test_api_infotext_selects_the_styles_it_carries(server, server_styles):
    text = ("a red cube, oil painting, thick brush strokes\nNegative prompt: blurry, photo\n"
            "Steps: 2, Sampler: Euler, CFG scale: 7, Seed: 321, Size: 64x64")
    body = {k: v for k, v in BASE.items() if k not in ("prompt", "negative_prompt")}  # the text gives them
    r = server.post("/sdapi/v1/txt2img", json={**body, "infotext": text})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["styles"] == ["Oil painting"]
    assert info["prompt"] == "a red cube" and info["negative_prompt"] == "blurry"
    assert parse_infotext(info["infotexts"][0])["Prompt"] == "a red cube, oil painting, thick brush strokes"
    r = server.post("/sdapi/v1/options", json={"infotext_styles": "Ignore"})
    assert r.status_code == 200, r.text
    try:
        ignored = json.loads(server.post("/sdapi/v1/txt2img", json={**body, "infotext": text}).json()["info"])
        assert ignored["styles"] == [] and ignored["prompt"] == "a red cube, oil painting, thick brush strokes"
    finally:
        server.post("/sdapi/v1/options", json={"infotext_styles": "Apply if any"})
