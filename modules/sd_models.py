"""A1111's `modules.sd_models`: the checkpoint list and the loaded model, under A1111's names.

A thin façade over the running server's checkpoint registry and model cache (through
modules.shared.engine). `checkpoints_list` always mirrors the registry (it is refreshed whenever it
is read); `reload_model_weights` loads a checkpoint on the GPU worker like the UI's picker does
(directly when called from a script already running there). Easel builds its models with
diffusers, so `shared.sd_model` / `model_data.sd_model` is Easel's LoadedModel, not A1111's
LatentDiffusion.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from typing import Any


def _engine():
    shared = sys.modules.get("modules.shared")
    return getattr(shared, "engine", None) if shared is not None else None


def model_hash(filename) -> str:
    """A1111's old 8-digit model hash: sha256 of 64 KiB at offset 1 MiB."""
    try:
        with open(filename, "rb") as file:
            digest = hashlib.sha256()
            file.seek(0x100000)
            digest.update(file.read(0x10000))
            return digest.hexdigest()[0:8]
    except FileNotFoundError:
        return "NOFILE"


class CheckpointInfo:
    """A1111's CheckpointInfo over one of Easel's (modules.services.checkpoints.CheckpointInfo)."""

    def __init__(self, filename, info=None):
        from pathlib import Path

        if info is None:
            engine = _engine()
            info = engine.checkpoints.find(str(filename)) if engine is not None else None
        if info is None:
            from modules.services.checkpoints import CheckpointInfo as EaselInfo

            path = Path(filename)
            info = EaselInfo(path.resolve(), path.name, path.stem)
        self.easel = info
        self.filename = str(info.filename)
        self.name = info.name
        self.name_for_extra = os.path.splitext(os.path.basename(self.filename))[0]
        self.model_name = info.model_name
        self.hash = model_hash(self.filename)
        self.is_safetensors = self.filename.lower().endswith(".safetensors")
        self.metadata: dict = {}
        if self.is_safetensors:
            try:
                self.metadata = read_metadata_from_safetensors(self.filename)
            except Exception:  # noqa: BLE001 - a file without readable metadata still lists
                self.metadata = {}

    @property
    def sha256(self) -> str | None:
        return self.easel.sha256

    @property
    def shorthash(self) -> str | None:
        return self.easel.shorthash

    @property
    def title(self) -> str:
        return self.easel.title

    @property
    def short_title(self) -> str:
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    @property
    def ids(self) -> list[str]:
        ids = [self.hash, self.model_name, self.title, self.name, self.name_for_extra, f"{self.name} [{self.hash}]"]
        if self.shorthash:
            ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]"]
        return ids

    def register(self) -> None:
        checkpoints_list[self.title] = self

    def calculate_shorthash(self) -> str | None:
        engine = _engine()
        if engine is not None:
            engine.checkpoints.ensure_hash(self.easel)
        else:
            from modules import hashes

            self.easel.sha256 = hashes.calculate_sha256(self.filename)
        return self.shorthash

    def __repr__(self) -> str:
        return f"CheckpointInfo({self.title!r})"


_wrapped: dict[str, CheckpointInfo] = {}  # filename -> wrapper, so a wrapper keeps its identity


def _wrap(info) -> CheckpointInfo:
    key = str(info.filename)
    wrapper = _wrapped.get(key)
    if wrapper is None or wrapper.easel is not info:
        wrapper = _wrapped[key] = CheckpointInfo(info.filename, info)
    return wrapper


class _SyncedDict(dict):
    """A dict that refreshes itself (`_sync`) before every read, for A1111's module-level tables."""

    def _sync(self) -> None:
        raise NotImplementedError

    def __getitem__(self, key):
        self._sync()
        return dict.__getitem__(self, key)

    def __contains__(self, key):
        self._sync()
        return dict.__contains__(self, key)

    def __iter__(self):
        self._sync()
        return dict.__iter__(self)

    def __len__(self):
        self._sync()
        return dict.__len__(self)

    def get(self, key, default=None):
        self._sync()
        return dict.get(self, key, default)

    def keys(self):
        self._sync()
        return dict.keys(self)

    def values(self):
        self._sync()
        return dict.values(self)

    def items(self):
        self._sync()
        return dict.items(self)


