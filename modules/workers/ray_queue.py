"""Generation workers on Ray (`--workers ray`, `--ray-address ADDRESS`): one actor per device.

Each actor is a whole Easel engine in its own process, built by webui.build_engine/start_scripts from
the server's own flags: the same checkpoints, model cache (one per actor, on its device), scripts and
extensions, saving options and output folders. A job runs there through the very function the
single worker thread runs (`Engine._run` on the actor's own work queue), with the server's options as
they were when the job was submitted, so scripts' hooks, infotexts and saved files are the same as
with one worker. The actor saves the pictures (to the data folder, which a local cluster shares) and
sends the result back (pictures, infotexts, saved paths); the server's process never saves them again.

Exactly once: the dispatcher (modules.workers.dispatch) resolves a job's future once, from the attempt
that finished. Each attempt journals the files it saves (one line per file, flushed at once); when a
worker dies under a job, the files of that attempt are deleted before the job runs again on another
worker, so a re-run neither loses nor duplicates pictures.

This module is imported only with those flags (webui.make_queue); nothing else imports Ray.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from modules.core.types import RequestError
from modules.services.jobs import JobState, WorkQueue
from modules.services.job_registry import JobRegistry

from .dispatch import Backend, Dispatcher, Job, WorkerLost

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def _journal_name(job_id: str, attempt: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)}.{attempt}.saved"


class SaveJournal:
    """In a worker process: every picture file written (image_io.save_numbered / save_as) while a job
    runs is appended to that job attempt's journal, flushed to disk before the saving call returns."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.current: tuple[str, int] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def install(self) -> None:
        from modules.core import image_io

        for name in ("save_numbered", "save_as"):
            original = getattr(image_io, name)

            def journaled(*args, _original=original, **kwargs):
                path = _original(*args, **kwargs)
                self.record(path)
                return path

            setattr(image_io, name, journaled)

    def record(self, path) -> None:
        if self.current is None:
            return
        with open(self.folder / _journal_name(*self.current), "a", encoding="utf8") as f:
            f.write(f"{path}\n")
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def discard(folder: Path, job_id: str, attempt: int) -> list[str]:
        """Delete what the attempt saved (and the infotext .txt beside each); the paths deleted."""
        journal = folder / _journal_name(job_id, attempt)
        if not journal.is_file():
            return []
        removed = []
        for line in journal.read_text(encoding="utf8").splitlines():
            path = Path(line.strip())
            for victim in (path, path.with_suffix(".txt")):
                if line.strip() and victim.is_file():
                    victim.unlink()
                    removed.append(str(victim))
        journal.unlink()
        return removed

    @staticmethod
    def forget(folder: Path, job_id: str, attempt: int) -> None:
        (folder / _journal_name(job_id, attempt)).unlink(missing_ok=True)


def _server_paths(opts: dict) -> None:
    """In a worker process: the server's --data-dir, --models-dir and --ckpt on this process's command
    line, which modules.paths_internal reads when first imported (as A1111's paths do), so the data
    folder's extensions, and whatever extensions find through A1111's paths, are the server's."""
    import importlib

    argv = [sys.argv[0] if sys.argv else "easel-worker"]
    for flag, key in (("--data-dir", "data_dir"), ("--models-dir", "models_dir"), ("--ckpt", "ckpt")):
        if opts.get(key):
            argv += [flag, str(opts[key])]
    sys.argv = argv
    if "modules.paths_internal" in sys.modules:  # (a fresh actor process has not imported it yet)
        importlib.reload(sys.modules["modules.paths_internal"])


