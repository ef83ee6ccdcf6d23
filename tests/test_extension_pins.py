"""Extensions' installers cannot take Easel's pinned packages away (issue 18).

In a throwaway virtual environment (never Easel's own), a package `easel-pin-probe` is "pinned" at
1.0 and two extensions' install.py try to move it to 2.0, as sd-dynamic-prompts (`transformers<5`)
and ADetailer (torch, numpy) would move Easel's pins:

- one through `launch.run_pip` / a plain `pip install`, as most installers do: pip runs under
  Easel's constraints, refuses, the installer fails and is reported under the extension's name;
- one that escapes the constraints (`pip --isolated`): the launch puts 1.0 back and names it.

Either way the pinned version is what is installed afterwards. Wheels are built here, offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

from modules import installer

REPO = Path(__file__).resolve().parent.parent


def _wheel(folder: Path, version: str) -> Path:
    """A minimal pure-Python wheel of easel-pin-probe (no build tools needed)."""
    name = f"easel_pin_probe-{version}-py3-none-any.whl"
    info = f"easel_pin_probe-{version}.dist-info"
    files = {
        "easel_pin_probe/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: easel-pin-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: easel-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / name, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return folder / name


DRIVER = r"""
import json, os, sys
sys.path.insert(0, os.environ["EASEL_REPO"])
from modules import extensions, installer
installer.PIN_FILES = (os.environ["EASEL_TEST_PINS"],)
results = {}
for folder in sys.argv[1:]:
    ok = installer.run_extension_installer(folder)
    import importlib.metadata as md
    results[os.path.basename(folder)] = {"ok": ok, "version": md.version("easel-pin-probe")}
results["errors"] = {k: v for k, v in extensions._errors.items()}
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pins")
    wheels = root / "wheels"
    wheels.mkdir()
    _wheel(wheels, "1.0")
    _wheel(wheels, "2.0")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONPATH": ""}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "easel-pin-probe==1.0"], env=env, check=True)
    pins = root / "pins.txt"
    pins.write_text("easel-pin-probe==1.0\n")
    return python, env, wheels, pins, root


def _extension(root: Path, name: str, install_py: str) -> Path:
    folder = root / "extensions" / name
    folder.mkdir(parents=True)
    (folder / "install.py").write_text(install_py)
    return folder


def test_installers_cannot_move_easels_pins(probe_env):
    python, env, wheels, pins, root = probe_env
    via_launch = _extension(root, "pins-via-run-pip", (
        "import launch\n"
        "if not launch.is_installed('easel-pin-probe') or True:\n"
        "    launch.run_pip('install easel-pin-probe==2.0', 'easel-pin-probe 2')\n"))
    via_subprocess = _extension(root, "pins-via-subprocess", (
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'pip', 'install', 'easel-pin-probe>=2'], check=True)\n"))
    escaping = _extension(root, "pins-escaping", (
        "import os, subprocess, sys\n"
        f"subprocess.run([sys.executable, '-m', 'pip', '--isolated', 'install', '--no-index', '--find-links',"
        f" {str(wheels)!r}, 'easel-pin-probe==2.0'], check=True)\n"))
    run_env = {**env, "EASEL_REPO": str(REPO), "EASEL_TEST_PINS": str(pins)}
    done = subprocess.run([str(python), "-c", DRIVER, str(via_launch), str(via_subprocess), str(escaping)],
                          env=run_env, capture_output=True, text=True, timeout=300, cwd=str(root))
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, done.stdout + done.stderr
    results = json.loads(line[len("RESULT "):])

    # pip under Easel's constraints refuses: the installers fail, credited, the pin stays
    for name in ("pins-via-run-pip", "pins-via-subprocess"):
        assert results[name] == {"ok": False, "version": "1.0"}, (name, done.stdout)
        assert "install.py failed" in " ".join(results["errors"][name])
    # an installer that escapes the constraints succeeds, but the launch puts 1.0 back and names it
    assert results["pins-escaping"] == {"ok": True, "version": "1.0"}, done.stdout
    assert any("easel-pin-probe 1.0 -> 2.0" in e and "put its versions back" in e
               for e in results["errors"]["pins-escaping"]), results["errors"]
    assert "[easel] extension pins-escaping changed packages Easel pins" in done.stdout


def test_constraints_file_holds_easels_pins():
    text = Path(installer.pip_constraints_file()).read_text()
    pins = installer.easel_pins()
    assert pins["torch"] == "2.13.0" and pins["transformers"] and pins["spandrel"]
    for name, version in pins.items():
        assert f"{name}=={version}\n" in text
    assert installer.changed_pins({"a": "1", "b": "2"}, {"a": "1", "b": "3"}) == {"b": ("2", "3")}


def test_a_recorded_requirements_file_is_checked_against_what_is_installed(tmp_path, monkeypatch):
    """A launch after an extension changed a pin reinstalls it, though the file was recorded as done."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pip==0.0.1\n")  # recorded, but not what is installed
    stamp = tmp_path / "stamp.json"
    installer.record_installed(str(stamp), str(requirements))
    calls = []
    monkeypatch.setattr(installer, "pip_install_requirements", lambda path: calls.append(path) or 0)
    assert installer.install_requirements(str(requirements), str(stamp)) is True
    assert calls == [str(requirements)]
