"""A1111's `modules.extra_networks`: the `<type:args>` prompt syntax and the registry of network
types extensions add (`register_extra_network(ExtraNetwork subclass)`).

Parsing is Easel's (modules.core.extra_networks). LoRA and hypernetworks are applied by Easel's own
engine; a type an extension registers is activated by `processing_hooks.ScriptHooks` once per
batch with the tags of the batch's prompts (A1111's `activate(p, p.extra_network_data)`) and
deactivated when the job ends, each call credited to the extension on failure.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

from modules.core import extra_networks as _core

log = logging.getLogger(__name__)

re_extra_net = re.compile(r"<(\w+):([^>]+)>")

extra_network_registry: dict[str, "ExtraNetwork"] = {}
extra_network_aliases: dict[str, "ExtraNetwork"] = {}
# the types Easel's engine handles itself (never activated through this registry)
BUILTIN_TYPES = ("lora", "lyco", "hypernet")


class ExtraNetworkParams:
    """One tag's arguments: `items` as written, `positional` and `named` (`te=0.5`) (A1111)."""

    def __init__(self, items=None):
        parsed = _core.ExtraNetworkParams(tuple(items or ()))
        self.items = list(parsed.items)
        self.positional = list(parsed.positional)
        self.named = dict(parsed.named)

    def __eq__(self, other):
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __repr__(self):
        return f"ExtraNetworkParams({self.items!r})"


class ExtraNetwork:
    """Base class of a network type: `activate(p, params_list)` per batch, `deactivate(p)` after."""

    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def register_extra_network(extra_network: ExtraNetwork) -> None:
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network: ExtraNetwork, alias: str) -> None:
    extra_network_aliases[alias] = extra_network


def initialize() -> None:
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_default_extra_networks() -> None:
    """A1111 registers its hypernetwork type here; Easel's engine applies hypernetworks itself."""


def _convert(found) -> dict[str, list[ExtraNetworkParams]]:
    res: dict[str, list[ExtraNetworkParams]] = defaultdict(list)
    for kind, params in found.items():
        res[kind].extend(ExtraNetworkParams(list(p.items)) for p in params)
    return res


def parse_prompt(prompt):
    """(prompt without its tags, {type: [ExtraNetworkParams]})."""
    text, found = _core.parse_prompt(prompt or "")
    return text, _convert(found)


def parse_prompts(prompts):
    """(every prompt without its tags, the first prompt's tags) (A1111: one set per batch)."""
    cleaned, found = _core.parse_prompts(list(prompts))
    return cleaned, _convert(found)


def lookup_extra_networks(extra_network_data):
    """{ExtraNetwork: [params]} for the types that are registered (aliases resolved)."""
    res = {}
    for name, params in (extra_network_data or {}).items():
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is None:
            log.info("Skipping unknown extra network: %s", name)
            continue
        res.setdefault(network, []).extend(params)
    return res


def _credited(network, what, call) -> None:
    import inspect

    from modules import errors

    try:
        call()
    except Exception:  # noqa: BLE001 - one network never stops a generation (A1111)
        try:
            source = inspect.getfile(type(network))
        except TypeError:
            source = None
        errors.report_for(source, f"{what} extra network {network.name}")


def _registered(builtin: bool):
    return [net for name, net in extra_network_registry.items() if builtin or name not in BUILTIN_TYPES]


def activate(p, extra_network_data, *, builtin: bool = True):
    """Activate every registered type with its tags; a registered type the prompt does not use is
    activated with no tags, so it can reset itself (A1111). `builtin=False` leaves out the types
    Easel's engine applies itself."""
    used = {net: params for net, params in lookup_extra_networks(extra_network_data).items()
            if builtin or net.name not in BUILTIN_TYPES}
    for network, params in used.items():
        _credited(network, "activating", lambda n=network, pr=params: n.activate(p, pr))
    for network in _registered(builtin):
        if network not in used:
            _credited(network, "activating", lambda n=network: n.activate(p, []))


def deactivate(p, extra_network_data, *, builtin: bool = True):
    """Deactivate every registered type, the used ones first (A1111)."""
    used = [net for net in lookup_extra_networks(extra_network_data) if builtin or net.name not in BUILTIN_TYPES]
    for network in used:
        _credited(network, "deactivating", lambda n=network: n.deactivate(p))
    for network in _registered(builtin):
        if network not in used:
            _credited(network, "deactivating", lambda n=network: n.deactivate(p))


def get_user_metadata(filename, lister=None):
    """The `.json` beside a network file (A1111's user metadata), {} when there is none."""
    import json
    import os

    if filename is None:
        return {}
    metadata_filename = os.path.splitext(filename)[0] + ".json"
    try:
        with open(metadata_filename, encoding="utf8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return {}
