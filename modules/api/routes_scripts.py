"""GET /sdapi/v1/scripts and /sdapi/v1/script-info: the loaded scripts, as A1111 lists them.

`/scripts`: every script that has controls, by its lower-case title, per tab (A1111 1.6+ lists
the AlwaysVisible ones too). `/script-info`: each script's name, kind and arguments (label, value,
minimum, maximum, step, choices), which clients use to build `script_args` / `alwayson_scripts`.
Both build the scripts' argument layout on first use (off the event loop: plain `def` routes).
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules import script_host
from modules.services.engine import Engine


class ScriptsList(BaseModel):
    txt2img: Optional[list[str]] = Field(None, description="Titles of scripts (txt2img)")
    img2img: Optional[list[str]] = Field(None, description="Titles of scripts (img2img)")


class ScriptArg(BaseModel):
    label: Optional[str] = Field(None, description="Name of the argument in UI")
    value: Optional[Any] = Field(None, description="Default value of the argument")
    minimum: Optional[Any] = Field(None, description="Minimum allowed value for the argument in UI")
    maximum: Optional[Any] = Field(None, description="Maximum allowed value for the argument in UI")
    step: Optional[Any] = Field(None, description="Step for changing value of the argument in UI")
    choices: Optional[list[Any]] = Field(None, description="Possible values for the argument")


class ScriptInfo(BaseModel):
    name: Optional[str] = Field(None, description="Script name")
    is_alwayson: Optional[bool] = Field(None, description="Flag specifying whether this script is an alwayson script")
    is_img2img: Optional[bool] = Field(None, description="Flag specifying whether this script is an img2img script")
    args: list[ScriptArg] = Field(default_factory=list, description="List of script's arguments")


def _names(kind: str) -> list[str]:
    runner = script_host.runner_for(kind)
    runner.ensure_layout()
    return [s.name for s in runner.scripts if s.name is not None]


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/scripts", response_model=ScriptsList)
    def scripts_list():
        return {"txt2img": _names("txt2img"), "img2img": _names("img2img")}

    @r.get("/script-info", response_model=list[ScriptInfo])
    def script_info():
        return script_host.describe_scripts("txt2img") + script_host.describe_scripts("img2img")
