"""A1111's `modules.script_loading`: import a script file as a module of its own."""

from __future__ import annotations

import importlib.util
import os


def load_module(path: str):
    """Execute the file at `path` as a fresh module named after the file (not put in sys.modules,
    as in A1111, so two extensions may both have a `scripts/main.py`)."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preload_extensions(extensions_dir, parser, extension_list=None):
    """A1111 runs each extension's preload.py here; Easel does it in modules.cmd_args before
    parsing the flags (see modules.extensions.preload_functions)."""
