"""The single GPU worker and the state of the job it is running.

Every generation, from the UI or the API, is a task on one worker thread, so two
requests never run on the model at the same time. `JobState` holds A1111's `state`
fields (job, job_count, job_no, sampling_step, interrupted, skipped, ...), which the
progress endpoint and the UI's progress bar read.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import os
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Callable

import torch

from modules.core.pipeline import JobObserver

from .job_registry import QUEUED, JobRegistry


class JobState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.console = None  # a ConsoleProgress (console_progress.py) when the server prints progress bars
        self.reset()

    def reset(self) -> None:
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.job_timestamp = "0"
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.textinfo: str | None = None
        self.time_start: float | None = None
        self.current_latent: torch.Tensor | None = None
        self.current_image = None
        self.id_live_preview = 0
        self.full_previews = False  # the running job decodes "Full" live previews
        self.full_preview = None  # the last one (decoded on the job's thread) and its preview id
        self.full_preview_step = -1
        self.task_id: str | None = None

    def begin(self, job: str, task_id: str | None = None) -> None:
        with self._lock:
            self.reset()
            self.job = job
            self.task_id = task_id
            self.job_count = 1
            self.time_start = time.time()
            self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")

    def end(self) -> None:
        if self.console is not None:
            self.console.end()
        with self._lock:
            self.job = ""
            self.job_count = 0
            self.sampling_step = 0
            self.current_latent = None
            self.full_preview, self.full_previews = None, False
            self.time_start = None
            self.task_id = None

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    @property
    def busy(self) -> bool:
        return bool(self.job)

    def progress(self) -> tuple[float, float | None]:
        """(fraction done, seconds left) the way A1111 estimates them."""
        if not self.busy or self.job_count == 0:
            return 0.0, None
        frac = self.job_no / self.job_count
        if self.sampling_steps:
            frac += self.sampling_step / self.sampling_steps / self.job_count
        frac = min(frac, 1.0)
        elapsed = time.time() - (self.time_start or time.time())
        eta = (elapsed / frac - elapsed) if frac > 0 else None
        return frac, eta

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }


class StateObserver(JobObserver):
    """Feeds the sampling loop's progress into the shared JobState."""

    def __init__(self, state: JobState, jobs: JobRegistry | None = None, full_preview_every: int | None = None,
                 full_preview_grid: bool = False):
        self.state = state
        self.jobs = jobs if jobs is not None else JobRegistry()  # the generation jobs, for the job API
        self.full_preview_every = full_preview_every  # "Full" live previews every N steps (None: none)
        self.full_preview_all_rows = full_preview_grid  # show_progress_grid: the batch as a grid
        self._last_full = 0

    def begin_batch(self, batch_index: int, batch_count: int, steps: int) -> None:
        s = self.state
        s.job_count = batch_count
        s.job_no = batch_index
        s.sampling_step = 0
        s.sampling_steps = steps
        s.skipped = False  # a skip ends one batch only
        s.full_preview, s.full_preview_step, self._last_full = None, -1, 0
        s.full_previews = self.full_preview_every is not None
        s.textinfo = f"Batch {batch_index + 1} out of {batch_count}"
        if s.console is not None:
            s.console.begin_batch(batch_index, batch_count, steps)

    def on_step(self, step: int, total: int, latents, denoised) -> None:
        self.state.sampling_step = step + 1
        self.state.sampling_steps = total
        self.state.current_latent = denoised if denoised is not None else latents
        self.state.id_live_preview += 1  # a new step image: previews compare this id
        if self.state.console is not None:
            self.state.console.step(step, total)

    def full_preview_due(self, step: int) -> bool:
        every = self.full_preview_every
        if every is None:
            return False
        if step + 1 < self._last_full:  # a new batch or pass counts from its start
            self._last_full = 0
        return step + 1 - self._last_full >= every

    def on_full_preview(self, images: list) -> None:
        from modules.core.image_io import image_grid

        self._last_full = self.state.sampling_step
        self.state.full_preview_step = self.state.id_live_preview
        self.state.full_preview = images[0] if len(images) == 1 else image_grid(images, batch_size=1)

    def interrupted(self) -> bool:
        return self.state.interrupted

    def skipped(self) -> bool:
        return self.state.skipped

    def stopping_generation(self) -> bool:
        """A1111's stop_generating (the page's Interrupt under interrupt_after_current): no next picture."""
        return self.state.stopping_generation


