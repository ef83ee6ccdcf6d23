"""Easel's command-line flags, under A1111's names.

Standard library only: launch.py parses the command line before the venv exists.

An unknown flag is an error (usage on stderr, exit status 2). Extensions add their own flags with a
`preload(parser)` function in their preload.py, as in A1111: `parse_args` runs those of the
active extensions before parsing (or the `extra_preloads` it is given).
"""

import argparse
import os
import re
import sys
from typing import Callable, Iterable, Sequence

from modules import cmd_args_compat
from modules.paths_internal import data_path

Preload = Callable[[argparse.ArgumentParser], None]

MEMORY_MODES_NOTE = "memory policy (default: chosen from the free VRAM and the model's size)"
COMPAT_NOTE = "accepted for compatibility with A1111"


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, not {port}")
    return port


def parse_credentials(text: str) -> list[tuple[str, str]]:
    """'user:pass[,user2:pass2]' -> [(user, pass), ...].

    The password is everything after the first ':' (so it may contain ':', but not ','). Blank
    entries and surrounding quotes are ignored. Errors name the entry by position and never
    repeat the text, so a password cannot end up in a log.
    """
    credentials = []
    entries = [entry.strip() for entry in text.strip().strip('"').replace("\n", ",").split(",")]
    for number, entry in enumerate((e for e in entries if e), start=1):
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"credential #{number} is not in the form user:password")
        credentials.append((user.strip(), password))
    if not credentials:
        raise ValueError("no credentials given; expected user:password[,user2:password2]")
    return credentials


def read_credentials_file(path: str) -> list[tuple[str, str]]:
    """Credentials from a file: user:password entries separated by commas or new lines."""
    with open(path, encoding="utf8") as file:
        return parse_credentials(file.read())


