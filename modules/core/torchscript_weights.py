"""The weights of a TorchScript archive (``torch.jit.save``, e.g. OpenAI's CLIP ``ViT-L-14.pt``)
read without running TorchScript or any code of the file.

A TorchScript archive is a zip: ``<name>/data.pkl`` pickles the module tree, ``<name>/data/<key>``
hold the tensors' raw bytes, ``<name>/code/`` the TorchScript source (never read here). The pickle
is read by a restricted unpickler that resolves only:

- ``__torch__.*`` classes (the scripted modules): each becomes a plain attribute holder with no
  methods, filled from the pickled attribute dict;
- ``torch._utils._rebuild_tensor_v2``: a view of a storage read from ``data/<key>``, the storage
  named by a persistent id ``("storage", torch.<Type>Storage, key, device, numel)``;
- ``collections.OrderedDict`` (the tensors' empty backward hooks), ``torch.device`` (as its
  string) and ``torch.jit._pickle``'s list builders and type tags (their values as they are).

Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is looked up, so a
malicious pickle stops with TorchScriptError and nothing of it runs. The module tree is then
walked into a flat state dict: ``visual.conv1.weight`` for ``root.visual.conv1.weight``, every
tensor attribute (parameters, buffers and plain tensor attributes alike).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_LIST_BUILDERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "build_list")
MAX_DEPTH = 64  # nesting of modules; OpenAI's CLIP has 6


class TorchScriptError(ValueError):
    """A file that is not a readable TorchScript archive, or whose pickle asks for more than weights."""


class ScriptObject:
    """A scripted module or object of the archive: only its attributes, no behaviour."""

    __slots__ = ("attributes",)
    type_name = "__torch__"

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise TorchScriptError(f"{self.type_name}: its state is not an attribute dict")
        self.attributes = dict(state)


def _same(value, _tag=None):
    """``torch.jit._pickle``'s list builders and ``restore_type_tag``: the value itself."""
    return value


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _Unpickler(pickle.Unpickler):
    """A pickle reader that knows only the names an archive of weights needs (see the module doc)."""

    def __init__(self, file, archive: "_Archive"):
        super().__init__(file)
        self.archive = archive
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__.") or module == "__torch__":
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObject,), {"__slots__": (), "type_name": qualified})
            return self.classes[qualified]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.archive.rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name == "device":
            return str
        if module == "torch.jit._pickle" and (name in _LIST_BUILDERS or name == "restore_type_tag"):
            return _same
        raise TorchScriptError(f"{self.archive.name}: its pickle asks for '{module}.{name}', which a file of weights "
                               "never needs (refused: nothing of the file was run)")

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage" or not isinstance(pid[1], _StorageType)
                or not isinstance(pid[2], str) or not isinstance(pid[4], int)):
            raise TorchScriptError(f"the archive's pickle refers to an unknown persistent object {pid!r:.80}")
        return self.archive.storage(pid[2], pid[1].dtype, pid[4])


class _Archive:
    """The zip and the storages read from it so far."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, name: str):
        self.zf, self.prefix, self.name = zf, prefix, name
        self.storages: dict[str, torch.Tensor] = {}

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        if key in self.storages:
            return self.storages[key]
        entry = f"{self.prefix}data/{key}"
        try:
            info = self.zf.getinfo(entry)
        except KeyError:
            raise TorchScriptError(f"{self.name}: tensor data '{entry}' is missing (cut-off or damaged file)") from None
        size = numel * torch.empty((), dtype=dtype).element_size()
        if numel < 0 or info.file_size < size:
            raise TorchScriptError(f"{self.name}: tensor data '{entry}' holds {info.file_size} bytes, "
                                   f"{size} expected (cut-off or damaged file)")
        raw = torch.empty(size, dtype=torch.uint8)
        with self.zf.open(info) as fh:
            if size and fh.readinto(memoryview(raw.numpy())) != size:
                raise TorchScriptError(f"{self.name}: tensor data '{entry}' is cut short")
        storage = raw.view(dtype) if size else torch.empty(0, dtype=dtype)
        self.storages[key] = storage
        return storage

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        """``torch._utils._rebuild_tensor_v2``: the view of ``storage``, its bounds checked."""
        if not isinstance(storage, torch.Tensor) or not isinstance(offset, int):
            raise TorchScriptError(f"{self.name}: a tensor of the pickle has no storage of the archive")
        shape, steps = tuple(size), tuple(stride)
        if (len(shape) != len(steps) or not all(isinstance(v, int) and v >= 0 for v in (*shape, *steps))
                or offset < 0):
            raise TorchScriptError(f"{self.name}: a tensor of the pickle has an invalid shape {shape} "
                                   f"or stride {steps}")
        last = offset + sum((n - 1) * s for n, s in zip(shape, steps)) if all(shape) else offset - 1
        if last >= storage.numel():
            raise TorchScriptError(f"{self.name}: a tensor of the pickle reaches past its storage")
        return torch.as_strided(storage, shape, steps, offset)


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a zip holding a TorchScript archive (``<name>/data.pkl`` beside ``<name>/code/``
    or ``<name>/constants.pkl``; a plain ``torch.save`` archive has neither)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    prefix = _prefix(names)
    return prefix is not None and any(n == prefix + "constants.pkl" or n.startswith(prefix + "code/") for n in names)


def _prefix(names: list[str]) -> str | None:
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    return pickles[0][: -len("data.pkl")] if len(pickles) == 1 else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the archive's module tree by its dotted attribute path, read as weights only."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise TorchScriptError(f"{path.name} is not a TorchScript archive (not a zip file: {error})") from None
    with zf:
        prefix = _prefix(zf.namelist())
        if prefix is None:
            raise TorchScriptError(f"{path.name} is not a TorchScript archive (no <name>/data.pkl in it)")
        if prefix + "byteorder" in zf.namelist() and zf.read(prefix + "byteorder").strip() not in (b"", b"little"):
            raise TorchScriptError(f"{path.name} was saved big-endian, which Easel does not read")
        archive = _Archive(zf, prefix, path.name)
        with zf.open(prefix + "data.pkl") as fh:
            try:
                root = _Unpickler(fh, archive).load()
            except TorchScriptError:
                raise
            except Exception as error:  # noqa: BLE001 - a damaged pickle: its reason, never a traceback
                raise TorchScriptError(f"{path.name}: its data.pkl cannot be read ({error})") from None
    if not isinstance(root, ScriptObject):
        raise TorchScriptError(f"{path.name}: its data.pkl does not hold a scripted module")
    state: dict[str, torch.Tensor] = {}
    _walk(root, "", state, 0, set())
    return state


def _walk(obj: ScriptObject, prefix: str, state: dict, depth: int, seen: set[int]) -> None:
    if depth > MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in getattr(obj, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            state[prefix + name] = value
        elif isinstance(value, ScriptObject):
            _walk(value, f"{prefix}{name}.", state, depth + 1, seen)
