"""The registry of model families: one row per family, asked in order by detection.

Adding a family: a module here with a :class:`~.base.ModelFamily` subclass, and its row below. When
two families' claims could overlap, the more specific one goes first.
"""

from __future__ import annotations

from ..checkpoint_shapes import Shapes
from ..conditioning_options import ConditioningOptions
from .base import ModelFamily
from .flux import Flux
from .sd3 import SD3
from .sd1 import SD1
from .sd2 import SD2
from .sdxl import SDXL
from .sdxl_refiner import SDXLRefiner

__all__ = ["ConditioningOptions", "ModelFamily", "get", "detect", "names", "register"]

_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add a family (refuses a second one of the same name)."""
    if not family.name or family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered" if family.name else "a family needs a name")
    _FAMILIES[family.name] = family
    return family


for _family in (SDXL(), SDXLRefiner(), SD2(), SD1(), Flux(), SD3()):  # the order detection asks them in
    register(_family)


def names() -> list[str]:
    return list(_FAMILIES)


def get(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}") from None


def detect(shapes: Shapes) -> ModelFamily | None:
    """The family whose claims the state dict meets (first in registry order); None: no family's."""
    for family in _FAMILIES.values():
        if family.claims(shapes):
            return family
    return None
