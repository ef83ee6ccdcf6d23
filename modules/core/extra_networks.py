"""A1111's extra-network syntax: `<type:name:arg1:arg2...>` inside a prompt.

Every `<word:...>` tag is cut out of the prompt text before the prompt language sees it (A1111 does
this for every tag, known type or not) and its arguments are kept per type. The arguments are split
on `:`; an argument with exactly one `=` is a named one (`te=0.5`), the others are positional.

Which prompts are read (A1111's processing): the positive prompts of the job, whose first prompt's
tags drive the job, and the hires prompt for the second pass. Negative prompts are not parsed: a tag
written there stays in the text the encoder reads, as in A1111.

LoRA arguments (A1111's `extra_networks_lora`): `<lora:name>` is weight 1 for both parts,
`<lora:name:w>` sets the text-encoder weight and the UNet weight follows it, `<lora:name:te:unet>`
sets both, a fourth positional is `dyn` (only the first `dyn` ranks are used); the named forms
`te=`, `unet=`, `dyn=` win over the positional ones. `lyco` is A1111's alias of `lora`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_TYPES = ("lora", "lyco")


@dataclass(frozen=True)
class ExtraNetworkParams:
    """One tag's arguments, as written (A1111's ExtraNetworkParams)."""

    items: tuple[str, ...]
    positional: tuple[str, ...] = field(init=False)
    named: dict[str, str] = field(init=False)

    def __post_init__(self):
        positional, named = [], {}
        for item in self.items:
            parts = item.split("=")
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        object.__setattr__(self, "positional", tuple(positional))
        object.__setattr__(self, "named", named)


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """(prompt without its tags, {type: [params, ...]} in the order written)."""
    found: dict[str, list[ExtraNetworkParams]] = {}

    def cut(m: re.Match) -> str:
        found.setdefault(m.group(1), []).append(ExtraNetworkParams(tuple(m.group(2).split(":"))))
        return ""

    return _TAG.sub(cut, prompt), found


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Every prompt cleaned; the tags of the first one (A1111: one set of networks per batch)."""
    cleaned, data = [], None
    for prompt in prompts:
        text, found = parse_prompt(prompt)
        cleaned.append(text)
        if data is None:
            data = found
    return cleaned, data or {}


@dataclass(frozen=True)
class LoraRef:
    """One `<lora:...>` mention: the name as written and its weights."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    @property
    def is_zero(self) -> bool:
        return self.te == 0 and self.unet == 0


def _number(text: str, what: str, tag: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{tag}: {what} '{text}' is not a {'number' if kind is float else 'whole number'}") from None


def lora_refs(data: dict[str, list[ExtraNetworkParams]]) -> list[LoraRef]:
    """The LoRA mentions of parsed tags, with A1111's argument rules. ValueError for a weight that is
    not a number or a tag without a name."""
    refs = []
    for kind in LORA_TYPES:
        for params in data.get(kind, []):
            tag = f"<{kind}:{':'.join(params.items)}>"
            if not params.positional or not params.positional[0].strip():
                raise ValueError(f"{tag}: the LoRA name is missing")
            pos = params.positional
            te = _number(pos[1], "weight", tag) if len(pos) > 1 else 1.0
            te = _number(params.named["te"], "te weight", tag) if "te" in params.named else te
            unet = _number(pos[2], "unet weight", tag) if len(pos) > 2 else te
            unet = _number(params.named["unet"], "unet weight", tag) if "unet" in params.named else unet
            dyn = _number(pos[3], "dyn", tag, int) if len(pos) > 3 else None
            dyn = _number(params.named["dyn"], "dyn", tag, int) if "dyn" in params.named else dyn
            refs.append(LoraRef(pos[0].strip(), te, unet, dyn))
    return refs


def parse_loras(prompt: str) -> tuple[str, list[LoraRef]]:
    """A prompt without its tags, and its LoRA mentions."""
    text, data = parse_prompt(prompt)
    return text, lora_refs(data)
