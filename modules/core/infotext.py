"""A1111-compatible generation parameters text ("infotext").

The text stored in images and shown under the gallery looks like::

    a photo of a cat, highly detailed
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.0, Seed: 1, Size: 512x512, ...

`build_infotext` writes it the way A1111's ``create_infotext`` does and `parse_infotext`
reads it the way A1111's ``parse_generation_parameters`` does, so files move freely between
Easel, A1111/Forge and tools such as sd-parsers. Pure stdlib; no options are read here.
"""

from __future__ import annotations

import json
import re
from typing import Mapping

__all__ = ["build_infotext", "parse_infotext", "quote", "unquote", "NEGATIVE_PROMPT_MARKER"]

NEGATIVE_PROMPT_MARKER = "Negative prompt:"

# A1111's `re_param_code`: a key (word char, then words/spaces/-/), a colon, then either a
# JSON string or anything up to the next comma. One alternative is added ahead of the bare
# value: a flat JSON object (A1111 writes dict values, e.g. `Hashes`, as raw JSON), so its
# inner commas do not cut the value short.
_KEY = r"\w[\w \-/]+"
_JSON_STRING = r'"(?:\\.|[^\\"])+"'
_JSON_OBJECT = r'\{(?:"(?:\\.|[^\\"])*"|[^{}"])*\}'
_RE_PARAM = re.compile(rf"\s*({_KEY}):\s*({_JSON_STRING}|{_JSON_OBJECT}(?=\s*(?:,|$))|[^,]*)(?:,|$)")
_RE_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_RE_VALID_KEY = re.compile(rf"^{_KEY}$")

# A line is the settings line only when at least this many `key: value` pairs are found in it
# (A1111's rule; protects prompts that happen to contain a colon).
_MIN_SETTINGS_PAIRS = 3


def quote(value: object) -> str:
    """Render one settings value the way A1111's ``quote`` does.

    Values holding a separator (`,` `:` newline) are JSON-encoded; a `"` is also quoted here
    (A1111 does not) because an unquoted value that starts and ends with `"` would otherwise be
    JSON-decoded on reading. An empty string becomes `""` so it survives a round trip
    (A1111 writes nothing and its reader drops the key); edge whitespace is quoted too, since the
    reader would strip it.
    """
    if isinstance(value, (dict, list)):
        # A1111 json.dumps()es the object itself, giving raw JSON (`Hashes: {"model": "…"}`).
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    if text == "" or text != text.strip() or any(ch in text for ch in ',:"\n\r'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Inverse of `quote` for JSON strings; anything else comes back unchanged."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _RE_VALID_KEY.match(key):
        raise ValueError(
            f"infotext key {key!r} cannot be written: a key must start with a letter, digit or _ "
            "and contain only letters, digits, spaces, '_', '-' and '/' (at least 2 characters)"
        )
    return key


def _settings_line(params: Mapping[str, object]) -> str:
    present = {k: v for k, v in params.items() if v is not None}
    for required in ("Steps", "Sampler"):
        if required not in present:
            raise ValueError(f"infotext params must contain {required!r} (got keys: {list(params)})")

    # "Steps" always leads (readers such as sd-parsers and A1111 forks look for it); the rest
    # keep the caller's (A1111) order.
    ordered = [("Steps", present["Steps"])] + [(k, v) for k, v in present.items() if k != "Steps"]
    parts = []
    for key, value in ordered:
        _check_key(key)
        if isinstance(value, str) and value == key:
            # A1111 writes flags whose value equals their key as the bare key.
            parts.append(key)
        else:
            parts.append(f"{key}: {quote(value)}")
    return ", ".join(parts)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Write the A1111 infotext for one image.

    `params` holds the settings in A1111 order (``Steps``, ``Sampler``, ``Schedule type``,
    ``CFG scale``, ``Seed``, ``Size``, ``Model hash``, ``Model``, …, ``Version``); values of
    None are skipped, other values are written as ``str(value)`` (so ``7.0`` stays ``7.0``).
    Raises ValueError when ``Steps`` or ``Sampler`` is missing or a key cannot be parsed back.
    """
    prompt = "" if prompt is None else str(prompt)
    negative_prompt = "" if negative_prompt is None else str(negative_prompt)
    negative_line = f"\n{NEGATIVE_PROMPT_MARKER} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{_settings_line(params)}".strip()


def _split_settings_line(text: str) -> tuple[list[str], str]:
    *lines, last = text.split("\n")
    if len(_RE_PARAM.findall(last)) < _MIN_SETTINGS_PAIRS:
        return lines + [last], ""
    return lines, last


def parse_infotext(text: str) -> dict[str, str]:
    """Read an infotext back, like A1111's ``parse_generation_parameters``.

    Returns ``{"Prompt": …, "Negative prompt": …, "Steps": "20", "Sampler": …, …}``; all
    settings values are strings, JSON-quoted values are unquoted, and a ``Size: WxH`` value
    (or any ``WxH`` value) also yields ``Size-1`` (width) and ``Size-2`` (height).
    Unlike A1111, prompt lines keep their inner whitespace, and the A1111 option-dependent
    defaults (Clip skip, Hires resize, …) are not filled in: that belongs to the caller.
    """
    if text is None:
        return {"Prompt": "", "Negative prompt": ""}
    text = str(text).replace("\r\n", "\n").replace("\r", "\n").strip()
    prompt_lines, settings = _split_settings_line(text)

    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in prompt_lines:
        stripped = line.lstrip()
        if stripped.startswith(NEGATIVE_PROMPT_MARKER):
            in_negative = True
            line = stripped[len(NEGATIVE_PROMPT_MARKER):].lstrip()
        (negative if in_negative else prompt).append(line)

    result: dict[str, str] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, raw in _RE_PARAM.findall(settings):
        value = unquote(raw) if raw.startswith('"') else raw
        size = _RE_IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        result[key] = value
    return result


def plain_number(x: float) -> float | int:
    """A1111 writes whole numbers without a decimal point (`CFG scale: 7`, `Hires upscale: 2`)."""
    return int(x) if float(x).is_integer() else x
