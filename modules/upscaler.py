"""A1111's `modules.upscaler`: the `Upscaler` objects behind `shared.sd_upscalers[i].scaler`.

Every one forwards to Easel's upscaler registry (modules.core.upscaling) by name, so extensions
that call `upscaler.scaler.upscale(image, scale, upscaler.data_path)` (ADetailer, Ultimate SD
upscale, ...) get the same pictures as Easel's hires fix and Extras tab.
"""

from __future__ import annotations

from PIL import Image

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


class UpscalerData:
    """One entry of `shared.sd_upscalers` (A1111's fields); `scaler` upscales with it."""

    def __init__(self, name: str, path: str | None, upscaler: "Upscaler | None" = None, scale: float = 4,
                 model=None, sha256: str | None = None):
        self.name = name
        self.data_path = path
        self.local_data_path = path
        self.model_path = path
        self.model_url = None
        self.scaler = upscaler
        self.scale = scale
        self.model = model
        self.sha256 = sha256

    def __repr__(self) -> str:
        return f"<UpscalerData name={self.name} path={self.data_path} scale={self.scale}>"


class Upscaler:
    """An upscaler of Easel's registry, by name. `upscale(img, scale, selected_model=None)` gives a
    picture of `scale` times the size rounded down to a multiple of 8 (A1111)."""

    name: str | None = None
    model_path: str | None = None
    model_name: str | None = None
    model_url: str | None = None
    enable = True
    filter = None
    model = None
    user_path = None
    scalers: list
    tile = True

    def __init__(self, create_dirs: bool = False, name: str | None = None):
        if name is not None:
            self.name = name
        self.mod_pad_h = None
        self.tile_size = 0
        self.tile_pad = 0
        self.device = None
        self.scale = 1
        self.half = False
        self.scalers = []

    def _registry_name(self, selected_model=None) -> str:
        from modules.core import upscaling

        names = upscaling.names()
        for candidate in (self.name, getattr(selected_model, "name", None)):
            if candidate in names:
                return candidate
        if isinstance(selected_model, str):
            for upscaler in upscaling.image_upscalers():
                if upscaler.model_path == selected_model:
                    return upscaler.name
        raise ValueError(f"no upscaler named {self.name!r}")

    def upscale(self, img: Image.Image, scale, selected_model=None) -> Image.Image:
        from modules.core import upscaling

        self.scale = scale
        dest_w = int((img.width * scale) // 8 * 8)
        dest_h = int((img.height * scale) // 8 * 8)
        return upscaling.upscale_image(img, dest_w, dest_h, self._registry_name(selected_model))

    def do_upscale(self, img: Image.Image, selected_model=None) -> Image.Image:
        """One native step of the upscaler."""
        from modules.core import upscaling

        upscaler = upscaling.get(self._registry_name(selected_model))
        if upscaler.step is None:
            return img
        return upscaler.step(img, upscaler.scale)

    def load_model(self, path: str):
        """Easel loads and caches upscaler models itself."""

    def find_models(self, ext_filter=None) -> list:
        from modules import modelloader

        return modelloader.load_models(model_path=self.model_path, model_url=self.model_url,
                                       command_path=self.user_path, ext_filter=ext_filter)

    def update_status(self, prompt):
        print(f"\nextras: {prompt}", flush=True)


class UpscalerNone(Upscaler):
    name = "None"

    def do_upscale(self, img, selected_model=None):
        return img

    def upscale(self, img, scale, selected_model=None):
        return img


class UpscalerLanczos(Upscaler):
    name = "Lanczos"


class UpscalerNearest(Upscaler):
    name = "Nearest"


def upscale_with_model(model, img: Image.Image, *, tile_size: int, tile_overlap: int = 0, desc: str = "tiled upscale"):
    """A spandrel model (from modelloader.load_spandrel_model) run over `img` in tiles, with
    Easel's tiled runner on the server's device."""
    from modules import shared
    from modules.core import upscaler_models

    wrapped = upscaler_models.UpscalerModel(descriptor=model, architecture=getattr(model.architecture, "name", "?"),
                                            scale=int(model.scale))
    half = not getattr(shared.cmd_opts, "no_half", False)
    return upscaler_models.run(wrapped, img, shared.device, half=half, tile=int(tile_size), overlap=int(tile_overlap),
                               interrupted=lambda: bool(shared.state.interrupted))
