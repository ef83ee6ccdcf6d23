"""Sole owner of the loaded checkpoints: the current one and, up to A1111's ``sd_checkpoints_limit``,
recently used ones kept in RAM.

Switching checkpoints checks the new file first (header + architecture detection) so a corrupt or
unsupported file is refused while the current model stays loaded. Switching back to a cached
checkpoint reuses its modules (no file read); the one left is moved off the device by the memory
owner and stays in RAM. Before a new file is read, the least recently used checkpoints are released
completely until the new one fits the limit, so memory after N switches stays bounded by it (with
the default limit of 1, where one load left it).

A cached model keeps whatever LoRA patches its last job left (lora.activate settles them at the
start of every job, from the exact backups), so patches never pass from one model to another.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections import OrderedDict
from typing import Callable

import torch

from modules.core import attention, taesd
from modules.core.checkpoint_file import CheckpointFile, reading_whole
from modules.core.devices import DevicePolicy, RunOptions
from modules.core.memory import DeviceMemory
from modules.core.model_detection import detect
from modules.core.model_loader import LoadedModel, load_checkpoint
from modules.core.vae import VaeStateCache

from .checkpoints import CheckpointInfo
from .console_progress import console_line


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # give freed heap pages back to the OS (glibc); harmless elsewhere
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelCache:
    def __init__(self, policy: DevicePolicy, on_loaded: Callable[[LoadedModel, CheckpointInfo], None] | None = None,
                 companions: Callable[[str], object] | None = None, memory: DeviceMemory | None = None,
                 run_options: RunOptions | None = None, limit: int = 1):
        self.policy = policy
        self.companions = companions  # text encoders / VAE a checkpoint leaves out (services.companions)
        self.memory = memory if memory is not None else DeviceMemory.for_device(policy.device)
        self.run_options = run_options if run_options is not None else RunOptions()  # shared by all models
        self.limit = max(1, int(limit))  # sd_checkpoints_limit: checkpoints in RAM, the current one included
        self.model: LoadedModel | None = None
        self.info: CheckpointInfo | None = None
        self.file_loads = 0  # checkpoint files read (a cache hit reads none)
        self.vae_cache = VaeStateCache(0)  # sd_vae_checkpoint_cache: external VAE files kept in RAM
        self._cached: OrderedDict[str, tuple[LoadedModel, CheckpointInfo, tuple]] = OrderedDict()  # LRU first
        self._lock = threading.RLock()
        self._on_loaded = on_loaded
        # sd_vae_encode_method / sd_vae_decode_method = "TAESD": the tiny autoencoders the core asks for
        self.taesd = TaesdParts(self.memory)
        self.run_options.taesd = self.taesd

    def _stamp(self, info: CheckpointInfo) -> tuple:
        """What must not have changed for a cached model to stand for the file: the file itself and
        the load-time options."""
        try:
            st = os.stat(info.filename)
            file = (st.st_mtime_ns, st.st_size)
        except OSError:
            file = None
        return file, self.run_options.fp8_storage, self.run_options.cache_fp16_weight

    def cached_filenames(self) -> list[str]:
        with self._lock:
            return list(self._cached)

    def load(self, info: CheckpointInfo) -> LoadedModel:
        with self._lock:
            key, stamp = str(info.filename), self._stamp(info)
            hit = self._cached.get(key)
            if hit is not None and hit[2] == stamp:
                if self.model is not hit[0]:
                    self._make_current(hit[0], info)
                    console_line(f"Model loaded from cache: {info.name} ({hit[0].spec.label})")
                    if self._on_loaded:
                        self._on_loaded(hit[0], info)
                self._cached.move_to_end(key)
                return hit[0]
            if hit is not None:  # the file or the load options changed: read it again
                self._drop(key)
            # refuse a bad file before giving up the current model
            probe = CheckpointFile(info.filename)
            try:
                detect(probe.shapes, probe.metadata, probe.yaml_parameterization())
            finally:
                probe.close()
            previous = self.info
            self._shrink(self.limit - 1)  # room for the new one within the limit
            if self.model is not None:  # off the device unless sd_checkpoints_keep_in_cpu is off
                self.memory.set_aside(self.model)
            try:
                model = self._read(info)
            except Exception:
                release_memory()
                if previous is not None:  # put the old one back so the server keeps working
                    old = self._cached.get(str(previous.filename))
                    if old is not None:
                        self._make_current(old[0], previous)
                    else:
                        self._make_current(self._read(previous), previous)
                        self._cached[str(previous.filename)] = (self.model, previous, self._stamp(previous))
                raise
            self._cached[key] = (model, info, stamp)
            self._make_current(model, info)
            console_line(f"Model loaded: {info.name} ({model.spec.label}) in {model.load_seconds:.1f}s")
            if self._on_loaded:
                self._on_loaded(model, info)
            return model

    def _read(self, info: CheckpointInfo) -> LoadedModel:
        self.file_loads += 1
        with reading_whole(self.run_options.disable_mmap_load_safetensors):
            return load_checkpoint(info.filename, self.policy, self.companions, memory=self.memory,
                                   run_options=self.run_options)

    def _make_current(self, model: LoadedModel, info: CheckpointInfo) -> None:
        if self.model is not None and self.model is not model:
            self.memory.set_aside(self.model)  # stays in RAM, off the device (sd_checkpoints_keep_in_cpu)
        self.model, self.info = model, info

    def _drop(self, key: str) -> None:
        model, _info, _stamp = self._cached.pop(key)
        self.memory.release(model)
        if self.model is model:
            self.model = self.info = None

    def _shrink(self, keep: int) -> None:
        """Release the least recently used checkpoints until at most ``keep`` stay."""
        dropped = False
        while len(self._cached) > max(0, keep):
            self._drop(next(iter(self._cached)))
            dropped = True
        if dropped:
            release_memory()

    def apply_options(self, get: Callable[[str], object]) -> None:
        """The settings this cache and its models follow (``get``: an option's value), before a load."""
        self.set_limit(int(get("sd_checkpoints_limit") or 1))
        self.vae_cache.set_limit(int(get("sd_vae_checkpoint_cache") or 0))
        options = self.run_options
        options.auto_vae_precision = bool(get("auto_vae_precision"))
        options.vae_tiling = str(get("vae_tiling") or "Automatic")
        options.fp8_storage = str(get("fp8_storage") or "Disable")
        options.cache_fp16_weight = bool(get("cache_fp16_weight"))
        keep_in_cpu = get("sd_checkpoints_keep_in_cpu")
        self.memory.keep_cached_off_device = True if keep_in_cpu is None else bool(keep_in_cpu)
        # pictures <-> latents: the checkpoint's VAE ("Full") or TAESD (modules.core.model_ops)
        options.vae_encode_method = str(get("sd_vae_encode_method") or "Full")
        options.vae_decode_method = str(get("sd_vae_decode_method") or "Full")
        # .safetensors checkpoints read whole into memory in one read (modules.core.checkpoint_file)
        options.disable_mmap_load_safetensors = bool(get("disable_mmap_load_safetensors"))
        # the UNet's attention: applied at once to the models held (no reload; between jobs)
        options.upcast_attn = bool(get("upcast_attn"))
        options.attention = attention.choose(get("cross_attention_optimization"), options.attention_flags,
                                             options.attention_disabled, self.policy.attention == "xformers")
        with self._lock:
            for model, _info, _stamp in self._cached.values():
                attention.apply(model.unet, model.spec.family, options, half=model.policy.unet_dtype != torch.float32)

    def set_limit(self, limit: int) -> None:
        """A1111's sd_checkpoints_limit changed: release the oldest ones beyond it (never the current)."""
        with self._lock:
            self.limit = max(1, int(limit))
            if len(self._cached) <= self.limit:
                return
            while len(self._cached) > self.limit:
                oldest = next(k for k, v in self._cached.items() if v[0] is not self.model)
                self._drop(oldest)
            release_memory()

    def unload(self) -> None:
        with self._lock:
            self._shrink(0)
            self.model = None
            self.info = None
            release_memory()


class TaesdParts:
    """TAESD's encoders and decoders for ``sd_vae_encode_method`` / ``sd_vae_decode_method``: each file
    of ``folder`` (models/VAE-approx, which the composition root sets; None: no TAESD, said by name)
    read once, then registered with the memory owner, which places it as it places the VAE."""

    PURPOSE = {"encoder": 'sd_vae_encode_method "TAESD"', "decoder": 'sd_vae_decode_method "TAESD"'}

    def __init__(self, memory: DeviceMemory, folder=None):
        self.memory = memory
        self.folder = folder
        self._loaded: dict = {}
        self._lock = threading.Lock()

    def __call__(self, family: str, part: str) -> torch.nn.Module:
        """The ``part`` ("encoder" / "decoder") for a model family; TaesdError naming the file and the
        folder when it is missing or unusable."""
        folder = self.folder  # models/VAE-approx (webui.py sets it)
        if folder is None:
            raise taesd.TaesdError(f"{self.PURPOSE[part]} needs models/VAE-approx, and no such folder is set")
        find = taesd.encoder_path if part == "encoder" else taesd.decoder_path
        path = find(folder, family, purpose=self.PURPOSE[part])
        with self._lock:
            key = (path, path.stat().st_mtime_ns)
            module = self._loaded.get(key)
            if module is None:
                module = (taesd.load_encoder if part == "encoder" else taesd.load_decoder)(path)
                module.requires_grad_(False)
                self.memory.register(module, f"TAESD:{path.name}")
                self._loaded[key] = module
            return module
