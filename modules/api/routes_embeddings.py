"""GET /sdapi/v1/embeddings and POST /sdapi/v1/refresh-embeddings, in A1111's shapes.

`loaded` / `skipped` describe the embeddings for the current model (skipped: wrong width for
it, or a file that could not be read). Easel adds `reason` to each item, None for loaded ones.
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules.services.engine import Engine


class EmbeddingItem(BaseModel):
    step: Optional[int] = Field(None, title="Step", description="The number of steps this embedding was trained for, if known")
    sd_checkpoint: Optional[str] = Field(None, title="SD Checkpoint", description="Hash of the checkpoint it was trained on, if known")
    sd_checkpoint_name: Optional[str] = Field(None, title="SD Checkpoint Name", description="Name of the checkpoint it was trained on, if known")
    shape: int = Field(title="Shape", description="The length of each vector (SDXL: clip_l + clip_g)")
    vectors: int = Field(title="Vectors", description="The number of vectors (token slots) in the embedding")
    reason: Optional[str] = Field(None, title="Reason", description="Why it is skipped (Easel); None when loaded")


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(title="Loaded", description="Embeddings loaded for the current model")
    skipped: dict[str, EmbeddingItem] = Field(title="Skipped", description="Embeddings skipped for the current model")


def _item(embedding) -> dict:
    return {"step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
            "sd_checkpoint_name": embedding.sd_checkpoint_name, "shape": embedding.shape,
            "vectors": embedding.vectors, "reason": embedding.reason}


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings():
        db = engine.embeddings
        if db is None:
            return {"loaded": {}, "skipped": {}}
        return {"loaded": {name: _item(e) for name, e in db.loaded.items()},
                "skipped": {name: _item(e) for name, e in db.skipped.items()}}

    @r.post("/refresh-embeddings")
    def refresh_embeddings():
        """Re-read every embedding file for the loaded model, on the worker (after queued jobs)."""
        engine.refresh_embeddings(force=True)
        return {}  # every POST answers a JSON body