def comma_list(text: str | None) -> list[str]:
    """A comma-separated flag value (--freeze-settings-in-sections, ...) as its stripped, non-empty items."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def credentials_argument(text: str) -> str:
    """argparse type for --gradio-auth / --api-auth: validates, keeps the raw text (as A1111)."""
    try:
        parse_credentials(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _add_paths(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("paths")
    group.add_argument("--data-dir", type=str, default=data_path, metavar="DIR",
                       help="base folder of user data: settings, outputs, extensions, embeddings (default: the repository)")
    group.add_argument("--models-dir", type=str, default=None, metavar="DIR",
                       help="base folder of model files (default: DATA_DIR/models)")
    group.add_argument("--ckpt", type=str, default=None, metavar="FILE",
                       help="checkpoint to add to the list and load at start")
    group.add_argument("--ckpt-dir", type=str, default=None, metavar="DIR",
                       help="folder of Stable Diffusion checkpoints (default: MODELS_DIR/Stable-diffusion)")
    group.add_argument("--vae-dir", type=str, default=None, metavar="DIR",
                       help="folder of VAE files (default: MODELS_DIR/VAE)")
    group.add_argument("--vae-path", type=str, default=None, metavar="FILE",
                       help="VAE to use; overrides the setting")
    group.add_argument("--lora-dir", type=str, default=None, metavar="DIR",
                       help="folder of LoRA files (default: MODELS_DIR/Lora)")
    for flag, folder in (("--esrgan-models-path", "ESRGAN"), ("--realesrgan-models-path", "RealESRGAN"),
                         ("--swinir-models-path", "SwinIR"), ("--dat-models-path", "DAT")):
        group.add_argument(flag, type=str, default=None, metavar="DIR",
                           help=f"folder of {folder} upscaler models (default: MODELS_DIR/{folder})")
    for flag, name, folder in (("--gfpgan-models-path", "GFPGAN", "GFPGAN"), ("--codeformer-models-path", "CodeFormer", "Codeformer")):
        group.add_argument(flag, type=str, default=None, metavar="DIR",
                           help=f"folder of {name} face restoration models (default: MODELS_DIR/{folder})")
    group.add_argument("--clip-models-path", type=str, default=None, metavar="DIR",
                       help="folder of OpenAI's CLIP ViT-L-14.pt for Interrogate CLIP (default: MODELS_DIR/CLIP)")
    group.add_argument("--controlnet-dir", type=str, default=None, metavar="DIR",
                       help="another folder of ControlNet models (besides MODELS_DIR/ControlNet)")
    group.add_argument("--controlnet-annotator-models-path", type=str, default=None, metavar="DIR",
                       help="folder of ControlNet preprocessors' annotator files, <folder>/<file> as "
                            "sd-webui-controlnet's annotator/downloads (default: MODELS_DIR/ControlNetPreprocessor)")
    group.add_argument("--embeddings-dir", type=str, default=None, metavar="DIR",
                       help="folder of textual inversion embeddings (default: DATA_DIR/embeddings)")
    group.add_argument("--hypernetwork-dir", type=str, default=None, metavar="DIR",
                       help="folder of hypernetworks (default: MODELS_DIR/hypernetworks)")
    group.add_argument("--styles-file", type=str, action="append", default=[], metavar="FILE",
                       help="styles file (may be given more than once; default: DATA_DIR/styles.csv)")
    group.add_argument("--ui-settings-file", type=str, default=None, metavar="FILE",
                       help="settings file (default: DATA_DIR/config.json)")
    group.add_argument("--localizations-dir", type=str, default=None, metavar="DIR",
                       help="folder of UI translations (default: the repository's localizations/)")
    group.add_argument("--ui-config-file", type=str, default=None, metavar="FILE",
                       help="A1111's ui-config.json: the UI's default values and slider limits by "
                            "'tab/label/field' (default: DATA_DIR/ui-config.json; missing keys are added)")
    for kind in ("samples", "txt2img-samples", "img2img-samples", "extras-samples",
                 "grids", "txt2img-grids", "img2img-grids", "save", "init-images"):
        group.add_argument(f"--outdir-{kind}", type=str, default=None, metavar="DIR",
                           help=f"output folder for {kind.replace('-', ' ')}; overrides the setting")


def _add_device(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device and precision")
    group.add_argument("--use-cpu", type=str.lower, nargs="+", default=[], metavar="MODULE",
                       help="run these modules on the CPU; 'all' for everything")
    group.add_argument("--device-id", type=str, default=None, metavar="ID",
                       help="index of the CUDA device to use (cuda:ID)")
    group.add_argument("--precision", type=str, choices=["full", "half", "autocast"], default="autocast",
                       help="compute precision: full (fp32), half (fp16 on CUDA, bf16 on the CPU) or autocast "
                            "(default: fp16 on CUDA; on the CPU bf16 where it is native, else fp32)")
    group.add_argument("--no-half", action="store_true", help="keep model weights in fp32")
    group.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32")
    group.add_argument("--upcast-sampling", action="store_true", help="with half-precision weights, run the UNet's attention in fp32 (sampling is fp32 already)")
    group.add_argument("--xformers", action="store_true", help="use xformers attention if it is installed")
    group.add_argument("--torch-compile", action="store_true",
                       help="compile the UNet with torch.compile when a checkpoint loads (for CUDA; the first "
                            "picture of each size waits for the compile; not under --medvram / --lowvram)")
    group.add_argument("--torch-compile-backend", type=str, default="inductor", metavar="BACKEND",
                       help="torch.compile's backend for --torch-compile (default inductor)")
    group.add_argument("--torch-compile-mode", type=str, default="default",
                       choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                       help="inductor's mode for --torch-compile")
    group.add_argument("--force-enable-xformers", action="store_true", help="use xformers even if the check fails")
    group.add_argument("--opt-sdp-attention", action="store_true",
                       help="use PyTorch's scaled dot product attention")
    group.add_argument("--opt-sdp-no-mem-attention", action="store_true",
                       help="scaled dot product attention without the memory-efficient kernel (deterministic)")
    group.add_argument("--opt-split-attention", action="store_true",
                       help="Doggettx's attention: queries in slices, as many as the free memory asks for")
    group.add_argument("--opt-split-attention-invokeai", action="store_true",
                       help="InvokeAI's attention: heads or queries in slices of a bounded size")
    group.add_argument("--opt-split-attention-v1", action="store_true", help="the original v1 split: two heads at a time")
    group.add_argument("--opt-sub-quad-attention", action="store_true",
                       help="sub-quadratic attention: queries and keys in chunks (least memory)")
    group.add_argument("--sub-quad-q-chunk-size", type=int, default=1024, metavar="TOKENS",
                       help="sub-quadratic attention's query chunk size")
    group.add_argument("--sub-quad-kv-chunk-size", type=int, default=None, metavar="TOKENS",
                       help="sub-quadratic attention's key/value chunk size (default: the square root of the "
                            "keys' count, at least 512)")
    group.add_argument("--sub-quad-chunk-threshold", type=int, default=None, metavar="PERCENT",
                       help="sub-quadratic attention: no chunking when the attention fits in this share of the "
                            "free memory")
    group.add_argument("--disable-opt-split-attention", action="store_true",
                       help="plain attention (wins over the other attention flags and the setting)")
    group.add_argument("--opt-channelslast", action="store_true", help="channels-last memory format for the UNet")
    group.add_argument("--disable-nan-check", action="store_true", help="do not check the UNet's and the VAE's outputs for NaNs (and no fp32 VAE retry)")
    group.add_argument("--lowvram", action="store_true",
                       help=f"{MEMORY_MODES_NOTE}: keep only the running part of the model in VRAM (slowest)")
    group.add_argument("--medvram", action="store_true",
                       help=f"{MEMORY_MODES_NOTE}: keep one of text encoder, UNet and VAE in VRAM at a time")
    group.add_argument("--medvram-sdxl", action="store_true", help="--medvram for SDXL models only")
    group.add_argument("--lowram", action="store_true", help="load checkpoints straight to VRAM")


def regex_argument(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from exc
    return text


def _add_server(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--listen", action="store_true", help="serve on 0.0.0.0, reachable from the LAN")
    group.add_argument("--server-name", type=str, default=None, metavar="HOST", help="address to serve on")
    group.add_argument("--port", type=port_number, default=None, metavar="N",
                       help="port to serve on (default: 7860; 7861 with --nowebui, as in A1111)")
    group.add_argument("--share", action="store_true",
                       help="not available: Easel runs offline and opens no public tunnel (use --listen)")
    group.add_argument("--autolaunch", action="store_true", help="open the UI in the system's browser at start")
    group.add_argument("--theme", type=str, choices=["light", "dark"], default=None, help="UI theme")
    group.add_argument("--subpath", type=str, default=None, metavar="PATH",
                       help="serve the UI under this path, as behind a reverse proxy ('sd' or '/sd')")
    group.add_argument("--tls-keyfile", type=str, default=None, metavar="FILE",
                       help="serve HTTPS with this private key (PEM); needs --tls-certfile")
    group.add_argument("--tls-certfile", type=str, default=None, metavar="FILE",
                       help="serve HTTPS with this certificate (PEM); needs --tls-keyfile")
    group.add_argument("--gradio-auth", type=credentials_argument, default=None, metavar="USER:PASS[,USER2:PASS2]",
                       help="require a login for the UI")
    group.add_argument("--gradio-auth-path", type=str, default=None, metavar="FILE",
                       help="file of UI logins: user:password entries, separated by commas or new lines")
    group.add_argument("--gradio-allowed-path", type=str, action="append", default=[], metavar="DIR",
                       help="extra folder the UI may serve files from")
    group.add_argument("--gradio-debug", action="store_true", help="Gradio debug mode")
    group.add_argument("--api", action="store_true", help="serve the HTTP API (/sdapi/v1/...) as well")
    group.add_argument("--nowebui", action="store_true", help="serve only the HTTP API, without the UI")
    group.add_argument("--api-auth", type=credentials_argument, default=None, metavar="USER:PASS[,USER2:PASS2]",
                       help="require HTTP basic authentication for the API")
    group.add_argument("--api-auth-path", type=str, default=None, metavar="FILE",
                       help="file of API logins: user:password entries, separated by commas or new lines")
    group.add_argument("--api-log", action="store_true", help="log every API request")
    group.add_argument("--api-server-stop", action="store_true",
                       help="serve POST /sdapi/v1/server-stop, /server-restart and /server-kill")
    group.add_argument("--cors-allow-origins", type=str, default=None, metavar="ORIGINS",
                       help="comma-separated origins allowed by CORS")
    group.add_argument("--cors-allow-origins-regex", type=regex_argument, default=None, metavar="REGEX",
                       help="regular expression of origins allowed by CORS")
    group.add_argument("--allowed-hosts", type=str, action="append", default=[], metavar="NAMES",
                       help="more Host names to answer besides IP addresses, localhost and (with --listen) this "
                            "machine's names: comma-separated, '*.example.com' for a domain, '*' for any")
    group.add_argument("--max-request-size", type=float, default=64, metavar="MIB",
                       help="largest request body accepted, in MiB (default: 64; 0: no limit)")
    group.add_argument("--timeout-keep-alive", type=int, default=30, metavar="SECONDS",
                       help="HTTP keep-alive timeout (default: 30)")
    group.add_argument("--log-level", "--loglevel", dest="log_level", type=str.upper, default=None,
                       choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], help="log level")


def _add_ui_and_extensions(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("UI, models and extensions")
    group.add_argument("--enable-insecure-extension-access", action="store_true",
                       help="allow installing and enabling extensions from the UI even when the server is "
                            "reachable from other computers (--listen, --share, --server-name)")
    group.add_argument("--disable-all-extensions", action="store_true", help="load no extensions at all")
    group.add_argument("--disable-extra-extensions", action="store_true",
                       help="load only the built-in extensions")
    group.add_argument("--allow-code", action="store_true", help="allow running custom code from the UI")
    group.add_argument("--freeze-settings", action="store_true",
                       help="disable editing of all settings globally (Settings tab, /sdapi/v1/options, "
                            "override_settings, extensions)")
    group.add_argument("--freeze-settings-in-sections", type=str, default=None, metavar="SECTIONS",
                       help='disable editing of the settings in these sections: a comma-separated list of '
                            'A1111 section ids or section names, such as "saving-images,img2img"')
    group.add_argument("--freeze-specific-settings", type=str, default=None, metavar="SETTINGS",
                       help='disable editing of these settings: a comma-separated list of setting names, '
                            'such as "samples_save,samples_format" (the names in config.json)')
    group.add_argument("--hide-ui-dir-config", action="store_true",
                       help="hide folder settings in the UI, and refuse changing the output folders "
                            "(through the API and override_settings too)")
    group.add_argument("--max-batch-count", type=int, default=16, metavar="N", help="largest batch count in the UI")
    group.add_argument("--skip-load-model-at-start", action="store_true", help="load no checkpoint until one is needed")
    group.add_argument("--ui-debug-mode", action="store_true", help="same as --skip-load-model-at-start")
    group.add_argument("--disable-console-progressbars", action="store_true",
                       help="print no progress bars for generations on the console")
    group.add_argument("--no-hashing", action="store_true", help="do not compute sha256 hashes of checkpoints (no \"Model hash\" in the infotext)")
    group.add_argument("--disable-safe-unpickle", action="store_true",
                       help=f"{COMPAT_NOTE}; Easel always loads pickles with torch.load(weights_only=True)")
    group.add_argument("--no-download-sd-model", action="store_true",
                       help=f"{COMPAT_NOTE}; Easel never downloads models")
    group.add_argument("--do-not-download-clip", action="store_true",
                       help=f"{COMPAT_NOTE}; Easel never downloads models")


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("jobs and workers")
    group.add_argument("--job-retention", type=float, default=3600, metavar="SECONDS",
                       help="keep a finished job's result for the job API (/easel/v1/jobs) this long (default: 3600)")
    group.add_argument("--workers", type=str, choices=["local", "ray"], default="local",
                       help="where generations run: 'local', one worker thread (default), or 'ray', one Ray "
                            "actor per device on a local Ray cluster (installs requirements-ray.txt)")
    group.add_argument("--ray-address", type=str, default=None, metavar="ADDRESS",
                       help="run the workers on this Ray cluster (implies --workers ray): its head's address, "
                            "'HOST:PORT' (the --port of `ray start --head`, default 6379) or Ray Client's "
                            "'ray://HOST:10001'")
    group.add_argument("--ray-workers", type=int, default=None, metavar="N",
                       help="how many Ray workers (default: one per GPU, else 1)")


def _add_launch(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("set-up (launch.py)")
    group.add_argument("--skip-prepare-environment", action="store_true",
                       help="skip every set-up step (venv, installs); start straight away")
    group.add_argument("--skip-install", action="store_true", help="do not install or check requirements")
    group.add_argument("--reinstall-torch", action="store_true",
                       help="reinstall torch (with $TORCH_COMMAND if set)")
    group.add_argument("--skip-python-version-check", action="store_true", help="run on any Python version")
    group.add_argument("--skip-torch-cuda-test", action="store_true",
                       help=f"{COMPAT_NOTE}; Easel runs on the CPU when there is no GPU")
    group.add_argument("--exit", action="store_true", help="set up, then stop without starting the UI")
    group.add_argument("--test-server", action="store_true",
                       help="start as A1111's tests expect: with the API and without NaN checks")
    group.add_argument("--run-tests", nargs=argparse.REMAINDER, default=None, metavar="PYTEST_ARG",
                       help="set up (with requirements-test.txt) and run pytest on tests/; "
                            "every argument after this one goes to pytest")


def build_parser(extra_preloads: Iterable[Preload] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        usage="%(prog)s [options] [--run-tests [PYTEST_ARG ...]]   (%(prog)s --help lists the options)",
        description="Easel, a Stable Diffusion web UI. Sets up its venv, then serves the UI at http://127.0.0.1:7860.",
        allow_abbrev=False,  # a mistyped flag is an error, not a guess
    )
    _add_paths(parser)
    _add_device(parser)
    _add_server(parser)
    _add_ui_and_extensions(parser)
    _add_jobs(parser)
    _add_launch(parser)
    cmd_args_compat.add_compat_flags(parser)
    for preload in extra_preloads:
        preload(parser)
    return parser


def extension_preloads(argv: Sequence[str] | None = None) -> list[Preload]:
    """The `preload(parser)` functions of the extensions that this command line would load:
    which ones is read from the settings file (--ui-settings-file) and the
    --disable-all-extensions / --disable-extra-extensions flags in argv."""
    from modules import extensions

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--run-tests" in argv:
        argv = argv[: argv.index("--run-tests")]
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--data-dir", type=str, default=data_path)
    pre.add_argument("--ui-settings-file", type=str, default=None)
    pre.add_argument("--disable-all-extensions", action="store_true")
    pre.add_argument("--disable-extra-extensions", action="store_true")
    known, _unknown = pre.parse_known_args(argv)
    known.ui_settings_file = known.ui_settings_file or os.path.join(known.data_dir, "config.json")
    return extensions.preload_functions(extensions.read_settings_file(known.ui_settings_file), known)


def parse_args(argv: Sequence[str] | None = None,
               extra_preloads: Iterable[Preload] | None = None) -> argparse.Namespace:
    """Parse argv (default: sys.argv[1:]); exits with status 2 and the usage on a bad flag.
    `extra_preloads` None: the active extensions' preload.py functions add their flags first."""
    if extra_preloads is None:
        extra_preloads = extension_preloads(argv)
    parser = build_parser(extra_preloads)
    opts = parser.parse_args(argv)
    if opts.listen and opts.server_name is None:
        opts.server_name = "0.0.0.0"
    return fill_path_defaults(apply_implications(opts))


