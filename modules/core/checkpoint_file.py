"""Reading single-file checkpoints (.safetensors, .ckpt) without surprises.

- `.safetensors`: the header is read first (shapes for detection), then each
  component's tensors are read on demand with plain positioned reads straight into
  their own buffers, converted to the target dtype one at a time. No memory map:
  a mapped file's touched pages count in the process's resident memory, which would
  double a load's peak for nothing.
  With A1111's `disable_mmap_load_safetensors` (`CheckpointFile(path, read_whole=True)`, or the
  loads inside `with reading_whole(True):`), the file is read whole into memory in one sequential
  read first, and each tensor is copied out of that buffer (its own storage, as
  `safetensors.torch.load(open(f, 'rb').read())` gives in A1111); the buffer goes at `close()`.
- `.ckpt`: opened with `torch.load(weights_only=True)` (memory-mapped where the file
  format allows). Anything that would need full unpickling is refused.

Every file a user drops in a models folder may be anything (an HTML page saved by a failed
download, a cut-off copy, an empty file): `read_safetensors_header` is the one place a
.safetensors header is read, bounded by the file's size and `MAX_HEADER_BYTES`, and `probe`
is the cheap look (header or magic bytes) the folder scans use. Both raise CheckpointError
naming the file and saying why.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import torch


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit; real headers are a few MB at most
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing, corrupt or unsafe."""


class SafetensorsHeaderError(CheckpointError):
    """A .safetensors file whose header cannot be read; `reason` says why, the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path.name} is not a readable safetensors file: {reason}")


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}, each checked
    metadata: dict  # the header's __metadata__ ({} without one)
    data_start: int  # where the tensor data begins: 8 + the header's length


def _html_hint(first: bytes) -> str:
    return " (it looks like an HTML page: a failed download?)" if first.lstrip()[:1] == b"<" else ""


def _check_entry(name: str, entry, data_size: int) -> str | None:
    """Why a tensor entry of the header is unusable (None: it is fine)."""
    if not isinstance(entry, dict):
        return f"tensor '{name}' is not described by an object (found {type(entry).__name__})"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _ST_DTYPES:
        return f"tensor '{name}' has the unsupported type {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"tensor '{name}' has the invalid shape {shape!r}"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        return f"tensor '{name}' has data offsets {offsets!r} outside the file's {data_size} data bytes"
    if offsets[1] - offsets[0] != math.prod(shape) * _ST_DTYPES[dtype].itemsize:
        return f"tensor '{name}' has {offsets[1] - offsets[0]} data bytes, its shape {shape} needs another size"
    return None


def parse_safetensors_header(fh: BinaryIO, size: int, path: str | Path) -> SafetensorsHeader:
    """The checked header of the safetensors data in `fh` (`size` bytes; `path` names it in errors).
    Reads at most 8 + min(size, MAX_HEADER_BYTES) bytes, whatever the file claims."""
    first = fh.read(8)
    if len(first) < 8:
        raise SafetensorsHeaderError(path, "the file is empty" if not first else f"the file has only {len(first)} bytes")
    (length,) = struct.unpack("<Q", first)
    if length > size - 8:
        raise SafetensorsHeaderError(path, f"its first 8 bytes give a header of {length} bytes, but the file has "
                                           f"{size} bytes{_html_hint(first)}")
    if length > MAX_HEADER_BYTES:
        raise SafetensorsHeaderError(path, f"its header of {length} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    raw = fh.read(length)
    if len(raw) != length:
        raise SafetensorsHeaderError(path, "the file ends inside its header (truncated)")
    try:
        header = json.loads(raw.decode("utf-8"))  # the format says UTF-8; bytes would let json guess
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SafetensorsHeaderError(path, f"its header is not JSON ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(path, f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsHeaderError(path, "its __metadata__ is not an object")
    data_size = size - 8 - length
    for name, entry in header.items():
        problem = _check_entry(name, entry, data_size)
        if problem:
            raise SafetensorsHeaderError(path, problem)
    return SafetensorsHeader(header, metadata, 8 + length)


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """The checked header of a .safetensors file; SafetensorsHeaderError naming the file and why."""
    try:
        with open(path, "rb") as fh:
            return parse_safetensors_header(fh, os.fstat(fh.fileno()).st_size, path)
    except OSError as exc:
        raise SafetensorsHeaderError(path, f"it cannot be read ({exc.strerror or exc})") from exc


def torch_file_problem(first: bytes) -> str | None:
    """Why a file starting with `first` (its first 4 bytes) cannot be a torch.save file, else None.
    torch.save writes a zip archive (before torch 1.6, a pickle of protocol 2+); anything else is
    refused before the unpickler says something misleading about it."""
    if not first:
        return "is empty"
    if first[:4] != b"PK\x03\x04" and first[:1] != b"\x80":
        return f"is neither a torch zip archive nor a pickle (it starts with {first[:4]!r}){_html_hint(first)}"
    return None


def _check_pickle_magic(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            problem = torch_file_problem(fh.read(4))
    except OSError as exc:
        raise CheckpointError(f"{path.name} cannot be read: {exc.strerror or exc}") from exc
    if problem:
        raise CheckpointError(f"{path.name} {problem}")


def probe(path: str | Path) -> SafetensorsHeader | None:
    """The cheap look a folder scan takes at a model file: a .safetensors file's header (returned),
    or a torch file's magic bytes (None). CheckpointError (naming the file) when it cannot be one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors_header(path)
    if suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"unsupported checkpoint format '{suffix}' ({path.name})")
    _check_pickle_magic(path)
    return None


