"""A1111's `/file=<path>` route: the files a page and its extensions link to, and nothing else.

A1111 (Gradio 3) serves `file=` for its outputs, the extensions' folders (their JS, CSS, data files:
tagcomplete reads `file=<extension>/tags/*.csv` and `file=tmp/tagAutocompletePath.txt`), the
temporary files the UI made, and `--gradio-allowed-path`. The same roots here:

- the outputs: `<data>/outputs`, every `outdir_*` option's folder, `log/images` (the Save button);
- the extension folders (`extensions/`, `extensions-builtin/`);
- temporary files: Gradio's upload/cache folder, the `temp_dir` option, and A1111's `tmp/` folder
  beside the install and in the data folder (extensions write their page data there);
- A1111's `html/` folder of the install (card images), and `--gradio-allowed-path` folders;
- one file of the install itself: `notification.mp3`, the sound the page plays when a job ends
  (A1111's notification_audio); nothing else of the install's own folder.

A path is resolved as the OS would open it (symlinks followed, `..` folded); relative paths are
read against the data folder, then the install, as A1111 reads them against its working folder.
A file outside every root, or under a hidden folder or name (`.git`, `.env`), is refused (403); a
missing file or a folder is 404. Logins are the UI's (modules.auth treats `/file=` as a UI route).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from modules import paths_internal


def _engine_option_dirs(engine) -> list[str]:
    data = {} if engine is None else dict(engine.options.data)
    folders = [value for key, value in data.items() if key.startswith("outdir_") and isinstance(value, str) and value]
    if isinstance(data.get("temp_dir"), str) and data["temp_dir"]:
        folders.append(data["temp_dir"])
    return folders


def allowed_roots(engine=None, extra: list[str] | None = None) -> list[Path]:
    """The folders `/file=` serves from, resolved (the list is read per request: options change)."""
    from modules import extensions

    data = Path(engine.data_path if engine is not None else paths_internal.data_path)
    install = Path(paths_internal.script_path)
    try:
        from gradio.utils import get_upload_folder

        gradio_temp = [get_upload_folder()]
    except Exception:  # noqa: BLE001 - an older or newer Gradio: its env variable or default
        gradio_temp = [os.environ.get("GRADIO_TEMP_DIR") or os.path.join(os.path.realpath("/tmp"), "gradio")]
    candidates = [data / "outputs", data / "log" / "images", extensions.extensions_dir, extensions.extensions_builtin_dir,
                  *gradio_temp, data / "tmp", install / "tmp", install / "html", *_engine_option_dirs(engine),
                  *(extra or [])]
    roots = []
    for folder in candidates:
        path = Path(folder)
        if not path.is_absolute():
            path = data / path
        resolved = Path(os.path.realpath(path))
        if resolved not in roots:
            roots.append(resolved)
    return roots


NOTIFICATION_SOUND = "notification.mp3"


def allowed_files() -> list[Path]:
    """Single files `/file=` serves outside its roots: the install's notification.mp3 (its folder
    resolved, the file itself not: a link to elsewhere is not it)."""
    return [Path(os.path.realpath(paths_internal.script_path)) / NOTIFICATION_SOUND]


def _inside(path: Path, root: Path) -> str | None:
    """The part of `path` below `root` (posix), or None when it is not below it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def resolve(requested: str, roots: list[Path], data_path: Path,
            files: list[Path] | None = None) -> tuple[Path | None, int]:
    """(the file to send, 200) or (None, 403/404) for the path written after `file=`; `files`:
    single files allowed besides the roots (`allowed_files`)."""
    if not requested or "\x00" in requested:
        return None, 404
    candidates = [Path(requested)] if os.path.isabs(requested) else [data_path / requested,
                                                                       Path(paths_internal.script_path) / requested]
    missing = False
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if files and real in files:
            if real.is_file():
                return real, 200
            missing = True
            continue
        below = next((rest for rest in (_inside(real, root) for root in roots) if rest is not None), None)
        if below is None or any(part.startswith(".") for part in below.split("/") if part):
            continue  # outside every root (after symlinks and `..`), or hidden: never served
        if real.is_file():
            return real, 200
        missing = True
    return None, (404 if missing else 403)


def make_endpoint(engine, extra_allowed: list[str] | None = None):
    """The route's handler (GET and HEAD) for `engine`'s folders."""

    async def file_route(request: Request) -> Response:
        requested = request.path_params.get("path", "")
        roots = allowed_roots(engine, extra_allowed)
        data = Path(engine.data_path if engine is not None else paths_internal.data_path)
        path, status = resolve(requested, roots, data, allowed_files())
        if path is None:
            return PlainTextResponse("File not allowed" if status == 403 else "File not found", status_code=status)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return file_route


def mount(app, engine, ui_path: str | None, extra_allowed: list[str] | None = None) -> None:
    """Add `<ui_path>/file={path}` to the app (before the UI's catch-all mount)."""
    prefix = "" if not ui_path or ui_path.strip("/") == "" else "/" + ui_path.strip("/")
    app.add_route(prefix + "/file={path:path}", make_endpoint(engine, extra_allowed), methods=["GET", "HEAD"],
                  include_in_schema=False)
