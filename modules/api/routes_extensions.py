"""GET /sdapi/v1/extensions: the installed extensions, in A1111's shape.

A1111 lists only extensions that are git checkouts; Easel lists every installed extension (a
folder copied by hand has remote "" and no commit), so a client sees what the Extensions tab shows.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules import extensions
from modules.services.engine import Engine


class ExtensionItem(BaseModel):
    name: str = Field(title="Name", description="Extension name")
    remote: str = Field(title="Remote", description="Extension Repository URL")
    branch: str = Field(title="Branch", description="Extension Repository Branch")
    commit_hash: str = Field(title="Commit Hash", description="Extension Repository Commit Hash")
    version: str = Field(title="Version", description="Extension Version")
    commit_date: int = Field(title="Commit Date", description="Extension Repository Commit Date")
    enabled: bool = Field(title="Enabled", description="Flag specifying whether this extension is enabled")


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/extensions", response_model=list[ExtensionItem])
    def list_extensions():
        extensions.list_extensions(engine.options.data)  # a folder added or removed since the start shows up
        return [ext.to_dict() for ext in extensions.extensions]
