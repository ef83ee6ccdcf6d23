"""Installing things: the pinned requirements, extensions' install.py files, and the helpers A1111's
`launch` module offers those files (`run_pip`, `is_installed`, `git_clone`, ...).

Standard library only at import time, like modules.launch_utils (which runs it on a bare Python
before anything is installed, and re-exports its names, as launch.py does for extensions).
modules.extension_install uses it too, to run a newly installed extension's install.py; neither
of them imports the other's module, and this one imports neither.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys

script_path = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
python = sys.executable
git = os.environ.get("GIT", "git")  # A1111's names, read by extensions' install.py
index_url = os.environ.get("INDEX_URL", "")
dir_repos = "repositories"

REQUIREMENTS_FILE = os.path.join(script_path, "requirements.txt")
TEST_REQUIREMENTS_FILE = os.path.join(script_path, "requirements-test.txt")
# test requirements whose declared dependencies are not needed (and not wanted: k-diffusion declares
# its whole training stack); their needed dependencies are pinned in requirements-test.txt
TEST_NO_DEPS_REQUIREMENTS_FILE = os.path.join(script_path, "requirements-test-nodeps.txt")
# runtime requirements installed without their declared dependencies (spandrel declares torchvision,
# which Easel does not need); what they do need is pinned in requirements.txt
NO_DEPS_REQUIREMENTS_FILE = os.path.join(script_path, "requirements-nodeps.txt")
NO_DEPS_REQUIREMENTS = frozenset({TEST_NO_DEPS_REQUIREMENTS_FILE, NO_DEPS_REQUIREMENTS_FILE})
STAMP_NAME = "easel-requirements.json"


# ---- running commands (A1111's names, for extensions' install.py) -------------------------------

def run(command, desc=None, errdesc=None, custom_env=None, live: bool = True) -> str:
    """Run a shell command; raise RuntimeError with its output if it fails."""
    if desc:
        print(desc, flush=True)
    result = subprocess.run(command, shell=isinstance(command, str), env=custom_env or os.environ,
                            stdout=None if live else subprocess.PIPE, stderr=None if live else subprocess.STDOUT,
                            text=True, encoding="utf8", errors="replace")
    if result.returncode != 0:
        output = "" if live else f"\n{result.stdout}"
        raise RuntimeError(f"{errdesc or 'Error running command'} (exit code {result.returncode}): {command}{output}")
    return "" if live else result.stdout


def run_pip(command: str, desc=None, live: bool = True) -> str:
    """A1111's helper: `pip <command>`; an install runs under Easel's pins (pip_constraints_file),
    so an extension can add packages but never change the versions Easel runs on."""
    index_url_line = f" --index-url {index_url}" if index_url else ""
    constraint = ""
    if command.lstrip().startswith("install"):
        constraint = f' --constraint "{pip_constraints_file()}"'
    return run(f'"{python}" -m pip {command} --prefer-binary{index_url_line}{constraint}',
               desc=f"Installing {desc}" if desc else None, errdesc=f"Couldn't install {desc or command}", live=live)


def run_python(code: str, desc=None, errdesc=None) -> str:
    return run([python, "-c", code], desc=desc, errdesc=errdesc, live=False)


def repo_dir(name: str) -> str:
    return os.path.join(script_path, dir_repos, name)


def git_clone(url: str, dir: str, name: str, commithash: str | None = None) -> None:
    """A1111's helper for install.py files: clone `url` into `dir` (once), then check out
    `commithash` if given."""
    if os.path.exists(os.path.join(dir, ".git")):
        if commithash:
            run([git, "-C", dir, "checkout", commithash], f"Checking out commit for {name}",
                f"Couldn't checkout commit {commithash} for {name}", live=True)
        return
    run([git, "clone", "--config", "core.filemode=false", url, dir], f"Cloning {name} into {dir}...",
        f"Couldn't clone {name}", live=True)
    if commithash:
        run([git, "-C", dir, "checkout", commithash], None, f"Couldn't checkout {name}'s hash: {commithash}", live=True)


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;#]*)")


def requirement_met(line: str) -> bool:
    """Whether one requirements line is met by the installed packages: the package is installed
    and, when `packaging` is importable, its version satisfies the line's specifier (else only
    an exact == pin is checked)."""
    match = _REQUIREMENT.match(line)
    if not match:
        return False
    name, _extras, spec = match.groups()
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    spec = spec.strip()
    if not spec:
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
    except ImportError:
        pin = re.fullmatch(r"==\s*(\S+)", spec)
        return pin is None or _version_matches(installed, pin.group(1))
    try:
        return SpecifierSet(spec).contains(installed, prereleases=True)
    except InvalidSpecifier:
        return False


def requirements_met(requirements_file: str) -> bool:
    """A1111's name: every line of a requirements file is met (see requirement_met)."""
    try:
        return all(requirement_met(line) for line in read_requirements(requirements_file))
    except OSError:
        return False


