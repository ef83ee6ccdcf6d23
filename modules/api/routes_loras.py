"""GET /sdapi/v1/loras and POST /sdapi/v1/refresh-loras, in A1111's shapes (its Lora extension's
`create_lora_json`: name, alias, path, metadata)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules.services.engine import Engine


class LoraItem(BaseModel):
    name: str = Field(description="The file's name without extension: what <lora:name> uses")
    alias: str = Field(description="The training output name (metadata ss_output_name), else the name; "
                                   "also accepted in <lora:...>")
    path: str = Field(description="The file's path")
    metadata: dict[str, Any] = Field(description="The safetensors metadata (kohya's ss_* training keys)")


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/loras", response_model=list[LoraItem])
    def loras():
        if engine.loras is None:
            return []
        return [{"name": i.name, "alias": i.alias, "path": str(i.path), "metadata": i.metadata}
                for i in engine.loras.items()]

    @r.post("/refresh-loras")
    def refresh_loras():
        """Look at the LoRA folder again (files added, changed or removed)."""
        if engine.loras is not None:
            engine.loras.refresh()
        return {}  # every POST answers a JSON body