def defaults() -> argparse.Namespace:
    """Every flag at its default (what a process that parsed no command line sees)."""
    opts, _unknown = build_parser(()).parse_known_args([])
    return fill_path_defaults(apply_implications(opts))


def normalized_subpath(text: str | None) -> str | None:
    """--subpath as a route prefix: A1111 takes 'sd' (it adds the '/'), Easel '/sd' too; '/' is none."""
    path = "/" + (text or "").strip().strip("/")
    return None if path == "/" else path


def apply_implications(opts: argparse.Namespace) -> argparse.Namespace:
    """What one flag means for others, as in A1111: the API-only server's port, --test-server's
    set-up (A1111's configure_for_tests: the API on, no NaN check), --ui-debug-mode."""
    opts.loglevel = opts.log_level  # A1111's attribute name
    if opts.port is None:
        opts.port = 7861 if opts.nowebui else 7860
    opts.subpath = normalized_subpath(opts.subpath)
    if opts.test_server:
        opts.api = True
        opts.disable_nan_check = True
    if opts.ui_debug_mode:
        opts.skip_load_model_at_start = True
    return opts


def fill_path_defaults(opts: argparse.Namespace) -> argparse.Namespace:
    """The folders and files not given on the command line, under the --data-dir / --models-dir
    given there (so `parse_args(["--data-dir", D])` keeps everything in D, not only sys.argv's)."""
    data = os.path.abspath(os.path.expanduser(opts.data_dir))
    models = os.path.abspath(os.path.expanduser(opts.models_dir)) if opts.models_dir else os.path.join(data, "models")
    for name, base, leaf in (("ui_settings_file", data, "config.json"), ("ui_config_file", data, "ui-config.json"),
                             ("embeddings_dir", data, "embeddings"), ("lora_dir", models, "Lora"),
                             ("hypernetwork_dir", models, "hypernetworks")):
        if getattr(opts, name, None) is None:
            setattr(opts, name, os.path.join(base, leaf))
    return opts


