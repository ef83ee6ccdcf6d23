"""The page's top-level tabs by label (A1111's `shared.tab_names`): the built-in ones and the
extensions' `on_ui_tabs` ones, as the page last built them (modules.ui.app), and the order and
hiding that A1111's ui_tab_order and hidden_tabs give them.

No Gradio here: the composition root gives the two options their choices with `bind(options)`,
as it does for `localization`, before any page is built."""

from __future__ import annotations

from typing import Sequence, TypeVar

from modules.services.option_sections import TAB_NAMES

T = TypeVar("T")

_built: tuple[str, ...] = ()  # the labels of every tab of the page last built, hidden ones included


def record(labels: Sequence[str]) -> None:
    """Called as the page is built, before the Settings tab lists the choices (as A1111 fills
    shared.tab_names before its Blocks)."""
    global _built
    _built = tuple(dict.fromkeys(str(label) for label in labels))


def choices() -> tuple[str, ...]:
    """The two options' choices: the tabs of the page as built (extensions' included), the built-in
    ones before any page is (or without one: --nowebui)."""
    return _built or TAB_NAMES


def bind(options) -> None:
    """Give ui_tab_order and hidden_tabs (modules.services.option_sections) the real tab names."""
    for key in ("ui_tab_order", "hidden_tabs"):
        if key in options.defs:
            options.defs[key].choices = choices


def ordered(tabs: Sequence[T], order: Sequence[str] | None, label=lambda tab: tab[0]) -> list[T]:
    """A1111's ui_tab_order: the tabs it names (by label) first, in its order, then the others in
    their usual order; names of no tab are ignored."""
    rank = {str(name): i for i, name in enumerate(order or [])}
    return sorted(tabs, key=lambda tab: rank.get(label(tab), float("inf")))


def hidden(tab_label: str, hidden_tabs: Sequence[str] | None) -> bool:
    """A1111's hidden_tabs: a tab it names is left out of the page (Settings too, as in A1111)."""
    return tab_label in set(hidden_tabs or [])
