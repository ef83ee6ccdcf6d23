"""A1111's prompt language, parsed: attention weights, prompt-editing schedules, alternation, AND.

Expected values are A1111's documented examples (the docstrings of its modules/prompt_parser.py)
and its scheduling rules (fractions, hires timeline, old scheduling)."""

import pytest

from modules.core.prompt_parser import (
    entry_at_step, get_learned_conditioning_prompt_schedules, multicond_prompt_list, parse_prompt_attention,
    prompt_schedules, split_and,
)


# -- attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_attention_matches_a1111_docstring(text, expected):
    assert parse_prompt_attention(text) == expected


def test_attention_rules():
    assert parse_prompt_attention("((word))") == [("word", 1.1 * 1.1)]
    assert parse_prompt_attention("[word]") == [("word", 1 / 1.1)]
    assert parse_prompt_attention("[[word]]") == [("word", 1 / 1.1 / 1.1)]
    assert parse_prompt_attention("(word:1.5)") == [("word", 1.5)]
    assert parse_prompt_attention("(word: 0.25 )") == [("word", 0.25)]
    assert parse_prompt_attention("(a (b:2))") == [("a ", 1.1), ("b", 2 * 1.1)]
    assert parse_prompt_attention("[unbalanced") == [("unbalanced", 1 / 1.1)]
    # closing brackets without an opening one, a weight outside brackets: literal text
    assert parse_prompt_attention("a) b] c:1.5)") == [("a) b] c:1.5)", 1.0)]
    assert parse_prompt_attention("\\\\ \\[x\\)") == [("\\ [x)", 1.0)]
    assert parse_prompt_attention("a \\ b") == [("a  b", 1.0)]  # a lone backslash is dropped (A1111)
    assert parse_prompt_attention("") == [("", 1.0)]
    assert parse_prompt_attention("(word:1)") == [("word", 1.0)]


def test_break_is_its_own_piece():
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    assert parse_prompt_attention("BREAKING news") == [("BREAKING news", 1.0)]  # only the word
    assert parse_prompt_attention("x\nBREAK\ny") == [("x", 1.0), ("BREAK", -1.0), ("y", 1.0)]


# -- schedules ---------------------------------------------------------------------------

def g(prompt, steps=10, hires=None, old=False):
    return [list(entry) for entry in prompt_schedules([prompt], steps, hires, old)[0]]


@pytest.mark.parametrize("prompt,expected", [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[1, "a"], [2, "(b:1.1)"], [3, "a"], [4, "(b:1.1)"], [5, "a"], [6, "(b:1.1)"], [7, "a"],
                     [8, "(b:1.1)"], [9, "a"], [10, "(b:1.1)"]]),
    ("[fe|]male", [[1, "female"], [2, "male"], [3, "female"], [4, "male"], [5, "female"], [6, "male"],
                   [7, "female"], [8, "male"], [9, "female"], [10, "male"]]),
    ("[fe|||]male", [[1, "female"], [2, "male"], [3, "male"], [4, "male"], [5, "female"], [6, "male"],
                     [7, "male"], [8, "male"], [9, "female"], [10, "male"]]),
])
def test_schedules_match_a1111_docstring(prompt, expected):
    assert g(prompt) == expected
    assert [list(e) for e in get_learned_conditioning_prompt_schedules([prompt], 10)[0]] == expected


