"""The dispatcher: generation jobs, first come first served, onto a pool of workers.

Nothing here knows Ray: a `Backend` starts, runs and replaces workers (modules.workers.ray_queue for
Ray actors, benchmarks/job_queue.py for no-op ones). The rules:

- a job waits in one FIFO queue; when a worker is free the first job goes to a free worker that
  already has the job's checkpoint loaded, else to the least loaded free one (fewest seconds busy,
  then fewest jobs), so checkpoints are not swapped back and forth needlessly;
- every worker has one thread here that hands it one job at a time and waits for the answer;
- a worker that dies under a job (`WorkerLost`) is replaced by a new one and the job goes back to the
  front of the queue to run again elsewhere; the backend is told to drop what the dead attempt had
  saved. A job's future is resolved once, by the attempt that finished, so every job completes
  exactly once; a job whose workers die `max_attempts` times fails.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable


class WorkerLost(Exception):
    """The worker process died (or became unreachable) while it held a job."""


@dataclass
class Job:
    id: str
    kind: str
    payload: Any  # what the backend sends to the worker (request, overrides, scripts, options)
    checkpoint: str | None  # the checkpoint file the job runs on (affinity), None: unknown
    future: Future = field(default_factory=Future)
    attempt: int = 0
    queued_at: float = field(default_factory=time.time)
    cancelled: bool = False


@dataclass
class Slot:
    """One worker as the dispatcher sees it."""

    index: int
    worker: Any
    name: str
    checkpoint: str | None = None  # what it has loaded, as its last job reported
    job: Job | None = None
    jobs_done: int = 0
    busy_s: float = 0.0
    replaced: int = 0  # how many times its worker died and was replaced
    wake: threading.Event = field(default_factory=threading.Event)


class Backend:
    """How workers are made and used. `run` returns (result, checkpoint loaded after the job) or raises
    WorkerLost; any other exception is the job's own failure."""

    def start_worker(self, index: int) -> Any:
        raise NotImplementedError

    def worker_name(self, worker: Any, index: int) -> str:
        return f"worker-{index}"

    def run(self, worker: Any, job: Job) -> tuple[Any, str | None]:
        raise NotImplementedError

    def lost(self, worker: Any, job: Job) -> None:
        """A worker died under `job` (attempt `job.attempt`): drop what that attempt left behind."""

    def stop_worker(self, worker: Any) -> None:
        pass


class Dispatcher:
    def __init__(self, backend: Backend, workers: int, max_attempts: int = 3,
                 on_start: Callable[[Job, Slot], None] | None = None,
                 on_requeue: Callable[[Job], None] | None = None):
        if workers < 1:
            raise ValueError(f"need at least one worker, got {workers}")
        self.backend = backend
        self.max_attempts = max_attempts
        self.on_start = on_start or (lambda job, slot: None)
        self.on_requeue = on_requeue or (lambda job: None)
        self._lock = threading.Condition()
        self.pending: collections.deque[Job] = collections.deque()
        self.slots: list[Slot] = []
        self._closed = False
        for index in range(workers):
            worker = backend.start_worker(index)
            self.slots.append(Slot(index, worker, backend.worker_name(worker, index)))
        for slot in self.slots:
            threading.Thread(target=self._serve, args=(slot,), name=f"easel-dispatch-{slot.index}", daemon=True).start()

    # -- submitting and following ---------------------------------------------------------
    def submit(self, job: Job) -> Future:
        with self._lock:
            self.pending.append(job)
            self._assign()
        return job.future

    def position(self, job_id: str) -> int | None:
        with self._lock:
            for n, job in enumerate(self.pending):
                if job.id == job_id:
                    return n + 1
        return None

    def slot_of(self, job_id: str) -> Slot | None:
        with self._lock:
            return next((s for s in self.slots if s.job is not None and s.job.id == job_id), None)

    def cancel_queued(self, job_id: str) -> bool:
        """Drop a job that no worker has taken yet."""
        with self._lock:
            for job in self.pending:
                if job.id == job_id:
                    self.pending.remove(job)
                    job.cancelled = True
                    job.future.cancel()
                    return True
        return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for slot in self.slots:
                slot.wake.set()
        for slot in self.slots:
            self.backend.stop_worker(slot.worker)

    # -- the choice -----------------------------------------------------------------------
    def _assign(self) -> None:
        """Under the lock: give the first waiting jobs to free workers."""
        while self.pending:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self.pending.popleft()
            if job.future.cancelled():  # its caller gave up on it (the UI's Interrupt while queued)
                continue
            slot = choose(free, job.checkpoint)
            slot.job = job
            slot.wake.set()

    # -- one thread per worker --------------------------------------------------------------
    def _serve(self, slot: Slot) -> None:
        while True:
            slot.wake.wait()
            with self._lock:
                slot.wake.clear()
                job, closed = slot.job, self._closed
            if closed:
                return
            if job is None:
                continue
            if job.attempt == 0 and not job.future.set_running_or_notify_cancel():  # cancelled while queued
                with self._lock:
                    slot.job = None
                    self._assign()
                continue
            job.attempt += 1
            self.on_start(job, slot)
            began = time.perf_counter()
            try:
                result, checkpoint = self.backend.run(slot.worker, job)
            except WorkerLost as lost:
                self._replace(slot, job, lost)
                continue
            except BaseException as exc:  # the job's own failure: it ran once, and failed
                self._finish(slot, job, began, None)
                job.future.set_exception(exc)
                continue
            self._finish(slot, job, began, checkpoint)
            job.future.set_result(result)

    def _finish(self, slot: Slot, job: Job, began: float, checkpoint: str | None) -> None:
        with self._lock:
            slot.busy_s += time.perf_counter() - began
            slot.jobs_done += 1
            if checkpoint is not None:
                slot.checkpoint = checkpoint
            slot.job = None
            self._assign()

    def _replace(self, slot: Slot, job: Job, lost: WorkerLost) -> None:
        print(f"[easel] {slot.name} died during job {job.id} (attempt {job.attempt}): {lost}; replacing it")
        try:
            self.backend.lost(slot.worker, job)
        except Exception as exc:  # cleaning up must not stop the queue
            print(f"[easel] could not clean up after {slot.name}: {exc}")
        try:
            worker = self.backend.start_worker(slot.index)
        except Exception as exc:
            worker = None
            print(f"[easel] could not start a new worker in place of {slot.name}: {exc}")
        with self._lock:
            if worker is not None:
                slot.worker, slot.checkpoint = worker, None
                slot.name = self.backend.worker_name(worker, slot.index)
                slot.replaced += 1
            else:  # no replacement: this slot takes no more jobs
                self.slots.remove(slot)
            slot.job = None
            if job.attempt >= self.max_attempts or not self.slots:
                job.future.set_exception(RuntimeError(
                    f"job {job.id}: its worker died {job.attempt} times (last: {lost})"))
            else:
                self.pending.appendleft(job)  # first in line again
                self.on_requeue(job)
            self._assign()


def choose(free: list[Slot], checkpoint: str | None) -> Slot:
    """A free worker with the checkpoint loaded, else the least loaded free one."""
    if checkpoint is not None:
        warm = [s for s in free if s.checkpoint == checkpoint]
        if warm:
            free = warm
    return min(free, key=lambda s: (s.busy_s, s.jobs_done, s.index))
