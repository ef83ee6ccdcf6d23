"""LoRA networks on a loaded model: files, layer lookup, applying and restoring weights.

1. `LoraFile`: one file on disk (name, alias, metadata, A1111's hash).
2. `load_network(path)`: the file's layers (lora_formats), cached by path, size and mtime.
3. `prepare(prompt, find_lora)`: the `<lora:...>` tags cut out of a prompt, each name found and its
   file loaded; a RequestError naming the prompt field for an unknown name or a bad file.
4. `activate(model, job)`: the job's deltas added to the weights of the UNet and text encoders
   (``W += weight * scale * ΔW``, computed in float32, stored in the weight's dtype and device), each
   touched weight backed up once, exactly, on the CPU. The set stays applied after the job (as in
   A1111: the next job with the same set costs nothing); a different set, or none, first restores
   the backups, so the base weights come back bit for bit. `deactivate(model)` restores them now.

Layer names (A1111's conventions, resolved against the diffusers/transformers modules):
- kohya: ``lora_unet_<module>`` with the module's diffusers name or its LDM name (``input_blocks_1_1_
  proj_in``), dots flattened to ``_``; ``lora_te_`` (SD1/SD2), ``lora_te1_`` / ``lora_te2_`` (SDXL).
- diffusers / PEFT: dotted names under ``unet.``, ``text_encoder.``, ``text_encoder_2.`` (or none),
  optionally behind PEFT's ``base_model.model.``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import extra_networks, fp8, lora_formats
from .checkpoint_file import CheckpointError, CheckpointFile, probe, read_safetensors_header
from .extra_networks import LoraRef
from .types import RequestError

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
# A1111 shows these metadata keys first, in this order
_METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                   "ss_tag_frequency": 20}


# ------------------------------------------------------------------------------------------- files

def metadata_for_display(raw: dict) -> dict:
    """A safetensors `__metadata__` as A1111 shows it: values that hold JSON objects decoded, cover
    images dropped, A1111's order."""
    out = {}
    for key, value in raw.items():
        if key == "ssmd_cover_images":
            continue
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                pass
        out[key] = value
    return dict(sorted(out.items(), key=lambda kv: _METADATA_ORDER.get(kv[0], 999)))


def file_sha256(path: Path) -> str:
    """A1111's LoRA hash: for .safetensors the sha256 of the tensor data after the header (kohya's
    "addnet" hash, so editing metadata keeps it), for other files the sha256 of the whole file."""
    digest = hashlib.sha256()
    start = read_safetensors_header(path).data_start if path.suffix.lower() == ".safetensors" else 0
    with open(path, "rb") as fh:
        fh.seek(start)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(eq=False)
class LoraFile:
    """One LoRA file. `name` is the file's stem, `alias` the training output name from the metadata
    (``ss_output_name``) or the name; the hash is computed when first asked for."""

    name: str
    path: Path
    metadata: dict = field(default_factory=dict)
    alias: str = ""
    problem: str | None = None  # why the file cannot be a LoRA (a first look at it: header, magic bytes)
    _sha256: str | None = field(default=None, repr=False)

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> "LoraFile":
        """Never raises for a bad file: an unreadable one comes back with `problem` set."""
        path = Path(path)
        name = name or path.stem
        try:
            header = probe(path)  # a .safetensors file's header, else None (magic bytes checked)
        except CheckpointError as exc:
            return cls(name, path, alias=name, problem=str(exc))
        metadata = metadata_for_display(header.metadata) if header else {}
        alias = metadata.get("ss_output_name")
        return cls(name, path, metadata, alias if isinstance(alias, str) and alias else name)

    @property
    def sha256(self) -> str | None:
        if self._sha256 is None:
            stored = self.metadata.get("sshs_model_hash")
            try:
                self._sha256 = stored if isinstance(stored, str) and stored else file_sha256(self.path)
            except (OSError, CheckpointError):
                return None
        return self._sha256

    @property
    def known_sha256(self) -> str | None:
        """The hash without reading the file: computed earlier, or stored in the metadata (else None)."""
        stored = self.metadata.get("sshs_model_hash")
        return self._sha256 or (stored if isinstance(stored, str) and stored else None)

    @property
    def shorthash(self) -> str | None:
        """First 12 hex digits (A1111's `Lora hashes`)."""
        return self.sha256[:12] if self.sha256 else None


# ---------------------------------------------------------------------------------------- networks

@dataclass
class LoraNetwork:
    path: Path
    stamp: tuple[int, int]  # (mtime_ns, size): a changed file is read again
    layers: dict[str, lora_formats.LoraLayer]
    unknown_keys: list[str]


