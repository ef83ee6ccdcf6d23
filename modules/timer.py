"""A1111's `modules.timer`: how long the start-up steps took (`startup_timer`), for the
`Startup time: ...` line printed once the server answers. Extensions may record steps of their own."""

from __future__ import annotations

import contextlib
import time


class Timer:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = self.last = time.time()
        self.records: dict[str, float] = {}
        self.total = 0.0
        self._prefix = ""

    def elapsed(self) -> float:
        now = time.time()
        taken, self.last = now - self.last, now
        return taken

    def record(self, category: str, extra_time: float = 0.0, disable_log: bool = False) -> None:
        """Add the time since the last record to `category` (A1111's signature)."""
        taken = self.elapsed() + extra_time
        name = self._prefix + category
        self.records[name] = self.records.get(name, 0.0) + taken
        self.total = time.time() - self.start

    @contextlib.contextmanager
    def subcategory(self, name: str):
        """Records made inside are kept as 'name/step'; 'name' gets the time of the whole block."""
        self.elapsed()
        outer, self._prefix = self._prefix, f"{self._prefix}{name}/"
        began = time.time()
        try:
            yield
        finally:
            self._prefix = outer
            self.records[outer + name] = self.records.get(outer + name, 0.0) + time.time() - began
            self.last = time.time()

    def summary(self) -> str:
        """'7.3s (build engine: 1.2s, load scripts: 0.4s, ...)': the steps of 0.1 s or more."""
        self.total = time.time() - self.start
        steps = [f"{name}: {taken:.1f}s" for name, taken in self.records.items() if taken >= 0.1 and "/" not in name]
        return f"{self.total:.1f}s" + (f" ({', '.join(steps)})" if steps else "")

    def dump(self) -> dict:
        return {"total": self.total, "records": dict(self.records)}


startup_timer = Timer()  # started when first imported: launch.py and webui.py import it first thing
