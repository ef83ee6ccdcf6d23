"""A1111's prompt language: composable sub-prompts, prompt editing schedules, attention weights.

The three layers, in the order A1111 applies them to a positive prompt:

1. ``split_and`` / ``multicond_prompt_list``: ``a AND b :0.5`` -> sub-prompts with weights
   (composable diffusion; negative prompts skip this layer).
2. ``prompt_schedules``: each (sub-)prompt -> ``[(end_step, text), ...]``; ``text`` is what the
   prompt reads for every step up to and including ``end_step`` (1-based, as A1111 counts):
   ``[from:to:when]``, ``[to:when]``, ``[from::when]`` (``when`` a step number, or with a decimal
   point a fraction of the steps), nested, and alternation ``[a|b|c]`` (a new option every step).
3. ``parse_prompt_attention``: each scheduled text -> ``[(text, weight), ...]`` for the tokenizer:
   ``(x)`` x1.1, ``[x]`` /1.1, ``(x:1.5)``, escapes ``\\( \\) \\[ \\] \\\\``, ``BREAK`` -> ("BREAK", -1).

Everything that is not valid syntax stays as literal text, as in A1111 (a prompt that cannot be
read as a schedule at all is its own one-entry schedule).

The schedule grammar is A1111's (its lark grammar, read by a small recursive-descent parser here):

    top        := (prompt | one of "[]():" as a literal)*
    prompt     := (emphasized | scheduled | alternate | plain)*
    emphasized := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled  := "[" [prompt ":"] prompt ":" WS? NUMBER WS? "]"
    alternate  := "[" prompt ("|" prompt?)+ "]"
    plain      := (any character but \\ [ ] ( ) : | , or \\ followed by any character)+
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "parse_prompt_attention", "prompt_schedules", "get_learned_conditioning_prompt_schedules",
    "entry_at_step", "split_and", "multicond_prompt_list", "get_multicond_prompt_list", "BREAK",
]

BREAK = ("BREAK", -1.0)

# ----------------------------------------------------------------------------- attention

# One token of the attention language per match; group 1 is the number of a "(text:1.5)" closing.
_ATTENTION = re.compile(r"""
    \\[()\[\]\\]                  # an escaped bracket or backslash: that character, literally
  | \\                            # a lone backslash: dropped
  | [(\[]                         # opening brackets
  | :\s*([+-]?[.\d]+)\s*\)        # ":1.5)" closes a round bracket with that weight
  | [)\]]                         # closing brackets
  | [^\\()\[\]:]+                 # plain text
  | :                             # a colon that is not a weight
""", re.X)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND = 1.1
SQUARE = 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """``text`` -> ``[(piece, weight), ...]`` with A1111's rules.

    Brackets multiply the weight of everything inside when they close (inner first), unclosed ones
    at the end of the text; a closing bracket without its opening one is literal text. Adjacent
    pieces of equal weight are merged; ``BREAK`` (a word on its own) becomes ("BREAK", -1). An
    empty text gives ``[("", 1.0)]``.

    >>> parse_prompt_attention('an (important) word')
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    def add_text(value: str) -> None:
        for i, part in enumerate(_BREAK_SPLIT.split(value)):
            if i:
                pieces.append(list(BREAK))
            pieces.append([part, 1.0])

    for match in _ATTENTION.finditer(text):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif number is not None and round_open and _is_number(number):
            scale_from(round_open.pop(), float(number))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE)
        else:
            add_text(token)

    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)

    if not pieces:
        pieces = [["", 1.0]]
    merged: list[list] = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:  # "1.2.3": A1111 fails the job; here the text stays literal
        return False
    return True


# ----------------------------------------------------------------------------- schedules

@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: tuple | None
    after: tuple
    when: str  # the number as written: a decimal point makes it a fraction


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _NoParse(Exception):
    pass


_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


class _ScheduleParser:
    """Recursive descent over the grammar in the module docstring. A node list holds literal
    strings (emphasis brackets are kept verbatim, the attention parser reads them later), ``_Edit``
    and ``_Alternate`` nodes. Bracket results are memoised by position, so retrying an opening
    bracket as a literal never re-parses what is inside it."""

    def __init__(self, text: str):
        self.text = text
        self.memo: dict[int, tuple[list, int] | None] = {}

    def top(self) -> list:
        text, nodes, i = self.text, [], 0
        while i < len(text):
            seq, i = self.prompt(i)
            nodes += seq
            if i < len(text):
                if text[i] not in "[]():":  # "|" outside an alternation, a trailing lone "\"
                    raise _NoParse
                nodes.append(text[i])
                i += 1
        return nodes

    def prompt(self, i: int) -> tuple[list, int]:
        text, nodes = self.text, []
        while i < len(text):
            if text[i] in "([":
                got = self.bracket(i)
                if got is None:
                    break
                more, i = got
                nodes += more
                continue
            plain = _PLAIN.match(text, i)
            if plain is None:
                break
            nodes.append(plain.group())
            i = plain.end()
        return nodes, i

    def bracket(self, i: int) -> tuple[list, int] | None:
        if i not in self.memo:
            self.memo[i] = self._round(i) if self.text[i] == "(" else self._square(i)
        return self.memo[i]

    def _at(self, i: int) -> str:
        return self.text[i] if i < len(self.text) else ""

    def _round(self, i: int) -> tuple[list, int] | None:
        inner, j = self.prompt(i + 1)
        if self._at(j) == ")":
            return ["(", *inner, ")"], j + 1
        if self._at(j) == ":":
            weight, k = self.prompt(j + 1)
            if self._at(k) == ")":
                return ["(", *inner, ":", *weight, ")"], k + 1
        return None

    def _square(self, i: int) -> tuple[list, int] | None:
        first, j = self.prompt(i + 1)
        c = self._at(j)
        if c == "]":
            return ["[", *first, "]"], j + 1
        if c == "|":
            options = [tuple(first)]
            while self._at(j) == "|":
                option, j = self.prompt(j + 1)
                options.append(tuple(option))
            if self._at(j) == "]":
                return [_Alternate(tuple(options))], j + 1
            return None
        if c == ":":
            when = _WHEN.match(self.text, j + 1)
            if when:
                return [_Edit(None, tuple(first), when.group(1))], when.end()
            second, k = self.prompt(j + 1)
            if self._at(k) == ":":
                when = _WHEN.match(self.text, k + 1)
                if when:
                    return [_Edit(tuple(first), tuple(second), when.group(1))], when.end()
        return None


