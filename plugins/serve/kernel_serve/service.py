"""The job queue: requests checked and recorded, one worker per device running them in order.

Jobs live in the SQLite history (:mod:`kernel_serve.store`) from the moment they are accepted;
the ones waiting or running are also kept in memory, where workers update their progress.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import re
import threading
import time
import uuid
from typing import Any

from kernel_serve.config import DB_NAME, ServeConfig
from kernel_serve.errors import ApiError
from kernel_serve.models import ModelCatalog
from kernel_serve.pipelines import Loaded, PipelineCache, run_pictures
from kernel_serve.store import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, Job, JobStore

log = logging.getLogger("kernel_serve")
_ID = re.compile(r"[0-9a-f]{32}")
STOPPED = "the server was stopped during this job"
SEED_MAX = 2**32 - 1


class Service:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.outputs = config.outputs
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.catalog = ModelCatalog(config.model, config.model_dirs)
        self.store = JobStore(self.outputs / DB_NAME)
        self.caches = [PipelineCache(d, config.dtype, config.max_models) for d in (config.devices or (None,))]
        self._queue: collections.deque[Job] = collections.deque()
        self._live: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._ready_count = 0
        self._stopping = False

    # ------------------------------------------------------------ life
    def start(self) -> None:
        with self._cond:
            for job in self.store.recover():
                self._queue.append(job)
                self._live[job.id] = job
        for cache in self.caches:
            t = threading.Thread(target=self._work, args=(cache,), name=f"kernel-serve-{cache.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._live.values():
                if job.status == RUNNING:
                    job.cancel.set()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self.store.close()

    @property
    def ready(self) -> bool:
        return self._ready_count >= len(self.caches)

    # ------------------------------------------------------------ requests
    def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check a generate request against the limits and its model; return the job's full parameters."""
        cfg = self.config
        prompt = request["prompt"]
        if not prompt.strip():
            raise ApiError(422, "prompt: must not be empty", "prompt")
        if request["steps"] > cfg.max_steps:
            raise ApiError(422, f"steps: must be at most {cfg.max_steps} on this server, got {request['steps']}",
                           "steps")
        if request["batch"] > cfg.max_batch:
            raise ApiError(422, f"batch: must be at most {cfg.max_batch} on this server, got {request['batch']}",
                           "batch")
        if not math.isfinite(request["guidance"]):
            raise ApiError(422, "guidance: must be a finite number", "guidance")
        sampler = request.get("sampler")
        if sampler is not None:
            import kernel

            try:
                kernel.sampler(sampler)
            except (ValueError, TypeError, LookupError, ImportError) as err:
                raise ApiError(422, f"sampler: {err}", "sampler") from None
        ref = self.catalog.resolve(request.get("model"))
        loaded = self.model_info(ref)
        width, height = request.get("width"), request.get("height")
        if width is None or height is None:
            if loaded.native is None:
                raise ApiError(422, "width: this model has no native size; give width and height",
                               "width" if width is None else "height")
            width, height = width or loaded.native[0], height or loaded.native[1]
        for field, value in (("width", width), ("height", height)):
            if value % loaded.factor:
                raise ApiError(422, f"{field}: must be a multiple of {loaded.factor} for model {ref.name!r} "
                                    f"(its VAE factor), got {value}", field)
            if value > cfg.max_size:
                raise ApiError(422, f"{field}: must be at most {cfg.max_size} on this server, got {value}", field)
        seed = request.get("seed")
        if seed is None or seed < 0:
            seed = random.randrange(SEED_MAX + 1)  # chosen now, so the history can reproduce the job
        return {"prompt": prompt, "negative_prompt": request.get("negative_prompt") or "",
                "steps": request["steps"], "guidance": float(request["guidance"]),
                "sampler": sampler or loaded.sampler, "seed": seed, "width": width, "height": height,
                "batch": request["batch"], "model": ref.name}

    def model_info(self, ref) -> Loaded:
        for cache in self.caches:
            found = cache.peek(ref)
            if found is not None:
                return found
        try:
            return self.caches[0].get(ref)
        except ValueError as err:
            raise ApiError(422, f"model: {err}", "model") from None

    def submit(self, params: dict[str, Any]) -> Job:
        job = Job(id=uuid.uuid4().hex, params=params)
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is stopping")
            if len(self._queue) >= self.config.queue_limit:
                raise ApiError(429, f"the queue is full ({len(self._queue)} jobs waiting); try again later",
                               headers={"Retry-After": "5"})
            self.store.insert(job)
            self._queue.append(job)
            self._live[job.id] = job
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job:
        job = self._live.get(job_id) if _ID.fullmatch(job_id) else None
        if job is None and _ID.fullmatch(job_id):
            job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"id: no job {job_id!r}", "id")
        return job

    def position(self, job: Job) -> int | None:
        """0 for the next job to run, 1 for the one after, ...; ``None`` when not waiting."""
        if job.status != QUEUED:
            return None
        with self._cond:
            try:
                return self._queue.index(job)
            except ValueError:
                return None

    def page(self, offset: int, limit: int, status: str | None = None) -> tuple[list[Job], int]:
        jobs, total = self.store.page(offset, limit, status)
        return [self._live.get(j.id, j) for j in jobs], total

    def cancel(self, job_id: str, wait: float = 10.0) -> Job:
        """Cancel a waiting job at once, or a running one through the engine's interrupt (waits for it)."""
        job = self.get(job_id)
        with self._cond:
            if job.status in FINISHED:
                raise ApiError(409, f"id: job {job_id} is already {job.status}", "id")
            job.cancel.set()
            if job.status == QUEUED:
                self._queue.remove(job)
                self._finish(job, CANCELLED)
                return job
        deadline = time.monotonic() + wait
        while job.status not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.02)
        return job

    # ------------------------------------------------------------ workers
    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        if status == DONE:
            job.progress = 1.0
        self.store.update(job)
        self._live.pop(job.id, None)

    def _work(self, cache: PipelineCache) -> None:
        if self.config.preload:
            try:
                cache.get(self.catalog.default)
            except Exception:  # noqa: BLE001 - jobs will report it
                log.exception("kernel serve: the default model did not load on %s", cache.name)
        with self._cond:
            self._ready_count += 1
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.status, job.started, job.device = RUNNING, time.time(), cache.name
                self.store.update(job)
            try:
                self._run(job, cache)
            except ApiError as err:
                self._finish(job, FAILED, err.detail)
            except Exception as err:  # noqa: BLE001 - one failed job never stops the worker
                log.exception("kernel serve: job %s failed", job.id)
                self._finish(job, FAILED, f"{type(err).__name__}: {err}")

    def _run(self, job: Job, cache: PipelineCache) -> None:
        ref = self.catalog.resolve(job.params["model"])
        try:
            loaded = cache.get(ref)
        except ValueError as err:
            raise ApiError(422, f"model: {err}", "model") from None

        def progress(value: float) -> None:
            job.progress = max(job.progress, min(value, 1.0))

        run_pictures(loaded, job.params, model_name=ref.name, dtype_name=cache.dtype_name, outputs=self.outputs,
                     stem=job.id, cancelled=job.cancel.is_set, progress=progress, saved=job.images)
        if self._stopping and job.cancel.is_set():
            self._finish(job, FAILED, STOPPED)
        elif job.cancel.is_set():
            self._finish(job, CANCELLED)
        else:
            self._finish(job, DONE)