class _LiveCheckpoints(_SyncedDict):
    """title -> CheckpointInfo, synced from the server's registry on every read."""

    def _sync(self) -> None:
        engine = _engine()
        if engine is None:
            return
        fresh = {info.title: _wrap(info) for info in engine.checkpoints.list()}
        if fresh.keys() != dict.keys(self):
            dict.clear(self)
            dict.update(self, fresh)


class _LiveAliases(_SyncedDict):
    """Every id of every checkpoint -> its CheckpointInfo (A1111's checkpoint_aliases)."""

    def _sync(self) -> None:
        dict.clear(self)
        for info in checkpoints_list.values():
            for alias in info.ids:
                if alias:
                    dict.setdefault(self, alias, info)


checkpoints_list: dict[str, CheckpointInfo] = _LiveCheckpoints()
checkpoint_aliases: dict[str, CheckpointInfo] = _LiveAliases()
checkpoint_alisases = checkpoint_aliases  # A1111's misspelt name, still used by extensions
checkpoints_loaded: dict = {}


def list_models() -> None:
    """Rescan the checkpoint folders."""
    engine = _engine()
    if engine is not None:
        engine.checkpoints.refresh()


def checkpoint_tiles(use_short: bool = False) -> list[str]:
    return [info.short_title if use_short else info.title for info in checkpoints_list.values()]


def get_closet_checkpoint_match(search_string: str | None) -> CheckpointInfo | None:
    """A1111's (misspelt) name: the checkpoint a title, name, hash or part of a title means."""
    if not search_string:
        return None
    engine = _engine()
    if engine is not None:
        info = engine.checkpoints.find(search_string)
        if info is not None:
            return _wrap(info)
    found = sorted((info for info in checkpoints_list.values() if search_string in info.title), key=lambda i: len(i.title))
    return found[0] if found else None


def select_checkpoint() -> CheckpointInfo | None:
    """The checkpoint that is loaded, else the one the settings select, else the default one."""
    engine = _engine()
    if engine is None:
        return None
    info = engine.models.info
    if info is None:
        try:
            info = engine.resolve_checkpoint(None)
        except ValueError:
            return None
    return _wrap(info)


def _on_worker(engine) -> bool:
    return threading.current_thread() is getattr(engine.queue, "_thread", None)


def reload_model_weights(sd_model=None, info: CheckpointInfo | None = None, forced_reload: bool = False):
    """Load `info` (default: the checkpoint the settings select) and make it the selected one;
    returns the loaded model."""
    engine = _engine()
    if engine is None:
        raise RuntimeError("no Easel server is running")
    target = info.easel if isinstance(info, CheckpointInfo) else (info or engine.resolve_checkpoint(None))
    if engine.models.info is not None and engine.models.info.filename == target.filename and not forced_reload:
        return engine.models.model
    if _on_worker(engine):  # a script's run() on the worker: queueing would wait for itself
        model = engine._load(target)
        engine.options.save()
        return model
    engine.select_checkpoint(target.title, as_setting=False)  # A1111: past --freeze-settings' locks
    return engine.models.model


def load_model(checkpoint_info: CheckpointInfo | None = None, already_loaded_state_dict=None):
    return reload_model_weights(info=checkpoint_info)


def unload_model_weights(sd_model=None, info=None):
    """A1111 moves the model to the CPU here; Easel's model cache alone owns device placement."""
    return sd_model


def read_metadata_from_safetensors(filename) -> dict[str, Any]:
    """The __metadata__ of a .safetensors file's JSON header, values that are JSON parsed. A file
    that is not one raises a ValueError (SafetensorsHeaderError) naming it."""
    import json

    from modules.core.checkpoint_file import read_safetensors_header

    metadata = read_safetensors_header(filename).metadata
    result = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        result[key] = value
    return result


class ModelData:
    """A1111's `model_data`: the loaded model and whether a load was asked for."""

    def __init__(self):
        self.sd_model_loaded_event = threading.Event()
        self.was_loaded_at_least_once = False

    @property
    def sd_model(self):
        engine = _engine()
        return engine.models.model if engine is not None else None

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, value, already_loaded=False):
        """Easel's model cache alone decides what is loaded; setting it from outside is ignored."""


model_data = ModelData()
