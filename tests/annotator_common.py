"""What the annotator tests share: the shared server's annotator folder and its /controlnet/detect."""

from __future__ import annotations

import requests

from modules.services import controlnets
from tests.pictures import b64


def annotators(server):
    """The shared server's annotator folder (the extension's annotator/downloads layout under it)."""
    return server.data_dir / "models" / controlnets.ANNOTATOR_FOLDER


def detect(server, module: str, image, timeout: float = 300, **extra) -> requests.Response:
    """POST /controlnet/detect with one picture (a PIL image) and the extension's other fields."""
    return requests.post(server.url + "/controlnet/detect", timeout=timeout, json={
        "controlnet_module": module, "controlnet_input_images": [b64(image)], **extra})
