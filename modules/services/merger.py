"""The Checkpoint Merger's service: what A1111's `run_modelmerger` does around the arithmetic.

It names the checkpoints (registry titles) and the VAE to bake in, chooses the file name, builds
A1111's metadata (`format`, `sd_merge_recipe`, `sd_merge_models` with the inputs' hashes, the
inputs' own fields, the user's JSON), runs `modules.core.merge` on the single worker queue (so a
merge never overlaps a generation) with its progress in the job state, copies the config beside the
result and lists the new checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from modules.core import merge as core_merge
from modules.core.checkpoint_file import CheckpointError, read_safetensors_header

from .checkpoints import CheckpointInfo

CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
NO_VAE = "None"
JOB_NAME = "model-merge"


@dataclass
class MergeRequest:
    """The tab's values, with A1111's meanings."""
    primary_model_name: str
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = core_merge.WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int | str = 0  # an index of CONFIG_SOURCES, or its text
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"


@dataclass
class MergeOutcome:
    path: Path
    checkpoint: CheckpointInfo | None  # the new file as the registry lists it
    result: core_merge.MergeResult

    @property
    def message(self) -> str:
        return f"Checkpoint saved to {self.path}"


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def file_metadata(path: Path) -> dict[str, str]:
    """A .safetensors file's header metadata (text values only); {} for a .ckpt or an unreadable header."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return {k: v for k, v in read_safetensors_header(path).metadata.items() if isinstance(v, str)}
    except CheckpointError:
        return {}


def _json_value(text):
    if isinstance(text, str) and text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