def _parse_schedule(prompt: str) -> list | None:
    try:
        return _ScheduleParser(prompt).top()
    except (_NoParse, RecursionError):  # unreadable or absurdly nested: the prompt as it is
        return None


def _walk(nodes):
    for node in nodes:
        if isinstance(node, _Edit):
            yield node
            yield from _walk(node.before or ())
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes, step: int, when_of) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            out.append(_render(node.before or () if step <= when_of(node) else node.after, step, when_of))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, when_of))
    return "".join(out)


def prompt_schedules(prompts: list[str], steps: int, hires_steps: int | None = None,
                     use_old_scheduling: bool = False) -> list[list[tuple[int, str]]]:
    """A1111's ``get_learned_conditioning_prompt_schedules``: per prompt ``[(end_step, text)]``.

    ``when`` in ``[a:b:when]``: a number with a decimal point is a fraction of the steps, else a
    step; the switch happens after step ``min(steps, int(value))`` (1-based). For the hires pass
    (``hires_steps`` given, ``steps`` being the first pass's), the timeline continues the first
    pass: a whole number counts from the first pass's start (``when - steps``), a fraction is
    ``(when - 1) * hires_steps`` (so ``1.5`` is half-way through the hires pass and ``0.5`` is
    over). ``use_old_scheduling`` is A1111's compatibility option: values below 1 are fractions,
    others steps, of ``steps`` (no hires timeline).

    >>> prompt_schedules(["a [b:c:0.5]"], 4)
    [[(2, 'a b'), (4, 'a c')]]
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, fraction_offset, total = 0, 0.0, steps
    else:
        int_offset, fraction_offset, total = steps, 1.0, hires_steps

    def when_of(edit: _Edit) -> int:
        value = float(edit.when)
        if use_old_scheduling:
            value = value * total if value < 1 else value
        elif "." in edit.when:
            value = (value - fraction_offset) * total
        else:
            value = value - int_offset
        return int(max(min(value, total), -1.0))  # A1111's min(steps, int(value)); any value below 1 acts alike

    def schedule(prompt: str) -> list[tuple[int, str]]:
        tree = _parse_schedule(prompt)
        if tree is None:
            return [(total, prompt)]
        ends = {total}
        for node in _walk(tree):
            if isinstance(node, _Alternate):
                ends.update(range(1, total + 1))
            else:
                when = when_of(node)
                if when >= 1:
                    ends.add(when)
        return [(end, _render(tree, end, when_of)) for end in sorted(ends)]

    done: dict[str, list[tuple[int, str]]] = {}
    for prompt in prompts:
        if prompt not in done:
            done[prompt] = schedule(prompt)
    return [list(done[prompt]) for prompt in prompts]


def old_timelines_differ(prompts: list[str], steps: int, hires_steps: int | None = None) -> bool:
    """Whether ``use_old_scheduling`` changes any of these prompts' schedules: A1111 then writes
    "Old prompt editing timelines: True" (its ``get_conds_with_caching``)."""
    return prompt_schedules(prompts, steps, hires_steps, False) != prompt_schedules(prompts, steps, hires_steps, True)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """A1111's name for :func:`prompt_schedules`, for extensions."""
    return prompt_schedules(prompts, base_steps, hires_steps, use_old_scheduling)


def entry_at_step(schedule: list[tuple[int, str]], step: int) -> int:
    """Index of the schedule entry used at sampler step ``step`` (0-based, counted from where
    sampling starts, as A1111's CFG denoiser counts): the first entry with ``step <= end_step``.
    Past the end, the last entry (A1111 falls back to the first one there, which only happens with
    more model calls than the schedule has steps)."""
    for index, (end, _text) in enumerate(schedule):
        if step <= end:
            return index
    return len(schedule) - 1


# ----------------------------------------------------------------------------- composable diffusion

_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """``"a AND b :0.5"`` -> ``[("a", 1.0), (" b", 0.5)]``: sub-prompts with their weights."""
    out = []
    for part in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(part)
        if match is None:
            out.append((part, 1.0))
        else:
            text, weight = match.groups()
            out.append((text, float(weight) if weight is not None else 1.0))
    return out


def multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's ``get_multicond_prompt_list``: per prompt ``[(index into flat, weight)]``, the flat
    list of distinct sub-prompt texts, and text -> index."""
    indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        row = []
        for text, weight in split_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            row.append((index_of[text], weight))
        indexes.append(row)
    return indexes, flat, index_of


get_multicond_prompt_list = multicond_prompt_list
