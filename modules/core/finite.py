"""NaN and infinity inside JSON-like values (numbers, lists, dicts).

Python's json module reads `NaN`, `Infinity`, `-Infinity` and overflowing numbers (`1e309`) as
floats that slip past every bound check (`nan < 1` and `nan > 30` are both false), and writes
them back as literals that no strict JSON reader accepts. These helpers find them (to refuse a
request naming the place) and replace them (to answer or store strict JSON whatever was written).
"""

from __future__ import annotations

import math
from typing import Any


def is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def describe(value: float) -> str:
    """The number as a JSON writer would have spelled it: NaN, Infinity, -Infinity."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def first_non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """(dotted path, number) of the first NaN or infinity inside `value`, else None. The path
    names dict keys and list indexes below `path` (`override_settings.eta`, `script_args.2`).
    Walked without recursion: a request nested thousands deep is no stack overflow."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if is_non_finite(item):
            return where, item
        if isinstance(item, dict):
            children = list(item.items())
        elif isinstance(item, (list, tuple)):
            children = list(enumerate(item))
        else:
            continue
        for key, child in reversed(children):  # depth first, in order
            stack.append((f"{where}.{key}" if where else str(key), child))
    return None


def replace_non_finite(value: Any, replacement: Any = None) -> Any:
    """A copy of `value` with every NaN and infinity replaced (strict JSON can carry the rest) by
    `replacement`, or by what it returns for the number when it is a function (`describe`);
    `value` itself when it holds none."""
    if first_non_finite(value) is None:
        return value
    if is_non_finite(value):
        return replacement(value) if callable(replacement) else replacement
    if isinstance(value, dict):
        return {k: replace_non_finite(v, replacement) for k, v in value.items()}
    return [replace_non_finite(v, replacement) for v in value]
