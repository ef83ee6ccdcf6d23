"""Composition root: builds the services from the flags, mounts the UI and the API.

`launch.py` sets up the environment and calls `main(cmd_opts)`; tests call
`build_engine` / `create_app` directly and serve the app on a free port.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import base64  # noqa: E402
import binascii  # noqa: E402
import secrets  # noqa: E402
from pathlib import Path  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from modules import cmd_args, paths_internal  # noqa: E402
from modules.core.devices import choose_policy  # noqa: E402
from modules.services.checkpoints import CheckpointRegistry, HashCache  # noqa: E402
from modules.services.embeddings import EmbeddingDatabase  # noqa: E402
from modules.services.engine import Engine  # noqa: E402
from modules.services.jobs import JobState, WorkQueue  # noqa: E402
from modules.services.loras import LoraRegistry  # noqa: E402
from modules.services.model_cache import ModelCache  # noqa: E402
from modules.services.options import Options  # noqa: E402
from modules.services.styles import StyleDatabase  # noqa: E402


def checkpoint_dirs(opts: argparse.Namespace) -> list[Path]:
    models = Path(opts.models_dir) if opts.models_dir else Path(opts.data_dir) / "models"
    dirs = [Path(opts.ckpt_dir) if opts.ckpt_dir else models / "Stable-diffusion"]
    builtin = Path(paths_internal.builtin_sd_model_file).parent
    if builtin.resolve() not in [d.resolve() for d in dirs]:
        dirs.append(builtin)  # the built-in model is always available
    return dirs


def build_engine(opts: argparse.Namespace) -> Engine:
    data = Path(opts.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    policy, notes = choose_policy(opts.use_cpu, opts.no_half, opts.no_half_vae, opts.precision, opts.xformers,
                                  int(opts.device_id) if opts.device_id else None)
    for note in notes + cmd_args.compatibility_notes(opts):
        print(f"[easel] {note}")
    print(f"[easel] {policy.describe()}")
    options = Options(Path(opts.ui_settings_file))
    registry = CheckpointRegistry(checkpoint_dirs(opts), HashCache(data / "cache.json"),
                                  default_name=opts.ckpt, builtin=Path(paths_internal.builtin_sd_model_file))
    if opts.ckpt:
        info = registry.find(opts.ckpt)
        if info is None:
            raise SystemExit(f"--ckpt {opts.ckpt}: no such checkpoint")
        options.data["sd_model_checkpoint"] = info.name
    for key in ("samples", "txt2img_samples", "img2img_samples", "grids", "txt2img_grids", "img2img_grids"):
        value = getattr(opts, f"outdir_{key}", None)
        if value:
            options.data[f"outdir_{key}"] = value
    styles = StyleDatabase(opts.styles_file or [data / "styles.csv"])  # A1111's default: DATA_DIR/styles.csv
    embeddings = EmbeddingDatabase([Path(opts.embeddings_dir)])  # A1111's default: DATA_DIR/embeddings
    loras = LoraRegistry([Path(opts.lora_dir)])  # A1111's default: models/Lora
    state = JobState()
    return Engine(options, registry, ModelCache(policy), state, WorkQueue(state), data, styles=styles,
                  embeddings=embeddings, loras=loras)


def _credentials(text: str | None, path: str | None = None) -> list[tuple[str, str]]:
    creds = cmd_args.parse_credentials(text) if text else []
    if path:
        creds += cmd_args.read_credentials_file(path)
    return creds


def _basic_auth_middleware(app: FastAPI, creds: list[tuple[str, str]]) -> None:
    """HTTP Basic on every API route (the full auth issue extends this to all routes)."""

    def allowed(header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return any(secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in creds)

    @app.middleware("http")
    async def check(request: Request, call_next):
        if request.url.path.startswith(("/sdapi/", "/internal/")) and not allowed(request.headers.get("authorization")):
            return JSONResponse({"detail": "Not authenticated"}, status_code=401,
                                headers={"WWW-Authenticate": "Basic"})
        return await call_next(request)


def create_app(opts: argparse.Namespace, engine: Engine) -> FastAPI:
    app = FastAPI(title="Easel", docs_url="/docs", redoc_url=None)
    ui_creds = _credentials(opts.gradio_auth, opts.gradio_auth_path)
    if opts.api or opts.nowebui:
        from modules.api.api import mount

        api_creds = _credentials(opts.api_auth) or ui_creds
        if api_creds:
            _basic_auth_middleware(app, api_creds)
        mount(app, engine)
    if not opts.nowebui:
        import gradio as gr

        from modules.ui.app import create_ui

        demo = create_ui(engine, allow_folders=not opts.hide_ui_dir_config)
        demo.queue(default_concurrency_limit=None)
        allowed = [str(engine.data_path / "outputs"), *opts.gradio_allowed_path]
        app = gr.mount_gradio_app(app, demo, path=opts.subpath or "/", auth=ui_creds or None, allowed_paths=allowed)
    return app


def main(opts: argparse.Namespace | None = None) -> None:
    import uvicorn

    opts = opts or cmd_args.parse_args()
    engine = build_engine(opts)
    if not opts.skip_load_model_at_start:
        engine.load_default_in_background()
    app = create_app(opts, engine)
    host = opts.server_name or "127.0.0.1"
    print(f"[easel] serving on http://{host}:{opts.port}" + (" (API only)" if opts.nowebui else ""))
    uvicorn.run(app, host=host, port=opts.port, timeout_keep_alive=opts.timeout_keep_alive,
                log_level=(opts.log_level or "warning").lower())


if __name__ == "__main__":
    main()
