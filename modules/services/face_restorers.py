"""GFPGAN and CodeFormer from A1111's folders, and the job hooks that restore faces.

A1111 reads ``models/GFPGAN`` and ``models/Codeformer`` (flags ``--gfpgan-models-path``,
``--codeformer-models-path``) and downloads ``GFPGANv1.4.pth`` / ``codeformer-v0.1.0.pth`` there
when missing; Easel never downloads: a missing model is a RequestError naming the file and the
folder, raised before the job is queued. In a folder, A1111's file name is tried first, then the
others (``.pth``/``.safetensors``, subfolders too: those named ``.something`` only with the
``list_hidden_files`` option on, as A1111's ``walk_files``) until one is a model of the right kind.
facexlib's face parsing network, ``models/GFPGAN/parsing_parsenet.pth`` where A1111's helper keeps
it, is used when there: each restored face is pasted through its parsing mask (else a soft square).

The options are A1111's: ``face_restoration`` (restore faces in generated pictures; the request
field ``restore_faces`` sets it for one job), ``face_restoration_model``, ``code_former_weight``,
``face_restoration_unload`` (move the model back to the CPU after each use).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from modules.core import face_detection, face_parsing, face_restoration, memory, retinaface
from modules.core.job_hooks import BatchValues, JobHooks
from modules.core.types import RequestError

CASCADE = Path(__file__).resolve().parents[2] / "models" / "facedetect" / "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Restorer:
    name: str  # as A1111 lists it
    folder_name: str  # under the models folder
    flag: str  # cmd_opts attribute
    download_name: str
    url: str


RESTORERS = (  # A1111's order in /sdapi/v1/face-restorers
    Restorer("CodeFormer", "Codeformer", "codeformer_models_path", "codeformer-v0.1.0.pth",
             "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth"),
    Restorer("GFPGAN", "GFPGAN", "gfpgan_models_path", "GFPGANv1.4.pth",
             "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"),
)
NAMES = tuple(r.name for r in RESTORERS)
# facexlib's detector and parser, which A1111 keeps in models/GFPGAN too: not restorers
FACEXLIB_FILES = {retinaface.FILE_NAME, "detection_mobilenet0.25_Final.pth", face_parsing.FILE_NAME,
                  "parsing_bisenet.pth"}
SUFFIXES = (".pth", ".safetensors")


def folders_for(opts, models_dir: Path) -> dict[str, Path]:
    """Each restorer's folder: its flag's value, else MODELS_DIR/<folder>."""
    return {r.name: Path(getattr(opts, r.flag, None) or models_dir / r.folder_name) for r in RESTORERS}


class FaceRestorers:
    """The folders, the model loaded last (one at a time) and the face detector."""

    def __init__(self, folders: dict[str, Path], options=None, device: torch.device | None = None,
                 interrupted: Callable[[], bool] = lambda: False, cascade: Path = CASCADE, log=print):
        self.folders = folders
        self.options = options
        self.device = device or torch.device("cpu")
        self.interrupted = interrupted
        self.cascade_path = cascade
        self.log = log
        self.unusable: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._loaded: tuple[tuple, face_restoration.FaceModel] | None = None
        self._detector = _OptionalNetwork(retinaface.load, retinaface.RetinaFaceError, "face detector",
                                          "using OpenCV's Haar cascade", log)
        self._parser = _OptionalNetwork(face_parsing.load, face_parsing.FaceParsingError, "face parsing network",
                                        "pasting faces with a soft square", log)

    def _option(self, key: str, default):
        value = self.options.get(key, default) if self.options is not None else default
        return default if value is None else value

    def listing(self) -> list[dict]:
        """/sdapi/v1/face-restorers: A1111 lists both, files or not; cmd_dir is the folder."""
        return [{"name": r.name, "cmd_dir": str(self.folders[r.name])} for r in RESTORERS]

    def candidates(self, name: str) -> list[Path]:
        restorer = _restorer(name)
        folder = self.folders[name]
        if not folder.is_dir():
            return []
        found = []
        for root, dirs, files in os.walk(folder, followlinks=True):
            if not self._option("list_hidden_files", True):  # A1111's walk_files: skip ".name" folders
                dirs[:] = [d for d in dirs if not d.startswith(".")]
            dirs.sort()
            found += [Path(root) / f for f in sorted(files)
                      if Path(f).suffix.lower() in SUFFIXES and f not in FACEXLIB_FILES]
        # A1111's download name first, then names that say what they are, then the rest
        return sorted(found, key=lambda p: (p.name != restorer.download_name, name.lower() not in p.name.lower()))

    def missing_message(self, name: str) -> str:
        restorer = _restorer(name)
        return (f"no {name} model in {self.folders[name]}: put {restorer.download_name} there "
                f"(A1111 downloads it from {restorer.url}; Easel never downloads)")

    def check(self, name: str, field: str = "face_restoration_model") -> None:
        """RequestError unless ``name`` is a restorer with a file in its folder."""
        if name not in NAMES:
            raise RequestError(field, f"unknown face restoration model '{name}'; known: {', '.join(NAMES)}")
        if not self.candidates(name):
            raise RequestError(field, self.missing_message(name))

    def model(self, name: str) -> face_restoration.FaceModel:
        """The first usable file of ``name``'s folder, built (again only when the file changed)."""
        reasons = []
        for path in self.candidates(name):
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            try:
                model = face_restoration.build(path, expected=name)
            except face_restoration.FaceModelError as error:
                self.unusable[path] = str(error)
                self.log(f"[easel] face restoration model not usable: {path}: {error}")
                reasons.append(str(error))
                continue
            self._loaded = (key, model)
            return model
        if not reasons:
            raise RequestError("face_restoration_model", self.missing_message(name))
        raise RequestError("face_restoration_model", f"no usable {name} model in {self.folders[name]}: {'; '.join(reasons)}")

    def detector_file(self) -> Path:
        """RetinaFace's file, where A1111's facexlib keeps it: beside the GFPGAN models."""
        return self.folders["GFPGAN"] / retinaface.FILE_NAME

    def detector(self) -> retinaface.RetinaFaceNet | None:
        """RetinaFace when its file is there and usable (built again only when it changed), else None:
        the Haar cascade then finds the faces. An unusable file is named once in the console."""
        return self._detector.get(self.detector_file())

    def parser_file(self) -> Path:
        """facexlib's face parsing network, beside the GFPGAN models as A1111 keeps it."""
        return self.folders["GFPGAN"] / face_parsing.FILE_NAME

    def parser(self) -> face_parsing.ParseNet | None:
        """ParseNet when its file is there and usable (built again only when it changed), else None:
        faces are then pasted through a soft square. An unusable file is named once in the console."""
        return self._parser.get(self.parser_file())

    def find_faces(self, image: Image.Image) -> list[face_restoration.Face]:
        net = self.detector()
        if net is None:
            return face_restoration.find_faces(image, face_detection.load_cascade(self.cascade_path))
        with self._lock:
            memory.move(net, self.device)
            try:
                return face_restoration.aligned_faces(image, net)
            finally:
                memory.move(net, "cpu")

    def restore(self, image: Image.Image, name: str, weight: float | None = None) -> Image.Image:
        """``image`` with its faces restored by ``name`` (A1111's ``restore_faces``); the model is
        loaded only when a face is found."""
        faces = self.find_faces(image)
        if not faces:
            return image
        if weight is None:
            weight = float(self._option("code_former_weight", 0.5))
        with self._lock:
            model = self.model(name)
            parser = self.parser()
            memory.move(model.net, self.device)
            if parser is not None:
                memory.move(parser, self.device)
            try:
                return face_restoration.restore(image, model, faces, self.device, weight, self.interrupted, parser)
            finally:
                if parser is not None:
                    memory.move(parser, "cpu")
                if self._option("face_restoration_unload", False) or self.device.type == "cpu":
                    memory.move(model.net, "cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def unload(self) -> None:
        self._loaded = None


def _restorer(name: str) -> Restorer:
    for restorer in RESTORERS:
        if restorer.name == name:
            return restorer
    raise RequestError("face_restoration_model", f"unknown face restoration model '{name}'; known: {', '.join(NAMES)}")


# -- the one instance the composition root installs -------------------------------------------

_current: FaceRestorers | None = None


def install(restorers: FaceRestorers | None) -> FaceRestorers | None:
    global _current
    _current = restorers
    return restorers


def current() -> FaceRestorers | None:
    return _current


def wanted(options: dict) -> str | None:
    """The model to restore faces with in a job run with these option values, or None."""
    if not options.get("face_restoration"):
        return None
    return options.get("face_restoration_model") or "CodeFormer"


def check_job(options: dict) -> None:
    """Before queueing: a job that restores faces needs the model's file (RequestError naming it)."""
    name = wanted(options)
    if name is None:
        return
    if _current is None:
        raise RequestError("restore_faces", "face restoration is not set up in this process")
    try:
        _current.check(name)
    except RequestError as error:
        raise RequestError("restore_faces", error.message) from None


class FaceRestorationHooks(JobHooks):
    """A job's pictures with their faces restored right after decoding (A1111's order: before
    the scripts' postprocess_image, colour correction and paste-back), and the infotext key."""

    def __init__(self, restorers: FaceRestorers, name: str, weight: float | None = None):
        self.restorers, self.name, self.weight = restorers, name, weight

    def image_ready(self, batch: BatchValues, position: int, image: Image.Image) -> Image.Image:
        return self.restorers.restore(image, self.name, self.weight)

    def restores_faces(self) -> bool:
        return True

    def extra_params(self) -> dict:
        return {"Face restoration": self.name}


class _OptionalNetwork:
    """A network read from a file that may be absent (RetinaFace's, ParseNet's): built again only when
    the file changed; an unusable file is named once in the console and gives None, as a missing one."""

    def __init__(self, load: Callable[[Path], torch.nn.Module], error: type[Exception], what: str, fallback: str,
                 log: Callable[[str], None]):
        self.load, self.error, self.what, self.fallback, self.log = load, error, what, fallback, log
        self._built: tuple[tuple, torch.nn.Module] | None = None
        self._bad: set[tuple] = set()

    def get(self, path: Path) -> torch.nn.Module | None:
        if not path.is_file():
            return None
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if self._built is not None and self._built[0] == key:
            return self._built[1]
        try:
            net = self.load(path)
        except self.error as error:
            if key not in self._bad:
                self._bad.add(key)
                self.log(f"[easel] {self.what} not usable: {path}: {error}; {self.fallback}")
            return None
        self._built = (key, net)
        return net

