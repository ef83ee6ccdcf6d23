"""A1111's built-in Lora extension's ``network`` module: the objects its ``networks`` module lists, over
Easel's LoRA files (``modules.core.lora.LoraFile``). Easel applies LoRAs itself; these describe them."""

from __future__ import annotations

import enum
import os


class SdVersion(enum.Enum):
    Unknown = 1
    SD1 = 2
    SD2 = 3
    SDXL = 4


class NetworkOnDisk:
    """One LoRA file as A1111 lists it: ``name`` (the file's stem), ``filename``, ``metadata``, ``alias``
    (the training output name), ``hash`` / ``shorthash`` (sha256, read when first asked for)."""

    def __init__(self, name: str, filename: str, lora_file=None):
        self.name = name
        self.filename = filename
        self._file = lora_file
        self.metadata = dict(lora_file.metadata) if lora_file is not None else {}
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.alias = lora_file.alias if lora_file is not None else name
        self.sd_version = self.detect_version()
        self.hash = None
        self.shorthash = None

    def detect_version(self) -> SdVersion:
        base = str(self.metadata.get("ss_base_model_version", ""))
        if base.startswith("sdxl_"):
            return SdVersion.SDXL
        if str(self.metadata.get("ss_v2", "")) == "True":
            return SdVersion.SD2
        return SdVersion.SD1 if self.metadata else SdVersion.Unknown

    def set_hash(self, value: str | None) -> None:
        self.hash = value
        self.shorthash = value[:12] if value else None

    def read_hash(self) -> None:
        if not self.hash and self._file is not None:
            self.set_hash(self._file.sha256)

    def get_alias(self) -> str:
        from modules import shared

        if shared.opts.data.get("lora_preferred_name", "Alias from file") == "Filename" or not self.alias:
            return self.name
        return self.alias


class Network:
    """A LoRA a job uses (A1111's loaded network): its multipliers as the prompt's tag gave them."""

    def __init__(self, name: str, network_on_disk: NetworkOnDisk | None):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules: dict = {}
        self.bundle_embeddings: dict = {}
        self.mtime = None
        self.mentioned_name = None