_READ_WHOLE: contextvars.ContextVar[bool] = contextvars.ContextVar("read_whole_safetensors", default=False)


class reading_whole:
    """``with reading_whole(on):`` the .safetensors files opened inside (by this thread) are read whole
    into memory first (A1111's disable_mmap_load_safetensors); the loaders need not pass it along."""

    def __init__(self, on: bool):
        self.on = bool(on)

    def __enter__(self):
        self._token = _READ_WHOLE.set(self.on)
        return self

    def __exit__(self, *exc) -> None:
        _READ_WHOLE.reset(self._token)


NESTED_STATE_KEYS = ("model", "depth_model")  # where a save without top-level tensors keeps its weights


class CheckpointFile:
    """Lazy access to the tensors of one checkpoint file. ``read_whole`` (a .safetensors file): read the
    whole file in one read at once (None: as the enclosing ``reading_whole`` says)."""

    def __init__(self, path: str | Path, read_whole: bool | None = None):
        self.path = Path(path)
        self.read_whole = _READ_WHOLE.get() if read_whole is None else bool(read_whole)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint file not found: {self.path}")
        suffix = self.path.suffix.lower()
        if suffix == ".safetensors":
            self._open_safetensors()
        elif suffix in PICKLE_SUFFIXES:
            self._open_pickle()
        else:
            raise CheckpointError(f"unsupported checkpoint format '{suffix}' ({self.path.name})")

    # -- opening -------------------------------------------------------------------------
    def _open_safetensors(self) -> None:
        header = read_safetensors_header(self.path)  # checked: types, shapes, offsets inside the file
        self.metadata: dict[str, str] = {k: v for k, v in header.metadata.items() if isinstance(v, str)}
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointError(f"{self.path.name} cannot be read: {exc.strerror or exc}") from exc
        self._data_start = header.data_start
        self._entries = header.tensors
        self.shapes = {k: tuple(e["shape"]) for k, e in header.tensors.items()}
        self._tensors: dict[str, torch.Tensor] | None = None
        self._staging: torch.Tensor | None = None
        self._whole: torch.Tensor | None = None  # the data section, read in one go (read_whole)
        if self.read_whole:
            size = os.fstat(self._fh.fileno()).st_size - self._data_start
            self._whole = torch.empty(size, dtype=torch.uint8)
            self._fh.seek(self._data_start)
            if size and self._fh.readinto(memoryview(self._whole.numpy())) != size:
                raise CheckpointError(f"{self.path.name} is cut short (truncated file)")

    def _read_safetensor(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        """Read one tensor. In the file's dtype it goes straight into its final buffer; to
        convert, the bytes pass through one staging buffer reused for every tensor, so a
        load allocates nothing but the converted weights."""
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        file_dtype = _ST_DTYPES[entry["dtype"]]
        size = end - begin
        if self._whole is not None:  # copied out (aligned, and no tensor keeps the file's buffer alive)
            tensor = self._whole[begin:end].clone().view(file_dtype).reshape(entry["shape"])
            convert = dtype is not None and dtype != file_dtype and file_dtype.is_floating_point
            return tensor.to(dtype) if convert else tensor
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
        _check_pickle_magic(self.path)
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
        elif isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
            # training saves that keep the weights one level down: {"model": ..., "epoch": ...} (annotators
            # such as normal_bae's and DSINE's), LeReS's {"depth_model": ...}
            nested = next((data[k] for k in NESTED_STATE_KEYS if isinstance(data.get(k), dict)), None)
            data = nested if nested is not None else data
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

    def dtype(self, key: str) -> torch.dtype:
        """A tensor's dtype without reading its data (the header; a .ckpt's mapped tensor)."""
        if self._fh is not None:
            return _ST_DTYPES[self._entries[key]["dtype"]]
        return self._tensors[key].dtype

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
        self._whole = None
