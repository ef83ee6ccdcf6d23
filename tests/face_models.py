"""Face restoration test material (issue 15): a drawn face OpenCV's frontal-face Haar cascade finds,
and random-weight GFPGAN / CodeFormer models built with the architectures' own classes, saved as
A1111's users have them in models/GFPGAN and models/Codeformer."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import save_file

from modules.core import upscaler_models

upscaler_models.spandrel_module()  # spandrel without torchvision
from spandrel.architectures.GFPGAN import GFPGAN  # noqa: E402
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer  # noqa: E402


def draw_face(size: int | tuple[int, int] = 256, center: tuple[int, int] | None = None, scale: float = 1.0,
              background: tuple[int, int, int] = (60, 90, 140)) -> Image.Image:
    """A flat cartoon face (skin oval, hair, white eyes with pupils, brows, nose, mouth), softened
    by a blur: enough light/dark structure for the Haar cascade to call it a face."""
    width, height = (size, size) if isinstance(size, int) else size
    cx, cy = center or (width // 2, height // 2)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)

    def oval(x0, y0, x1, y1, fill):
        draw.ellipse([cx + x0 * scale, cy + y0 * scale, cx + x1 * scale, cy + y1 * scale], fill=fill)

    oval(-50, -68, 50, 72, (224, 180, 150))  # head
    oval(-52, -80, 52, -30, (60, 40, 30))  # hair
    oval(-36, -22, -12, -10, (255, 255, 255))
    oval(12, -22, 36, -10, (255, 255, 255))
    oval(-29, -21, -19, -11, (40, 30, 30))
    oval(19, -21, 29, -11, (40, 30, 30))
    draw.rectangle([cx - 38 * scale, cy - 34 * scale, cx - 12 * scale, cy - 29 * scale], fill=(70, 50, 40))
    draw.rectangle([cx + 12 * scale, cy - 34 * scale, cx + 38 * scale, cy - 29 * scale], fill=(70, 50, 40))
    draw.polygon([(cx, cy - 8 * scale), (cx - 8 * scale, cy + 18 * scale), (cx + 8 * scale, cy + 18 * scale)],
                 fill=(200, 150, 125))
    oval(-22, 30, 22, 42, (150, 60, 60))  # mouth
    return image.filter(ImageFilter.GaussianBlur(2))


def tiny_gfpgan() -> GFPGAN:
    """64 px, 1/16 of the release's width, two style layers: the same code path as GFPGANv1.4."""
    return GFPGAN(out_size=64, num_style_feat=32, channel_multiplier=1, decoder_load_path=None, fix_decoder=False,
                  num_mlp=2, input_is_latent=True, different_w=True, narrow=0.0625, sft_half=True)


def small_codeformer() -> CodeFormer:
    """CodeFormer's VQ encoder/decoder is fixed by the class (512 px, ~67M weights); the transformer
    and codebook are the smallest the loader reads back."""
    return CodeFormer(dim_embd=32, n_head=8, n_layers=1, codebook_size=16, latent_size=256, connect_list=["32", "64"])


def _save(state: dict, path: Path, half: bool = False) -> None:
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)  # as the GFPGAN / CodeFormer releases are


def write_gfpgan(models_dir: Path, name: str = "GFPGANv1.4.pth", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path = models_dir / "GFPGAN" / name
    _save(tiny_gfpgan().state_dict(), path)
    return path


def write_codeformer(models_dir: Path, name: str = "codeformer-v0.1.0.safetensors", seed: int = 0) -> Path:
    """fp16 on disk (half the size: ~135 MB); loaded into the fp32 model."""
    torch.manual_seed(seed)
    path = models_dir / "Codeformer" / name
    _save(small_codeformer().state_dict(), path, half=True)
    return path
