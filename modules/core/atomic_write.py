"""Replace a file all at once: write a temporary file of its own in the same folder, then `os.replace`.

Readers see the old file or the new one, never half of one. Every write gets a unique temporary
name (`tempfile.mkstemp`): with one shared `name.tmp`, two writers at the same time moved each
other's file away (FileNotFoundError) or replaced the file with a mix of both. A failure removes
the temporary file and leaves the old file as it was. Serialising writers of the same data (so
the last one to snapshot is the last one to land) is the caller's job: its lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp gives 0600)


@contextlib.contextmanager
def temporary_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary file name next to `path` for a writer that needs a name (PIL's save);
    it becomes `path` when the block ends without an error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a leading dot and .tmp: folder scans for images, styles or models pass it by
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(temp)
        if target.exists():  # keep the permissions the file had
            shutil.copymode(target, temp)
        else:
            os.chmod(temp, _NEW_FILE_MODE)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
              newline: str | None = None) -> Iterator[IO]:
    """`with replacing(path) as f: f.write(...)`: `path` is replaced by what was written when the
    block ends without an error (mode "w" for text, "wb" for bytes)."""
    if "b" in mode:
        encoding = newline = None
    with temporary_path(path) as temp:
        with open(temp, mode, encoding=encoding, newline=newline) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with replacing(path, "w", encoding=encoding) as file:
        file.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path, "wb") as file:
        file.write(data)