class WorkerActor:
    """One Easel engine in a Ray worker process (made a Ray actor by RayBackend)."""

    def __init__(self, opts: dict, name: str, journal_dir: str, torch_threads: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _server_paths(opts)
        import torch

        # Ray gives an actor one thread per CPU it reserved; the server's own count instead, since
        # on the CPU the sums' order (and so the last bits of a picture) depends on it
        torch.set_num_threads(torch_threads)
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        import webui

        flags = argparse.Namespace(**opts)
        flags.workers, flags.ray_address = "local", None  # this process runs its jobs itself
        flags.disable_console_progressbars = True
        self.name = name
        self.engine = webui.build_engine(flags)
        self.engine.options.path = None  # config.json is the server's: a worker never writes it
        webui.start_scripts(self.engine, flags)
        self.journal = SaveJournal(Path(journal_dir))
        self.journal.install()
        from modules.services.live_previews import LivePreviews

        self.previews = LivePreviews(self.engine)  # the page's previews, by the server's options

    def ready(self) -> int:
        return os.getpid()

    def run(self, job_id: str, attempt: int, kind: str, request, overrides: dict, scripts, options: dict,
            given: dict | None = None) -> dict:
        """`given`: what the server's Engine._job bound to the job besides the request (the page's
        logged-in `user`, `console_prompt`), given to Engine._run here as on one worker."""
        engine = self.engine
        engine.options.data.update(options)  # the server's settings as they were at submission
        self.journal.current = (job_id, attempt)
        fn = functools.partial(engine._run, **given) if given else engine._run
        try:
            result = engine.queue.submit_job(kind, fn, request, overrides, scripts, task_id=job_id).result()
        except RequestError as exc:
            return {"error": ("request", exc.field, exc.message)}
        except ValueError as exc:
            return {"error": ("value", type(exc).__name__, str(exc))}
        except Exception as exc:
            return {"error": ("other", type(exc).__name__, str(exc))}
        finally:
            self.journal.current = None
        info = engine.models.info
        return {"result": result, "checkpoint": str(info.filename.resolve()) if info is not None else None}

    def live(self, job_id: str) -> dict | None:
        return self.engine.queue.live(job_id)

    def preview(self, job_id: str) -> bytes | None:
        from modules.core.preview import latent_preview

        model = self.engine.models.model
        if model is None:
            return None
        image = self.engine.queue.preview(job_id, lambda latent: latent_preview(latent, model.family.preview_factors))
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def live_preview(self, job_id: str, known_id: int) -> tuple[int, bytes | None]:
        """(preview id, PNG) of the job's live preview as the page shows it; no PNG when there is none
        or the caller already has `known_id`."""
        preview_id, image = self.engine.queue.live_preview(job_id, self.previews)
        if image is None or preview_id == known_id:
            return preview_id, None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return preview_id, buffer.getvalue()

    def interrupt(self, job_id: str) -> None:
        self.engine.queue.interrupt_job(job_id)

    def skip(self, job_id: str) -> None:
        self.engine.queue.skip_job(job_id)


def _rebuild_error(kind: str, first: str, second: str) -> BaseException:
    if kind == "request":
        return RequestError(first, second)
    if kind == "value":
        return ValueError(second)
    return RuntimeError(f"{first}: {second}")


class RayWorker:
    def __init__(self, actor, index: int, generation: int):
        self.actor = actor
        self.index = index
        self.generation = generation
        self.ready_ref = actor.ready.remote()
        self.pid: int | None = None


class RayBackend(Backend):
    def __init__(self, opts: argparse.Namespace, journal_dir: Path, gpus_per_worker: float):
        self.opts = {k: v for k, v in vars(opts).items()}
        self.journal_dir = journal_dir
        import torch

        self.torch_threads = torch.get_num_threads()
        resources = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}
        # threaded: progress, preview and interrupt are answered while a job runs
        self.actor_class = ray.remote(max_concurrency=4, max_restarts=0, **resources)(WorkerActor)
        self._generations: dict[int, int] = {}

    def start_worker(self, index: int) -> RayWorker:
        generation = self._generations.get(index, -1) + 1
        self._generations[index] = generation
        actor = self.actor_class.remote(self.opts, f"ray-{index}", str(self.journal_dir), self.torch_threads)
        return RayWorker(actor, index, generation)

    def worker_name(self, worker: RayWorker, index: int) -> str:
        return f"ray-{index}" if worker.generation == 0 else f"ray-{index}.{worker.generation}"

    def _ready(self, worker: RayWorker) -> None:
        if worker.pid is None:
            try:
                worker.pid = ray.get(worker.ready_ref)
            except RayActorError as exc:
                raise WorkerLost(f"the worker did not start: {exc}") from exc

    def run(self, worker: RayWorker, job: Job) -> tuple[Any, str | None]:
        self._ready(worker)
        kind, request, overrides, scripts, options, given = job.payload
        try:
            answer = ray.get(worker.actor.run.remote(job.id, job.attempt, kind, request, overrides, scripts, options,
                                                     given))
        except RayActorError as exc:
            raise WorkerLost(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        if "error" in answer:
            SaveJournal.forget(self.journal_dir, job.id, job.attempt)
            raise _rebuild_error(*answer["error"])
        SaveJournal.forget(self.journal_dir, job.id, job.attempt)
        return answer["result"], answer["checkpoint"]

    def lost(self, worker: RayWorker, job: Job) -> None:
        removed = SaveJournal.discard(self.journal_dir, job.id, job.attempt)
        if removed:
            print(f"[easel] removed {len(removed)} file(s) of the interrupted attempt of {job.id}: it runs again")

    def stop_worker(self, worker: RayWorker) -> None:
        try:
            ray.kill(worker.actor)
        except Exception:
            pass

    def call(self, worker: RayWorker, method: str, *args, timeout: float = 5.0):
        try:
            return ray.get(getattr(worker.actor, method).remote(*args), timeout=timeout)
        except (RayActorError, GetTimeoutError):
            return None


def start_ray(opts: argparse.Namespace) -> tuple[int, float]:
    """Connect to (or start) the cluster; (workers, GPUs per worker)."""
    import torch

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
    use_gpu = torch.cuda.is_available() and not getattr(opts, "use_cpu", None)
    gpus = torch.cuda.device_count() if use_gpu else 0
    workers = opts.ray_workers or (gpus if gpus else 1)
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    runtime_env = {"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}}
    if opts.ray_address and opts.ray_address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise SystemExit(f"--ray-address {opts.ray_address}: a ray:// address (Ray Client) needs grpcio, which "
                         "requirements-ray.txt pins: venv/bin/pip install -r requirements-ray.txt; or give the "
                         "cluster's GCS address HOST:PORT (the --port of `ray start --head`)")
    if not ray.is_initialized():
        if opts.ray_address:
            # Ray Client starts a server process for each connection on the head: on a busy head that
            # can fail or time out the first time
            tries = 3 if opts.ray_address.startswith("ray://") else 1
            for attempt in range(1, tries + 1):
                try:
                    ray.init(address=opts.ray_address, runtime_env=runtime_env, namespace="easel", log_to_driver=True)
                    break
                except ConnectionError as exc:
                    if attempt == tries:
                        raise
                    print(f"[easel] could not connect to {opts.ray_address} ({exc}); trying again")
                    try:
                        ray.shutdown()  # what the failed connection left
                    except Exception:
                        pass
                    time.sleep(2)
        else:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), num_gpus=gpus, include_dashboard=False,
                     runtime_env=runtime_env, namespace="easel", log_to_driver=True)
    if opts.ray_address:  # the cluster's GPUs, not this machine's
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = opts.ray_workers or (gpus if gpus else 1)
    return workers, (1.0 if gpus else 0.0)


