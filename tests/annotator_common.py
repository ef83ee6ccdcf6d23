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


def random_state(shapes, seed: int = 0, scale: float = 1.0) -> dict:
    """Random weights for a state dict of these shapes ({key: shape}): weights scaled by their fan-in
    (times ``scale``), norms near identity, batch norms with varied statistics."""
    import numpy as np
    import torch

    g, state = torch.Generator().manual_seed(seed), {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # batch / group / layer norm scales
            state[key] = 1 + torch.randn(shape, generator=g) * 0.1
        else:
            state[key] = torch.randn(shape, generator=g) / float(np.prod(shape[1:])) ** 0.5 * scale
    return state


def shapes_of(net) -> dict:
    """{key: shape} of a module's state dict (build it on the meta device for big networks)."""
    return {key: value.shape for key, value in net.state_dict().items()}
