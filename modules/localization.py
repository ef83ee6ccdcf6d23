"""A1111's `modules.localization`: translations of the page's texts.

A localization is a JSON file named after it (`xx_XX.json`), a flat object mapping the English
text of a label, button, placeholder, title or dropdown option to its translation. They come
from the repository's `localizations/` folder and the active extensions' `localizations/`
folders (an extension's file replaces a same-named one found earlier, as in A1111). The option
`localization` ("None" or one of the names) picks the one the page applies
(modules/ui/localization.js).

Standard library only; nothing here is read at import time.
"""

from __future__ import annotations

import json
import os

from modules import extensions
from modules.paths_internal import script_path

NONE = "None"
localizations_dir = os.path.join(script_path, "localizations")
localizations: dict[str, str] = {}  # name -> json file, as last listed


def list_localizations(dirname: str | None = None) -> dict[str, str]:
    """Rescan: name -> file of every localization (the folder `dirname`, default the repo's
    `localizations/`, then the active extensions'), kept in `localizations`."""
    found: dict[str, str] = {}
    folder = localizations_dir if dirname is None else dirname
    if os.path.isdir(folder):
        for filename in sorted(os.listdir(folder)):
            name, ext = os.path.splitext(filename)
            if ext.lower() == ".json" and os.path.isfile(os.path.join(folder, filename)):
                found[name] = os.path.join(folder, filename)
    found.update(extensions.localization_files())
    localizations.clear()
    localizations.update(found)
    return dict(found)


def choices() -> tuple[str, ...]:
    """The option's choices: "None" and the names found now (the folders are rescanned)."""
    return (NONE, *sorted(list_localizations()))


def load(name: str | None) -> dict[str, str]:
    """The translations of localization `name` ({} for "None", an unknown name, or a file that is
    not a flat JSON object of strings; the problem is printed, never raised)."""
    if not name or name == NONE:
        return {}
    path = localizations.get(name) or list_localizations().get(name)
    if path is None:
        print(f"[localization] no localization named {name!r}; the page stays in English", flush=True)
        return {}
    try:
        with open(path, encoding="utf8") as file:
            data = json.load(file)
    except (OSError, ValueError) as error:
        print(f"[localization] could not read {path}: {error}", flush=True)
        return {}
    if not isinstance(data, dict):
        print(f"[localization] {path} is not a JSON object", flush=True)
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, str)}


def bind(options) -> None:
    """Give the `localization` option (modules.services.options) its dynamic choices."""
    options.defs["localization"].choices = choices