def _bound(fn: Callable[..., Any]) -> dict:
    """The keywords Engine._job bound to the job's function (`user`, `console_prompt`): the function
    itself stays here (it is the server's engine), the actor applies them to its own Engine._run."""
    given: dict = {}
    while isinstance(fn, functools.partial):
        if fn.args:
            raise TypeError("a Ray job's function may bind keywords only, not positional arguments")
        given = {**fn.keywords, **given}
        fn = fn.func
    return given


class RayWorkQueue(WorkQueue):
    """The work queue with generation jobs dispatched to Ray actors; other tasks (loading the selected
    checkpoint for the UI, refreshing lists) still run on this process's worker thread."""

    def __init__(self, state: JobState, jobs: JobRegistry, opts: argparse.Namespace):
        super().__init__(state, jobs)
        self.engine = None
        self._previews: dict[str, tuple[int, Any]] = {}  # job id -> the last live preview fetched
        self._lives: dict[str, dict] = {}  # job id -> the last progress its actor reported
        workers, gpus_per_worker = start_ray(opts)
        journal = Path(opts.data_dir) / "cache" / "ray-jobs"
        self.backend = RayBackend(opts, journal, gpus_per_worker)
        self.dispatcher = Dispatcher(self.backend, workers, on_start=self._started, on_requeue=self._requeued)
        print(f"[easel] {workers} Ray worker(s), {'one GPU' if gpus_per_worker else 'one CPU'} each "
              f"({'cluster ' + opts.ray_address if opts.ray_address else 'local cluster'})")

    def attach(self, engine) -> None:
        self.engine = engine

    def _checkpoint_file(self, request) -> str | None:
        try:
            return str(self.engine.resolve_checkpoint(request.checkpoint).filename.resolve())
        except (ValueError, AttributeError):  # unknown: the worker refuses it, naming the field
            return None

    def submit_job(self, kind: str, fn: Callable[..., Any], request: Any, overrides: dict, scripts: Any,
                   task_id: str | None = None):
        task_id = task_id or f"task({next(self._ids)})"
        record = self.jobs.add(task_id, kind, request)
        options = dict(self.engine.options.data) if self.engine is not None else {}
        job = Job(task_id, kind, (kind, request, overrides, scripts, options, _bound(fn)), self._checkpoint_file(request))
        with self._ids_lock:
            self.queued[task_id] = job.queued_at
        future = self.dispatcher.submit(job)
        self.jobs.bind(record, future)
        future.add_done_callback(lambda _: self._ended(task_id))
        return future

    def _started(self, job: Job, slot) -> None:
        with self._ids_lock:
            self.queued.pop(job.id, None)
        record = self.jobs.mark_running(job.id, worker=slot.name)
        if record is not None and record.cancel_requested:
            self.interrupt_job(job.id)

    def _requeued(self, job: Job) -> None:
        self.jobs.mark_queued(job.id)
        with self._ids_lock:
            self.queued[job.id] = job.queued_at

    def _ended(self, task_id: str) -> None:
        with self._ids_lock:
            self.queued.pop(task_id, None)
            self.finished.append(task_id)
        self._previews.pop(task_id, None)
        self._lives.pop(task_id, None)

    def position(self, job_id: str) -> int | None:
        return self.dispatcher.position(job_id)

    def cancel_job(self, job_id: str) -> bool:
        record = self.jobs.get(job_id)
        if record is None or record.ended:
            return False
        record.cancel_requested = True
        if self.dispatcher.cancel_queued(job_id):
            with self._ids_lock:
                self.queued.pop(job_id, None)
            return True
        self.interrupt_job(job_id)
        return True

    # -- following and stopping jobs: on the worker that runs them; tasks of this process's own
    # -- worker thread (a checkpoint load for the page) as with one worker ------------------------
    def interrupt_job(self, job_id: str) -> None:
        slot = self.dispatcher.slot_of(job_id)
        if slot is None:
            super().interrupt_job(job_id)
        else:
            self.backend.call(slot.worker, "interrupt", job_id)

    def skip_job(self, job_id: str) -> None:
        slot = self.dispatcher.slot_of(job_id)
        if slot is None:
            super().skip_job(job_id)
        else:
            self.backend.call(slot.worker, "skip", job_id)

    def running_ids(self) -> list[str]:
        remote = [slot.job for slot in list(self.dispatcher.slots) if slot.job is not None]
        return super().running_ids() + [job.id for job in sorted(remote, key=lambda job: job.queued_at)]

    def interrupt_all(self) -> None:
        super().interrupt_all()
        for job_id in self.running_ids():
            self.interrupt_job(job_id)

    def skip_all(self) -> None:
        super().skip_all()
        for job_id in self.running_ids():
            self.skip_job(job_id)

    def live(self, job_id: str) -> dict | None:
        slot = self.dispatcher.slot_of(job_id)
        if slot is None:
            return super().live(job_id)
        answer = self.backend.call(slot.worker, "live", job_id)
        if answer is None:  # a busy actor did not answer in time: what it said last, while the job runs
            return self._lives.get(job_id)
        self._lives[job_id] = answer
        return answer

    def live_preview(self, job_id: str, previews) -> tuple[int, Any]:
        slot = self.dispatcher.slot_of(job_id)
        if slot is None:
            return super().live_preview(job_id, previews)
        known_id, known = self._previews.get(job_id, (-1, None))
        answer = self.backend.call(slot.worker, "live_preview", job_id, known_id)
        if answer is None:
            return known_id, known
        preview_id, data = answer
        if data is None:
            return (preview_id, known) if preview_id == known_id else (preview_id, None)
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        image.load()
        self._previews[job_id] = (preview_id, image)
        return preview_id, image

    def preview(self, job_id: str, render: Callable[[Any], Any]) -> Any:
        slot = self.dispatcher.slot_of(job_id)
        data = self.backend.call(slot.worker, "preview", job_id) if slot is not None else None
        if not data:
            return None
        from PIL import Image

        return Image.open(io.BytesIO(data))

    def workers(self) -> list[dict]:
        out = []
        for slot in list(self.dispatcher.slots):
            worker = slot.worker
            out.append({"name": slot.name, "pid": worker.pid, "checkpoint": slot.checkpoint,
                        "job": slot.job.id if slot.job is not None else None, "jobs_done": slot.jobs_done,
                        "busy_s": round(slot.busy_s, 3), "replaced": slot.replaced})
        return out

    def close(self) -> None:
        self.dispatcher.close()

