"""Checkpoint merging (A1111's Checkpoint Merger), one tensor at a time.

    weighted sum     (1 - M)·A + M·B
    add difference   A + M·(B − C)
    no interpolation A  (format conversion, VAE bake, discard, float16)

The inputs are opened lazily (modules.core.checkpoint_file): a .safetensors tensor is read when its
key comes up, a .ckpt is memory-mapped. A .safetensors result is streamed: its header is planned
from the inputs' shapes and dtypes, then every merged tensor is written as soon as it is computed,
so a merge holds one tensor of each input and one result tensor at a time. A .ckpt result is a
torch.save of {"state_dict": …}, which needs the whole result in memory (one model's worth).

The rules are A1111's (modules/extras.py run_modelmerger, 1.10): only keys with "model" in their
name are merged; keys of A missing from B are A's; keys of B missing from A are dropped; a key of B
missing from C adds nothing; the text encoder's position_ids are A's; an inpainting (9-channel) or
instruct-pix2pix (8-channel) A merged with a normal (4-channel) B merges the first four input
channels and the result is named `.inpainting` / `.instruct-pix2pix`; "Save as float16" turns
float32 tensors into float16 (all of them: A1111 1.10 leaves A's unmerged keys in float32 when it
interpolates). Merged values are computed in float32 and stored in the inputs' promoted dtype. What A1111 does not check is refused here before anything is written:
inputs of different families, or a key whose shapes differ otherwise.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint_file import CheckpointError, CheckpointFile
from .model_detection import UnsupportedCheckpoint, detect

NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE = "No interpolation", "Weighted sum", "Add difference"
METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
FORMATS = ("ckpt", "safetensors")
SKIP_ON_MERGE = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_PREFIX = "first_stage_model."

_ST_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}

Progress = Callable[[str, int, int], None]  # (what, done, total)


class MergeError(ValueError):
    """A merge that cannot be done; the message says why, naming the models."""


@dataclass(frozen=True)
class MergeSpec:
    primary: Path
    output: Path  # .safetensors or .ckpt
    method: str = WEIGHTED_SUM
    secondary: Path | None = None
    tertiary: Path | None = None
    multiplier: float = 0.3
    save_as_half: bool = False
    bake_vae: Path | None = None
    discard: str = ""  # a regular expression: matching keys are left out of the result
    metadata: dict[str, str] | None = None  # safetensors only (A1111 writes none into a .ckpt)


@dataclass
class MergeResult:
    path: Path
    inpainting: bool = False
    instruct_pix2pix: bool = False
    family: str = ""
    tensors: int = 0
    discarded: list[str] = field(default_factory=list)


def marked_output(output: Path, result: MergeResult) -> Path:
    """A1111's name marks: `<name>.inpainting.<format>` / `<name>.instruct-pix2pix.<format>`."""
    marks = (".inpainting" if result.inpainting else "") + (".instruct-pix2pix" if result.instruct_pix2pix else "")
    return output.with_name(output.stem + marks + output.suffix) if marks else output


# ------------------------------------------------------------------------------------- the plan

@dataclass
class _Entry:
    """How one key of the result is made."""
    key: str
    shape: tuple
    dtype: torch.dtype
    op: str  # "copy" (A's), "merge", "vae" (the baked VAE's)
    source: str | None = None  # the VAE file's key, for "vae"
    channels: int | None = None  # merge only the first input channels (inpainting / ip2p A)


def _family(file: CheckpointFile, role: str) -> tuple[str, str, bool]:
    try:
        spec = detect(file.shapes, file.metadata)
    except UnsupportedCheckpoint as exc:
        raise MergeError(f"model {role} ({file.path.name}) is not a checkpoint that can be merged: {exc}") from None
    return spec.family, spec.family_label or spec.family, spec.inpainting


def check_compatible(files: dict[str, CheckpointFile]) -> str:
    """Refuse inputs of different families (each detected from its shapes); returns the family."""
    found = {role: _family(f, role) for role, f in files.items()}
    families = {family for family, _, _ in found.values()}
    if len(families) > 1:
        named = ", ".join(f"{role} = {files[role].path.name} ({label})" for role, (_, label, _) in found.items())
        raise MergeError(f"cannot merge models of different architectures: {named}")
    return families.pop()


