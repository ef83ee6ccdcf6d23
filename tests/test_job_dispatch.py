"""The dispatcher of --workers ray (modules.workers.dispatch), with in-process fake workers: which
worker gets a job, a worker dying under a job, cancelling a queued job. No Ray needed."""

from __future__ import annotations

import collections
import threading
import time

import pytest

from modules.workers.dispatch import Backend, Dispatcher, Job, Slot, WorkerLost, choose


def test_a_free_worker_with_the_checkpoint_loaded_is_preferred_else_the_least_loaded():
    a = Slot(0, "a", "a", checkpoint="x.safetensors", busy_s=50.0, jobs_done=9)
    b = Slot(1, "b", "b", checkpoint="y.safetensors", busy_s=1.0, jobs_done=1)
    c = Slot(2, "c", "c", checkpoint=None, busy_s=3.0, jobs_done=1)
    assert choose([a, b, c], "x.safetensors") is a  # warm beats idle
    assert choose([a, b, c], "z.safetensors") is b  # nobody warm: the least busy
    assert choose([a, c], "y.safetensors") is c
    assert choose([a, b, c], None) is b


class FakeBackend(Backend):
    """Worker 0's first incarnation dies during its second job; every run is counted."""

    def __init__(self, job_s: float = 0.01):
        self.job_s = job_s
        self.started: list[int] = []
        self.runs: collections.Counter = collections.Counter()
        self.ran_on: dict[str, list[str]] = collections.defaultdict(list)
        self.lost_jobs: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def start_worker(self, index):
        with self.lock:
            self.started.append(index)
            return f"w{index}.{self.started.count(index) - 1}"

    def worker_name(self, worker, index):
        return worker

    def run(self, worker, job):
        with self.lock:
            self.runs[job.id] += 1
            self.ran_on[job.id].append(worker)
            dies = worker == "w0.0" and sum(1 for w in self.ran_on.values() for x in w if x == "w0.0") == 2
        time.sleep(self.job_s)
        if dies:
            raise WorkerLost("killed")
        return f"result of {job.id}", job.checkpoint

    def lost(self, worker, job):
        self.lost_jobs.append((job.id, job.attempt))


def test_a_dying_worker_is_replaced_and_its_job_runs_again_elsewhere_exactly_once():
    backend = FakeBackend()
    dispatcher = Dispatcher(backend, 2)
    jobs = [Job(f"task({n})", "txt2img", None, "m.safetensors") for n in range(20)]
    resolved = collections.Counter()
    for job in jobs:
        job.future.add_done_callback(lambda f, j=job.id: resolved.update([j]))
        dispatcher.submit(job)
    results = [job.future.result(timeout=30) for job in jobs]
    assert results == [f"result of {job.id}" for job in jobs]
    assert all(resolved[job.id] == 1 for job in jobs)  # every future resolved once
    (victim, attempt), = backend.lost_jobs
    assert attempt == 1 and backend.runs[victim] == 2 and backend.ran_on[victim][0] == "w0.0"
    assert backend.ran_on[victim][1] != "w0.0"
    assert all(backend.runs[job.id] == 1 for job in jobs if job.id != victim)
    assert backend.started == [0, 1, 0]  # worker 0 was replaced once
    assert {s.name for s in dispatcher.slots} == {"w0.1", "w1.0"}
    assert sum(s.replaced for s in dispatcher.slots) == 1
    assert sum(s.jobs_done for s in dispatcher.slots) == 20
    dispatcher.close()


def test_a_job_whose_workers_keep_dying_fails_after_its_attempts():
    class Doomed(FakeBackend):
        def run(self, worker, job):
            raise WorkerLost("out of memory")

    dispatcher = Dispatcher(Doomed(), 1, max_attempts=2)
    job = dispatcher.submit(Job("task(x)", "txt2img", None, None))
    with pytest.raises(RuntimeError, match="died 2 times"):
        job.result(timeout=10)
    dispatcher.close()


def test_a_queued_job_cancelled_never_runs_and_the_queue_goes_on():
    backend = FakeBackend(job_s=0.3)
    dispatcher = Dispatcher(backend, 1)
    first = Job("task(1)", "txt2img", None, None)
    second = Job("task(2)", "txt2img", None, None)
    third = Job("task(3)", "txt2img", None, None)
    for job in (first, second, third):
        dispatcher.submit(job)
    assert dispatcher.position("task(2)") == 1 and dispatcher.position("task(3)") == 2
    assert dispatcher.cancel_queued("task(2)") and second.future.cancelled()
    assert third.future.cancel()  # a caller giving up on its future (the UI's Interrupt) works too
    assert first.future.result(timeout=10) == "result of task(1)"
    fourth = dispatcher.submit(Job("task(4)", "txt2img", None, None))
    assert fourth.result(timeout=10) == "result of task(4)"
    assert set(backend.runs) == {"task(1)", "task(4)"}
    assert not dispatcher.cancel_queued("task(1)")  # not queued any more
    dispatcher.close()
