"""Companion files: the text encoders and VAE a checkpoint leaves out (Flux's transformer-only files,
as Black Forest Labs ship them), found in the folders Forge and ComfyUI users keep them in.

A file is recognised by its tensor names (a safetensors header read, nothing loaded): CLIP-L by its
``text_model.`` embeddings 768 wide (CLIP-G: wider), T5 by its encoder blocks, a Flux or SD3 VAE
by its 16-channel decoder input. Where several fit, a name that says the kind wins (``clip_l``,
``t5xxl``, ``ae`` for Flux's VAE, ``sd3`` for SD3's: the two look alike), then fp16 over fp8, then
the name's order.
"""

from __future__ import annotations

from pathlib import Path

from modules.core.checkpoint_file import CheckpointError, read_safetensors_header

KINDS = ("clip_l", "clip_g", "t5xxl", "flux_vae", "sd3_vae")
_CLIP_MARKER = "text_model.embeddings.token_embedding.weight"
_T5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
_VAE_MARKER = "decoder.conv_in.weight"


def _kind(shapes: dict) -> str | None:
    for key, shape in shapes.items():
        if key.endswith(_T5_MARKER):
            return "t5xxl"
        if key.endswith(_CLIP_MARKER):
            return "clip_l" if shape[1] <= 768 else "clip_g"
        if key.endswith(_VAE_MARKER) and shape[1] == 16:
            return "vae16"
    return None


class CompanionFiles:
    """``companions(kind) -> Path | None`` for the model loader; ``where[kind]`` names the folders."""

    def __init__(self, text_encoder_dirs: list[Path], vae_dirs: list[Path]):
        self.folders = {"clip_l": text_encoder_dirs, "clip_g": text_encoder_dirs, "t5xxl": text_encoder_dirs,
                        "flux_vae": vae_dirs, "sd3_vae": vae_dirs}
        self.where = {kind: " or ".join(str(d) for d in dirs) for kind, dirs in self.folders.items()}

    def candidates(self, kind: str) -> list[Path]:
        found = []
        for folder in self.folders.get(kind, []):
            for path in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
                try:
                    header = read_safetensors_header(path)
                except (CheckpointError, OSError):
                    continue  # a broken file is skipped, never fatal
                what = _kind({k: tuple(v["shape"]) for k, v in header.tensors.items()})
                if what == kind or (what == "vae16" and kind.endswith("_vae")):  # Flux's and SD3's look alike
                    found.append(path)
        return found

    def __call__(self, kind: str) -> Path | None:
        hints = {"clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5", "flux_vae": "ae", "sd3_vae": "sd3"}
        ranked = sorted(self.candidates(kind), key=lambda p: (hints[kind] not in p.stem.lower(),
                                                              "fp8" in p.stem.lower(), p.name))
        return ranked[0] if ranked else None
