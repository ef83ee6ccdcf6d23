"""The launcher's torchvision (issue 18): many extensions import it, Easel does not. The launcher installs
the release built with the installed torch from that build's index, keeps it only if it imports beside
torch (a torchvision built for another torch build fails on import and breaks transformers), records the
outcome per version pair and never stops the launch. Run against a scratch venv with real wheels written
here (a fake torch, a torchvision that imports and one that fails as PyPI's CUDA wheel does beside a CPU
torch), pip reading them from a local folder."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modules import torchvision_install as installer

NMS_ERROR = "RuntimeError: operator torchvision::nms does not exist"


def _wheel(folder: Path, name: str, version: str, init: str) -> Path:
    """A minimal real wheel (pure Python) of package ``name``."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": init,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: easel-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_in, text in {**files, f"{dist}/RECORD": "\n".join(record) + "\n"}.items():
            archive.writestr(name_in, text)
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A scratch venv (pip included) with a fake torch 2.13.0 installed from a wheel."""
    root = tmp_path_factory.mktemp("tv")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / "bin" / "python")
    wheels = root / "wheels"
    wheels.mkdir()
    _wheel(wheels, "torch", "2.13.0", "")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "torch==2.13.0"],
                   check=True)
    return python, wheels


def _pip_reads(monkeypatch, folder: Path) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no machine-wide find-links / constraints


def _torchvision(python: str) -> str | None:
    return installer._installed_version(python, "torchvision")


def test_release_and_index_follow_the_torch_build():
    assert installer.torchvision_release("2.13.0") == "0.28.0"
    assert installer.torchvision_release("2.14.1+cu128") == "0.29.1"
    assert installer.torchvision_index("2.13.0+cpu") == ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert installer.torchvision_index("2.13.0") == []  # PyPI's build: pip's own index


def test_a_torchvision_that_fails_to_import_is_removed_and_reported_once(venv, tmp_path, monkeypatch, capsys):
    python, _ = venv
    broken = tmp_path / "broken"
    broken.mkdir()
    _wheel(broken, "torchvision", "0.28.0", f"raise RuntimeError({NMS_ERROR.split(': ', 1)[1]!r})\n")
    _pip_reads(monkeypatch, broken)
    stamp = str(tmp_path / "stamp.json")
    line = installer.ensure_torchvision(stamp, python)
    assert "torchvision 0.28.0 does not import beside torch 2.13.0" in line and NMS_ERROR in line
    assert "extensions that import torchvision will not load" in line
    assert _torchvision(python) is None  # removed again: the venv is as before
    assert json.loads(Path(stamp).read_text())["torchvision"] == {"torch": "2.13.0", "torchvision": None}
    assert installer.ensure_torchvision(stamp, python) == ""  # recorded: no second try at every launch


def test_a_working_torchvision_is_installed_and_kept(venv, tmp_path, monkeypatch):
    python, _ = venv
    good = tmp_path / "good"
    good.mkdir()
    _wheel(good, "torchvision", "0.28.0", "__version__ = '0.28.0'\n")
    _pip_reads(monkeypatch, good)
    stamp = str(tmp_path / "stamp.json")
    try:
        assert installer.ensure_torchvision(stamp, python) == "torchvision: torchvision 0.28.0 works beside torch 2.13.0"
        assert _torchvision(python) == "0.28.0"
        assert installer.ensure_torchvision(stamp, python) == ""
    finally:
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)


def test_no_reachable_torchvision_is_reported_and_the_launch_goes_on(venv, tmp_path, monkeypatch):
    python, _ = venv
    empty = tmp_path / "empty"
    empty.mkdir()
    _pip_reads(monkeypatch, empty)
    line = installer.ensure_torchvision(str(tmp_path / "stamp.json"), python)
    assert line.startswith("torchvision: torchvision 0.28.0 (built with torch 2.13.0) could not be installed from "
                           "pip's index")
    assert _torchvision(python) is None
