"""How many jobs per second the job queue sustains, and its latency, with no-op workers.

    venv/bin/python benchmarks/job_queue.py                      # 1, 2, 4 workers; local, threads, ray
    venv/bin/python benchmarks/job_queue.py --jobs 2000 --ray-jobs 500 --job-ms 0 20
    venv/bin/python benchmarks/job_queue.py --no-ray

Back-ends (the queue code is Easel's own; only the work is a no-op, or a sleep of --job-ms):
- `local`: the single worker thread (modules.services.jobs.WorkQueue.submit_job, with the job
  registry the job API reads); one worker by construction.
- `threads`: the dispatcher of --workers ray (modules.workers.dispatch.Dispatcher: FIFO, checkpoint
  affinity, one thread per worker) with in-process no-op workers: the dispatcher's own cost.
- `ray`: the same dispatcher over Ray actors on a local cluster whose `run` returns at once (or
  sleeps): the dispatcher plus one Ray actor call per job, what --workers ray adds to every job.

Per back-end and worker count: burst throughput (--jobs submitted at once, jobs/s until the last is
done), the burst's median and 95th-percentile latency (submit -> result, queue wait included), and the
round trip of one job at a time (median, 95th percentile). Then the expected throughput of N GPU
workers for the per-job times given with --per-job-s: N / (t_job + overhead), capped by the
dispatcher's no-op rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.services.job_registry import JobRegistry  # noqa: E402
from modules.services.jobs import JobState, WorkQueue  # noqa: E402
from modules.workers.dispatch import Backend, Dispatcher, Job  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class ThreadBackend(Backend):
    def __init__(self, job_s: float):
        self.job_s = job_s

    def start_worker(self, index):
        return index

    def run(self, worker, job):
        if self.job_s:
            time.sleep(self.job_s)
        return job.id, None


class RayBackend(Backend):
    def __init__(self, job_s: float):
        import ray

        class NoopWorker:
            def run(self, job_id: str, job_s: float):
                if job_s:
                    time.sleep(job_s)
                return job_id

        self.ray = ray
        self.job_s = job_s
        self.actor_class = ray.remote(num_cpus=0)(NoopWorker)

    def start_worker(self, index):
        return self.actor_class.remote()

    def run(self, worker, job):
        return self.ray.get(worker.run.remote(job.id, self.job_s)), None

    def stop_worker(self, worker):
        self.ray.kill(worker)


class Harness:
    """submit(job_id) -> Future, over one back-end, with the job registry as the server has it."""

    def __init__(self, kind: str, workers: int, job_s: float):
        self.registry = JobRegistry(keep_max=10**6)  # every job's record stays, to check them all
        self.dispatcher = None
        if kind == "local":
            self.queue = WorkQueue(JobState(), self.registry)
            noop = (lambda kind, request, overrides, scripts: time.sleep(job_s)) if job_s else \
                (lambda kind, request, overrides, scripts: None)
            self.submit = lambda job_id: self.queue.submit_job("txt2img", noop, None, {}, None, task_id=job_id)
            return
        backend = ThreadBackend(job_s) if kind == "threads" else RayBackend(job_s)
        self.dispatcher = Dispatcher(backend, workers, on_start=lambda job, slot: self.registry.mark_running(job.id, slot.name))
        if kind == "ray":  # actors start lazily: one call each before timing
            for slot in self.dispatcher.slots:
                backend.ray.get(slot.worker.run.remote("warm-up", 0))

        def submit(job_id):
            record = self.registry.add(job_id, "txt2img", None)
            future = self.dispatcher.submit(Job(job_id, "txt2img", None, "model.safetensors"))
            self.registry.bind(record, future)
            return future

        self.submit = submit

    def close(self):
        if self.dispatcher is not None:
            self.dispatcher.close()


def measure(kind: str, workers: int, jobs: int, job_s: float, round_trips: int) -> dict:
    harness = Harness(kind, workers, job_s)
    try:
        for n in range(min(20, jobs)):  # warm-up
            harness.submit(f"warm({n})").result()
        done_at: dict[str, float] = {}
        start = time.perf_counter()
        submitted = {}
        futures = []
        for n in range(jobs):
            job_id = f"task({n})"
            submitted[job_id] = time.perf_counter()
            future = harness.submit(job_id)
            future.add_done_callback(lambda f, j=job_id: done_at.__setitem__(j, time.perf_counter()))
            futures.append(future)
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - start
        latencies = [done_at[j] - submitted[j] for j in submitted]
        trips = []
        for n in range(round_trips):
            began = time.perf_counter()
            harness.submit(f"trip({n})").result()
            trips.append(time.perf_counter() - began)
        assert all(harness.registry.get(f"task({n})").status == "done" for n in range(jobs))
    finally:
        harness.close()
    return {"kind": kind, "workers": workers, "job_ms": job_s * 1000, "jobs": jobs, "per_s": jobs / elapsed,
            "p50_ms": statistics.median(latencies) * 1000, "p95_ms": percentile(latencies, 0.95) * 1000,
            "trip_p50_ms": statistics.median(trips) * 1000, "trip_p95_ms": percentile(trips, 0.95) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per burst (local, threads)")
    parser.add_argument("--ray-jobs", type=int, default=500, help="jobs per burst on Ray")
    parser.add_argument("--job-ms", type=float, nargs="+", default=[0.0], help="simulated work per job (0: no-op)")
    parser.add_argument("--round-trips", type=int, default=100)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--per-job-s", type=float, nargs="*", default=[45.3, 19.2, 2.0, 0.5],
                        help="per-job seconds to project N-worker throughput for (default: the CPU figures "
                             "of benchmarks/README.md, 256 px 10 steps fp32 / bf16, and two GPU-like times)")
    args = parser.parse_args()
    kinds = ["local", "threads"] + ([] if args.no_ray else ["ray"])
    if "ray" in kinds:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=max(args.workers) + 1, include_dashboard=False, log_to_driver=False)
    rows = []
    for job_ms in args.job_ms:
        for kind in kinds:
            for workers in ([1] if kind == "local" else args.workers):
                jobs = args.ray_jobs if kind == "ray" else args.jobs
                if job_ms:  # keep a simulated run short: about 2 s of work per worker
                    jobs = min(jobs, max(20, int(2000 / job_ms) * workers))
                row = measure(kind, workers, jobs, job_ms / 1000, args.round_trips if not job_ms else 10)
                rows.append(row)
                print(f"  {kind:7s} workers={workers} job_ms={job_ms:g}: {row['per_s']:.0f} jobs/s", flush=True)
    print(f"\nCPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| back-end | workers | work/job ms | jobs | jobs/s | burst p50 ms | burst p95 ms | one-job p50 ms | one-job p95 ms |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['kind']} | {r['workers']} | {r['job_ms']:g} | {r['jobs']} | {r['per_s']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p95_ms']:.1f} | {r['trip_p50_ms']:.2f} | {r['trip_p95_ms']:.2f} |")
    noop = [r for r in rows if r["job_ms"] == 0 and r["kind"] == ("ray" if "ray" in kinds else "threads")]
    if noop and args.per_job_s:
        cap = max(r["per_s"] for r in noop)
        overhead = statistics.median(r["trip_p50_ms"] for r in noop) / 1000
        print(f"\nExpected throughput, N workers = N / (t_job + {overhead * 1000:.1f} ms), at most {cap:.0f} jobs/s "
              f"(the {noop[0]['kind']} no-op rate):\n")
        counts = [1, 2, 4, 8, 16, 64]
        print("| per-job s | " + " | ".join(f"N={n} jobs/min" for n in counts) + " |")
        print("|--:|" + "--:|" * len(counts))
        for t in args.per_job_s:
            cells = [min(n / (t + overhead), cap) * 60 for n in counts]
            print(f"| {t:g} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if "ray" in kinds:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