class WorkQueue:
    """One worker thread; tasks run strictly one after another, in order."""

    def __init__(self, state: JobState, jobs: JobRegistry | None = None):
        self.state = state
        self.jobs = jobs if jobs is not None else JobRegistry()  # the generation jobs, for the job API
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self.pending = 0
        # task ids, as A1111's progress module keeps them (/internal/progress): waiting (id -> time
        # queued, in order) and the last 16 finished
        self.queued: dict[str, float] = {}
        self.finished: collections.deque[str] = collections.deque(maxlen=16)
        self._ids_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="easel-gpu-worker", daemon=True)
        self._thread.start()

    def submit(self, name: str, fn: Callable[..., Any], *args: Any, task_id: str | None = None) -> Future:
        future: Future = Future()
        task_id = task_id or f"task({next(self._ids)})"
        with self._ids_lock:
            self.pending += 1
            self.queued[task_id] = time.time()
        self._queue.put((name, task_id, fn, args, future))
        return future

    def submit_job(self, kind: str, fn: Callable[..., Any], request: Any, overrides: dict, scripts: Any,
                   task_id: str | None = None) -> Future:
        """A generation job: `fn(kind, request, overrides, scripts)` on the worker, recorded in
        `jobs` under its task id (the job API lists, follows and cancels it)."""
        task_id = task_id or f"task({next(self._ids)})"
        record = self.jobs.add(task_id, kind, request)
        future = self.submit(kind, fn, kind, request, overrides, scripts, task_id=task_id)
        self.jobs.bind(record, future)
        return future

    # -- the job API's view of one job ----------------------------------------------------
    def position(self, job_id: str) -> int | None:
        """1 for the next task to run (loads and other tasks queued before it count), None when
        the job is not waiting."""
        with self._ids_lock:
            waiting = sorted(self.queued.items(), key=lambda item: item[1])
        ids = [task for task, _ in waiting]
        return ids.index(job_id) + 1 if job_id in ids else None

    def cancel_job(self, job_id: str) -> bool:
        """A queued job is dropped, a running one interrupted (it ends with what it made so far);
        False when the job has already ended or is unknown."""
        record = self.jobs.get(job_id)
        if record is None or record.ended:
            return False
        record.cancel_requested = True
        if record.status == QUEUED and record.future is not None and record.future.cancel():
            with self._ids_lock:
                if self.queued.pop(job_id, None) is not None:
                    self.pending -= 1
            return True
        self.interrupt_job(job_id)
        return True

    def interrupt_job(self, job_id: str) -> None:
        if self.state.task_id == job_id:
            self.state.interrupt()

    def skip_job(self, job_id: str) -> None:
        """Skip the running batch of the job (A1111's Skip): its next batch, if any, still runs."""
        if self.state.task_id == job_id:
            self.state.skip()

    def running_ids(self) -> list[str]:
        """The tasks running now, on any worker (here: the worker thread's one, if any)."""
        task = self.state.task_id
        return [task] if task is not None and self.state.busy else []

    def interrupt_all(self) -> None:
        """A1111's Interrupt with no job named (`/sdapi/v1/interrupt`): whatever runs stops."""
        self.state.interrupt()

    def skip_all(self) -> None:
        self.state.skip()

    def live(self, job_id: str) -> dict | None:
        """The running job's progress (A1111's state fields), None when it is not running here."""
        state = self.state
        if state.task_id != job_id or not state.busy:
            return None
        frac, eta = state.progress()
        return {"progress": frac, "eta": eta, "step": state.sampling_step, "steps": state.sampling_steps,
                "batch": state.job_no, "batch_count": state.job_count, "textinfo": state.textinfo,
                "state": state.as_dict()}

    def live_preview(self, job_id: str, previews) -> tuple[int, Any]:
        """The running job's live preview as the page and /progress show it: (its id, the picture) from
        `previews` (services.live_previews.LivePreviews, which follows the options); (-1, None) when
        the job is not running here."""
        if self.state.task_id != job_id or not self.state.busy:
            return -1, None
        return previews.current()

    def preview(self, job_id: str, render: Callable[[Any], Any]) -> Any:
        """The running job's current picture: `render(latent)` of its latest step; None before the
        first step or when it is not running."""
        latent = self.state.current_latent if self.state.task_id == job_id else None
        return render(latent) if latent is not None else None

    def workers(self) -> list[dict]:
        """The workers and what they do: here the one worker thread of this process."""
        return [{"name": "local", "pid": os.getpid(), "checkpoint": None, "job": self.state.task_id,
                 "jobs_done": len(self.finished), "busy_s": None, "replaced": 0}]

    def _run(self) -> None:
        while True:
            name, task_id, fn, args, future = self._queue.get()
            with self._ids_lock:
                self.pending -= 1
                self.queued.pop(task_id, None)
            if not future.set_running_or_notify_cancel():
                continue
            record = self.jobs.mark_running(task_id)
            self.state.begin(name, task_id)
            if record is not None and record.cancel_requested:  # cancelled as it left the queue
                self.state.interrupt()
            result, error = None, None
            try:
                result = fn(*args)
            except BaseException as exc:  # the worker must survive anything a task does
                if not isinstance(exc, ValueError):
                    traceback.print_exc()
                error = exc
            # the job is over (state idle, task finished) before its caller hears of it, so a
            # /progress poll right after a response never reports it as running
            self.state.end()
            with self._ids_lock:
                self.finished.append(task_id)
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
