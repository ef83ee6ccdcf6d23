"""A1111's console progress bars: while a generation runs, one tqdm bar over the sampling steps
of the current batch and one "Total progress" bar over the whole job, on stderr (where tools that
watch A1111's console read them). `--disable-console-progressbars` leaves them out; the
multiple_tqdm setting off, the second one."""

from __future__ import annotations

import sys
import threading
from typing import Callable, TextIO

from tqdm import tqdm


class ConsoleProgress:
    def __init__(self, file: TextIO | None = None, total_bar: Callable[[], bool] = lambda: True):
        self.file = file or sys.stderr
        self.total_bar = total_bar  # A1111's multiple_tqdm, read as each job starts
        self._lock = threading.Lock()
        self._steps: tqdm | None = None
        self._total: tqdm | None = None

    def begin_batch(self, batch_index: int, batch_count: int, steps: int) -> None:
        with self._lock:
            self._close_steps()
            if self._total is None and self.total_bar():
                self._total = tqdm(total=batch_count * steps, desc="Total progress", position=1, file=self.file,
                                   dynamic_ncols=False, ncols=100)

    def step(self, step: int, total: int) -> None:
        with self._lock:
            if self._steps is None or self._steps.total != total or step + 1 <= self._steps.n:
                self._close_steps()  # a new pass (a batch, the hires pass)
                self._steps = tqdm(total=total, file=self.file, position=0, ncols=100)
            self._steps.update(step + 1 - self._steps.n)
            if self._total is not None:
                self._total.update(1)

    def end(self) -> None:
        with self._lock:
            self._close_steps()
            if self._total is not None:
                self._total.close()
                self._total = None

    def _close_steps(self) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None


def console_line(text: str) -> None:
    """A line on stdout that does not land inside a running progress bar: tqdm clears the bars,
    writes the line, then draws them again below it."""
    tqdm.write(text, file=sys.stdout)
