"""Reading single-file checkpoints (.safetensors, .ckpt) without surprises.

- `.safetensors`: the header is read first (shapes for detection), then each
  component's tensors are read on demand with plain positioned reads straight into
  their own buffers, converted to the target dtype one at a time. No memory map:
  a mapped file's touched pages count in the process's resident memory, which would
  double a load's peak for nothing.
- `.ckpt`: opened with `torch.load(weights_only=True)` (memory-mapped where the file
  format allows). Anything that would need full unpickling is refused.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, corrupt or unsafe."""


class CheckpointFile:
    """Lazy access to the tensors of one checkpoint file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint file not found: {self.path}")
        suffix = self.path.suffix.lower()
        if suffix == ".safetensors":
            self._open_safetensors()
        elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
            self._open_pickle()
        else:
            raise CheckpointError(f"unsupported checkpoint format '{suffix}' ({self.path.name})")

    # -- opening -------------------------------------------------------------------------
    def _open_safetensors(self) -> None:
        try:
            # the library validates the header (offsets, overlaps, sizes) ...
            with safe_open(str(self.path), framework="pt", device="cpu") as st:
                self.metadata: dict[str, str] = dict(st.metadata() or {})
            # ... and we keep the offsets for positioned reads
            self._fh = open(self.path, "rb")
            (length,) = struct.unpack("<Q", self._fh.read(8))
            header = json.loads(self._fh.read(length))
        except (SafetensorError, OSError, ValueError, struct.error) as exc:
            raise CheckpointError(f"{self.path.name} is not a readable safetensors file: {exc}") from exc
        header.pop("__metadata__", None)
        self._data_start = 8 + length
        self._entries = header
        unknown = {e["dtype"] for e in header.values()} - _ST_DTYPES.keys()
        if unknown:
            raise CheckpointError(f"{self.path.name} uses unsupported tensor types {sorted(unknown)}")
        self.shapes = {k: tuple(e["shape"]) for k, e in header.items()}
        self._tensors: dict[str, torch.Tensor] | None = None
        self._staging: torch.Tensor | None = None

    def _read_safetensor(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        """Read one tensor. In the file's dtype it goes straight into its final buffer; to
        convert, the bytes pass through one staging buffer reused for every tensor, so a
        load allocates nothing but the converted weights."""
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        file_dtype = _ST_DTYPES[entry["dtype"]]
        size = end - begin
        convert = dtype is not None and dtype != file_dtype and file_dtype.is_floating_point
        if convert:
            if self._staging is None or self._staging.numel() < size:
                self._staging = torch.empty(size, dtype=torch.uint8)
            raw = self._staging[:size]
        else:
            raw = torch.empty(size, dtype=torch.uint8)
        self._fh.seek(self._data_start + begin)
        if size and self._fh.readinto(memoryview(raw.numpy())) != size:
            raise CheckpointError(f"{self.path.name}: tensor '{key}' is cut short (truncated file)")
        tensor = raw.view(file_dtype).reshape(entry["shape"])
        return tensor.to(dtype) if convert else tensor

    def _open_pickle(self) -> None:
        self._fh = None
        self.metadata = {}
        try:
            try:
                data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(exc):
                    raise
                data = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refused to load {self.path.name}: it contains Python objects that only full unpickling "
                f"could restore, and full unpickling can run arbitrary code. Convert it to .safetensors "
                f"with a tool you trust. ({str(exc).splitlines()[0]})"
            ) from exc
        except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"{self.path.name} is corrupt or truncated: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise CheckpointError(f"{self.path.name} does not hold a state dict")
        self._tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    # -- reading -------------------------------------------------------------------------
    def get(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if self._fh is not None:
            return self._read_safetensor(key, dtype)
        tensor = self._tensors[key]
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        return tensor

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        return (k for k in self.shapes if k.startswith(prefix))

    def read_prefix(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """All tensors under `prefix`, keys kept whole (converters expect LDM names)."""
        return {k: self.get(k, dtype) for k in self.keys_with_prefix(prefix)}

    def yaml_parameterization(self) -> str | None:
        """A1111 reads `<checkpoint>.yaml` beside the file; we only need `parameterization`."""
        yaml_path = self.path.with_suffix(".yaml")
        if not yaml_path.is_file():
            return None
        for line in yaml_path.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.strip().partition(":")
            if key == "parameterization" and value.strip():
                return value.strip()
        return None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tensors = None
        self._staging = None