def _plan(spec: MergeSpec, a: CheckpointFile, b: CheckpointFile | None, c: CheckpointFile | None,
          vae: CheckpointFile | None, result: MergeResult) -> list[_Entry]:
    discard = re.compile(spec.discard) if spec.discard else None
    vae_keys = {}
    if vae is not None:
        for key in vae.shapes:
            target = VAE_PREFIX + key.removeprefix(VAE_PREFIX)
            if target in a.shapes:
                if tuple(vae.shapes[key]) != tuple(a.shapes[target]):
                    raise MergeError(f"the VAE {vae.path.name} does not fit model A ({a.path.name}): {key} has the "
                                     f"shape {list(vae.shapes[key])}, A's {target} {list(a.shapes[target])}")
                vae_keys[target] = key
        if not vae_keys:
            raise MergeError(f"the VAE {vae.path.name} has no weights that fit model A ({a.path.name})")
    plan = []
    for key, shape in a.shapes.items():
        if discard is not None and discard.search(key):
            result.discarded.append(key)
            continue
        dtype = a.dtype(key)
        entry = _Entry(key, tuple(shape), dtype, "copy")
        if key in vae_keys:
            entry.op, entry.source, entry.dtype = "vae", vae_keys[key], vae.dtype(vae_keys[key])
        elif b is not None and "model" in key and key in b.shapes and key not in SKIP_ON_MERGE and dtype.is_floating_point:
            _check_merge_key(key, a, b, c, result, entry)
            entry.op = "merge"
            others = [b.dtype(key)] + ([c.dtype(key)] if c is not None and key in c.shapes else [])
            for other in others:
                entry.dtype = torch.promote_types(entry.dtype, other)
        if entry.dtype == torch.float32 and spec.save_as_half:
            entry.dtype = torch.float16
        plan.append(entry)
    return plan


def _check_merge_key(key: str, a: CheckpointFile, b: CheckpointFile, c: CheckpointFile | None,
                     result: MergeResult, entry: _Entry) -> None:
    sa, sb = tuple(a.shapes[key]), tuple(b.shapes[key])
    if c is not None and key in c.shapes and tuple(c.shapes[key]) != sb:
        raise MergeError(f"models B ({b.path.name}) and C ({c.path.name}) differ at {key}: "
                         f"{list(sb)} against {list(c.shapes[key])}")
    if sa == sb:
        return
    if len(sa) == len(sb) == 4 and sa[:1] + sa[2:] == sb[:1] + sb[2:]:  # input channels: A1111's special case
        if sa[1] == 4 and sb[1] in (8, 9):
            kind = "inpainting" if sb[1] == 9 else "instruct-pix2pix"
            raise MergeError(f"when merging an {kind} model with a normal one, A must be the {kind} model "
                             f"(B = {b.path.name} is the {kind} one)")
        if sa[1] in (8, 9) and sb[1] == 4:
            entry.channels = 4
            result.inpainting |= sa[1] == 9
            result.instruct_pix2pix |= sa[1] == 8
            return
    raise MergeError(f"models A ({a.path.name}) and B ({b.path.name}) differ at {key}: {list(sa)} against {list(sb)}")


# ----------------------------------------------------------------------------------- computing

CHUNK_ELEMENTS = 1 << 20  # rows are merged in slices of about this many elements: small temporaries


