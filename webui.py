"""Composition root: builds the services from the flags, mounts the UI and the API.

`launch.py` sets up the environment and calls `main(cmd_opts)`; tests call
`build_engine` / `create_app` directly and serve the app on a free port.
"""

from __future__ import annotations

import os

from modules.timer import startup_timer  # first: its clock times the imports below

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.middleware.cors import CORSMiddleware  # noqa: E402

from modules import auth, cmd_args, extensions, localization, paths_internal, request_guard, restart  # noqa: E402
from modules.ui import tab_names  # noqa: E402
from modules.core import attention  # noqa: E402
from modules.core.devices import RunOptions, choose_policy, compile_backend_problem  # noqa: E402
from modules.core.memory import DeviceMemory, policy_from_flags  # noqa: E402
from modules.script_host import A1111ScriptHost  # noqa: E402
from modules.services.checkpoints import CheckpointRegistry, HashCache  # noqa: E402
from modules.services.companions import CompanionFiles  # noqa: E402
from modules.services.embeddings import EmbeddingDatabase  # noqa: E402
from modules.services.engine import Engine  # noqa: E402
from modules.services.jobs import JobState, WorkQueue  # noqa: E402
from modules.services.job_registry import JobRegistry  # noqa: E402
from modules.services.hypernetworks import HypernetworkRegistry  # noqa: E402
from modules.services.loras import LoraRegistry  # noqa: E402
from modules.services.model_cache import ModelCache  # noqa: E402
from modules.services.options import Options, Restrictions, default_definitions  # noqa: E402
from modules.services.styles import StyleDatabase  # noqa: E402
from modules.services import controlnets, face_restorers, interrogator, live_previews, upscalers  # noqa: E402
from modules.services.vaes import VaeRegistry  # noqa: E402

startup_timer.record("import torch, diffusers, gradio")


def checkpoint_dirs(opts: argparse.Namespace) -> list[Path]:
    models = Path(opts.models_dir) if opts.models_dir else Path(opts.data_dir) / "models"
    dirs = [Path(opts.ckpt_dir) if opts.ckpt_dir else models / "Stable-diffusion"]
    builtin = Path(paths_internal.builtin_sd_model_file).parent
    if builtin.resolve() not in [d.resolve() for d in dirs]:
        dirs.append(builtin)  # the built-in model is always available
    return dirs


def restrictions(opts: argparse.Namespace) -> Restrictions:
    """The settings the command line locks; the options service enforces them on every change."""
    return Restrictions.of(freeze_all=getattr(opts, "freeze_settings", False),
                           sections=cmd_args.comma_list(getattr(opts, "freeze_settings_in_sections", None)),
                           keys=cmd_args.comma_list(getattr(opts, "freeze_specific_settings", None)),
                           hide_dirs=getattr(opts, "hide_ui_dir_config", False))


