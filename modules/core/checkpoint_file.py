"""Reading single-file checkpoints (.safetensors, .ckpt) without surprises.

- `.safetensors`: the header is read first (shapes for detection), then each
  component's tensors are read on demand, converted to the target dtype one at a
  time, so the whole file never sits in memory twice.
- `.ckpt`: opened with `torch.load(weights_only=True)` (memory-mapped where the file
  format allows). Anything that would need full unpickling is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open


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
            self._st = safe_open(str(self.path), framework="pt", device="cpu")
            self.metadata: dict[str, str] = dict(self._st.metadata() or {})
            self.shapes = {k: tuple(self._st.get_slice(k).get_shape()) for k in self._st.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path.name} is not a readable safetensors file: {exc}") from exc
        self._tensors: dict[str, torch.Tensor] | None = None

    def _open_pickle(self) -> None:
        self._st = None
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
        try:
            tensor = self._st.get_tensor(key) if self._st is not None else self._tensors[key]
        except SafetensorError as exc:
            raise CheckpointError(f"{self.path.name}: cannot read tensor '{key}': {exc}") from exc
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
        self._st = None
        self._tensors = None
