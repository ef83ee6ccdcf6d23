"""A1111's Interrogate: a caption for a picture, by DeepBooru (DeepDanbooru's tags) or by CLIP.

- DeepBooru reads ``models/torch_deepdanbooru`` (A1111's folder): A1111's file name
  ``model-resnet_custom_v3.pt`` first, then any other ``.pt`` there. The model is built once (again
  when the file changes) by ``modules.core.deepbooru``; the tag string follows A1111's options
  ``interrogate_deepbooru_score_threshold``, ``deepbooru_sort_alpha``, ``deepbooru_use_spaces``,
  ``deepbooru_escape``, ``deepbooru_filter_tags`` and ``interrogate_return_ranks``.
- CLIP, as A1111's ``InterrogateModels.interrogate``: a BLIP caption (``modules.core.blip``; the file
  ``models/BLIP/model_base_caption_capfilt_large.pth``, else any other ``.pth`` there), then the best
  lines of each category list ranked by CLIP ViT-L/14 (``modules.core.clip_interrogate``; OpenAI's
  ``ViT-L-14.pt`` in ``--clip-models-path``, default ``models/CLIP``; ``ViT-L-14.safetensors`` is
  taken too). The lists are the ``.txt`` files of A1111's ``interrogate`` folder in the data folder;
  where that folder does not exist, the lists Easel ships in ``models/interrogate`` (the ones A1111
  downloads there). Options: ``interrogate_clip_num_beams``, ``interrogate_clip_min_length``,
  ``interrogate_clip_max_length``, ``interrogate_clip_dict_limit``,
  ``interrogate_clip_skip_categories``, ``interrogate_return_ranks``. The lines' embeddings are kept
  per list until the CLIP file changes. The BLIP caption alone is the Extras "Caption" step's "BLIP".
- A1111 downloads missing files; Easel never does: a missing or unusable model is a RequestError
  naming the file and the folder. Each model is built once (again when its file changes) and goes
  back to the CPU after each use unless ``interrogate_keep_models_in_memory`` is on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from modules.core import blip, clip_interrogate, deepbooru, memory
from modules.core.types import RequestError

MODELS = ("clip", "deepdanbooru")  # /sdapi/v1/interrogate's `model`
DEEPBOORU_FOLDER = "torch_deepdanbooru"
DEEPBOORU_URL = "https://github.com/AUTOMATIC1111/TorchDeepDanbooru/releases/download/v1/model-resnet_custom_v3.pt"
BLIP_FOLDER = "BLIP"
BLIP_URL = ("https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
            "model_base_caption_capfilt_large.pth")
CLIP_FOLDER = "CLIP"  # without --clip-models-path
CLIP_FILES = (clip_interrogate.MODEL_FILE, "ViT-L-14.safetensors")
CATEGORIES_FOLDER = "interrogate"  # A1111's, in the data folder
SHIPPED_CATEGORIES = Path(__file__).resolve().parents[2] / "models" / "interrogate"


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


class Interrogators:
    """The model folders, each model loaded last, and the options that shape the captions."""

    def __init__(self, models_dir: Path, options=None, device: torch.device | None = None, half: bool = False,
                 log=print, clip_dir: Path | None = None, categories_dir: Path | None = None):
        self.models_dir = Path(models_dir)
        self.folder = self.models_dir / DEEPBOORU_FOLDER
        self.blip_folder = self.models_dir / BLIP_FOLDER
        self.clip_folder = Path(clip_dir) if clip_dir else self.models_dir / CLIP_FOLDER
        self.user_categories = Path(categories_dir) if categories_dir else None
        self.options = options
        self.device = device or torch.device("cpu")
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.log = log
        self._lock = threading.Lock()
        self._loaded: tuple[tuple, deepbooru.DeepDanbooruNet] | None = None
        self._blip: tuple[tuple, torch.nn.Module] | None = None
        self._clip: tuple[tuple, torch.nn.Module] | None = None
        self._text_cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def _option(self, key: str, default):
        value = self.options.get(key, default) if self.options is not None else default
        return default if value is None else value

    # -- files and checks (before anything is queued) -------------------------------------------

    def deepbooru_file(self) -> Path | None:
        """A1111's file name in the folder, else the first other ``.pt`` there (A1111 takes any)."""
        return _named_or_any(self.folder, deepbooru.MODEL_FILE, ".pt")

    def blip_file(self) -> Path | None:
        """A1111's file name in models/BLIP, else the first other ``.pth`` there (A1111 takes any)."""
        return _named_or_any(self.blip_folder, blip.MODEL_FILE, ".pth")

    def clip_file(self) -> Path | None:
        return next((self.clip_folder / n for n in CLIP_FILES if (self.clip_folder / n).is_file()), None)

    def categories_folder(self) -> Path:
        """A1111's ``interrogate`` folder when it exists (A1111 downloads the lists only then), else
        the lists shipped with Easel."""
        if self.user_categories is not None and self.user_categories.is_dir():
            return self.user_categories
        return SHIPPED_CATEGORIES

    def category_types(self) -> tuple[str, ...]:
        """A1111's ``category_types()``: the lists' names (choices of interrogate_clip_skip_categories)."""
        return tuple(p.stem for p in clip_interrogate.category_files(self.categories_folder()))

    def missing_message(self) -> str:
        return (f"no DeepBooru model in {self.folder}: put {deepbooru.MODEL_FILE} there "
                f"(A1111 downloads it from {DEEPBOORU_URL}; Easel never downloads)")

    def blip_message(self) -> str:
        return (f"no BLIP model in {self.blip_folder}: put {blip.MODEL_FILE} there "
                f"(A1111 downloads it from {BLIP_URL}; Easel never downloads)")

    def clip_message(self) -> str:
        return (f"no CLIP model in {self.clip_folder}: put OpenAI's {clip_interrogate.MODEL_FILE} there (the file "
                "A1111's clip.load('ViT-L/14') downloads; --clip-models-path names another folder; "
                "Easel never downloads)")

    def check(self, model: str, field: str = "model") -> None:
        """RequestError naming ``field`` unless ``model`` can caption now."""
        if model not in MODELS:
            raise RequestError(field, f"unknown interrogation model '{model}'; known: {', '.join(MODELS)}")
        if model == "clip":
            missing = [m for f, m in ((self.blip_file, self.blip_message), (self.clip_file, self.clip_message))
                       if f() is None]
            if missing:
                raise RequestError(field, "Interrogate CLIP needs two model files: " + "; ".join(m() for m in missing))
        elif self.deepbooru_file() is None:
            raise RequestError(field, self.missing_message())

    def check_blip(self, field: str = "option") -> None:
        if self.blip_file() is None:
            raise RequestError(field, self.blip_message())

    # -- models (on the worker) -----------------------------------------------------------------

    def deepbooru_model(self) -> deepbooru.DeepDanbooruNet:
        """The DeepBooru network, built again only when the file changed."""
        path = self.deepbooru_file()
        if path is None:
            raise RequestError("model", self.missing_message())
        key = _file_key(path)
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        self._loaded = None
        try:
            net = deepbooru.load(path)
        except deepbooru.DeepbooruFileError as error:
            self.log(f"[easel] DeepBooru model not usable: {path}: {error}")
            raise RequestError("model", f"DeepBooru model in {self.folder} not usable: {error}") from None
        self._loaded = (key, net)
        return net

    def blip_model(self, field: str = "model") -> torch.nn.Module:
        path = self.blip_file()
        if path is None:
            raise RequestError(field, self.blip_message())
        if self._blip is None or self._blip[0] != _file_key(path):
            self._blip = None
            self._blip = (_file_key(path), self._build("BLIP", path, blip.load, field))
        return self._blip[1]

    def clip_model(self, field: str = "model") -> torch.nn.Module:
        path = self.clip_file()
        if path is None:
            raise RequestError(field, self.clip_message())
        if self._clip is None or self._clip[0] != _file_key(path):
            self._clip, self._text_cache = None, {}
            self._clip = (_file_key(path), self._build("CLIP", path, clip_interrogate.load, field))
        return self._clip[1]

    def _build(self, what: str, path: Path, loader: Callable[[Path], torch.nn.Module], field: str) -> torch.nn.Module:
        try:
            return loader(path)
        except blip.ModelFileError as error:
            self.log(f"[easel] {what} model not usable: {path}: {error}")
            raise RequestError(field, f"{what} model in {path.parent} not usable: {error}") from None

    def _on_device(self, model: torch.nn.Module, work: Callable[[], object]):
        """``work()`` with ``model`` on the interrogation device, then back to the CPU unless
        interrogate_keep_models_in_memory."""
        memory.move(model, self.device, self.dtype)
        try:
            return work()
        finally:
            if not self._option("interrogate_keep_models_in_memory", False):
                memory.move(model, "cpu", torch.float32)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    # -- DeepBooru --------------------------------------------------------------------------------

    def settings(self, include_ranks: bool | None = None) -> deepbooru.TagSettings:
        ranks = self._option("interrogate_return_ranks", False) if include_ranks is None else include_ranks
        return deepbooru.TagSettings(
            threshold=float(self._option("interrogate_deepbooru_score_threshold", 0.5)),
            sort_alpha=bool(self._option("deepbooru_sort_alpha", True)),
            use_spaces=bool(self._option("deepbooru_use_spaces", True)),
            escape=bool(self._option("deepbooru_escape", True)),
            filter_tags=str(self._option("deepbooru_filter_tags", "")),
            include_ranks=bool(ranks))

    def deepbooru_scores(self, image: Image.Image) -> dict[str, float]:
        """Each tag's probability for ``image``."""
        with self._lock:
            net = self.deepbooru_model()
            return self._on_device(net, lambda: deepbooru.scores(net, image, self.device, self.dtype))

    def tag(self, image: Image.Image, include_ranks: bool | None = None) -> str:
        """A1111's ``deepbooru.model.tag``: the DeepBooru caption under the current options."""
        return deepbooru.tag_string(self.deepbooru_scores(image), self.settings(include_ranks))

    # -- BLIP + CLIP --------------------------------------------------------------------------------

    def _blip_caption(self, image: Image.Image, field: str) -> str:
        model = self.blip_model(field)
        return self._on_device(model, lambda: blip.caption(
            model, image, num_beams=int(self._option("interrogate_clip_num_beams", 1)),
            min_length=int(self._option("interrogate_clip_min_length", 24)),
            max_length=int(self._option("interrogate_clip_max_length", 48)), device=self.device, dtype=self.dtype))

    def caption(self, image: Image.Image, field: str = "option") -> str:
        """A1111's ``generate_caption``: the BLIP caption alone."""
        with self._lock:
            return self._blip_caption(image.convert("RGB"), field)

    def categories(self) -> list[clip_interrogate.Category]:
        """A1111's ``categories()`` under the current skip list and line limit."""
        skip = self._option("interrogate_clip_skip_categories", [])
        return clip_interrogate.load_categories(self.categories_folder(), list(skip) if isinstance(skip, (list, tuple))
                                                else [], int(self._option("interrogate_clip_dict_limit", 1500)))

    def clip_matches(self, image: Image.Image) -> list[tuple[str, float]]:
        """Each category's best lines for ``image`` with their probabilities, in category order."""
        model = self.clip_model()

        def work():
            picture = clip_interrogate.image_features(model, image, self.device, self.dtype)
            matches = []
            for category in self.categories():
                key = (category.name, category.items)
                if key not in self._text_cache:
                    self._text_cache[key] = clip_interrogate.text_features(model, category.items, self.device).cpu()
                matches += clip_interrogate.rank(picture.cpu(), category.items, self._text_cache[key], category.topn)
            return matches

        return self._on_device(model, work)

    def interrogate_clip(self, image: Image.Image) -> str:
        """A1111's ``shared.interrogator.interrogate``: the BLIP caption, then the CLIP matches."""
        image = image.convert("RGB")
        with self._lock:
            self.blip_model(), self.clip_model()  # both files read before any work
            text = self._blip_caption(image, "model")
            matches = self.clip_matches(image)
        return clip_interrogate.caption_string(text, matches, bool(self._option("interrogate_return_ranks", False)))

    def interrogate(self, image: Image.Image, model: str) -> str:
        self.check(model)
        if model == "clip":
            return self.interrogate_clip(image)
        return self.tag(image.convert("RGB"))

    def loaded(self) -> deepbooru.DeepDanbooruNet | None:
        """The DeepBooru network if it is built, else None (nothing is read)."""
        return None if self._loaded is None else self._loaded[1]

    def unload(self) -> None:
        self._loaded = self._blip = self._clip = None
        self._text_cache = {}


def _named_or_any(folder: Path, name: str, suffix: str) -> Path | None:
    if not folder.is_dir():
        return None
    named = folder / name
    if named.is_file():
        return named
    others = sorted(p for p in folder.iterdir() if p.suffix.lower() == suffix and p.is_file())
    return others[0] if others else None


# -- the one instance the composition root installs -------------------------------------------

_current: Interrogators | None = None


def install(interrogators: Interrogators | None) -> Interrogators | None:
    global _current
    _current = interrogators
    return interrogators


def current() -> Interrogators:
    if _current is None:
        raise RequestError("model", "interrogation is not set up in this process")
    return _current


def submit(engine, image: Image.Image, model: str):
    """Queue an "interrogate" job on the worker (checked first); the future gives the caption."""
    interrogators = current()
    interrogators.check(model)
    return engine.queue.submit("interrogate", interrogators.interrogate, image, model)
