"""A1111's built-in Lora extension's ``networks`` module, which extensions import (``import networks``,
or through ``lora``): the LoRA files (``available_networks`` and the alias and hash tables,
``list_available_networks()``) from Easel's LoRA folders, and ``loaded_networks``, the LoRAs of the
batch being generated with their multipliers (set before each batch, as A1111's activation does).

Easel applies LoRAs itself from the prompt's ``<lora:name:te:unet>`` tags; ``load_networks`` called by an
extension is not A1111's way into Easel's engine and says so."""

from __future__ import annotations

import network

available_networks: dict[str, network.NetworkOnDisk] = {}
available_network_aliases: dict[str, network.NetworkOnDisk] = {}
available_network_hash_lookup: dict[str, network.NetworkOnDisk] = {}
forbidden_network_aliases: dict[str, int] = {}
loaded_networks: list[network.Network] = []
networks_in_memory: dict = {}


def _registry():
    from modules import shared

    engine = shared.engine
    return getattr(engine, "loras", None) if engine is not None else None


def list_available_networks() -> None:
    """The tables again from Easel's LoRA folders (A1111's refresh)."""
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    available_network_hash_lookup.clear()
    registry = _registry()
    if registry is None:
        return
    registry.refresh()
    for item in registry.items():
        entry = network.NetworkOnDisk(item.name, str(item.path), item)
        available_networks[item.name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[item.name] = entry
        available_network_aliases[entry.alias] = entry
        if item.known_sha256:  # as A1111: the metadata's or an already computed hash; no file is read here
            entry.set_hash(item.known_sha256)
            available_network_hash_lookup[entry.shorthash] = entry


def set_loaded(refs) -> None:
    """Easel's engine: the batch's LoRA mentions (``modules.core.extra_networks.LoraRef``), as
    A1111's ``loaded_networks`` would hold them after its activation."""
    if not available_networks:
        list_available_networks()
    loaded_networks.clear()
    for ref in refs:
        on_disk = available_network_aliases.get(ref.name) or available_networks.get(ref.name)
        net = network.Network(on_disk.name if on_disk else ref.name, on_disk)
        net.te_multiplier, net.unet_multiplier, net.dyn_dim = ref.te, ref.unet, ref.dyn
        net.mentioned_name = ref.name
        loaded_networks.append(net)


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None) -> None:
    raise NotImplementedError("networks.load_networks: Easel applies LoRAs from the prompt's <lora:name:weight> "
                              "tags (put them in p.prompt / p.all_prompts), not from this call")


list_available_networks()  # as A1111's Lora script does when it loads