_CACHE_SIZE = 8
_cache: OrderedDict[Path, LoraNetwork] = OrderedDict()
_cache_lock = threading.Lock()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def load_network(path: str | Path) -> LoraNetwork:
    """The file's layers; ValueError for a file that cannot be read or holds no LoRA layer."""
    path = Path(path).resolve()
    try:
        stamp = _stamp(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached.stamp == stamp:
            _cache.move_to_end(path)
            return cached
    try:
        ckpt = CheckpointFile(path)
        try:
            state = {k: ckpt.get(k) for k in ckpt.shapes}
        finally:
            ckpt.close()
    except CheckpointError as exc:
        raise ValueError(str(exc)) from exc
    grouped, unknown = lora_formats.group_layers(state)
    layers = {}
    for key, parts in grouped.items():
        layer = lora_formats.recognise(key, parts)
        if layer is None:
            unknown.extend(f"{key}.{part}" for part in parts)
        else:
            layers[key] = layer
    if not layers:
        shown = ", ".join(sorted(state)[:3]) or "no tensors"
        raise ValueError(f"{path.name} is not a LoRA: none of its {len(state)} keys is a LoRA layer ({shown})")
    network = LoraNetwork(path, stamp, layers, unknown)
    with _cache_lock:
        _cache[path] = network
        _cache.move_to_end(path)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return network


# --------------------------------------------------------------------------------- per-job choice

@dataclass
class JobEntry:
    file: LoraFile
    network: LoraNetwork
    ref: LoraRef


@dataclass
class JobLoras:
    """A prompt without its tags and the LoRAs it asks for. `prompt_field` names the prompt in errors."""

    prompt: str
    entries: list[JobEntry] = field(default_factory=list)
    prompt_field: str = "prompt"

    def key(self) -> tuple:
        return tuple((e.network.path, e.network.stamp, e.ref.te, e.ref.unet, e.ref.dyn)
                     for e in self.entries if not e.ref.is_zero)


FindLora = Callable[[str], "LoraFile | None"]


def prepare(prompt: str, find_lora: FindLora | None, field_name: str = "prompt") -> JobLoras:
    """Cut the tags out of `prompt`, find and load each mentioned LoRA. `find_lora(name)` gives the
    file or None, or raises LookupError with a message listing the known names."""
    try:
        text, refs = extra_networks.parse_loras(prompt)
    except ValueError as exc:
        raise RequestError(field_name, str(exc)) from exc
    entries = []
    for ref in refs:
        if find_lora is None:
            raise RequestError(field_name, f"LoRA '{ref.name}' cannot be used: no LoRA folder is set up")
        try:
            file = find_lora(ref.name)
        except LookupError as exc:
            raise RequestError(field_name, str(exc.args[0] if exc.args else exc)) from exc
        if file is None:
            raise RequestError(field_name, f"unknown LoRA '{ref.name}'")
        try:
            network = load_network(file.path)
        except ValueError as exc:
            raise RequestError(field_name, f"LoRA '{ref.name}': {exc}") from exc
        entries.append(JobEntry(file, network, ref))
    return JobLoras(text, entries, field_name)


def infotext_hashes(*jobs: JobLoras | None) -> str | None:
    """A1111's `Lora hashes` value: "name: shorthash, ..." for the names as written (without `:` and
    `,`), first pass and hires pass together; None without LoRAs."""
    hashes: dict[str, str] = {}
    for job in jobs:
        for entry in job.entries if job else ():
            name = entry.ref.name.replace(":", "").replace(",", "")
            if name and entry.file.shorthash:
                hashes[name] = entry.file.shorthash
    return ", ".join(f"{k}: {v}" for k, v in hashes.items()) or None


# ------------------------------------------------------------------------------------ model layers

def _weighted_modules(root: nn.Module):
    for name, module in root.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield name, module


class _Targets:
    """Every name a LoRA file may use for a layer of this model -> (part, module)."""

    def __init__(self, model):
        # layers a family's files name differently from the diffusers modules (Flux's fused q/k/v):
        # flat name -> [(module, first row, end row)] of the file's layer
        self.fused: dict[str, list[tuple[nn.Module, int, int]]] = model.family.lora_layers(model)
        self.unet_dotted = dict(_weighted_modules(model.unet))
        self.unet_flat = {k.replace(".", "_"): m for k, m in self.unet_dotted.items()}
        self.unet_flat.update({k: m for k, m in self._ldm_names(model.unet).items() if k not in self.unet_flat})
        self.te_dotted, self.te_flat = [], []
        for encoder in model.text_encoders:
            dotted = {k.removeprefix("text_model."): m for k, m in _weighted_modules(encoder)}
            self.te_dotted.append(dotted)
            self.te_flat.append({k.replace(".", "_"): m for k, m in dotted.items()})

    @staticmethod
    def _ldm_names(unet) -> dict[str, nn.Module]:
        """LDM-named layers (``input_blocks_1_1_proj_in``) -> the diffusers modules."""
        from .ldm_export import unet_to_ldm

        names = {k: k for k in unet.state_dict()}
        try:
            ldm = unet_to_ldm(names)
        except ValueError:
            return {}
        modules = dict(unet.named_modules())
        out = {}
        for ldm_key, key in ldm.items():
            if ldm_key.endswith(".weight") and key.endswith(".weight"):
                module = modules.get(key[: -len(".weight")])
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    out[ldm_key[: -len(".weight")].replace(".", "_")] = module
        return out

    def _te(self, index: int, table: str, name: str):
        tables = self.te_flat if table == "flat" else self.te_dotted
        if index >= len(tables):
            return None
        module = tables[index].get(name)
        return ("te", module) if module is not None else None

    def find(self, key: str) -> tuple[str, nn.Module | list[tuple[nn.Module, int, int]]] | None:
        """(part, module) of a file's layer name, or (part, [(module, first row, end row)]) for a
        layer that is several modules here (its delta's rows split between them)."""
        for prefix, index in (("lora_te1_", 0), ("lora_te2_", 1), ("lora_te_", 0)):
            if key.startswith(prefix):
                return self._te(index, "flat", key[len(prefix):].removeprefix("text_model_"))
        if key.startswith("lora_unet_"):
            name = key[len("lora_unet_"):]
            if name in self.fused:
                return "unet", self.fused[name]
            module = self.unet_flat.get(name)
            return ("unet", module) if module is not None else None
        key = key.removeprefix("base_model.model.").removeprefix("transformer.")  # diffusers' Flux / SD3 LoRAs
        if key.replace(".", "_") in self.fused:
            return "unet", self.fused[key.replace(".", "_")]
        for prefix, index in (("text_encoder.", 0), ("text_encoder_2.", 1)):
            if key.startswith(prefix):
                return self._te(index, "dotted", key[len(prefix):].removeprefix("text_model."))
        key = key.removeprefix("unet.")
        module = self.unet_dotted.get(key)
        if module is not None:
            return "unet", module
        return self._te(0, "dotted", key.removeprefix("text_model."))


@dataclass
class _ModelState:
    targets: _Targets
    key: tuple = ()
    backups: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # id -> (param, copy)
    exact: dict[int, torch.Tensor] = field(default_factory=dict)  # fp8-stored weights: id -> fp32 sum so far


def _state(model) -> _ModelState:
    state = model.extra.get("lora")
    if state is None:
        state = model.extra["lora"] = _ModelState(_Targets(model))
    return state


@torch.no_grad()
def deactivate(model) -> None:
    """Put every weight a LoRA changed back, bit for bit."""
    state = model.extra.get("lora")
    if state is None:
        return
    for param, backup in state.backups.values():
        param.copy_(backup)
    state.backups.clear()
    state.exact.clear()
    state.key = ()


def active_key(model) -> tuple:
    """What is applied now (empty: the base weights); part of any cache of text-encoder outputs."""
    state = model.extra.get("lora")
    return state.key if state is not None else ()


@torch.no_grad()
def activate(model, job: JobLoras | None) -> None:
    """Make the model's weights those of `job`'s LoRAs (none: the base weights). A LoRA whose layers
    do not fit the model raises RequestError naming it, with the base weights restored."""
    entries = [e for e in (job.entries if job else ()) if not e.ref.is_zero]
    wanted = job.key() if job else ()
    if wanted == active_key(model):
        return
    deactivate(model)
    if not entries:
        return
    state = _state(model)
    try:
        for entry in entries:
            _apply(state, entry)
    except ValueError as exc:
        deactivate(model)
        raise RequestError(job.prompt_field, f"LoRA '{entry.ref.name}': {exc}") from exc
    except BaseException:
        deactivate(model)
        raise
    state.key = wanted


def _apply(state: _ModelState, entry: JobEntry) -> None:
    matched, unmatched = 0, 0
    ref = entry.ref
    for layer in entry.network.layers.values():
        found = state.targets.find(layer.key)
        if found is None:
            unmatched += 1
            continue
        matched += 1
        part, target = found
        weight = ref.te if part == "te" else ref.unet
        if weight == 0:
            continue
        pieces = target if isinstance(target, list) else [(target, 0, target.weight.shape[0])]
        first = pieces[0][0].weight
        shape = torch.Size((pieces[-1][2], *first.shape[1:]))  # the file's layer: all the pieces' rows
        delta = layer.delta(shape, first.device, ref.dyn)
        if "dora_scale" in layer.parts:  # DoRA: renormalised against the current weight, then weighted
            current = torch.cat([module.weight.float() for module, _s, _e in pieces], dim=0)
            delta = layer.decompose(delta, current)
        for module, start, end in pieces:
            param = module.weight
            if id(param) not in state.backups:
                state.backups[id(param)] = (param, param.detach().to("cpu", copy=True))
            if fp8.is_stored(module):  # fp8 storage: add up in fp32 from the best weight known, round once
                exact = state.exact.get(id(param))
                if exact is None:
                    exact = state.exact[id(param)] = fp8.exact_weight(module).to(param.device)
                exact += weight * delta[start:end].to(exact.device)
                param.copy_(exact.to(param.dtype))
                continue
            param.copy_((param.float() + weight * delta[start:end]).to(param.dtype))
    if matched == 0:
        raise ValueError(f"none of its {unmatched} layers is a layer of this model (made for another model type?)")
    skipped = unmatched + len(entry.network.unknown_keys)
    if skipped:
        log.warning("LoRA '%s': %d of its keys match no layer of this model and were skipped", ref.name, skipped)
