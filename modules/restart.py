"""Restarting the running server in place (A1111's `modules.restart` names).

The Extensions tab's "Apply and restart UI" needs a fresh process: enabled extensions' scripts,
preload.py flags and install.py files are only read at start. `webui.main` (the one code path that
owns the process) calls `allow_restart()`; a server built in-process (tests) is never restarted.

`restart_program()` replaces the process with the same command line (os.execv: same pid, same
stdout, the same flags); with launch.py as the entry point the new process runs the launch steps
again, so newly enabled extensions' install.py files run too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

_command: list[str] | None = None


def allow_restart(command: list[str] | None = None) -> None:
    """Mark this process as restartable with `command` (default: the command line it started with)."""
    global _command
    original = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    _command = command or [sys.executable, *original[1:]]


def is_restartable() -> bool:
    return _command is not None


def restart_program(delay: float = 1.0) -> None:
    """Replace this process with a fresh one running the same command, after `delay` seconds (so
    that the answer of the request that asked for it gets out first)."""
    if _command is None:
        raise RuntimeError("this Easel process cannot restart itself (it was not started by webui.main)")
    time.sleep(delay)
    print(f"[easel] restarting: {' '.join(_command)}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(_command[0], _command)


def schedule_restart(submit: Callable[[str, Callable[[], None]], object] | None = None, delay: float = 1.0) -> None:
    """Restart once the jobs already queued are done: `submit(name, fn)` queues `fn` on the worker
    (Engine.queue.submit), so the restart runs after them; without it, on a thread of its own."""
    if submit is not None:
        submit("restart", lambda: restart_program(delay))
    else:
        threading.Thread(target=restart_program, args=(delay,), name="easel-restart", daemon=True).start()


_stop: Callable[[], None] | None = None


def allow_stop(stop: Callable[[], None]) -> None:
    """`stop()` ends the server gracefully (webui.main: uvicorn's should_exit); the process then
    exits with status 0."""
    global _stop
    _stop = stop


def stop_server() -> bool:
    """Ask the server to stop (A1111's state.server_command = "stop"); False where this process
    does not own its server (an app served by a test)."""
    if _stop is None:
        return False
    _stop()
    return True


def kill_program(delay: float = 0.2) -> None:
    """A1111's stop_program: end the process with status 0 at once (after `delay`, so that the
    answer of the request that asked for it gets out first)."""
    def kill():
        time.sleep(delay)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=kill, name="easel-kill", daemon=True).start()
