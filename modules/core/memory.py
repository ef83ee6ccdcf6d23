"""The sole owner of device placement: what sits on the device, and every move of model weights.

Code that runs a part of a model asks ``with memory.use(model.unet):`` (or simply calls a text encoder,
whose forward pre-hook asks for it); the owner brings the part in, evicting others as its policy and
the device budget say, and keeps an account of what it did (bytes resident, peak, a log of moves).

Policies (A1111's flags; ``auto`` is Forge's choice from the budget and the model's size):

- ``all``: everything resident; parts leave only when the budget would overflow (least recently used
  first, e.g. the parts of a cached checkpoint that is not the current one);
- ``medvram``: only the running stage (text encoders, UNet/transformer, VAE) on the device;
- ``lowvram``: medvram, and the UNet streamed: each of its blocks is moved in by a forward pre-hook
  and out again by a forward hook;
- ``medvram-sdxl``: medvram for SDXL models, ``all`` for the others;
- ``auto``: ``all`` when the whole model fits the budget with room to run, ``medvram`` when its
  biggest stage does, ``lowvram`` otherwise; no budget (the CPU): ``all``.

Moving a module between two CPU "devices" changes nothing in its tensors, so on the CPU the policies
only differ in the account and the hooks: the tests give the owner a budget and check that the bytes
resident never exceed it while the pictures stay bit-identical. Only weights are counted, not
activations; ``reserve_bytes`` is what ``auto`` leaves free for them.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import os

import torch

POLICIES = ("auto", "all", "medvram", "lowvram", "medvram-sdxl")
GIB = 1024 ** 3


def move(module: torch.nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
         recurse: bool = True) -> torch.nn.Module:
    """The one primitive that moves (or casts) weights; everything else goes through it."""
    if recurse:
        return module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    return module._apply(lambda t: t.to(device), recurse=False)


def module_bytes(module: torch.nn.Module, recurse: bool = True) -> int:
    seen, total = set(), 0
    for tensor in (*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def policy_from_flags(lowvram: bool = False, medvram: bool = False, medvram_sdxl: bool = False) -> str:
    """A1111's flags, strongest first; none: the automatic choice."""
    if lowvram:
        return "lowvram"
    if medvram:
        return "medvram"
    if medvram_sdxl:
        return "medvram-sdxl"
    return "auto"


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None for the CPU: no budget)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def available_bytes(device: torch.device) -> int:
    """What a computation on ``device`` may still allocate: a CUDA device's free memory plus what
    PyTorch holds reserved and unused; elsewhere, what the kernel could give without swapping
    (page cache included)."""
    free = free_device_bytes(device)
    if free is not None:
        stats = torch.cuda.memory_stats(device)
        return free + int(stats.get("reserved_bytes.all.current", 0)) - int(stats.get("active_bytes.all.current", 0))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


@dataclass
class Move:
    direction: str  # "in" or "out"
    name: str
    bytes: int
    resident_after: int


@dataclass(eq=False)
class _Entry:
    name: str
    module: torch.nn.Module
    bytes: int
    mode: str  # the resolved policy of the model it belongs to: all / medvram / lowvram
    kind: str = "stage"  # stage, base (a streamed UNet's own tensors), block (one streamed block)
    owners: list = field(default_factory=list)  # base: the modules whose direct tensors it holds
    units: list = field(default_factory=list)  # streamed stage: its base entry, then its blocks
    pins: int = 0
    hooks: list = field(default_factory=list)


