"""A1111's ``modules.interrogate``: ``shared.interrogator`` (an ``InterrogateModels``) gives Interrogate
CLIP to extensions: ``interrogate(pil_image)`` (the BLIP caption, then the CLIP matches of the category
lists), ``generate_caption(pil_image)`` (the BLIP caption alone), ``categories()``; ``category_types()``
names the lists. Thin over ``modules.services.interrogator``, which loads the models on first use and
puts them back on the CPU after each (interrogate_keep_models_in_memory); a missing model file is a
RequestError naming the file and the folder."""

from __future__ import annotations

from collections import namedtuple

from PIL import Image

from modules.services import interrogator as _service

Category = namedtuple("Category", ["name", "topn", "items"])  # A1111's
blip_image_eval_size = 384  # the release's; the model's own size is read from its weights
clip_model_name = "ViT-L/14"


def category_types() -> list[str]:
    return list(_service.current().category_types())


class InterrogateModels:
    """A1111's object; ``load``/``unload``/``send_*_to_ram`` are kept for callers (the service moves
    the models itself)."""

    def __init__(self, content_dir: str | None = None):
        self.content_dir = content_dir  # A1111's argument; the service knows its folders

    def categories(self) -> list[Category]:
        return [Category(c.name, c.topn, list(c.items)) for c in _service.current().categories()]

    def load(self) -> None:
        service = _service.current()
        service.check("clip")
        service.blip_model(), service.clip_model()

    def send_clip_to_ram(self) -> None:
        """Nothing to do: the service moves the models back after each use."""

    def send_blip_to_ram(self) -> None:
        """Nothing to do: the service moves the models back after each use."""

    def unload(self) -> None:
        """Nothing to do: the service moves the models back after each use."""

    def generate_caption(self, pil_image: Image.Image) -> str:
        return _service.current().caption(pil_image, "model")

    def interrogate(self, pil_image: Image.Image) -> str:
        return _service.current().interrogate(pil_image, "clip")


interrogator = InterrogateModels("interrogate")
