"""Every generation job the queue has seen: its state, and its result for a while after it ended.

A job is a txt2img or img2img request submitted through `Engine.submit_txt2img/submit_img2img`,
whoever sent it (the UI, A1111's `/sdapi/v1` routes, the asynchronous job API), so all of them show
up in one list under the task id they were queued with. A record goes queued -> running -> done,
failed or cancelled; its result (the pictures, infotexts and saved paths) is kept `keep_s` seconds
after it ended (`--job-retention`), then the record is dropped (the pictures the job saved to the
output folders stay on disk).

On disk too (`persist`, which the job API turns on with the data folder's `jobs/`): when a job ends
its record is written to `jobs/<id>.json` in the form the job API answers it (status, info, error,
times, the result's picture files: the files the job saved, else PNG copies written to `jobs/<id>/`).
The records there are loaded at start, so a job can still be read after a restart, and both the
JSON and the copies are deleted when the record expires.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
    stored: dict | None = None  # a record read back from disk (an earlier run's): the answer as written

    @property
    def checkpoint(self) -> str | None:
        if self.stored is not None:
            return self.stored.get("checkpoint")
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
        self.folder: Path | None = None  # persist(): where finished records are written
        self._encode: Callable[[JobRecord, Path], dict] | None = None

    # -- on disk ------------------------------------------------------------------------------
    def persist(self, folder: Path, encode: Callable[[JobRecord, Path], dict]) -> None:
        """Write every record that ends to `folder` as `encode(record, pictures_folder)` (a JSON-able
        dict with at least id, kind, status, created, finished; encode saves the pictures that need
        a copy into pictures_folder), and load the records an earlier run wrote there."""
        folder.mkdir(parents=True, exist_ok=True)
        loaded = []
        for path in folder.glob("*.json"):
            try:
                data = json.loads(path.read_text(encoding="utf8"))
                record = JobRecord(str(data["id"]), data["kind"], None, created=float(data["created"]),
                                   status=data["status"], started=data.get("started"),
                                   finished=float(data["finished"]), worker=data.get("worker"),
                                   attempts=int(data.get("attempts") or 0), stored=data)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                print(f"[easel] ignored the job record {path}: {exc}")
                continue
            if record.ended:
                loaded.append(record)
        with self._lock:
            self.folder, self._encode = folder, encode
            known = dict(self._records)
            self._records = {r.id: r for r in sorted(loaded, key=lambda r: r.created) if r.id not in known}
            self._records.update(known)  # (a job of this run keeps its id)
        self.expire(force=True)

    def _stem(self, job_id: str) -> str:
        if re.fullmatch(r"[A-Za-z0-9_()\-][A-Za-z0-9_.()\-]{0,100}", job_id):
            return job_id
        digest = hashlib.sha1(job_id.encode("utf8")).hexdigest()[:10]
        return f"{re.sub(r'[^A-Za-z0-9_.()-]', '_', job_id)[:80]}-{digest}"

    def _write(self, record: JobRecord) -> None:
        folder, encode = self.folder, self._encode
        if folder is None or encode is None or record.stored is not None:
            return
        stem = self._stem(record.id)
        pictures = folder / stem
        shutil.rmtree(pictures, ignore_errors=True)  # a reused id's earlier pictures
        try:
            data = encode(record, pictures)
            temporary = folder / f".{stem}.json.tmp"
            temporary.write_text(json.dumps(data), encoding="utf8")
            os.replace(temporary, folder / f"{stem}.json")
        except Exception as exc:  # the job's own answer stays in memory whatever happens here
            print(f"[easel] could not write the record of job {record.id} to {folder}: {exc}")

    def _delete(self, job_ids) -> None:
        folder = self.folder
        if folder is None:
            return
        for job_id in job_ids:
            stem = self._stem(job_id)
            (folder / f"{stem}.json").unlink(missing_ok=True)
            shutil.rmtree(folder / stem, ignore_errors=True)

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
        elif (error := future.exception()) is not None:
            record.error, record.status = error, FAILED
        else:
            record.result = future.result()
            # a running job that was cancelled stops early: what it made so far is kept with it
            record.status = CANCELLED if record.cancel_requested else DONE
        self._write(record)

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

    def expire(self, now: float | None = None, force: bool = False) -> None:
        """Drop what is too old or too many (and its files); looks through the records at most once
        a second unless there are more than `keep_max` (a burst of submissions costs no scan each)."""
        now = time.time() if now is None else now
        if not force and now - self._checked < 1.0 and len(self._records) <= self.keep_max:
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
        self._delete(too_old)