def compatibility_notes(opts: argparse.Namespace) -> list[str]:
    """One line for each flag given that Easel accepts but honours differently from A1111 (the
    table in modules/cmd_args_compat.py), and for a half-given TLS set-up."""
    parser = build_parser(())
    baseline, _unknown = parser.parse_known_args(["--data-dir", opts.data_dir]
                                                 + (["--models-dir", opts.models_dir] if opts.models_dir else []))
    notes = cmd_args_compat.given_notes(parser, opts, fill_path_defaults(apply_implications(baseline)))
    if bool(getattr(opts, "tls_keyfile", None)) != bool(getattr(opts, "tls_certfile", None)):
        notes.append("--tls-keyfile/--tls-certfile: TLS needs both files; serving plain HTTP.")
    return notes


def markdown_table() -> str:
    """The flags table of README.md (python -m modules.cmd_args --markdown [--write README.md])."""
    return cmd_args_compat.markdown_table(build_parser(()))


SECRET_FLAGS = ("--gradio-auth", "--api-auth")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """argv with the values of the credential flags replaced, for printing."""
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append("<hidden>")
            hide_next = False
        elif arg in SECRET_FLAGS:
            redacted.append(arg)
            hide_next = True
        elif arg.startswith(tuple(flag + "=" for flag in SECRET_FLAGS)):
            redacted.append(arg.split("=", 1)[0] + "=<hidden>")
        else:
            redacted.append(arg)
    return redacted


README_BEGIN = "<!-- flags table: generated by `python -m modules.cmd_args --markdown --write README.md` -->"
README_END = "<!-- end of flags table -->"


def readme_with_table(readme: str) -> str:
    """README.md's text with the generated flags table between its markers."""
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    return readme[:start] + "\n" + markdown_table() + readme[end:]


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m modules.cmd_args")
    cli.add_argument("--markdown", action="store_true", required=True, help="print the flags table (Markdown)")
    cli.add_argument("--write", metavar="README", help="put the table between the markers in this file instead")
    command = cli.parse_args()
    if command.write:
        with open(command.write, encoding="utf8") as file:
            text = readme_with_table(file.read())
        with open(command.write, "w", encoding="utf8") as file:
            file.write(text)
    else:
        sys.stdout.write(markdown_table())
