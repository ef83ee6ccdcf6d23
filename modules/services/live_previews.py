"""The running job's live preview, shared by the page (modules/ui/generation_tab.py) and the API's
progress routes (modules/api/routes_progress.py).

It follows A1111's `state.set_current_image`: with "live_previews_enable" on, a new preview is made
when `show_progress_every_n_steps` steps have passed since the last one (-1: none while sampling).
`show_progress_type` says how ("Live preview method"): "Full", the model's own VAE, decoded on the
job's thread when the step is due (services.jobs.StateObserver; under medvram/lowvram only with
"live_preview_allow_lowvram_full", else Approx NN as in A1111); "Approx cheap", a linear map of the latents
to RGB; "Approx NN", A1111's small net (`model.pt`, `vaeapprox-sdxl.pt`; modules/core/approx_nn.py);
or "TAESD", the tiny autoencoder (`taesd_decoder.pth`, `taesdxl_decoder.pth`; modules/core/taesd.py),
their files where A1111 keeps them, models/VAE-approx. None touches the model the worker runs (the
decoders are this service's own); a missing or unusable file is named once in the console and the
cheap preview is shown instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from PIL import Image

from modules.core import approx_nn, taesd
from modules.core.image_io import image_grid
from modules.core.preview import latent_preview

if TYPE_CHECKING:
    from .engine import Engine

# method -> (file for a family in the folder, load it, decode with it); their errors are ValueErrors
_DECODERS = {"TAESD": (taesd.decoder_path, taesd.load_decoder, taesd.decode),
             "Approx NN": (approx_nn.model_path, approx_nn.load, approx_nn.decode)}
_loaded: dict[Path, torch.nn.Module] = {}  # one decoder per file, shared by the page's tabs and the API
_loaded_lock = threading.Lock()
_reported: set[str] = set()  # the file problems already named in the console
_folder: Path | None = None  # models/VAE-approx (the composition root sets it)


def set_folder(folder: Path | None) -> None:
    global _folder
    _folder = Path(folder) if folder is not None else None


class LivePreviews:
    """The current job's preview image and its id, remade every N sampling steps."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._job: tuple | None = None
        self._step = 0
        self._id = -1
        self._image: Image.Image | None = None

    def _render(self, latent: torch.Tensor, model) -> Image.Image:
        """The preview of the batch's first picture, or of all of them as a grid (show_progress_grid,
        A1111's samples_to_image_grid)."""
        if latent.shape[0] > 1 and self.engine.options.get("show_progress_grid"):
            return image_grid([self._render_one(latent[i:i + 1], model) for i in range(latent.shape[0])],
                              batch_size=1)
        return self._render_one(latent[:1], model)

    def _render_one(self, latent: torch.Tensor, model) -> Image.Image:
        method = self.engine.options.get("show_progress_type")
        if method == "Full":  # not decoded on the job's thread (medvram/lowvram without the option): A1111's fallback
            method = "Approx NN"
        return preview_picture(method, model, latent)

    def current(self) -> tuple[int, Image.Image | None]:
        state, options = self.engine.state, self.engine.options
        with self._lock:
            job = (state.task_id, state.job_timestamp, state.job_no)
            if job != self._job:  # a new job or batch: A1111 starts counting steps again
                self._job, self._step, self._image, self._id = job, 0, None, -1
            every = options.get("show_progress_every_n_steps")
            if state.full_previews:  # "Full": the job's thread decodes them with the model's VAE
                if state.full_preview is not None and state.full_preview_step != self._id:
                    self._image, self._id = state.full_preview, state.full_preview_step
                return self._id, self._image
            latent, model = state.current_latent, self.engine.models.model
            if (options.get("live_previews_enable") and every is not None and every != -1 and latent is not None
                    and model is not None and state.sampling_step - self._step >= every
                    and state.id_live_preview != self._id):
                self._image = self._render(latent, model)
                self._step, self._id = state.sampling_step, state.id_live_preview
            return self._id, self._image


def _decoder(method: str, family: str):
    """(decode function, its model) for "TAESD" / "Approx NN"; the error names a missing file."""
    path_for, load, decode = _DECODERS[method]
    if _folder is None:
        raise ValueError(f"{method} previews need the models/VAE-approx folder")
    path = path_for(_folder, family)
    with _loaded_lock:
        if path not in _loaded:
            _loaded[path] = load(path)
        return decode, _loaded[path]


def preview_picture(method: str, model, latent: torch.Tensor) -> Image.Image:
    """The first picture of ``latent`` by a live preview method other than "Full" (TAESD and Approx NN
    from their files; Approx cheap, and the others when their file is missing, a linear map)."""
    if method in _DECODERS:
        try:
            decode, decoder = _decoder(method, model.spec.family)
            return decode(decoder, latent)
        except ValueError as error:  # TaesdError, ApproxNNError: a file missing or unusable
            if str(error) not in _reported:  # once per server: a poll comes every second
                _reported.add(str(error))
                print(f"[easel] live preview: {error}; showing Approx cheap instead")
    return latent_preview(latent, model.family.preview_factors)


def interrupt_decoder(method: str) -> Callable[[object, torch.Tensor], list[Image.Image]] | None:
    """A1111's live_preview_fast_interrupt: an interrupted job's pictures made by the live preview
    method instead of the VAE (None for "Full": the VAE all the same). A1111 returns the method's own
    size (a latent-sized picture for Approx cheap); here each is resized to the size the VAE gives, so
    the saved and returned pictures keep the job's size."""
    if method == "Full":
        return None

    def decode(model, latents: torch.Tensor) -> list[Image.Image]:
        factor = 2 ** (len(model.vae.config.block_out_channels) - 1)  # the VAE's downscale (8)
        size = (latents.shape[-1] * factor, latents.shape[-2] * factor)
        pictures = (preview_picture(method, model, latents[i:i + 1]).convert("RGB") for i in range(latents.shape[0]))
        return [p if p.size == size else p.resize(size, Image.Resampling.LANCZOS) for p in pictures]

    return decode

