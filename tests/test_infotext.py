"""A1111 infotext: exact format, quoting rules and the round trip."""

import pytest

from modules.core.infotext import build_infotext, parse_infotext, quote, unquote

A1111_PARAMS = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Karras",
    "CFG scale": 7.0,
    "Seed": 1,
    "Size": "512x512",
    "Model hash": "abcdef1234",
    "Model": "name",
    "Version": "v1.10.1",
}


def test_exact_a1111_layout():
    text = build_infotext("a cat", "blurry", A1111_PARAMS)
    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.0, Seed: 1, "
        "Size: 512x512, Model hash: abcdef1234, Model: name, Version: v1.10.1"
    )


def test_empty_negative_prompt_omits_the_line():
    text = build_infotext("a cat", "", A1111_PARAMS)
    assert "Negative prompt" not in text
    assert text.split("\n") == ["a cat", text.split("\n")[1]]
    assert parse_infotext(text)["Negative prompt"] == ""


def test_none_values_are_skipped_and_floats_print_as_python_str():
    params = {"Steps": 30, "Sampler": "DPM++ 2M", "CFG scale": 7.5, "Denoising strength": 0.75,
              "Clip skip": None, "Seed": 42, "Size": "768x512"}
    line = build_infotext("p", "", params).split("\n")[-1]
    assert line == "Steps: 30, Sampler: DPM++ 2M, CFG scale: 7.5, Denoising strength: 0.75, Seed: 42, Size: 768x512"


def test_steps_is_moved_first_and_steps_and_sampler_are_required():
    text = build_infotext("p", "", {"Sampler": "Euler", "Seed": 3, "Steps": 10, "CFG scale": 5})
    assert text.split("\n")[-1].startswith("Steps: 10, Sampler: Euler, Seed: 3")
    with pytest.raises(ValueError, match="Steps"):
        build_infotext("p", "", {"Sampler": "Euler", "Seed": 1})
    with pytest.raises(ValueError, match="Sampler"):
        build_infotext("p", "", {"Steps": 20, "Seed": 1, "Sampler": None})


def test_keys_that_could_not_be_parsed_back_are_refused():
    with pytest.raises(ValueError, match="key"):
        build_infotext("p", "", {"Steps": 1, "Sampler": "Euler", "Bad: key": 1})
    with pytest.raises(ValueError, match="key"):
        build_infotext("p", "", {"Steps": 1, "Sampler": "Euler", "a,b": 1})


@pytest.mark.parametrize(
    "value",
    ['has, comma', "has: colon", 'has "quotes"', '"fully quoted"', "multi\nline", "",
     "  padded  ", "ünïcödé 漢字", "<lora:x:0.8>, [a|b]", "back\\slash, \\n"],
)
def test_awkward_values_round_trip(value):
    params = dict(A1111_PARAMS, **{"Lora hashes": value})
    text = build_infotext("p", "n", params)
    assert len(text.split("\n")) == 3  # the settings line stays one line
    assert parse_infotext(text)["Lora hashes"] == value
    assert parse_infotext(text)["Version"] == "v1.10.1"  # and the next key is intact


def test_quote_matches_a1111_for_plain_and_separator_values():
    assert quote("Euler a") == "Euler a"
    assert quote(7.0) == "7.0"
    assert quote("a, b") == '"a, b"'
    assert quote("x: 1") == '"x: 1"'
    assert quote("ü, ö") == '"ü, ö"'  # ensure_ascii=False, like A1111
    assert unquote('"a, b"') == "a, b"
    assert unquote("plain") == "plain"
    assert unquote('"broken') == '"broken'


def test_dict_values_are_written_as_raw_json_and_kept_whole():
    params = dict(A1111_PARAMS, Hashes={"model": "abc", "lora:x": "def"})
    text = build_infotext("p", "", params)
    assert 'Hashes: {"model": "abc", "lora:x": "def"}' in text
    parsed = parse_infotext(text)
    assert parsed["Hashes"] == '{"model": "abc", "lora:x": "def"}'
    assert parsed["Version"] == "v1.10.1"


def test_parse_a1111_text_with_size_split():
    text = (
        "masterpiece, 1girl\nsecond line\n"
        "Negative prompt: lowres, bad anatomy\nworst quality\n"
        'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123456789, '
        'Size: 832x1216, Model hash: 7eb674963a, Model: anything, Denoising strength: 0.4, '
        'Hires upscale: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
    )
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "masterpiece, 1girl\nsecond line"
    assert parsed["Negative prompt"] == "lowres, bad anatomy\nworst quality"
    assert parsed["Steps"] == "28"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["CFG scale"] == "7"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("832", "1216")
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed["Version"] == "v1.10.1"


def test_missing_negative_and_crlf_are_tolerated():
    parsed = parse_infotext("a cat\r\nSteps: 20, Sampler: Euler, Seed: 5\r\n")
    assert parsed["Prompt"] == "a cat"
    assert parsed["Negative prompt"] == ""
    assert parsed["Seed"] == "5"


def test_last_line_is_settings_only_with_three_pairs():
    parsed = parse_infotext("a cat\nstyle: anime, mood: calm")
    assert parsed["Prompt"] == "a cat\nstyle: anime, mood: calm"
    assert "style" not in parsed
    assert parse_infotext("")["Prompt"] == ""


def test_settings_only_text_and_negative_without_prompt():
    parsed = parse_infotext(build_infotext("", "ugly", A1111_PARAMS))
    assert parsed["Prompt"] == ""
    assert parsed["Negative prompt"] == "ugly"
    assert parsed["Model"] == "name"


@pytest.mark.parametrize(
    "prompt, negative",
    [
        ("a cat", "blurry"),
        ("line one,\n  indented line two\n(weighted:1.2), [from:to:0.5]", "neg one\nneg two: x"),
        ("", ""),
        ("only prompt", ""),
        ("漢字 prompt", "ünïcödé"),
    ],
)
def test_round_trip(prompt, negative):
    params = dict(A1111_PARAMS, **{"Denoising strength": 0.75, "Hires upscaler": "R-ESRGAN 4x+",
                                   "Model": "sd_xl_base_1.0 [31e35c80fc]"})
    parsed = parse_infotext(build_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        assert parsed[key] == str(value)
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "512")
