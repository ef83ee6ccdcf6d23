"""A1111's `modules.errors`: report a problem (with its traceback) without stopping anything.

Extensions call `errors.report(...)` and `errors.display(e, task)`; the scripting runtime
(modules.scripts, modules.script_callbacks) reports every failing hook through `report_for`, which
credits the extension the code belongs to, so its name shows in the console and in the Extensions
tab (modules.extensions.report_error). The last reports are kept in `exception_records` for the UI.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import traceback
from collections import deque

exception_records: deque = deque(maxlen=50)  # (message, traceback text), newest last
_lock = threading.Lock()
_already_displayed: set[str] = set()


def _record(message: str, text: str) -> None:
    with _lock:
        exception_records.append((message, text))


def get_exceptions() -> list[tuple[str, str]]:
    with _lock:
        return list(exception_records)


def format_exception(exc: BaseException | None = None) -> str:
    if exc is None:
        return traceback.format_exc()
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def report(message: str, *, exc_info: bool = False) -> None:
    """Print `message` (and the exception being handled, with exc_info) to stderr and keep it."""
    text = traceback.format_exc() if exc_info else ""
    if text.strip() == "NoneType: None":
        text = ""
    print(message, file=sys.stderr, flush=True)
    if text:
        print(textwrap.indent(text, "    "), file=sys.stderr, flush=True)
    _record(message, text)


def display(e: BaseException, task: str, *, full_traceback: bool = False) -> None:
    message = f"{task or 'error'}: {type(e).__name__}"
    print(message, file=sys.stderr, flush=True)
    text = format_exception(e)
    print(text, file=sys.stderr, flush=True)
    _record(message, text)


def display_once(e: BaseException, task: str) -> None:
    if task in _already_displayed:
        return
    display(e, task)
    _already_displayed.add(task)


def run(code, task: str):
    try:
        code()
    except Exception as e:  # noqa: BLE001 - reported, not raised (A1111)
        display(e, task)


def print_error_explanation(message: str) -> None:
    lines = message.strip().split("\n")
    width = max(len(line) for line in lines)
    print("=" * width, file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    print("=" * width, file=sys.stderr, flush=True)


def owner_of(filename: str | None) -> str | None:
    """The name of the extension a file belongs to, None for Easel's own files."""
    if not filename:
        return None
    try:
        from modules import extensions
    except Exception:  # noqa: BLE001 - reporting must never fail
        return None
    extension = extensions.find_extension(filename)
    return extension.name if extension is not None else None


def report_for(filename: str | None, what: str) -> None:
    """Report the exception being handled as `what` of the code in `filename`, credited to its
    extension (console, `exception_records` and the extension's errors in the Extensions tab)."""
    owner = owner_of(filename)
    prefix = f"[extension {owner}] " if owner else ""
    report(f"{prefix}Error {what} ({filename or 'unknown file'})", exc_info=True)
    if owner:
        try:
            from modules import extensions

            exc = sys.exc_info()[1]
            extensions.report_error(owner, f"{what}: {type(exc).__name__}: {exc}" if exc else what)
        except Exception:  # noqa: BLE001 - reporting must never fail
            pass
