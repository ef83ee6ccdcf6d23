"""A1111's ``modules.deepbooru``: ``model.tag(pil_image)`` gives the DeepBooru caption under the
current options (extensions and the "Caption" Extras step call it). Thin over
``modules.services.interrogator``, whose model file is ``models/torch_deepdanbooru/
model-resnet_custom_v3.pt``; a missing file is a RequestError naming the file and the folder."""

from __future__ import annotations

from PIL import Image

from modules.core.deepbooru import RE_SPECIAL as re_special  # noqa: F401  (A1111's name)
from modules.services import interrogator


class DeepDanbooru:
    """A1111's object: ``load``/``start``/``stop`` are kept for callers; the service loads the model
    on first use and puts it back on the CPU after each (interrogate_keep_models_in_memory)."""

    @property
    def model(self):
        """The network once loaded, else None (A1111's attribute)."""
        return interrogator.current().loaded()

    def load(self) -> None:
        interrogator.current().deepbooru_model()

    def start(self) -> None:
        self.load()

    def stop(self) -> None:
        """Nothing to do: the service moves the model back after each caption."""

    def tag(self, pil_image: Image.Image) -> str:
        return interrogator.current().tag(pil_image.convert("RGB"))

    def tag_multi(self, pil_image: Image.Image, force_disable_ranks: bool = False) -> str:
        return interrogator.current().tag(pil_image.convert("RGB"), False if force_disable_ranks else None)


model = DeepDanbooru()
