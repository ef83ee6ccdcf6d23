"""A1111 1.10's command line as Easel takes it.

`COMPAT_FLAGS` holds the A1111 flags that Easel accepts without honouring them, each with the one
line printed at start when it is given (`NOTES` has that line for flags defined with Easel's own
help, in modules/cmd_args.py). `A1111_FLAGS` names every flag of A1111 1.10 (its modules/cmd_args.py
and the preload.py files of its built-in extensions), so that tests and the README table can tell
which of Easel's flags A1111 has too.

Standard library only: launch.py parses the command line before the venv exists.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

IGNORED = "ignored"
GFPGAN_FOLDER = "ignored: Easel reads GFPGAN models from --gfpgan-models-path (default MODELS_DIR/GFPGAN)"
OTHER_UPSCALERS = "ignored: Easel reads model upscalers from the ESRGAN, RealESRGAN, SwinIR and DAT folders"
ATTENTION = "ignored: xformers' own kernel choice is left to xformers"


@dataclass(frozen=True)
class CompatFlag:
    flag: str
    kind: str  # "switch", "text", "int" or "json": the value it takes in A1111
    default: object
    note: str  # what Easel does with it: printed once at start when it is given


COMPAT_FLAGS: tuple[CompatFlag, ...] = (
    CompatFlag("-f", "switch", False, "ignored: Easel runs as root without it"),
    CompatFlag("--update-all-extensions", "switch", False,
               "ignored: Easel updates no extension at start (use the Extensions tab)"),
    CompatFlag("--reinstall-xformers", "switch", False, "ignored: Easel installs no xformers; install it yourself"),
    CompatFlag("--update-check", "switch", False, "ignored: Easel runs offline and checks for no updates"),
    CompatFlag("--log-startup", "switch", False, "ignored: the start-up time summary is always printed"),
    CompatFlag("--dump-sysinfo", "switch", False, "not available: Easel writes no sysinfo file; it starts as usual"),
    CompatFlag("--config", "text", None, "ignored: Easel finds the model's configuration from its weights"),
    CompatFlag("--gfpgan-dir", "text", None, GFPGAN_FOLDER),
    CompatFlag("--gfpgan-model", "text", None, GFPGAN_FOLDER),
    CompatFlag("--no-progressbar-hiding", "switch", False, "ignored: the UI always shows its progress bar"),
    CompatFlag("--textual-inversion-templates-dir", "text", None, "ignored: Easel does not train embeddings"),
    CompatFlag("--always-batch-cond-uncond", "switch", False, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--unload-gfpgan", "switch", False, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--ngrok", "text", None, "not available: Easel runs offline and opens no tunnel (use --listen)"),
    CompatFlag("--ngrok-region", "text", "", "does nothing (in A1111 1.10 too)"),
    CompatFlag("--ngrok-options", "json", {}, "not available: Easel runs offline and opens no tunnel"),
    CompatFlag("--bsrgan-models-path", "text", None, OTHER_UPSCALERS),
    CompatFlag("--scunet-models-path", "text", None, OTHER_UPSCALERS),
    CompatFlag("--ldsr-models-path", "text", None, OTHER_UPSCALERS),
    CompatFlag("--lyco-dir-backcompat", "text", None, "ignored: put LyCORIS files in the --lora-dir folder"),
    CompatFlag("--xformers-flash-attention", "switch", False, ATTENTION),
    CompatFlag("--deepdanbooru", "switch", False, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--use-ipex", "switch", False, "not available: Easel runs on CUDA, MPS or the CPU"),
    CompatFlag("--disable-model-loading-ram-optimization", "switch", False,
               "ignored: Easel loads weights straight from the file"),
    CompatFlag("--show-negative-prompt", "switch", False, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--gradio-img2img-tool", "text", None, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--gradio-inpaint-tool", "text", None, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--use-textbox-seed", "switch", False, "ignored: the seed box always takes any seed"),
    CompatFlag("--enable-console-prompts", "switch", False,
               "the default of the enable_console_prompts setting (as A1111; a value saved in Settings wins)"),
    CompatFlag("--administrator", "switch", False, "does nothing"),
    CompatFlag("--disable-tls-verify", "switch", False,
               "ignored: Easel makes no HTTPS requests to itself, so nothing verifies its certificate"),
    CompatFlag("--gradio-queue", "switch", True, "does nothing (in A1111 1.10 too)"),
    CompatFlag("--no-gradio-queue", "switch", False, "ignored: the UI always uses Gradio's queue"),
    CompatFlag("--skip-version-check", "switch", False, "ignored: Easel checks no torch or xformers versions"),
    CompatFlag("--add-stop-route", "switch", False, "does nothing (in A1111 1.10 too); see --api-server-stop"),
    CompatFlag("--unix-filenames-sanitization", "switch", False, "not implemented yet: file names keep Easel's rules"),
    CompatFlag("--filenames-max-length", "int", 128, "not implemented yet: file names keep Easel's limit"),
    CompatFlag("--no-prompt-history", "switch", False, "ignored: Easel writes no params.txt"),
)

# the line printed at start for a flag that Easel defines with its own help (modules/cmd_args.py)
NOTES: dict[str, str] = {
    "--share": "sharing through a public tunnel is unavailable (Easel runs offline); use --listen to serve on your LAN",
    "--disable-safe-unpickle": "ignored: Easel always loads pickled files with torch.load(weights_only=True)",
    "--no-download-sd-model": "ignored: Easel never downloads models",
    "--do-not-download-clip": "ignored: Easel never downloads models",
    "--opt-channelslast": "ignored: Easel keeps the UNet in the default memory format",
    "--skip-torch-cuda-test": "not needed: Easel runs on the CPU when there is no GPU",
    "--force-enable-xformers": "not implemented yet: use --xformers",
    "--lowram": "not implemented yet: checkpoints load to RAM first",
    "--theme": "not implemented yet: the UI follows the browser's theme",
    "--allow-code": "ignored: Easel has no custom code script",
    "--max-batch-count": "not implemented yet: the UI's batch count slider keeps its limit",
    "--api-log": "not implemented yet: API requests are not logged",
    "--gradio-debug": "ignored: Gradio runs inside Easel's server",
}

# every flag of A1111 1.10: its modules/cmd_args.py, then its built-in extensions' preload.py
A1111_FLAGS: frozenset[str] = frozenset({
    "-f", "--update-all-extensions", "--skip-python-version-check", "--skip-torch-cuda-test",
    "--reinstall-xformers", "--reinstall-torch", "--update-check", "--test-server", "--log-startup",
    "--skip-prepare-environment", "--skip-install", "--dump-sysinfo", "--loglevel", "--do-not-download-clip",
    "--data-dir", "--models-dir", "--config", "--ckpt", "--ckpt-dir", "--vae-dir", "--gfpgan-dir",
    "--gfpgan-model", "--no-half", "--no-half-vae", "--no-progressbar-hiding", "--max-batch-count",
    "--embeddings-dir", "--textual-inversion-templates-dir", "--hypernetwork-dir", "--localizations-dir",
    "--allow-code", "--medvram", "--medvram-sdxl", "--lowvram", "--lowram", "--always-batch-cond-uncond",
    "--unload-gfpgan", "--precision", "--upcast-sampling", "--share", "--ngrok", "--ngrok-region",
    "--ngrok-options", "--enable-insecure-extension-access", "--codeformer-models-path",
    "--gfpgan-models-path", "--esrgan-models-path", "--bsrgan-models-path", "--realesrgan-models-path",
    "--dat-models-path", "--clip-models-path", "--xformers", "--force-enable-xformers",
    "--xformers-flash-attention", "--deepdanbooru", "--opt-split-attention", "--opt-sub-quad-attention",
    "--sub-quad-q-chunk-size", "--sub-quad-kv-chunk-size", "--sub-quad-chunk-threshold",
    "--opt-split-attention-invokeai", "--opt-split-attention-v1", "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention", "--disable-opt-split-attention", "--disable-nan-check", "--use-cpu",
    "--use-ipex", "--disable-model-loading-ram-optimization", "--listen", "--port", "--show-negative-prompt",
    "--ui-config-file", "--hide-ui-dir-config", "--freeze-settings", "--freeze-settings-in-sections",
    "--freeze-specific-settings", "--ui-settings-file", "--gradio-debug", "--gradio-auth", "--gradio-auth-path",
    "--gradio-img2img-tool", "--gradio-inpaint-tool", "--gradio-allowed-path", "--opt-channelslast",
    "--styles-file", "--autolaunch", "--theme", "--use-textbox-seed", "--disable-console-progressbars",
    "--enable-console-prompts", "--vae-path", "--disable-safe-unpickle", "--api", "--api-auth", "--api-log",
    "--nowebui", "--ui-debug-mode", "--device-id", "--administrator", "--cors-allow-origins",
    "--cors-allow-origins-regex", "--tls-keyfile", "--tls-certfile", "--disable-tls-verify", "--server-name",
    "--gradio-queue", "--no-gradio-queue", "--skip-version-check", "--no-hashing", "--no-download-sd-model",
    "--subpath", "--add-stop-route", "--api-server-stop", "--timeout-keep-alive", "--disable-all-extensions",
    "--disable-extra-extensions", "--skip-load-model-at-start", "--unix-filenames-sanitization",
    "--filenames-max-length", "--no-prompt-history", "-h", "--help",
    "--exit",  # read from sys.argv by A1111's launch_utils
    # extensions-builtin/*/preload.py
    "--lora-dir", "--lyco-dir-backcompat", "--ldsr-models-path", "--scunet-models-path", "--swinir-models-path",
})

_KINDS = {"text": str, "int": int, "json": json.loads}
_METAVARS = {"text": "TEXT", "int": "N", "json": "JSON"}


def add_compat_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("A1111 flags Easel accepts without using them (each prints a note)")
    for row in COMPAT_FLAGS:
        if row.kind == "switch":
            group.add_argument(row.flag, action="store_true", default=row.default, help=row.note)
        else:
            group.add_argument(row.flag, type=_KINDS[row.kind], default=row.default, help=row.note,
                               metavar=_METAVARS[row.kind])


def note_for(flag: str) -> str | None:
    for row in COMPAT_FLAGS:
        if row.flag == flag:
            return row.note
    return NOTES.get(flag)


def given_notes(parser: argparse.ArgumentParser, opts: argparse.Namespace, baseline: argparse.Namespace) -> list[str]:
    """'--flag: what Easel does with it' for each flag with a note whose value is not the baseline's."""
    notes = []
    for action in parser._actions:
        flag = next((f for f in action.option_strings if note_for(f)), None)
        if flag and getattr(opts, action.dest, None) != getattr(baseline, action.dest, action.default):
            notes.append(f"{flag}: {note_for(flag)}.")
    return notes


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(parser: argparse.ArgumentParser) -> str:
    """Every flag of the parser, grouped as in --help: value, default, whether A1111 1.10 has it,
    and what Easel does with it (the note for the flags it only accepts)."""
    lines = ["| flag | value | default | in A1111 | what Easel does |", "|---|---|---|---|---|"]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.option_strings and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines.append(f"| **{_cell(group.title or '')}** | | | | |")
        for action in actions:
            flags = ", ".join(f"`{f}`" for f in action.option_strings)
            takes_value = action.nargs != 0
            value = "" if not takes_value else (
                "`" + "|".join(map(str, action.choices)) + "`" if action.choices else f"`{action.metavar}`")
            if action.nargs in ("+", "*"):
                value += " …"
            default = "" if not takes_value or action.default in (None, [], "", {}) else f"`{action.default}`"
            if action.dest in ("data_dir",):
                default = "the repository"
            in_a1111 = "yes" if any(f in A1111_FLAGS for f in action.option_strings) else "no"
            help_text = note_for(action.option_strings[0]) or action.help or ""
            help_text = (help_text % {"default": action.default, "prog": parser.prog}) if "%(" in help_text \
                else help_text
            lines.append(f"| {flags} | {_cell(value)} | {_cell(default)} | {in_a1111} | {_cell(help_text)} |")
    return "\n".join(lines) + "\n"