def test_a1111_module_example_at_100_steps():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
              "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]")
    assert g(prompt, 100) == [
        [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
        [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
        [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
        [75, "fantasy landscape with a lake and an oak in background masterful"],
        [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
    ]


def test_when_rules():
    assert g("[a:b:0.5]", 3) == [[1, "a"], [3, "b"]]  # int(1.5)
    assert g("[a:b:1.0]", 10) == [[10, "a"]]  # a fraction 1.0: the whole run
    assert g("[a:b:1]", 10) == [[1, "a"], [10, "b"]]  # an integer: a step
    assert g("[a:b:25]", 10) == [[10, "a"]]  # past the end: clamped, never switches
    assert g("[a:b:0]", 10) == [[10, "b"]]
    assert g("[a:b:-3]", 10) == [[10, "b"]]
    assert g("[a::3]", 10) == [[3, "a"], [10, ""]]  # [from::when] removes
    assert g("[a:3:5]", 10) == [[5, "a"], [10, "3"]]
    # old scheduling (A1111's compatibility option): below 1 a fraction, else a step
    assert g("[a:b:1.5]", 10, old=True) == [[1, "a"], [10, "b"]]
    assert g("[a:b:0.5]", 10, old=True) == [[5, "a"], [10, "b"]]


def test_hires_timeline_continues_the_first_pass():
    assert g("a [b:.5] c", 10, hires=10) == [[10, "a b c"]]
    assert g("a [b:1.5] c", 10, hires=10) == [[5, "a  c"], [10, "a b c"]]
    assert g("[a:b:25]", 20, hires=10) == [[5, "a"], [10, "b"]]  # integers count from the first pass's start
    assert g("[a:b:5]", 20, hires=10) == [[10, "b"]]
    assert g("[a:b:5]", 20, hires=10, old=True) == [[5, "a"], [20, "b"]]  # old: no hires timeline


def test_nesting_alternation_in_edits_and_emphasis():
    assert g("[(a:1.2)|[b:c:2]]", 4) == [[1, "(a:1.2)"], [2, "b"], [3, "(a:1.2)"], [4, "c"]]
    assert g("((x [y:z:2]))", 3) == [[2, "((x y))"], [3, "((x z))"]]
    assert g("(x:[1.2:1.5:2])", 3) == [[2, "(x:1.2)"], [3, "(x:1.5)"]]
    assert g("[[a|b]:c:2]", 3) == [[1, "a"], [2, "b"], [3, "c"]]


def test_unreadable_prompts_stay_as_written():
    for prompt in ["a | b", "a [b|c", "(a|b)", "trailing \\", "[a:b:c]", "[{b|d{:.5]"]:
        assert g(prompt) == [[10, prompt]]
    deep = "(" * 5000 + "x" + ")" * 5000
    assert g(deep, 3) == [[3, deep]]  # too deep for a recursive parser: literal, no crash
    assert g("\\[a:b:3\\]") == [[10, "\\[a:b:3\\]"]]  # escaped brackets edit nothing


def test_distinct_prompts_share_their_schedule():
    a, b, c = prompt_schedules(["x [y:2]", "plain", "x [y:2]"], 4)
    assert a == c == [(2, "x "), (4, "x y")] and b == [(4, "plain")]


def test_entry_for_a_sampler_step_counts_as_a1111():
    schedule = [(5, "red"), (10, "blue")]
    # 0-based sampler steps: 0..5 -> first entry (A1111's `step <= end_at_step`), then the next
    assert [entry_at_step(schedule, i) for i in range(12)] == [0] * 6 + [1] * 6


# -- composable diffusion ----------------------------------------------------------------

def test_and_splits_with_weights():
    assert split_and("a cat AND a dog :0.5") == [("a cat", 1.0), (" a dog", 0.5)]
    assert split_and("a AND b:-1.5 AND c : 2") == [("a", 1.0), (" b", -1.5), (" c", 2.0)]
    assert split_and("no and here, ANDROID") == [("no and here, ANDROID", 1.0)]
    assert split_and("(x:1.2)") == [("(x:1.2)", 1.0)]  # an attention weight is no sub-prompt weight
    assert split_and("a cat:1.5") == [("a cat", 1.5)]  # A1111 reads any trailing ":number"
    assert split_and("x\nAND\ny :2") == [("x", 1.0), ("\ny", 2.0)]


def test_multicond_prompt_list_shares_equal_subprompts():
    indexes, flat, index_of = multicond_prompt_list(["a AND b:0.5", "b:0.25 AND c"])
    assert flat == ["a", " b", "b", " c"]
    assert indexes == [[(0, 1.0), (1, 0.5)], [(2, 0.25), (3, 1.0)]]
    assert index_of == {"a": 0, " b": 1, "b": 2, " c": 3}
    indexes, flat, _ = multicond_prompt_list(["x AND y", "x AND y"])
    assert flat == ["x", " y"] and indexes[0] == indexes[1] == [(0, 1.0), (1, 1.0)]
