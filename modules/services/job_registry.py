"""Every generation job the queue has seen: its state, and its result for a while after it ended.

A job is a txt2img or img2img request submitted through `Engine.submit_txt2img/submit_img2img`,
whoever sent it (the UI, A1111's `/sdapi/v1` routes, the asynchronous job API), so all of them show
up in one list under the task id they were queued with. A record goes queued -> running -> done,
failed or cancelled; its result (the pictures, infotexts and saved paths) is kept `keep_s` seconds
after it ended (`--job-retention`), then the record is dropped (the pictures stay on disk).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)


@dataclass
class JobRecord:
    id: str
    kind: str  # "txt2img" or "img2img"
    request: Any  # the core GenerationRequest / Img2ImgRequest
    created: float = field(default_factory=time.time)
    status: str = QUEUED
    started: float | None = None
    finished: float | None = None
    result: Any = None  # the GenerationResult once done (or cancelled after it started)
    error: BaseException | None = None
    cancel_requested: bool = False
    worker: str | None = None  # which worker ran it ("local" for the single worker thread)
    attempts: int = 0  # how many times a worker started it (more than 1: a worker died under it)
    meta: dict = field(default_factory=dict)  # what the submitter wants back with the result (API body)
    future: Future | None = None

    @property
    def checkpoint(self) -> str | None:
        return getattr(self.request, "checkpoint", None)

    @property
    def ended(self) -> bool:
        return self.status in FINAL


class JobRegistry:
    """Job records by task id, in submission order; finished ones expire after `keep_s` seconds and
    beyond `keep_max` finished records the oldest go first (their results hold pictures in memory)."""

    def __init__(self, keep_s: float = 3600.0, keep_max: int = 1000):
        self.keep_s = keep_s
        self.keep_max = keep_max
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._checked = 0.0  # when expire() last looked through the records

    def add(self, job_id: str, kind: str, request: Any, meta: dict | None = None) -> JobRecord:
        record = JobRecord(job_id, kind, request, meta=dict(meta or {}))
        with self._lock:
            self._records.pop(job_id, None)  # a reused id (force_task_id): the new job is the one shown
            self._records[job_id] = record
        self.expire()
        return record

    def bind(self, record: JobRecord, future: Future) -> None:
        """Follow `future`: the record ends when it does (done, failed, or cancelled while queued)."""
        record.future = future
        future.add_done_callback(lambda f: self._finished(record, f))

    def _finished(self, record: JobRecord, future: Future) -> None:
        record.finished = time.time()
        if future.cancelled():
            record.status = CANCELLED
            return
        error = future.exception()
        if error is not None:
            record.error, record.status = error, FAILED
            return
        record.result = future.result()
        # a running job that was cancelled stops early: what it made so far is kept with it
        record.status = CANCELLED if record.cancel_requested else DONE

    def mark_running(self, job_id: str, worker: str = "local") -> JobRecord | None:
        record = self.get(job_id)
        if record is not None and not record.ended:
            record.status, record.worker = RUNNING, worker
            record.started = record.started or time.time()
            record.attempts += 1
        return record

    def mark_queued(self, job_id: str) -> None:
        """Back in the queue (its worker died under it): it runs again elsewhere."""
        record = self.get(job_id)
        if record is not None and not record.ended:
            record.status, record.worker = QUEUED, None

    def get(self, job_id: str) -> JobRecord | None:
        self.expire()
        with self._lock:
            return self._records.get(job_id)

    def list(self) -> list[JobRecord]:
        self.expire()
        with self._lock:
            return list(self._records.values())

    def queued_ids(self) -> list[str]:
        """The waiting jobs' ids, first to run first."""
        return [r.id for r in self.list() if r.status == QUEUED]

    def expire(self, now: float | None = None) -> None:
        """Drop what is too old or too many; looks through the records at most once a second
        unless there are more than `keep_max` (a burst of submissions costs no scan each)."""
        now = time.time() if now is None else now
        if now - self._checked < 1.0 and len(self._records) <= self.keep_max:
            return
        with self._lock:
            self._checked = now
            ended = [r for r in self._records.values() if r.ended and r.finished is not None]
            too_old = {r.id for r in ended if now - r.finished > self.keep_s}
            extra = len(ended) - len(too_old) - self.keep_max
            if extra > 0:
                kept = sorted((r for r in ended if r.id not in too_old), key=lambda r: r.finished)
                too_old.update(r.id for r in kept[:extra])
            for job_id in too_old:
                del self._records[job_id]
