"""GET /sdapi/v1/prompt-styles: the styles of the styles.csv files, in A1111's shape."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules.services.engine import Engine


class PromptStyleItem(BaseModel):
    name: str = Field(title="Name")
    prompt: Optional[str] = Field(title="Prompt")
    negative_prompt: Optional[str] = Field(title="Negative Prompt")


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles():
        if engine.styles is None:
            return []
        engine.styles.reload_if_changed()  # a styles.csv edited by hand shows without a restart
        return [style.as_dict() for style in engine.styles.items()]
