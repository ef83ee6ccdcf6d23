"""Prompt styles: A1111's styles.csv files, applied to the prompts before the core sees a request.

A style is one CSV row: `name`, `prompt`, `negative_prompt` (A1111's older files have `text`
instead of `prompt`). Applying a style to a prompt (A1111's `merge_prompts`): a style text with
`{prompt}` has the placeholder replaced by the prompt; any other is appended after ", " (empty
parts left out). Several styles apply one after another, in the order given.

Several files may hold styles (`--styles-file`, more than once, with `*`/`?` patterns); the
first is the default file new styles go to. Saving rewrites each file with its own styles and
keeps the previous version as `<file>.bak`, as A1111 does. Rows whose name is empty or starts
with "#" are comments. A name in two files: the later file's style is the one used (as in A1111),
the other stays in its file.

The API (`styles` field) and the UI (styles dropdown) both expand prompts through
`StyleDatabase.apply_to_request` / `apply_to_fields`, so they cannot differ.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from modules.core import atomic_write
from modules.core.types import RequestError

FIELDS = ("name", "prompt", "negative_prompt")
# request fields a style expands, with the style text that goes into each. The hires prompts
# only when given: an empty one means "the (already styled) prompt".
STYLED_FIELDS = (("prompt", "prompt", True), ("negative_prompt", "negative_prompt", True),
                 ("hr_prompt", "prompt", False), ("hr_negative_prompt", "negative_prompt", False))

R = TypeVar("R")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None  # the file it was read from and is saved to

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def merge_prompts(style_text: str, prompt: str) -> str:
    """One style text applied to a prompt (A1111's rule)."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_texts: Iterable[str]) -> str:
    for text in style_texts:
        prompt = merge_prompts(text, prompt)
    return prompt


def extract_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """The inverse of `merge_prompts`: (True, the prompt without the style) when the prompt
    ends with the style's text (or is wrapped by the text around `{prompt}`), else (False, prompt)."""
    stripped, text = prompt.strip(), style_text.strip()
    if "{prompt}" in text:
        left, _, right = text.partition("{prompt}")
        if stripped.startswith(left) and stripped.endswith(right) and len(stripped) >= len(left) + len(right):
            return True, stripped[len(left):len(stripped) - len(right)]
        return False, prompt
    if stripped.endswith(text):
        rest = stripped[:len(stripped) - len(text)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


INFOTEXT_STYLES = ("Ignore", "Apply", "Discard", "Apply if any")  # A1111's infotext_styles choices
_HIRES_STYLES_SINCE = (1, 8, 0)  # infotexts of later versions carry the styles in the hires prompts too


def _version(text) -> tuple[int, ...] | None:
    """A1111's version in an infotext ("v1.7.0-...") as numbers; None for any other."""
    match = re.match(r"^v(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(g) for g in match.groups()) if match else None


def infer_styles(params: dict, mode: str, extract: Callable[[str, str], tuple[list[str], str, str]]) -> dict:
    """A1111's `infotext_styles` for a pasted infotext's parameters (in place, and returned): the
    text of the styles the prompts carry is taken out of them ("Discard", "Apply", "Apply if any";
    "Ignore" leaves them), and the styles' names go to "Styles array" ("Apply": always, "Apply if
    any": when one was found). The hires prompts are cut the same way when they carry the same
    styles (infotexts from A1111 1.8.0 on, and any that names no A1111 version); when they carry
    others, nothing is changed."""
    if mode == "Ignore" or mode not in INFOTEXT_STYLES:
        return params
    prompt, negative = params.get("Prompt", ""), params.get("Negative prompt", "")
    found, prompt_no_styles, negative_no_styles = extract(prompt, negative)
    same = True
    version = _version(params.get("Version"))
    if ("Hires prompt" in params or "Hires negative prompt" in params) and (version is None
                                                                            or version > _HIRES_STYLES_SINCE):
        hr_prompt = params.get("Hires prompt") or prompt
        hr_negative = params.get("Hires negative prompt") or negative
        hr_found, hr_prompt_no_styles, hr_negative_no_styles = extract(hr_prompt, hr_negative)
        same = hr_found == found
        if same:
            params["Hires prompt"] = "" if hr_prompt_no_styles == prompt_no_styles else hr_prompt_no_styles
            params["Hires negative prompt"] = "" if hr_negative_no_styles == negative_no_styles else hr_negative_no_styles
    if same:
        params["Prompt"], params["Negative prompt"] = prompt_no_styles, negative_no_styles
        if mode == "Apply" or (mode == "Apply if any" and found):
            params["Styles array"] = found
    return params


def _expand(patterns: list[Path | str]) -> tuple[Path, list[Path]]:
    """(default file, every file in order): a pattern with * or ? stands for the files it
    matches; the default is the first path, or a pattern's first match, else its folder's styles.csv."""
    files: list[Path] = []
    default: Path | None = None
    for pattern in patterns:
        text = str(pattern)
        if any(c in Path(text).name for c in "*?"):
            matches = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
            if default is None:
                default = matches[0] if matches else Path(text).parent / "styles.csv"
                files.append(default)
            files += matches
        else:
            files.append(Path(text))
            if default is None:
                default = Path(text)
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return default or Path("styles.csv"), unique


class StyleDatabase:
    def __init__(self, paths: list[Path | str] | Path | str):
        self.patterns = list(paths) if isinstance(paths, (list, tuple)) else [paths]
        if not self.patterns:
            raise ValueError("StyleDatabase needs at least one styles file")
        self._lock = threading.RLock()
        self._styles: dict[str, PromptStyle] = {}
        self._shadowed: list[PromptStyle] = []  # same name in a later file: kept in its file, unused
        self._stamps: dict[Path, tuple[int, int] | None] = {}
        self.default_path, self.files = _expand(self.patterns)
        self.reload()

    # -- reading -----------------------------------------------------------------------
    def reload(self) -> None:
        """Read every styles file again (patterns are matched again too)."""
        with self._lock:
            self.default_path, self.files = _expand(self.patterns)
            styles: dict[str, PromptStyle] = {}
            shadowed: list[PromptStyle] = []
            for path in self.files:
                for style in _read_csv(path):
                    if style.name in styles:  # the later one wins, in its own place in the order
                        shadowed.append(styles.pop(style.name))
                    styles[style.name] = style
            self._styles = styles
            self._shadowed = shadowed
            self._stamps = self._current_stamps()

    def reload_if_changed(self) -> bool:
        """Reload when a file was written, created or removed since the last read."""
        with self._lock:
            if _expand(self.patterns)[1] == self.files and self._current_stamps() == self._stamps:
                return False
            self.reload()
            return True

    def _current_stamps(self) -> dict[Path, tuple[int, int] | None]:
        stamps = {}
        for path in self.files:
            try:
                st = path.stat()
                stamps[path] = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamps[path] = None
        return stamps

    def names(self) -> list[str]:
        with self._lock:
            return list(self._styles)

    def items(self) -> list[PromptStyle]:
        with self._lock:
            return list(self._styles.values())

    def get(self, name: str) -> PromptStyle | None:
        with self._lock:
            return self._styles.get(name)

    # -- applying ----------------------------------------------------------------------
    def resolve(self, names: Iterable[str] | None) -> list[PromptStyle]:
        """The named styles in order; an unknown name (after a re-read of the files) is a
        RequestError on the `styles` field that names it."""
        names = [n for n in (names or []) if n]
        if not names:
            return []
        missing = [n for n in names if self.get(n) is None]
        if missing:
            self.reload_if_changed()
            missing = [n for n in names if self.get(n) is None]
        if missing:
            known = ", ".join(f"'{n}'" for n in self.names()) or "none"
            which = ", ".join(f"'{n}'" for n in missing)
            raise RequestError("styles", f"unknown style {which}; known styles: {known}")
        return [self.get(n) for n in names]

    def apply(self, prompt: str, negative_prompt: str, names: Iterable[str] | None) -> tuple[str, str]:
        styles = self.resolve(names)
        return (apply_styles_to_prompt(prompt, [s.prompt for s in styles]),
                apply_styles_to_prompt(negative_prompt, [s.negative_prompt for s in styles]))

    def apply_to_fields(self, fields: dict[str, Any], names: Iterable[str] | None) -> dict[str, Any]:
        """Request keyword arguments with the prompts expanded by the styles (a new dict)."""
        styles = self.resolve(names)
        if not styles:
            return dict(fields)
        out = dict(fields)
        for field_name, part, always in STYLED_FIELDS:
            value = out.get(field_name)
            if not always and not value:
                continue
            out[field_name] = apply_styles_to_prompt(value or "", [getattr(s, part) for s in styles])
        return out

    def apply_to_request(self, request: R, names: Iterable[str] | None) -> R:
        """A copy of a GenerationRequest / Img2ImgRequest with its prompts expanded."""
        if not self.resolve(names):
            return request
        current = {name: getattr(request, name) for name, _, _ in STYLED_FIELDS if hasattr(request, name)}
        styled = self.apply_to_fields(current, names)
        return dataclasses.replace(request, **{k: v for k, v in styled.items() if k in current})

    def extract(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The styles a prompt pair carries (A1111's extract_styles_from_prompt, for pasted
        infotext): (names in the order they were applied, prompt, negative) with their text removed."""
        found: list[str] = []
        candidates = [s for s in self.items() if s.prompt or s.negative_prompt]
        while True:
            for style in candidates:
                ok_p, new_prompt = extract_style_text(style.prompt, prompt)
                ok_n, new_negative = extract_style_text(style.negative_prompt, negative_prompt)
                if ok_p and ok_n:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    found.append(style.name)
                    break
            else:
                return list(reversed(found)), prompt, negative_prompt

    # -- writing -----------------------------------------------------------------------
    def save_style(self, name: str, prompt: str, negative_prompt: str) -> PromptStyle:
        """Add a style (or replace the one of that name, in its own file) and save that file."""
        name = (name or "").strip()
        if not name:
            raise RequestError("name", "a style needs a name")
        if name.startswith("#"):
            raise RequestError("name", "a style name cannot start with '#' (such rows are comments in styles.csv)")
        with self._lock:
            self.reload_if_changed()
            old = self._styles.get(name)
            style = PromptStyle(name, prompt or "", negative_prompt or "", old.path if old else self.default_path)
            self._styles[name] = style
            self._write(style.path)
            return style

    def delete_style(self, name: str) -> bool:
        with self._lock:
            self.reload_if_changed()
            style = self._styles.pop(name, None)
            if style is None:
                return False
            self._write(style.path)
            return True

    def save(self) -> None:
        """Write every file that holds styles, and the default file."""
        with self._lock:
            paths = {s.path or self.default_path for s in self._styles.values()} | {self.default_path}
            for path in sorted(paths, key=str):
                self._write(path)

    def _write(self, path: Path) -> None:
        """One file: its styles, in order, through a temporary file; the old one kept as .bak."""
        rows = [s.as_dict() for s in [*self._styles.values(), *self._shadowed] if (s.path or self.default_path) == path]
        if path.exists():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        with atomic_write.replacing(path, "w", encoding="utf-8-sig", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        st = path.stat()
        self._stamps[path] = (st.st_mtime_ns, st.st_size)


def _read_csv(path: Path) -> list[PromptStyle]:
    if not path.is_file():
        return []
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file, skipinitialspace=True)
            styles = []
            for row in reader:
                name = (row.get("name") or "").strip()
                if not name or name.startswith("#"):
                    continue
                prompt = row.get("prompt") if "prompt" in row else row.get("text")
                styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
            return styles
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        print(f"[easel] could not read styles from {path}: {exc}")
        return []