class DeviceMemory:
    """One per device policy (the model cache's): decides and records what is on ``device``."""

    def __init__(self, device: torch.device | str = "cpu", budget_bytes: int | None = None, policy: str = "auto",
                 offload_device: torch.device | str = "cpu", reserve_bytes: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown memory policy {policy!r}; one of {', '.join(POLICIES)}")
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.budget_bytes = budget_bytes
        self.policy = policy
        self.reserve_bytes = reserve_bytes if reserve_bytes is not None else (
            min(2 * GIB, budget_bytes // 5) if budget_bytes else 0)
        self._entries: dict[int, _Entry] = {}
        self._resident: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self.resident_bytes = 0
        self.peak_bytes = 0
        self.overflows = 0  # moves that had to exceed the budget (nothing left to evict)
        self.log: list[Move] = []
        # A1111's sd_checkpoints_keep_in_cpu: a cached checkpoint that is not the current one leaves the
        # device (True), or stays where it is until the budget needs its room (False)
        self.keep_cached_off_device = True

    @classmethod
    def for_device(cls, device: torch.device, policy: str = "auto") -> "DeviceMemory":
        """The owner for a real device: its budget is the free memory now (none on the CPU)."""
        return cls(device, free_device_bytes(device), policy)

    # -- policy ------------------------------------------------------------------------------------

    def resolve(self, family: str, stage_bytes: list[int]) -> str:
        """The concrete policy (all / medvram / lowvram) for a model of this family whose stages weigh
        ``stage_bytes`` (the UNet first)."""
        policy = self.policy
        if policy == "medvram-sdxl":
            return "medvram" if family in ("sdxl", "sdxl_refiner") else "all"
        if policy != "auto":
            return policy
        if self.budget_bytes is None:
            return "all"
        room = self.budget_bytes - self.reserve_bytes
        if sum(stage_bytes) <= room:
            return "all"
        if max(stage_bytes) <= room:
            return "medvram"
        return "lowvram"

    # -- registration ------------------------------------------------------------------------------

    def attach(self, model) -> str:
        """Take charge of a loaded model's parts (a ``LoadedModel``): resolve its policy, set up the
        hooks, and place what is resident from the start. Returns the resolved policy."""
        stages = [("unet", model.unet), ("vae", model.vae)] + [(f"text_encoder_{i}", e)
                                                               for i, e in enumerate(model.text_encoders)]
        mode = self.resolve(model.spec.family, [module_bytes(m) for _n, m in stages])
        label = model.path.stem
        for name, module in stages:
            self.register(module, f"{label}:{name}", mode, streamed=(name == "unet" and mode == "lowvram"))
        for encoder in model.text_encoders:  # conditioning code calls them directly
            self._on_call(encoder)
        if mode == "all":
            for _name, module in stages:
                self.bring(module)
        return mode

    def mode_of(self, module: torch.nn.Module) -> str | None:
        """The resolved policy a registered module is under (all / medvram / lowvram); None: not ours."""
        entry = self._entries.get(id(module))
        return entry.mode if entry is not None else None

    def register(self, module: torch.nn.Module, name: str, mode: str = "all", streamed: bool = False) -> None:
        if id(module) in self._entries:
            return
        entry = _Entry(name, module, module_bytes(module), mode)
        self._entries[id(module)] = entry
        if streamed:
            self._stream(entry)

    def adopt(self, module: torch.nn.Module, like: torch.nn.Module, name: str | None = None) -> None:
        """Register ``module`` as a replacement of ``like`` (an external VAE): same policy, same place."""
        old = self._entries.get(id(like))
        self.register(module, name or (old.name + "'" if old else "module"), old.mode if old else "all")
        if old is None or id(like) in self._resident or old.mode == "all":
            self.bring(module)
        else:
            move(module, self.offload_device)

    def forget(self, module: torch.nn.Module, offload: bool = True) -> None:
        """Stop tracking ``module`` (moved off the device first unless ``offload`` is False)."""
        entry = self._entries.pop(id(module), None)
        if entry is None:
            return
        for unit in [entry, *entry.units]:
            if offload or unit is not entry:
                self._evict(unit)
            else:
                self._drop(unit)
            for hook in unit.hooks:
                hook.remove()
            unit.hooks.clear()
            if unit is not entry:
                self._entries.pop(id(unit.module), None)

    def release(self, model) -> None:
        """A model leaves memory altogether (evicted from the cache): off the device, untracked."""
        extra = [m for m in model.extra.values() if isinstance(m, torch.nn.Module)]
        for module in (model.unet, model.vae, *model.text_encoders, *extra):
            self.forget(module)

    def set_aside(self, model) -> bool:
        """A checkpoint stops being the current one but stays cached: off the device with
        ``keep_cached_off_device`` (A1111's sd_checkpoints_keep_in_cpu), else left resident, the
        least recently used parts to go first when another part needs the room. True: it was moved."""
        if self.keep_cached_off_device:
            self.offload(model)
            return True
        return False

    def offload(self, model) -> None:
        """Move a model's parts off the device (a cached checkpoint that is not the current one)."""
        for module in (model.unet, model.vae, *model.text_encoders):
            entry = self._entries.get(id(module))
            if entry is not None:
                for unit in [entry, *entry.units]:
                    self._evict(unit)

    def refresh(self, module: torch.nn.Module) -> None:
        """Its size changed (cast to another dtype): account it again."""
        entry = self._entries.get(id(module))
        if entry is None:
            return
        new = module_bytes(module)
        if id(module) in self._resident:
            self.resident_bytes += new - entry.bytes
            self.peak_bytes = max(self.peak_bytes, self.resident_bytes)
        entry.bytes = new

    # -- use ---------------------------------------------------------------------------------------

    @contextmanager
    def use(self, module: torch.nn.Module):
        """``module`` is on the device (a streamed UNet: its own tensors, the blocks come as they run)
        and stays there until the block ends."""
        entry = self._entries.get(id(module))
        if entry is None:  # not a model part (nothing to decide): used where it is
            yield module
            return
        target = entry.units[0] if entry.units else entry
        self._make_room_for_stage(entry)
        self._bring(target)
        entry.pins += 1
        target.pins += 1
        try:
            yield module
        finally:
            entry.pins -= 1
            target.pins -= 1

    def bring(self, module: torch.nn.Module) -> None:
        entry = self._entries.get(id(module))
        if entry is not None:
            self._make_room_for_stage(entry)
            self._bring(entry.units[0] if entry.units else entry)

    def is_resident(self, module: torch.nn.Module) -> bool:
        return id(module) in self._resident

    def reset_peak(self) -> None:
        self.peak_bytes = self.resident_bytes
        self.log.clear()

    # -- internals ---------------------------------------------------------------------------------

    def _make_room_for_stage(self, entry: _Entry) -> None:
        """medvram / lowvram: only the running stage stays; the others leave first."""
        if entry.mode == "all" or id(entry.units[0].module if entry.units else entry.module) in self._resident:
            return
        for other in list(self._resident.values()):
            if other.pins == 0 and other is not entry and other not in entry.units:
                self._evict(other)

    def _bring(self, entry: _Entry) -> None:
        key = id(entry.module)
        if key in self._resident:
            self._resident.move_to_end(key)
            return
        if self.budget_bytes is not None:
            for other in list(self._resident.values()):
                if self.resident_bytes + entry.bytes <= self.budget_bytes:
                    break
                if other.pins == 0:
                    self._evict(other)
            if self.resident_bytes + entry.bytes > self.budget_bytes:
                self.overflows += 1
        self._move(entry, self.device)
        self._resident[key] = entry
        self.resident_bytes += entry.bytes
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)
        self.log.append(Move("in", entry.name, entry.bytes, self.resident_bytes))

    def _evict(self, entry: _Entry) -> None:
        if self._drop(entry):
            self._move(entry, self.offload_device)
            self.log.append(Move("out", entry.name, entry.bytes, self.resident_bytes))

    def _drop(self, entry: _Entry) -> bool:
        if self._resident.pop(id(entry.module), None) is None:
            return False
        self.resident_bytes -= entry.bytes
        return True

    def _move(self, entry: _Entry, device: torch.device) -> None:
        if entry.kind == "base":
            for owner in entry.owners:
                move(owner, device, recurse=False)
        else:
            move(entry.module, device)

    def _on_call(self, module: torch.nn.Module) -> None:
        """Bring ``module`` in whenever it is called (and its tensor arguments with it)."""
        def pre(mod, args, kwargs):
            self.bring(mod)
            return _to(args, self.device), _to(kwargs, self.device)

        entry = self._entries[id(module)]
        entry.hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))

    def _stream(self, entry: _Entry) -> None:
        """lowvram: the UNet's blocks move in just before they run and out right after."""
        limit = max(1, self.budget_bytes // 4) if self.budget_bytes else None
        blocks, owners = _split(entry.module, limit)
        base = _Entry(entry.name + ":base", _BaseKey(), sum(module_bytes(o, recurse=False) for o in owners),
                      entry.mode, kind="base", owners=owners)
        entry.units = [base]
        for index, block in enumerate(blocks):
            unit = _Entry(f"{entry.name}:block{index}", block, module_bytes(block), entry.mode, kind="block")
            self._entries[id(block)] = unit
            unit.hooks.append(block.register_forward_pre_hook(lambda mod, args, u=unit: self._bring(u)))
            unit.hooks.append(block.register_forward_hook(lambda mod, args, out, u=unit: self._evict(u)))
            entry.units.append(unit)
        base.hooks = []


class _BaseKey(torch.nn.Module):
    """A stand-in module giving a streamed UNet's own tensors an identity in the account."""


def _split(module: torch.nn.Module, limit: int | None) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """(blocks to stream, modules whose direct tensors stay with the base). Lists are opened; a child
    bigger than ``limit`` is opened too, so one block is at most about a quarter of the budget."""
    blocks: list[torch.nn.Module] = []
    owners: list[torch.nn.Module] = [module] if module_bytes(module, recurse=False) else []
    for child in module.children():
        size = module_bytes(child)
        if not size:
            continue
        container = isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential))
        if container or (limit is not None and size > limit and any(True for _ in child.children())):
            sub_blocks, sub_owners = _split(child, limit)
            blocks += sub_blocks
            owners += sub_owners
        else:
            blocks.append(child)
    return blocks, owners


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
