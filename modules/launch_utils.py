"""Set-up for launch.py: the venv, the pinned requirements, then the UI or the tests.

Standard library only: this runs on a bare Python before anything is installed.

    1. fold $COMMANDLINE_ARGS into the command line (A1111), switch the Hugging Face libraries and
       Gradio to offline mode, parse the flags (a bad flag stops here with status 2)
    2. outside the venv: create it if missing ($VENV_DIR, default ./venv; '-' = this Python) and
       run launch.py again with the venv's Python
    3. inside: install requirements.txt (and requirements-test.txt, then requirements-test-nodeps.txt
       with pip's --no-deps, for --run-tests) unless the
       venv already records the same file hash, or the pinned versions are already installed;
       then run the active extensions' install.py files (see run_extensions_installers)
    4. --run-tests: make sure Chromium is there, run pytest; --exit: stop; else webui.main(opts)

The flags of extensions' preload.py files are part of step 1 (modules.cmd_args.parse_args).
The names extensions' install.py files use from A1111's `launch` module are here too
(`is_installed`, `run_pip`, `run`, `run_python`, `git_clone`, `requirements_met`, `python`,
`git`, `index_url`, `args`, `commit_hash`): `args` is this module's, the others are
modules.installer's, re-exported.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys

# Only the standard library at import time (modules.installer too); modules.cmd_args (and through it
# modules.paths_internal, which reads sys.argv when imported) is imported in main(), after
# $COMMANDLINE_ARGS is folded in. The installing (requirements, extensions' install.py, A1111's helpers
# for them) is modules.installer; its names are re-exported here, as before, for launch.py, tests and
# extensions.
from modules.installer import (  # noqa: F401
    EXTENSIONS_STAMP_NAME, INSTALLER_OUTPUT_TAIL, NO_DEPS_REQUIREMENTS, NO_DEPS_REQUIREMENTS_FILE, REQUIREMENTS_FILE, STAMP_NAME,
    TEST_NO_DEPS_REQUIREMENTS_FILE, TEST_REQUIREMENTS_FILE, commit_hash, dir_repos, extensions_stamp_path,
    file_hash, git, git_clone, git_tag, index_url, install_extension, install_requirements,
    install_torch, installer_fingerprint, installer_reason, is_installed, is_recorded, pinned_version,
    pip_install_requirements,
    python, read_requirements, read_stamp, record_installed, repo_dir, requirement_met, requirements_met, run,
    run_extension_installer, run_extensions_installers, run_pip, run_python, script_path, stamp_path,
    unmet_requirements,
)
from modules.installer import _PIN, _REQUIREMENT, _version_matches  # noqa: F401  (tests read these)
from modules.torchvision_install import ensure_torchvision

args: argparse.Namespace | None = None  # the parsed flags, once main() has parsed them

CHROMIUM_PATH = "/usr/bin/chromium"
REEXEC_MARKER = "EASEL_LAUNCHED_IN_VENV"

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub, and so transformers and diffusers: never ask the Hub
    "TRANSFORMERS_OFFLINE": "1",  # transformers' own spelling; huggingface_hub reads it too
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",  # Gradio's telemetry and its version check online
}


def configure_offline_environment() -> None:
    """Must run before anything imports huggingface_hub or gradio: they read these at import."""
    os.environ.update(OFFLINE_ENVIRONMENT)


# ---- the venv -----------------------------------------------------------------------------------

def venv_dir() -> str | None:
    """The venv to use: $VENV_DIR, default ./venv; None for VENV_DIR=- (use this Python as it is)."""
    value = os.environ.get("VENV_DIR", "")
    if value == "-":
        return None
    return os.path.abspath(os.path.expanduser(value)) if value else os.path.join(script_path, "venv")


def venv_python(path: str) -> str:
    return os.path.join(path, "Scripts", "python.exe") if os.name == "nt" else os.path.join(path, "bin", "python")


def running_in(path: str) -> bool:
    return os.path.realpath(sys.prefix) == os.path.realpath(path)


def create_venv(path: str) -> None:
    print(f"Creating venv in {path}", flush=True)
    result = subprocess.run([sys.executable, "-m", "venv", path])
    if result.returncode != 0 or not os.path.exists(venv_python(path)):
        raise SystemExit(f"Could not create a venv in {path} with {sys.executable}. On Debian or Ubuntu install "
                         "the python3-venv package, or set VENV_DIR=- to use this Python as it is.")


def replace_process(command: list[str], env: dict[str, str]) -> None:
    """Hand over to `command` and exit with its status (exec on POSIX, so signals go straight to it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(command[0], command, env)
    raise SystemExit(subprocess.run(command, env=env).returncode)


def enter_venv() -> None:
    """Return when running in the right Python; otherwise create the venv and re-run inside it."""
    path = venv_dir()
    if path is None:
        print(f"VENV_DIR is '-': using {sys.executable} as it is", flush=True)
        return
    if running_in(path):
        return
    if os.environ.get(REEXEC_MARKER):
        raise SystemExit(f"Re-ran launch.py with {venv_python(path)}, but that Python runs from {sys.prefix}, "
                         f"not the venv. Delete {path} and try again, or set VENV_DIR=- to use this Python.")
    if not os.path.exists(venv_python(path)):
        create_venv(path)
    env = dict(os.environ, VIRTUAL_ENV=path, COMMANDLINE_ARGS="", **{REEXEC_MARKER: "1"})
    env["PATH"] = os.path.dirname(venv_python(path)) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    print(f"Running launch.py in the venv: {path}", flush=True)
    replace_process([venv_python(path), os.path.join(script_path, "launch.py"), *sys.argv[1:]], env)


# ---- Chromium for the browser tests --------------------------------------------------------------

_chromium_problem: str | None = None  # remembered so that a failed install is tried once per process


def ensure_chromium(install: bool = True) -> str | None:
    """Make sure Debian's Chromium is at /usr/bin/chromium, installing it with apt-get when we are
    root on Debian. Returns None when it is there, else why it is not."""
    global _chromium_problem
    if os.access(CHROMIUM_PATH, os.X_OK):
        return None
    if _chromium_problem is not None or not install:
        return _chromium_problem or f"{CHROMIUM_PATH} is missing"
    if os.name != "posix" or os.geteuid() != 0 or not os.path.exists("/etc/debian_version") \
            or not shutil.which("apt-get"):
        _chromium_problem = (f"{CHROMIUM_PATH} is missing and can only be installed automatically as root on "
                             "Debian; install it with: sudo apt-get install chromium")
        return _chromium_problem
    import fcntl  # POSIX only; one installer at a time when several test runs start together
    with open(os.path.join("/tmp", "easel-chromium-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.access(CHROMIUM_PATH, os.X_OK):
            return None
        print("Installing chromium with apt-get (for the browser tests)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        wait = ["-o", "DPkg::Lock::Timeout=300"]
        for command in (["apt-get", *wait, "update"],
                        ["apt-get", *wait, "install", "-y", "--no-install-recommends", "chromium"]):
            result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                tail = "\n".join(result.stdout.splitlines()[-5:])
                _chromium_problem = f"'{' '.join(command)}' failed (exit code {result.returncode}):\n{tail}"
                return _chromium_problem
    if not os.access(CHROMIUM_PATH, os.X_OK):
        _chromium_problem = f"apt-get installed chromium, but {CHROMIUM_PATH} is still missing"
    return _chromium_problem


# ---- the steps ----------------------------------------------------------------------------------

def fold_commandline_args() -> None:
    """A1111's $COMMANDLINE_ARGS: flags from the environment, placed before the explicit ones so
    that those win and so that they never land after --run-tests."""
    extra = os.environ.get("COMMANDLINE_ARGS", "")
    if extra.strip():
        sys.argv[1:1] = shlex.split(extra)


def check_python_version(opts: argparse.Namespace) -> None:
    version = sys.version_info
    if opts.skip_python_version_check:
        return
    if version < (3, 10):
        raise SystemExit(f"Easel needs Python 3.10 or newer; this is {sys.version.split()[0]}. "
                         "(--skip-python-version-check tries anyway.)")
    if version[:2] != (3, 11):
        print(f"Note: Easel is tested on Python 3.11; this is {sys.version.split()[0]}.")


RAY_REQUIREMENTS_FILE = os.path.join(script_path, "requirements-ray.txt")


def wants_ray(opts: argparse.Namespace) -> bool:
    """Whether the generation workers run on Ray (--workers ray, --ray-address)."""
    return getattr(opts, "workers", "local") == "ray" or bool(getattr(opts, "ray_address", None))


def prepare_environment(opts: argparse.Namespace) -> None:
    print(f"Python {sys.version}")
    print(f"Version: {git_tag()}")
    print(f"Commit hash: {commit_hash()}", flush=True)
    if opts.skip_install:
        print("Skipping the installation of requirements (--skip-install)")
    else:
        install_torch(opts.reinstall_torch)
        install_requirements(REQUIREMENTS_FILE)
        install_requirements(NO_DEPS_REQUIREMENTS_FILE)
        if opts.run_tests is not None or wants_ray(opts):  # the Ray workers (tests/test_ray_workers.py)
            install_requirements(RAY_REQUIREMENTS_FILE)
        if opts.run_tests is not None:
            install_requirements(TEST_REQUIREMENTS_FILE)
            install_requirements(TEST_NO_DEPS_REQUIREMENTS_FILE)
            problem = ensure_chromium()
            print(f"Chromium: {problem}" if problem else f"Chromium: {CHROMIUM_PATH}", flush=True)
        run_extensions_installers(opts.ui_settings_file, opts)
        ensure_torchvision()  # after the extensions' installers: one may have brought a torchvision of its own


def pytest_command(pytest_args: list[str]) -> list[str]:
    # The tests folder unless the caller names test files or folders of their own.
    names_tests = any(not arg.startswith("-") and os.path.exists(os.path.join(script_path, arg.split("::")[0]))
                      for arg in pytest_args)
    return [python, "-m", "pytest", *([] if names_tests else ["tests"]), *pytest_args]


def run_tests(pytest_args: list[str]) -> None:
    command = pytest_command(pytest_args)
    print(f"Running tests: {shlex.join(['python', *command[1:]])}", flush=True)
    os.chdir(script_path)
    replace_process(command, dict(os.environ))


def start(opts: argparse.Namespace) -> None:
    from modules.cmd_args import redact_argv
    print(f"Launching {'API server' if opts.nowebui else 'Web UI'} with arguments: "
          f"{' '.join(redact_argv(sys.argv[1:]))}", flush=True)
    if not os.path.exists(os.path.join(script_path, "webui.py")):
        raise SystemExit(f"{os.path.join(script_path, 'webui.py')} is missing; nothing to start.")
    import webui
    webui.main(opts)


def current_args() -> argparse.Namespace:
    """The parsed flags; in a process that did not parse them (an extension's install.py, run as
    a subprocess, imports `launch`), the defaults, as A1111's install.py files see them."""
    global args
    if args is None:
        from modules import cmd_args
        args = cmd_args.defaults()
    return args


def main() -> None:
    global args
    from modules.timer import startup_timer  # its clock starts here, as A1111's
    fold_commandline_args()
    configure_offline_environment()
    from modules import cmd_args
    opts = args = cmd_args.parse_args(sys.argv[1:])

    if not opts.skip_prepare_environment:
        check_python_version(opts)
        enter_venv()  # outside the venv this runs launch.py again inside it and does not return
    for note in cmd_args.compatibility_notes(opts):  # once, here (webui.main prints them when started alone)
        print(note)
    if not opts.skip_prepare_environment:
        prepare_environment(opts)

    if opts.run_tests is not None:
        run_tests(opts.run_tests)
    if opts.exit:
        print("Exiting because of --exit argument")
        return
    startup_timer.record("prepare environment")
    start(opts)