class Merger:
    def __init__(self, engine):
        self.engine = engine

    # -- choices ---------------------------------------------------------------------
    def checkpoint_titles(self) -> list[str]:
        return self.engine.checkpoints.titles()

    def vae_choices(self) -> list[str]:
        vaes = self.engine.vaes
        return [NO_VAE] + ([v.model_name for v in vaes.list()] if vaes is not None else [])

    def refresh(self) -> None:
        self.engine.checkpoints.refresh()
        if self.engine.vaes is not None:
            self.engine.vaes.refresh()

    def read_metadata(self, *names: str) -> str:
        """A1111's "Read metadata from selected checkpoints": their fields merged, as JSON."""
        metadata: dict = {}
        for name in names:
            info = self.engine.checkpoints.find(name) if name else None
            if info is not None:
                metadata.update({k: _json_value(v) for k, v in file_metadata(info.filename).items()})
        return json.dumps(metadata, indent=4, ensure_ascii=False)

    # -- the job ---------------------------------------------------------------------
    def submit(self, request: MergeRequest) -> Future:
        """Queue the merge on the worker (after the jobs already queued)."""
        return self.engine.queue.submit(JOB_NAME, self.run, request)

    def merge(self, request: MergeRequest) -> MergeOutcome:
        return self.submit(request).result()

    def _checkpoint(self, name: str, role: str) -> CheckpointInfo:
        info = self.engine.checkpoints.find(name)
        if info is None:
            self.engine.checkpoints.refresh()
            info = self.engine.checkpoints.find(name)
        if info is None:
            raise core_merge.MergeError(f"model {role}: unknown checkpoint '{name}'")
        return info

    def _vae(self, name: str) -> Path | None:
        if not name or name == NO_VAE:
            return None
        vaes = self.engine.vaes
        found = vaes.find(name) if vaes is not None else None
        if found is None and vaes is not None:
            vaes.refresh()
            found = vaes.find(name)
        if found is None:
            raise core_merge.MergeError(f"Bake in VAE: unknown VAE '{name}'")
        return found.filename

    def output_path(self, request: MergeRequest, a: CheckpointInfo, b: CheckpointInfo | None,
                    c: CheckpointInfo | None) -> Path:
        """A1111's file name in the checkpoints' first folder (the `.inpainting` mark comes later)."""
        fmt = request.checkpoint_format
        if fmt not in core_merge.FORMATS:
            raise core_merge.MergeError(f"Checkpoint format must be ckpt or safetensors, not {fmt!r}")
        name = (request.custom_name or "").strip()
        for ext in (".safetensors", ".ckpt"):
            name = name[: -len(ext)] if name.lower().endswith(ext) else name
        if any(sep in name for sep in ("/", "\\")) or name in (".", ".."):
            raise core_merge.MergeError(f"Custom Name must be a file name, not a path: {request.custom_name!r}")
        if not name:
            stem = lambda info: info.model_name.rsplit("/", 1)[-1]  # noqa: E731
            m = request.multiplier
            if request.interp_method == core_merge.WEIGHTED_SUM:
                name = f"{round(1 - m, 2)}({stem(a)}) + {round(m, 2)}({stem(b)})"
            elif request.interp_method == core_merge.ADD_DIFFERENCE:
                name = f"{stem(a)} + {round(m, 2)}({stem(b)} - {stem(c)})"
            else:
                name = stem(a)
        folder = self.engine.checkpoints.dirs[0]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.{fmt}"

    def metadata(self, request: MergeRequest, a, b, c, result: core_merge.MergeResult | None = None) -> dict[str, str]:
        """A1111's metadata of a merged .safetensors (1.10's keys and values)."""
        if not request.save_metadata:
            return {}
        metadata: dict = {}
        infos = [i for i in (a, b, c) if i is not None]
        if request.copy_metadata_fields:
            for info in infos:
                metadata.update(file_metadata(info.filename))
        try:
            extra = json.loads(request.metadata_json or "{}")
        except ValueError as exc:
            raise core_merge.MergeError(f"Metadata in JSON format is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise core_merge.MergeError("Metadata in JSON format must be a JSON object")
        metadata.update(extra)
        metadata["format"] = "pt"
        if request.add_merge_recipe:
            hashes = self.engine.checkpoints.hashes
            for info in infos:  # A1111's calculate_shorthash: the recipe names every input by sha256
                info.sha256 = info.sha256 or hashes.sha256(info.filename)
            recipe = {
                "type": "webui",  # A1111's mark of its built-in merger
                "primary_model_hash": a.sha256,
                "secondary_model_hash": b.sha256 if b else None,
                "tertiary_model_hash": c.sha256 if c else None,
                "interp_method": request.interp_method,
                "multiplier": request.multiplier,
                "save_as_half": request.save_as_half,
                "custom_name": request.custom_name,
                "config_source": self._config_index(request.config_source),
                "bake_in_vae": request.bake_in_vae,
                "discard_weights": request.discard_weights,
                "is_inpainting": bool(result and result.inpainting),
                "is_instruct_pix2pix": bool(result and result.instruct_pix2pix),
            }
            models: dict = {}
            for info in infos:
                own = file_metadata(info.filename)
                models[info.sha256] = {"name": info.name, "legacy_hash": legacy_hash(info.filename),
                                       "sd_merge_recipe": _json_value(own.get("sd_merge_recipe"))}
                nested = _json_value(own.get("sd_merge_models", {}))
                if isinstance(nested, dict):
                    models.update(nested)
            metadata["sd_merge_recipe"] = json.dumps(recipe)
            metadata["sd_merge_models"] = json.dumps(models)
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None}

    @staticmethod
    def _config_index(source) -> int:
        if isinstance(source, str):
            if source not in CONFIG_SOURCES:
                raise core_merge.MergeError(f"Copy config from must be one of {', '.join(CONFIG_SOURCES)}")
            return CONFIG_SOURCES.index(source)
        return int(source)

    def _copy_config(self, request: MergeRequest, output: Path, a, b, c) -> Path | None:
        """A1111's create_config: the `.yaml` beside A (else B, else C), or B's, or C's, beside the result."""
        def near(info):
            yaml = info.filename.with_suffix(".yaml") if info else None
            return yaml if yaml is not None and yaml.is_file() else None

        index = self._config_index(request.config_source)
        source = (near(a) or near(b) or near(c)) if index == 0 else near(b) if index == 1 else near(c) if index == 2 else None
        if source is None:
            return None
        target = output.with_suffix(".yaml")
        shutil.copyfile(source, target)
        return target

    def run(self, request: MergeRequest) -> MergeOutcome:
        """On the worker: the whole merge. MergeError (a ValueError) says what is wrong."""
        state = self.engine.state
        method = request.interp_method
        if method not in core_merge.METHODS:
            raise core_merge.MergeError(f"unknown interpolation method {method!r}; one of {', '.join(core_merge.METHODS)}")
        if not request.primary_model_name:
            raise core_merge.MergeError("Failed: Merging requires a primary model.")
        a = self._checkpoint(request.primary_model_name, "A")
        b = c = None
        if method != core_merge.NO_INTERPOLATION:
            if not request.secondary_model_name:
                raise core_merge.MergeError("Failed: Merging requires a secondary model.")
            b = self._checkpoint(request.secondary_model_name, "B")
        if method == core_merge.ADD_DIFFERENCE:
            if not request.tertiary_model_name:
                raise core_merge.MergeError(f"Failed: Interpolation method ({method}) requires a tertiary model.")
            c = self._checkpoint(request.tertiary_model_name, "C")
        output = self.output_path(request, a, b, c)
        self._config_index(request.config_source)
        state.textinfo = "Preparing"
        metadata = self.metadata(request, a, b, c) if request.checkpoint_format == "safetensors" else {}

        def progress(what: str, done: int, total: int) -> None:
            state.textinfo, state.sampling_step, state.sampling_steps = what, done, total

        spec = core_merge.MergeSpec(
            primary=a.filename, secondary=b.filename if b else None, tertiary=c.filename if c else None,
            output=output, method=method, multiplier=float(request.multiplier), save_as_half=bool(request.save_as_half),
            bake_vae=self._vae(request.bake_in_vae), discard=request.discard_weights or "",
            metadata=metadata or None)
        if metadata and "sd_merge_recipe" in metadata:
            # the inpainting marks of the recipe are known once the shapes are compared: planned first
            probe = core_merge.probe_result(spec)
            if probe.inpainting or probe.instruct_pix2pix:
                spec = dataclasses.replace(spec, metadata=self.metadata(request, a, b, c, probe))
        result = core_merge.merge(spec, progress)
        self._copy_config(request, result.path, a, b, c)
        state.textinfo = "Checkpoint saved"
        self.engine.checkpoints.refresh()
        created = next((i for i in self.engine.checkpoints.list() if i.filename.resolve() == result.path.resolve()), None)
        if created is not None:
            self.engine.checkpoints.ensure_hash(created)
        return MergeOutcome(result.path, created, result)
