"""The launcher's torchvision. Easel does not import torchvision, but many extensions do (ADetailer,
regional prompter, ...). The release built with the installed torch is installed from the index that torch
build comes from (a local label such as +cpu or +cu128 names a download.pytorch.org index; none: pip's own
index), and kept only if it imports beside that torch: a torchvision built for another torch build (PyPI's
CUDA wheels beside a CPU torch) fails on import ("operator torchvision::nms does not exist") and breaks
transformers' imports with it. The outcome is recorded per torch and torchvision version in the venv's
stamp, so the check runs again only when one of them changes (e.g. an extension's installer).

Standard library only, like modules.installer, whose stamp and Python it uses.
"""

import importlib
import importlib.metadata
import json
import re
import subprocess

from modules.installer import python, read_stamp, stamp_path

TORCHVISION_STAMP_KEY = "torchvision"


def torchvision_release(torch_version: str) -> str | None:
    """The torchvision release built with a torch release: 0.(minor + 15).patch since torch 2.0."""
    match = re.match(r"^2\.(\d+)\.(\d+)", torch_version)
    return f"0.{int(match.group(1)) + 15}.{match.group(2)}" if match else None


def torchvision_index(torch_version: str) -> list[str]:
    """pip's index options for the torchvision matching this torch build."""
    label = torch_version.partition("+")[2]
    return ["--index-url", f"https://download.pytorch.org/whl/{label}"] if label else []


def _installed_version(target_python: str, package: str) -> str | None:
    if target_python == python:  # this Python: no second interpreter started at every launch
        importlib.invalidate_caches()  # pip may have just changed the environment
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None
    code = ("import importlib.metadata as m, sys\n"
            f"try: print(m.version({package!r}))\nexcept m.PackageNotFoundError: print('')")
    out = subprocess.run([target_python, "-c", code], stdout=subprocess.PIPE, text=True).stdout.strip()
    return out or None


def _import_problem(target_python: str) -> str | None:
    """None when torchvision imports in the target Python; else the error's last line."""
    result = subprocess.run([target_python, "-c", "import torchvision"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, encoding="utf8", errors="replace")
    if result.returncode == 0:
        return None
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def ensure_torchvision(stamp: str | None = None, target_python: str | None = None) -> str:
    """Install the torchvision matching the installed torch if none is installed, and remove an installed
    one that does not import. Never stops the launch. Returns the line it printed ('' when nothing to do)."""
    target_python = target_python or python
    stamp = stamp_path() if stamp is None else stamp
    torch_version = _installed_version(target_python, "torch")
    if torch_version is None:
        return ""
    installed = _installed_version(target_python, "torchvision")
    state = {"torch": torch_version, "torchvision": installed}
    recorded = read_stamp(stamp).get(TORCHVISION_STAMP_KEY) if stamp else None
    if isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in state.items()):
        return ""
    if installed is None:
        wanted = torchvision_release(torch_version)
        if wanted is None:
            return _torchvision_note(stamp, state, f"no torchvision release is known for torch {torch_version}")
        source = torchvision_index(torch_version)
        result = subprocess.run([target_python, "-m", "pip", "install", "--no-deps", "--prefer-binary", "--retries", "1",
                                 "--timeout", "20", f"torchvision=={wanted}", *source], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, encoding="utf8", errors="replace")
        if result.returncode != 0:
            where = source[1] if source else "pip's index"
            last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "pip failed"
            return _torchvision_note(stamp, state, f"torchvision {wanted} (built with torch {torch_version}) could not "
                                                   f"be installed from {where}: {last}")
        installed = wanted
    problem = _import_problem(target_python)
    if problem is None:
        return _torchvision_note(stamp, {**state, "torchvision": installed},
                                 f"torchvision {installed} works beside torch {torch_version}")
    subprocess.run([target_python, "-m", "pip", "uninstall", "-y", "torchvision"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return _torchvision_note(stamp, {**state, "torchvision": None},
                             f"torchvision {installed} does not import beside torch {torch_version} ({problem}), "
                             f"so it was removed (it breaks transformers' imports); install the build made for "
                             f"your torch by hand if an extension needs it")


def _torchvision_note(stamp: str | None, state: dict, text: str) -> str:
    line = f"torchvision: {text}" + ("" if "works" in text else
                                     "; extensions that import torchvision will not load (Easel does not need it)")
    print(line, flush=True)
    if stamp:
        data = read_stamp(stamp)
        data[TORCHVISION_STAMP_KEY] = state
        try:
            with open(stamp, "w", encoding="utf8") as file:
                json.dump(data, file, indent=1, sort_keys=True)
        except OSError as error:
            print(f"Could not record torchvision's check in {stamp}: {error}")
    return line