def is_installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _git(*git_args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", script_path, *git_args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def commit_hash() -> str:
    return _git("rev-parse", "HEAD") or "<none>"


def git_tag() -> str:
    return _git("describe", "--tags", "--always", "--dirty") or "<none>"


# ---- requirements -------------------------------------------------------------------------------

def file_hash(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def stamp_path() -> str | None:
    """Where the installed requirements' hashes are kept: inside the venv; None outside a venv."""
    return os.path.join(sys.prefix, STAMP_NAME) if sys.prefix != sys.base_prefix else None


def read_stamp(stamp: str) -> dict[str, str]:
    try:
        with open(stamp, encoding="utf8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_recorded(stamp: str | None, requirements: str) -> bool:
    return stamp is not None and read_stamp(stamp).get(os.path.basename(requirements)) == file_hash(requirements)


def record_installed(stamp: str | None, requirements: str) -> None:
    if stamp is None:
        return
    data = read_stamp(stamp)
    data[os.path.basename(requirements)] = file_hash(requirements)
    try:
        with open(stamp, "w", encoding="utf8") as file:
            json.dump(data, file, indent=1, sort_keys=True)
    except OSError as error:
        print(f"Could not record the installed requirements in {stamp}: {error}")


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)\s*$")


def read_requirements(path: str) -> list[str]:
    """The requirement lines of a requirements file, without comments, blanks and pip options."""
    lines = []
    with open(path, encoding="utf8") as file:
        for line in file:
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith(("#", "-")):
                lines.append(line)
    return lines


def _version_matches(installed: str, pinned: str) -> bool:
    # A pin without a local label accepts any local label (PEP 440): torch==2.13.0 is met by 2.13.0+cpu.
    return installed == pinned or ("+" not in pinned and installed.split("+", 1)[0] == pinned)


def unmet_requirements(path: str) -> list[str]:
    """Requirement lines that the installed packages do not meet exactly; lines that are not
    name==version pins cannot be checked here and are reported too (pip will check them)."""
    unmet = []
    for line in read_requirements(path):
        match = _PIN.match(line)
        if not match:
            unmet.append(f"{line} (not an exact pin)")
            continue
        name, _extras, version = match.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{line} (not installed)")
            continue
        if not _version_matches(installed, version):
            unmet.append(f"{line} (installed: {installed})")
    return unmet


def install_requirements(requirements: str, stamp: str | None = None) -> bool:
    """Install a requirements file unless it already is; True when pip ran."""
    stamp = stamp_path() if stamp is None else stamp
    name = os.path.basename(requirements)
    # recorded as installed, but something (an extension's pip call) may have changed a version
    # since: the installed versions are checked every launch (a few metadata reads)
    unmet = unmet_requirements(requirements)
    if is_recorded(stamp, requirements) and not [u for u in unmet if not u.endswith("(not an exact pin)")]:
        print(f"Requirements already installed: {name}")
        return False
    if not unmet:
        print(f"Requirements already installed: {name} (checked the installed versions)")
        record_installed(stamp, requirements)
        return False
    print(f"Installing requirements from {name}: {len(unmet)} to install or change", flush=True)
    returncode = pip_install_requirements(requirements)
    if returncode != 0:
        raise SystemExit(f"pip could not install {requirements} (exit code {returncode}); "
                         "see pip's messages above.")
    record_installed(stamp, requirements)
    return True


def pip_install_requirements(requirements: str) -> int:
    no_deps = ["--no-deps"] if os.path.abspath(requirements) in NO_DEPS_REQUIREMENTS else []
    return subprocess.run([python, "-m", "pip", "install", "--prefer-binary", *no_deps, "-r", requirements]).returncode


def pinned_version(requirements: str, package: str) -> str | None:
    for line in read_requirements(requirements):
        match = _PIN.match(line)
        if match and match.group(1).lower() == package:
            return match.group(3)
    return None


def install_torch(reinstall: bool) -> None:
    """$TORCH_COMMAND (A1111: e.g. 'pip install torch==2.13.0 --index-url ...' for another build)
    runs when torch is missing or on --reinstall-torch; else --reinstall-torch reinstalls the pin."""
    torch_command = os.environ.get("TORCH_COMMAND")
    if torch_command and (reinstall or not is_installed("torch")):
        run([python, "-m", *shlex.split(torch_command)], desc=f"Installing torch: {torch_command}",
            errdesc="Couldn't install torch")
    elif reinstall:
        version = pinned_version(REQUIREMENTS_FILE, "torch")
        spec = f"torch=={version}" if version else "torch"
        run([python, "-m", "pip", "install", "--force-reinstall", "--no-deps", spec],
            desc=f"Reinstalling {spec}", errdesc="Couldn't reinstall torch")


# ---- extensions' install.py ---------------------------------------------------------------------
#
# A1111 runs every extension's install.py at every launch. Easel runs it when the extension is new
# to this Python environment, when its install.py or requirements.txt changed since it last ran
# there, or when its requirements.txt is not met; the record is DATA_DIR/extensions-installed.json
# (kept per Python environment: another venv runs them all again). A failing install.py is reported
# with the extension's name and the extension does not load this run; the launch goes on and the
# installer runs again at the next launch. --skip-install skips them, as in A1111.

EXTENSIONS_STAMP_NAME = "extensions-installed.json"
INSTALLER_OUTPUT_TAIL = 20  # lines of a failed install.py's output repeated in its report


def extensions_stamp_path() -> str:
    from modules import paths_internal
    return os.path.join(paths_internal.data_path, EXTENSIONS_STAMP_NAME)


def installer_fingerprint(extension_dir: str) -> dict[str, str | None]:
    def digest(name: str) -> str | None:
        path = os.path.join(extension_dir, name)
        return file_hash(path) if os.path.isfile(path) else None
    return {"install.py": digest("install.py"), "requirements.txt": digest("requirements.txt")}


def installer_reason(extension_dir: str, recorded: dict | None) -> str | None:
    """Why the extension's install.py should run now; None when it should not."""
    if not os.path.isfile(os.path.join(extension_dir, "install.py")):
        return None
    if recorded is None:
        return "new extension"
    if recorded != installer_fingerprint(extension_dir):
        return "install.py or requirements.txt changed"
    requirements = os.path.join(extension_dir, "requirements.txt")
    if os.path.isfile(requirements) and not requirements_met(requirements):
        return "requirements missing"
    return None


# Extensions' installers run pip under Easel's pins: PIP_CONSTRAINT names a constraints file made
# from requirements.txt and requirements-nodeps.txt, so any `pip install` they start (launch.run_pip,
# subprocess pip, pip.main) may add packages but not change a pinned one (pip reports the conflict
# and the installer fails, credited to its extension). One that changes a pin anyway (--isolated,
# another installer) is caught by comparing the pinned packages' versions before and after: they
# are put back and the extension is named.

PIN_FILES = (REQUIREMENTS_FILE, NO_DEPS_REQUIREMENTS_FILE)
_constraints_path: str | None = None


def easel_pins() -> dict[str, str]:
    """Package name (lower case) -> pinned version, from Easel's runtime requirements files."""
    pins: dict[str, str] = {}
    for path in PIN_FILES:
        try:
            lines = read_requirements(path)
        except OSError:
            continue
        for line in lines:
            match = _PIN.match(line)
            if match:
                pins[match.group(1).lower()] = match.group(3)
    return pins


def configured_constraints() -> list[str]:
    """Constraints files pip is already told about (PIP_CONSTRAINT, the `constraint` of pip's config
    files), so that Easel's file, which takes PIP_CONSTRAINT's place, keeps them (`-c` lines)."""
    import configparser

    found = os.environ.get("PIP_CONSTRAINT", "").split()
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [*(os.path.join(d, "pip", "pip.conf") for d in xdg), "/etc/pip.conf",
             os.path.join(os.environ.get("XDG_CONFIG_HOME", os.path.join(home, ".config")), "pip", "pip.conf"),
             os.path.join(home, ".pip", "pip.conf"), os.path.join(sys.prefix, "pip.conf"),
             os.environ.get("PIP_CONFIG_FILE", "")]
    for path in files:
        if not path or not os.path.isfile(path):
            continue
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "constraint"):
                found += parser.get(section, "constraint").split()
    return [f for i, f in enumerate(found) if f not in found[:i] and not os.path.basename(f).startswith("easel-pip-constraints")]


def pip_constraints_file() -> str:
    """A pip constraints file holding Easel's pins (written once per process, in the temp folder),
    and `-c` lines for the constraints pip was given already."""
    global _constraints_path
    if _constraints_path is None or not os.path.isfile(_constraints_path):
        import tempfile

        text = "".join(f"-c {path}\n" for path in configured_constraints())
        text += "".join(f"{name}=={version}\n" for name, version in sorted(easel_pins().items()))
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        path = os.path.join(tempfile.gettempdir(), f"easel-pip-constraints-{digest}.txt")
        with open(path, "w", encoding="utf8") as file:
            file.write("# Easel's pinned packages: extensions' installers may not change them\n" + text)
        _constraints_path = path
    return _constraints_path


def installed_pins() -> dict[str, str | None]:
    """Pinned package -> the version installed now (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in easel_pins():
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def changed_pins(before: dict[str, str | None], after: dict[str, str | None]) -> dict[str, tuple]:
    """name -> (version before, version after) for the pinned packages whose installed version changed."""
    return {name: (before.get(name), after.get(name)) for name in before if before.get(name) != after.get(name)}


def restore_pins(changed: dict[str, tuple]) -> list[str]:
    """Put the pinned versions back (without touching dependencies); the ones that could not be."""
    pins = easel_pins()
    failed = []
    for name in changed:
        spec = f"{name}=={pins[name]}"
        result = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--prefer-binary", spec],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf8",
                                errors="replace")
        if result.returncode != 0:
            failed.append(f"{spec}: {result.stdout.strip().splitlines()[-1] if result.stdout.strip() else 'pip failed'}")
    return failed


def guard_pins(name: str, before: dict[str, str | None]) -> bool:
    """After extension `name`'s installer: restore any pinned package it changed and report it under
    the extension's name. True when Easel's pins are intact (again)."""
    from modules import extensions

    changed = changed_pins(before, installed_pins())
    if not changed:
        return True
    listed = ", ".join(f"{pkg} {old or '(none)'} -> {new or '(removed)'}" for pkg, (old, new) in sorted(changed.items()))
    print(f"[easel] extension {name} changed packages Easel pins: {listed}; putting them back", flush=True)
    failed = restore_pins(changed)
    if failed:
        extensions.report_error(name, f"its installer changed packages Easel pins ({listed}) and these could not "
                                      f"be put back: {'; '.join(failed)}. Remove or disable the extension; the next "
                                      "launch installs Easel's requirements again")
        return False
    extensions.report_error(name, f"its installer changed packages Easel pins ({listed}); Easel put its "
                                  "versions back, so the extension may not work as its author intended")
    return True


def run_extension_installer(extension_dir: str) -> bool:
    """Run an extension's install.py with this Python (the launch's own names importable as
    `import launch`), echoing its output. True on success (or when there is none); a failure is
    reported with the extension's name and keeps the extension from loading this run."""
    from modules import extensions

    installer = os.path.join(extension_dir, "install.py")
    if not os.path.isfile(installer):
        return True
    name = os.path.basename(os.path.normpath(extension_dir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (script_path, env.get("PYTHONPATH", "")) if p)
    env["PIP_CONSTRAINT"] = pip_constraints_file()  # it names the constraints configured before, too
    before = installed_pins()
    tail: list[str] = []
    try:
        process = subprocess.Popen([python, installer], cwd=script_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, encoding="utf8", errors="replace")
        for line in process.stdout:
            print(f"[{name}] {line.rstrip()}", flush=True)
            tail = (tail + [line.rstrip()])[-INSTALLER_OUTPUT_TAIL:]
        returncode = process.wait()
    except OSError as error:
        extensions.disable_for_run(name, f"install.py could not be run: {error}")
        return False
    guard_pins(name, before)
    if returncode != 0:
        extensions.disable_for_run(name, f"install.py failed (exit code {returncode})", "\n".join(tail))
        return False
    return True


def _read_extension_records(stamp: str) -> dict:
    data = read_stamp(stamp)
    if data.get("python") != sys.prefix or not isinstance(data.get("extensions"), dict):
        data = {"python": sys.prefix, "extensions": {}}
    return data


def _write_extension_records(stamp: str, data: dict) -> None:
    try:
        os.makedirs(os.path.dirname(stamp) or ".", exist_ok=True)
        with open(stamp, "w", encoding="utf8") as file:
            json.dump(data, file, indent=1, sort_keys=True)
    except OSError as error:
        print(f"Could not record the extensions' installs in {stamp}: {error}")


def install_extension(extension_dir: str, stamp: str | None = None) -> bool:
    """Run an extension's install.py now and record it when it succeeds (an extension installed
    from the UI); see run_extension_installer."""
    stamp = stamp or extensions_stamp_path()
    ok = run_extension_installer(extension_dir)
    data = _read_extension_records(stamp)
    if ok:
        data["extensions"][os.path.realpath(extension_dir)] = installer_fingerprint(extension_dir)
    else:
        data["extensions"].pop(os.path.realpath(extension_dir), None)
    _write_extension_records(stamp, data)
    return ok


def run_extensions_installers(settings_file: str | None, cmd_opts: argparse.Namespace | None = None,
                              stamp: str | None = None) -> list[str]:
    """Run the install.py of each active extension that needs it (see above); returns the names
    of those that ran successfully."""
    from modules import extensions

    stamp = stamp or extensions_stamp_path()
    settings = extensions.read_settings_file(settings_file)
    data = _read_extension_records(stamp)
    records = data["extensions"]
    ran = []
    for name, path in extensions.active_folders(settings, cmd_opts):
        key = os.path.realpath(path)
        reason = installer_reason(path, records.get(key))
        if reason is None:
            continue
        print(f"Running install.py of extension {name} ({reason})", flush=True)
        if run_extension_installer(path):
            records[key] = installer_fingerprint(path)
            ran.append(name)
        else:
            records.pop(key, None)
    _write_extension_records(stamp, data)
    return ran