def build_engine(opts: argparse.Namespace) -> Engine:
    data = Path(opts.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if opts.torch_compile:  # a wrong backend would fail every checkpoint load: refused at start instead
        problem = compile_backend_problem(opts.torch_compile_backend)
        if problem:
            raise SystemExit(f"[easel] {problem}")
    policy, notes = choose_policy(opts.use_cpu, opts.no_half, opts.no_half_vae, opts.precision, opts.xformers,
                                  int(opts.device_id) if opts.device_id else None,
                                  compile_backend=opts.torch_compile_backend if opts.torch_compile else None,
                                  compile_mode=opts.torch_compile_mode)
    for note in notes:
        print(f"[easel] {note}")
    print(f"[easel] {policy.describe()}")
    # A1111: --enable-console-prompts is the enable_console_prompts setting's default
    options = Options(Path(opts.ui_settings_file), restrictions=restrictions(opts), defs=default_definitions(
        enable_console_prompts=bool(getattr(opts, "enable_console_prompts", False))))
    show_hidden = lambda: bool(options.get("list_hidden_files", True))  # noqa: E731  (the model lists')
    extensions.list_extensions(options.data, opts)  # before any script loads: which extensions are active
    if getattr(opts, "localizations_dir", None):
        localization.localizations_dir = opts.localizations_dir
    localization.bind(options)  # the localization option's choices: the files on disk
    tab_names.bind(options)  # ui_tab_order / hidden_tabs: the page's real tab labels (extensions' tabs too)
    ckpt_file = Path(opts.ckpt).expanduser() if opts.ckpt else None  # A1111: any existing file, listed too
    registry = CheckpointRegistry(checkpoint_dirs(opts), HashCache(data / "cache.json"),
                                  default_name=opts.ckpt, builtin=Path(paths_internal.builtin_sd_model_file),
                                  extra_files=[ckpt_file] if ckpt_file and ckpt_file.is_file() else [],
                                  hashing=not getattr(opts, "no_hashing", False), show_hidden=show_hidden)
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
    loras = LoraRegistry([Path(opts.lora_dir)], show_hidden)  # A1111's default: models/Lora
    hypernetworks = HypernetworkRegistry([Path(opts.hypernetwork_dir)], show_hidden,  # default: models/hypernetworks
                                         print_extra=lambda: bool(options.get("print_hypernet_extra")))
    options.defs["sd_hypernetwork"].choices = lambda: ("None", *hypernetworks.items())  # the files there now
    for refresh in (registry.refresh, loras.refresh):  # a change of list_hidden_files shows at once
        options.onchange("list_hidden_files", refresh)
    models = Path(opts.models_dir) if opts.models_dir else data / "models"
    vaes = VaeRegistry([Path(opts.vae_dir) if opts.vae_dir else models / "VAE"], checkpoint_dirs(opts))
    state = JobState()
    if not getattr(opts, "disable_console_progressbars", True):
        from modules.services.console_progress import ConsoleProgress

        state.console = ConsoleProgress(total_bar=lambda: bool(options.get("multiple_tqdm", True)))
    # Flux's separate text encoders and VAE: Forge's models/text_encoder, ComfyUI's models/clip and text_encoders
    companions = CompanionFiles([models / "text_encoder", models / "text_encoders", models / "clip"],
                                [Path(opts.vae_dir) if opts.vae_dir else models / "VAE"])
    # with Ray workers the GPUs are the actors' (each loads its own copy there); the server's own copy of
    # the selected checkpoint (the page's model-dependent lists, embeddings) stays in RAM
    model_policy = choose_policy(["all"], opts.no_half, opts.no_half_vae, opts.precision, False)[0] \
        if _ray_mode(opts) and policy.device.type != "cpu" else policy
    cache = ModelCache(model_policy, on_loaded=_model_loaded, companions=companions,
                       memory=_device_memory(opts, model_policy),
                       run_options=RunOptions(nan_check=not getattr(opts, "disable_nan_check", False),
                                              upcast_sampling=bool(getattr(opts, "upcast_sampling", False)),
                                              attention_flags=attention.flagged(opts),
                                              attention_disabled=bool(getattr(opts, "disable_opt_split_attention",
                                                                              False)),
                                              sub_quadratic=attention.sub_quadratic_settings(opts)))
    upscalers.install(upscalers.ModelUpscalers(upscalers.folders_for(opts, models), options, policy.device,
                                               half=policy.unet_dtype != torch.float32,
                                               interrupted=lambda: state.interrupted))
    controlnets.install(controlnets.ControlNets(controlnets.folders_for(opts, models), policy.device, policy.unet_dtype,
                                                annotator_dir=controlnets.annotator_dir_for(opts, models)))
    face_restorers.install(face_restorers.FaceRestorers(face_restorers.folders_for(opts, models), options,
                                                        policy.device, interrupted=lambda: state.interrupted))
    interrogators = interrogator.install(interrogator.Interrogators(
        models, options, policy.device, half=policy.unet_dtype != torch.float32,
        clip_dir=Path(opts.clip_models_path) if getattr(opts, "clip_models_path", None) else None,
        categories_dir=data / interrogator.CATEGORIES_FOLDER))
    options.defs["interrogate_clip_skip_categories"].choices = interrogators.category_types  # the lists there now
    live_previews.set_folder(models / "VAE-approx")  # TAESD decoders for the "TAESD" live previews
    cache.taesd.folder = models / "VAE-approx"  # and TAESD for sd_vae_encode_method / sd_vae_decode_method
    queue = make_queue(opts, state)
    engine = Engine(options, registry, cache, state, queue, data,
                    styles=styles, embeddings=embeddings, loras=loras, vaes=vaes, vae_path=opts.vae_path,
                    hypernetworks=hypernetworks,
                    script_host=A1111ScriptHost())  # A1111's script flow: the services never import it
    if hasattr(queue, "attach"):  # the Ray dispatcher reads the options and checkpoints of this engine
        queue.attach(engine)
    return engine


def make_queue(opts: argparse.Namespace, state: JobState) -> WorkQueue:
    """The generation queue: the single worker thread, or with --workers ray / --ray-address a
    dispatcher over Ray actors (modules.workers; Ray is imported only then)."""
    jobs = JobRegistry(keep_s=getattr(opts, "job_retention", 3600))
    if _ray_mode(opts):
        from modules.workers.ray_queue import RayWorkQueue

        return RayWorkQueue(state, jobs, opts)
    return WorkQueue(state, jobs)


def _ray_mode(opts: argparse.Namespace) -> bool:
    return getattr(opts, "workers", "local") == "ray" or bool(getattr(opts, "ray_address", None))


def _device_memory(opts: argparse.Namespace, policy) -> DeviceMemory:
    """The owner of device memory: --lowvram / --medvram / --medvram-sdxl, else the automatic choice
    from the free VRAM and each model's size (no budget on the CPU: everything resident)."""
    memory = DeviceMemory.for_device(policy.device, policy_from_flags(
        getattr(opts, "lowvram", False), getattr(opts, "medvram", False), getattr(opts, "medvram_sdxl", False)))
    if memory.budget_bytes is not None:
        print(f"[easel] device memory: {memory.budget_bytes / 2**30:.1f} GiB free, policy {memory.policy}")
    return memory


def _model_loaded(model, info) -> None:
    """Every checkpoint load: A1111's on_model_loaded callbacks (scripting façade, imported late)."""
    from modules import processing, script_callbacks

    processing.describe_model(model, info)
    if "torch_compile" in model.extra:  # --torch-compile
        print(f"[easel] {info.name}: UNet {model.extra['torch_compile']}")
    script_callbacks.model_loaded_callback(model)


def start_scripts(engine: Engine, opts: argparse.Namespace) -> None:
    """A1111's slots filled (modules.shared over the engine), the repository's and the active
    extensions' scripts loaded (a broken one is reported and skipped), and the options extensions
    add in on_ui_settings defined, so the Settings tab and /sdapi/v1/options both know them."""
    from modules import gradio_compat, script_callbacks, scripts, shared

    gradio_compat.apply()  # before any extension imports gradio: its Gradio 3 calls work
    shared.bind(engine, opts)
    # A1111's shared.mem_mon: polls the device's free memory during each page job (memmon_poll_rate); the
    # page shows its figures under the pictures (modules.ui.memory_note)
    engine.memory_monitor = shared.mem_mon
    scripts.load_scripts()
    script_callbacks.ui_settings_callback()


class _RoutesBeforeUi(list):
    """The app's route list once the UI is mounted: the UI's mount matches every path under it (all
    of them at "/"), so a route added later (an extension's, in on_app_started or after) is put just
    before it instead of after it, where nothing would reach it."""

    def __init__(self, routes, ui_mount):
        super().__init__(routes)
        self.ui_mount = ui_mount

    def append(self, route):
        if self.ui_mount in self:
            self.insert(self.index(self.ui_mount), route)
        else:
            super().append(route)


def show_warnings(options: Options) -> None:
    """A1111's show_warnings: Python's UserWarnings on the console, or none of them (set once, as the
    app is built)."""
    warnings.filterwarnings("default" if options.get("show_warnings") else "ignore", category=UserWarning)


def create_app(opts: argparse.Namespace, engine: Engine) -> FastAPI:
    show_warnings(engine.options)
    app = FastAPI(title="Easel", docs_url="/docs", redoc_url=None)
    api_users, ui_users = auth.credentials_for(opts)
    if opts.api or opts.nowebui:
        from modules.api.api import mount

        mount(app, engine, cmd_opts=opts)
    policy = auth.AuthPolicy(api_users=api_users, ui_users=ui_users)
    if not opts.nowebui:
        import gradio as gr

        from modules.ui import ui_config
        from modules.ui.app import create_ui

        from modules import script_callbacks, shared

        script_callbacks.before_ui_callback()
        demo = create_ui(engine, allow_folders=not opts.hide_ui_dir_config)
        ui_config.apply(demo, opts.ui_config_file)  # A1111's ui-config.json: defaults and limits
        shared.demo = demo
        demo.queue(default_concurrency_limit=None)
        allowed = [str(engine.data_path / "outputs"), *opts.gradio_allowed_path]
        app = gr.mount_gradio_app(app, demo, path=opts.subpath or "/", auth=ui_users or None, allowed_paths=allowed,
                                  theme=demo.theme)  # gradio_theme (modules.ui.app.page_theme; Gradio 6 takes it here)
        shared.gradio_theme = demo.theme
        ui_mount = app.router.routes[-1]
        app.router.routes = _RoutesBeforeUi(app.router.routes, ui_mount)
        policy.ui_path = opts.subpath or "/"
        policy.session_user = auth.gradio_session_lookup(ui_mount.app)
        from modules import file_route  # A1111's /file= (outputs, extension folders, temp files only)

        file_route.mount(app, engine, opts.subpath, list(opts.gradio_allowed_path))
        from modules.page_head import HeadScripts  # extensions' JS in <head>, before DOMContentLoaded

        app.add_middleware(HeadScripts, ui_path=opts.subpath or "/")
    # one gate in front of everything: API, UI, file routes, docs, and routes added later
    app.add_middleware(auth.AuthMiddleware, owner=app, policy=policy)
    guard = request_guard.GuardPolicy.from_flags(opts)
    if guard.cors.configured:  # A1111's CORS for browser-based clients on other origins (Gradio's then defers)
        app.add_middleware(CORSMiddleware, allow_origins=list(guard.cors.origins),
                           allow_origin_regex=guard.cors.regex.pattern if guard.cors.regex else None,
                           allow_methods=["*"], allow_credentials=True, allow_headers=["*"])
    app.add_middleware(request_guard.RequestGuard, policy=guard)  # outermost: Host, Origin, body checks first
    from modules import script_callbacks

    script_callbacks.app_started_callback(None if opts.nowebui else demo, app)  # extensions add routes here
    return app


def tls_files(opts: argparse.Namespace) -> tuple[str, str] | None:
    """(keyfile, certfile) for HTTPS when both are given (else plain HTTP, as A1111); a missing file
    stops the start with its name."""
    key, cert = getattr(opts, "tls_keyfile", None), getattr(opts, "tls_certfile", None)
    if not (key and cert):
        return None
    for flag, path in (("--tls-keyfile", key), ("--tls-certfile", cert)):
        if not os.path.isfile(path):
            raise SystemExit(f"{flag} {path}: no such file")
    return key, cert


def local_url(opts: argparse.Namespace, https: bool) -> str:
    """The address printed as Gradio prints it (the host as served, 0.0.0.0 under --listen), with
    the --subpath the UI is served under."""
    host = opts.server_name or "127.0.0.1"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{opts.port}{'' if opts.nowebui else (opts.subpath or '')}"


def launch_browser(opts: argparse.Namespace, choice: str | None, environ=os.environ) -> bool:
    """Whether to open the UI in the system's browser at start, as A1111 decides it: --autolaunch or
    the auto_launch_browser option "Remote" always, "Local" only when the server is not reachable
    from other computers (--listen, --server-name), "Disable" never. Never after a restart, without
    the UI, or under CI or pytest (a test server must not open a browser)."""
    if opts.nowebui or environ.get("SD_WEBUI_RESTARTING") == "1" or environ.get("CI") or \
            environ.get("PYTEST_CURRENT_TEST"):
        return False
    if opts.autolaunch or choice == "Remote":
        return True
    return choice == "Local" and not (opts.listen or opts.server_name)


def announce(opts: argparse.Namespace, url: str, open_browser: bool = False) -> None:
    """What launchers wait for, as A1111 prints it once the port accepts connections; then the
    browser, when `launch_browser` said so."""
    print(f"Running on local URL:  {url}", flush=True)
    startup_timer.record("start server")
    print(f"Startup time: {startup_timer.summary()}.", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url.replace("0.0.0.0", "127.0.0.1"))


def serve(app: FastAPI, opts: argparse.Namespace, open_browser: bool = False) -> None:
    """Serve until stopped (Ctrl+C, or POST /sdapi/v1/server-stop with --api-server-stop);
    `announce` runs once the socket listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                announce(opts, url, open_browser)

    tls = tls_files(opts)
    url = local_url(opts, https=tls is not None)
    config = uvicorn.Config(app, host=opts.server_name or "127.0.0.1", port=opts.port,
                            timeout_keep_alive=opts.timeout_keep_alive,
                            timeout_graceful_shutdown=5,  # a stop is not held up by a client that keeps a socket open
                            log_level=(opts.log_level or "warning").lower(),
                            ssl_keyfile=tls[0] if tls else None, ssl_certfile=tls[1] if tls else None)
    server = Server(config)
    restart.allow_stop(lambda: setattr(server, "should_exit", True))
    server.run()


def main(opts: argparse.Namespace | None = None) -> None:
    """Serve with `opts` (launch.py parsed them and printed their notes), else the command line's."""
    if opts is None:
        opts = cmd_args.parse_args()
        for note in cmd_args.compatibility_notes(opts):
            print(f"[easel] {note}")
    engine = build_engine(opts)
    startup_timer.record("build services")
    start_scripts(engine, opts)
    startup_timer.record("load scripts")
    if not opts.skip_load_model_at_start:
        engine.load_default_in_background()
    app = create_app(opts, engine)
    startup_timer.record("create ui" if not opts.nowebui else "create api")
    restart.allow_restart()  # this process owns the server: the Extensions tab may restart it
    serve(app, opts, launch_browser(opts, engine.options.get("auto_launch_browser")))
    print("Server stopped.", flush=True)


if __name__ == "__main__":
    main()
