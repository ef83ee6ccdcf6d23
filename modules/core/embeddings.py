"""Textual-inversion embeddings: A1111's files read, checked against a model, found in prompts.

An embedding is a few learned token vectors saved under a name (the file's stem); writing the
name in a prompt puts its vectors where the name's tokens would be. The files A1111 reads:

- `.pt` / `.bin` (read with ``torch.load(weights_only=True)``, so a file cannot run code):
  A1111/original TI ``{"string_to_param": {"*": tensor}, "step", "sd_checkpoint", ...}``, a
  diffusers concept ``{"<token>": tensor}`` (one key), or ``{"emb_params": tensor}``;
- `.safetensors`: ``emb_params`` (or another single key), SDXL ``clip_l`` + ``clip_g``;
- `.png` with the embedding in its ``sd-ti-embedding`` text chunk (A1111's "embedding image";
  the variant hidden in the pixels is not read). Other images (previews) are ignored.

Whether an embedding fits a model is decided per model (`ModelEmbeddings`): the vector width
must match the text encoder's (SD1 768, SD2 1024; SDXL needs both ``clip_l`` and ``clip_g``);
A1111's ``shape`` is that width (SDXL: the sum). A file that cannot be read becomes an
`Embedding` with ``vec=None`` and a ``reason``, so a bad file is listed, never fatal.

Lookup works on token ids, as A1111's does: each name is tokenized with the model's tokenizer;
at a prompt position the longest name whose tokens follow is taken.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from .checkpoint_file import SafetensorsHeaderError, parse_safetensors_header, torch_file_problem

CHUNK_SLOTS = 75  # an embedding must fit in one 75-token chunk
SDXL_KEYS = ("clip_l", "clip_g")
TENSOR_FILES = (".pt", ".bin", ".safetensors")
IMAGE_FILES = (".png",)
MAX_FILE_BYTES = 128 * 1024 * 1024  # embeddings are KBs (75 SDXL vectors in float32: 0.6 MB); cards a few MB
PNG_TEXT_KEY = "sd-ti-embedding"


class EmbeddingFileError(ValueError):
    """The file is not a readable embedding; the message says why."""


@dataclass(eq=False)  # identity, not tensor comparison
class Embedding:
    """One embedding file. A1111's attribute names: ``vec``, ``shape``, ``vectors``, ``step``,
    ``sd_checkpoint``, ``sd_checkpoint_name``, ``hash`` / ``shorthash``."""

    name: str
    path: Path
    vec: torch.Tensor | dict[str, torch.Tensor] | None  # (vectors, width) or SDXL {"clip_l", "clip_g"}
    shape: int = 0  # vector width (SDXL: clip_l + clip_g widths)
    vectors: int = 0  # token slots it takes in a prompt
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    hash: str = ""  # sha256 of the file
    reason: str | None = None  # why it is skipped (set on skipped entries only)

    @property
    def shorthash(self) -> str:
        return self.hash[:12]

    def tensor_for(self, key: str | None) -> torch.Tensor:
        """The vectors for one text encoder (``key`` "clip_l"/"clip_g" on SDXL, None otherwise)."""
        if isinstance(self.vec, dict):
            return self.vec[key]
        return self.vec


# -- reading files ---------------------------------------------------------------------------------

def _as_matrix(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{what} is not a tensor ({type(value).__name__})")
    if not (value.is_floating_point()):
        raise EmbeddingFileError(f"{what} holds {value.dtype}, not floating-point vectors")
    t = value.detach().to("cpu", torch.float32)
    if t.ndim == 1:  # diffusers concepts store one vector without the slot axis
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise EmbeddingFileError(f"{what} has shape {tuple(value.shape)}; expected (vectors, width)")
    if not torch.isfinite(t).all():
        raise EmbeddingFileError(f"{what} contains NaN or infinite values")
    return t


def _meta(data: dict, key: str, kind: type):
    """A metadata field of the expected type, else None (files from other tools vary)."""
    value = data.get(key)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and kind is int:
        value = int(value.item())
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def embedding_from_data(data, name: str, path: Path, file_hash: str = "") -> Embedding:
    """A1111's ``create_embedding_from_data``: the three layouts, checked."""
    if not isinstance(data, dict):
        raise EmbeddingFileError(f"holds a {type(data).__name__}, not a dictionary of tensors")
    if "string_to_param" in data:  # A1111 / original textual inversion
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            count = len(params) if isinstance(params, dict) else "no"
            raise EmbeddingFileError(f"string_to_param must hold exactly one term, it holds {count}")
        vec = _as_matrix(next(iter(params.values())), "string_to_param")
        shape, vectors = vec.shape[1], vec.shape[0]
    elif "clip_l" in data and "clip_g" in data:  # SDXL: one set of vectors per text encoder
        vec = {k: _as_matrix(data[k], k) for k in SDXL_KEYS}
        if vec["clip_l"].shape[0] != vec["clip_g"].shape[0]:
            raise EmbeddingFileError(f"clip_l has {vec['clip_l'].shape[0]} vectors but clip_g has "
                                     f"{vec['clip_g'].shape[0]}")
        shape, vectors = vec["clip_l"].shape[1] + vec["clip_g"].shape[1], vec["clip_g"].shape[0]
    else:  # diffusers concept {"<token>": tensor}, or {"emb_params": tensor}
        tensors = [k for k, v in data.items() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingFileError("not an embedding: expected string_to_param, clip_l + clip_g or a single "
                                     f"tensor, found tensors {sorted(tensors)[:5]}")
        vec = _as_matrix(data[tensors[0]], tensors[0])
        shape, vectors = vec.shape[1], vec.shape[0]
    return Embedding(name=name, path=path, vec=vec, shape=int(shape), vectors=int(vectors),
                     step=_meta(data, "step", int), sd_checkpoint=_meta(data, "sd_checkpoint", str),
                     sd_checkpoint_name=_meta(data, "sd_checkpoint_name", str), hash=file_hash)


def _from_png_text(text: str):
    """A1111's ``embedding_from_b64``: base64 JSON whose tensors are {"TORCHTENSOR": nested lists}."""

    def tensors(obj: dict):
        if "TORCHTENSOR" in obj:
            return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float32)
        return obj

    try:
        return json.loads(base64.b64decode(text), object_hook=tensors)
    except (ValueError, TypeError) as exc:
        raise EmbeddingFileError(f"its {PNG_TEXT_KEY} text is not valid: {exc}") from exc