def _merge_tensor(spec: MergeSpec, entry: _Entry, a: CheckpointFile, b: CheckpointFile,
                  c: CheckpointFile | None) -> torch.Tensor:
    """The merged tensor, computed in float32 (float64 inputs stay float64) slice by slice of rows
    (element-wise, so the same numbers as at once) into the result's dtype: the temporaries stay
    small however large the tensor (a real SD1's token embedding is 150 MB in float32)."""
    m = float(spec.multiplier)
    ta, tb = a.get(entry.key), b.get(entry.key)
    # a key of B that C lacks adds nothing (A1111: B − C is zeros there)
    tc = c.get(entry.key) if spec.method == ADD_DIFFERENCE and c is not None and entry.key in c.shapes else None
    work = torch.promote_types(torch.promote_types(ta.dtype, tb.dtype), torch.float32)
    out = ta.to(entry.dtype, copy=True) if entry.channels else torch.empty(entry.shape, dtype=entry.dtype)
    if ta.dim() == 0:
        ta, tb, out = ta.reshape(1), tb.reshape(1), out.reshape(1)
        tc = tc.reshape(1) if tc is not None else None
    per_row = max(1, out[0].numel())
    step = max(1, CHUNK_ELEMENTS // per_row)
    for i in range(0, out.shape[0], step):
        rows = slice(i, i + step)
        fa, target = ta[rows], out[rows]
        if entry.channels:
            fa, target = fa[:, :entry.channels], target[:, :entry.channels]
        fa, fb = fa.to(work), tb[rows].to(work)
        if spec.method == WEIGHTED_SUM:
            merged = (1 - m) * fa + m * fb
        elif tc is None:
            merged = fa
        else:
            merged = fa + m * (fb - tc[rows].to(work))
        target.copy_(merged)
    return out.reshape(entry.shape)


def _tensor(spec, entry, a, b, c, vae) -> torch.Tensor:
    if entry.op == "merge":
        tensor = _merge_tensor(spec, entry, a, b, c)
    elif entry.op == "vae":
        tensor = vae.get(entry.source)
    else:
        tensor = a.get(entry.key)
    return tensor.to(entry.dtype).contiguous()


# ------------------------------------------------------------------------------------- writing

def _write_safetensors(path: Path, plan: list[_Entry], tensors, metadata: dict[str, str] | None) -> None:
    """Stream a .safetensors file: the header from the plan, then each tensor as it comes."""
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise MergeError("safetensors metadata must map text to text")
        header["__metadata__"] = metadata
    offset = 0
    for entry in plan:
        size = entry.dtype.itemsize
        for d in entry.shape:
            size *= d
        header[entry.key] = {"dtype": _ST_NAMES[entry.dtype], "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for entry, tensor in zip(plan, tensors):
            if tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype:  # a bug, never a user's error
                raise RuntimeError(f"{entry.key}: computed {tuple(tensor.shape)} {tensor.dtype}, planned {entry.shape} {entry.dtype}")
            if tensor.numel():
                fh.write(memoryview(tensor.view(torch.uint8).reshape(-1).numpy()) if tensor.dtype != torch.bool
                         else tensor.numpy().tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def _check_spec(spec: MergeSpec) -> str:
    if spec.method not in METHODS:
        raise MergeError(f"unknown interpolation method {spec.method!r}; one of {', '.join(METHODS)}")
    if spec.method != NO_INTERPOLATION and spec.secondary is None:
        raise MergeError("Failed: Merging requires a secondary model.")
    if spec.method == ADD_DIFFERENCE and spec.tertiary is None:
        raise MergeError(f"Failed: Interpolation method ({spec.method}) requires a tertiary model.")
    suffix = spec.output.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise MergeError(f"the result must be .safetensors or .ckpt, not {spec.output.name}")
    if spec.discard:
        try:
            re.compile(spec.discard)
        except re.error as exc:
            raise MergeError(f"'Discard weights with matching name' is not a valid regular expression: {exc}") from None
    return suffix


@contextmanager
def _opened(spec: MergeSpec):
    """The inputs opened lazily, checked against each other and planned key by key."""
    with ExitStack() as stack:
        def open_(path, role):
            if path is None:
                return None
            try:
                file = CheckpointFile(path)
            except CheckpointError as exc:
                raise MergeError(f"model {role}: {exc}") from None
            stack.callback(file.close)
            return file

        a = open_(spec.primary, "A")
        b = open_(spec.secondary, "B") if spec.method != NO_INTERPOLATION else None
        c = open_(spec.tertiary, "C") if spec.method == ADD_DIFFERENCE else None
        vae = open_(spec.bake_vae, "VAE")
        result = MergeResult(spec.output)
        result.family = check_compatible({role: f for role, f in (("A", a), ("B", b), ("C", c)) if f is not None})
        plan = _plan(spec, a, b, c, vae, result)
        result.tensors = len(plan)
        result.path = output = marked_output(spec.output, result)
        if output.exists() and any(output.resolve() == Path(p).resolve() for p in
                                   (spec.primary, spec.secondary, spec.tertiary, spec.bake_vae) if p is not None):
            raise MergeError(f"the result {output.name} would overwrite one of the merged files")
        yield a, b, c, vae, plan, result


def probe_result(spec: MergeSpec) -> MergeResult:
    """What `merge` would make (name, inpainting marks, tensors), from the headers alone; writes nothing."""
    _check_spec(spec)
    with _opened(spec) as (*_, result):
        return result


def merge(spec: MergeSpec, progress: Progress | None = None) -> MergeResult:
    """Merge per `spec` and write `spec.output` (through a temporary file beside it, so a failed
    merge leaves nothing in the models folder). MergeError when it cannot be done."""
    report = progress or (lambda what, done, total: None)
    suffix = _check_spec(spec)
    with _opened(spec) as (a, b, c, vae, plan, result):
        total = len(plan)

        def computed():
            for i, entry in enumerate(plan):
                report("Merging" if b is not None else "Converting", i, total)
                yield _tensor(spec, entry, a, b, c, vae)
            report("Saving", total, total)

        tmp = result.path.with_name(result.path.name + ".partial")
        try:
            if suffix == "safetensors":
                _write_safetensors(tmp, plan, computed(), spec.metadata or None)
            else:
                state = {entry.key: tensor for entry, tensor in zip(plan, computed())}
                torch.save({"state_dict": state}, tmp)
                del state
            os.replace(tmp, result.path)
        finally:
            tmp.unlink(missing_ok=True)
    return result