def _reader_error(exc: Exception, suffix: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m| ?<_io\.BytesIO object at \w+>", "", str(exc)).strip()  # colours, PIL's repr
    if "Weights only load failed" in text:
        return ("it holds Python objects that need code to load (refused: files are read with "
                "weights_only); save it as plain tensors or .safetensors")
    kind = {".safetensors": "a safetensors file", ".png": "an image"}.get(suffix, "a torch file")
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"not readable as {kind}: {first[:200]}"


def is_candidate(path: Path) -> bool:
    """Files a scan looks at (A1111: tensor files and images, not `*.preview.png`)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_FILES:
        return not path.stem.lower().endswith(".preview")
    return suffix in TENSOR_FILES


def read_embedding_file(path: Path) -> Embedding | None:
    """One file -> an Embedding; None for an image without an embedding (a preview picture).
    Raises EmbeddingFileError (with the reason) for a file that cannot be used."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:  # a checkpoint or LoRA put in the wrong folder: not read into memory
        raise EmbeddingFileError(f"the file has {size} bytes, more than any embedding ({MAX_FILE_BYTES} at most)")
    raw = path.read_bytes()
    if not raw:
        raise EmbeddingFileError("the file is empty")
    file_hash = hashlib.sha256(raw).hexdigest()
    suffix = path.suffix.lower()
    name = path.stem
    try:
        if suffix == ".safetensors":
            import safetensors.torch

            try:  # the same checks and messages as every other .safetensors file
                parse_safetensors_header(io.BytesIO(raw), len(raw), path)
            except SafetensorsHeaderError as exc:
                raise EmbeddingFileError(f"not readable as a safetensors file: {exc.reason}") from exc
            data = safetensors.torch.load(raw)
        elif suffix in (".pt", ".bin"):
            problem = torch_file_problem(raw[:4])
            if problem:
                raise EmbeddingFileError(f"not readable as a torch file: it {problem}")
            data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        elif suffix in IMAGE_FILES:
            from PIL import Image

            with Image.open(io.BytesIO(raw)) as image:
                text = getattr(image, "text", {}).get(PNG_TEXT_KEY)
            if text is None:
                return None
            data = _from_png_text(text)
            if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"].strip():
                name = data["name"].strip()
        else:
            return None
    except EmbeddingFileError:
        raise
    except Exception as exc:  # any reader error: torch's unpickler, safetensors' header, PIL
        raise EmbeddingFileError(_reader_error(exc, suffix)) from exc
    return embedding_from_data(data, name, path, file_hash)


def unreadable(path: Path, reason: str) -> Embedding:
    """The entry listed for a file that could not be read."""
    return Embedding(name=Path(path).stem, path=Path(path), vec=None, reason=reason)


# -- one model's view ------------------------------------------------------------------------------

def encoder_slots(model) -> list[tuple[str | None, int]]:
    """(key, width) per text encoder: SDXL ("clip_l", w), ("clip_g", w); others (None, w)."""
    widths = [int(e.config.hidden_size) for e in model.text_encoders]
    keys = model.family.embedding_keys
    return list(zip(keys, widths)) if keys else [(None, widths[0])]


def mismatch(embedding: Embedding, slots: list[tuple[str | None, int]]) -> str | None:
    """Why the embedding cannot be used with encoders of these widths (None: it fits)."""
    if embedding.vec is None:
        return embedding.reason or "unreadable"
    if embedding.vectors > CHUNK_SLOTS:
        return f"it has {embedding.vectors} vectors; at most {CHUNK_SLOTS} fit in a prompt chunk"
    if len(slots) == 1:
        width = slots[0][1]
        if isinstance(embedding.vec, dict):
            return (f"an SDXL embedding (clip_l + clip_g, shape {embedding.shape}); this model needs vectors "
                    f"of width {width}")
        if embedding.shape != width:
            return f"its vectors have width {embedding.shape}; this model needs {width}"
        return None
    if not isinstance(embedding.vec, dict):
        return (f"an embedding for one text encoder (width {embedding.shape}); this SDXL model needs "
                f"clip_l and clip_g vectors of widths {', '.join(str(w) for _, w in slots)}")
    for key, width in slots:
        if embedding.vec[key].shape[1] != width:
            return f"its {key} vectors have width {embedding.vec[key].shape[1]}; this model needs {width}"
    return None


@dataclass
class ModelEmbeddings:
    """The embeddings usable with one model (by its encoders' widths) and their token-id lookup."""

    slots: list[tuple[str | None, int]]
    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, Embedding] = field(default_factory=dict)
    tokenizer: object = None
    _lookup: dict[int, list[tuple[list[int], Embedding]]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, embeddings: Iterable[Embedding], slots, tokenizer=None) -> "ModelEmbeddings":
        """`slots` None: no model known yet, every readable embedding counts as loaded (A1111's -1)."""
        view = cls(slots=list(slots or []), tokenizer=tokenizer)
        loaded, skipped = {}, {}
        by_name = {emb.name: emb for emb in embeddings}  # the same name twice: the later file wins
        for name, emb in by_name.items():
            reason = (emb.reason or "unreadable") if emb.vec is None else (mismatch(emb, slots) if slots else None)
            if reason is None:
                loaded[name] = emb
            else:
                skipped[name] = dataclasses.replace(emb, reason=reason)
        view.loaded = {k: loaded[k] for k in sorted(loaded, key=str.lower)}
        view.skipped = {k: skipped[k] for k in sorted(skipped, key=str.lower)}
        if tokenizer is not None:
            for emb in view.loaded.values():
                ids = tokenizer([emb.name], add_special_tokens=False, truncation=False, verbose=False)["input_ids"][0]
                if ids:
                    view._lookup.setdefault(ids[0], []).append((list(ids), emb))
            for matches in view._lookup.values():
                matches.sort(key=lambda m: len(m[0]), reverse=True)  # longest name first
        return view

    @property
    def keys(self) -> list[str | None]:
        return [key for key, _ in self.slots]

    def find_at(self, tokens: list[int], offset: int) -> tuple[Embedding | None, int]:
        """The embedding whose name's tokens start at `offset`, and how many prompt tokens it spans."""
        for ids, emb in self._lookup.get(tokens[offset], ()):
            if tokens[offset:offset + len(ids)] == ids:
                return emb, len(ids)
        return None, 0

    def for_model(self, model) -> "ModelEmbeddings":
        """Lets a view stand where a database is expected (tests, a single model)."""
        return self


def ti_hashes(used: dict[str, str]) -> str | None:
    """A1111's `TI hashes` infotext value: "name: shorthash, ..." (':' and ',' dropped from names)."""
    parts = [f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in used.items() if short]
    return ", ".join(parts) or None


def parse_ti_hashes(text: str) -> dict[str, str]:
    """`TI hashes` value -> {name: shorthash}."""
    out = {}
    for part in text.split(","):
        name, sep, short = part.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = short.strip()
    return out
