"""RedisJobQueue: the queue backend (jobs.backend.QueueBackend) on RQ and Redis
(QUEUE_BACKEND=redis).

The web process keeps no job state of its own: every call reads Redis, so several web
processes behind a load balancer, or a restarted one, see the same jobs. Workers
(`python worker.py`, jobs/redis_worker.py) take the jobs; the keys are described in
jobs/redis_common.py. The `Job` objects handed to the routes are snapshots that `wait`,
`snapshot` and `queue_position` refresh from Redis (jobs/redis_records.py, which also fails
the job of a worker that died); /health is jobs/redis_health.py.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from catalog.upscalers import NONE, PILLOW_UPSCALERS
from config import Settings
from jobs import redis_common as rc
from jobs.backend import Health
from jobs.redis_engine import RemoteEngine
from jobs.redis_events import RedisWatch
from jobs.redis_metrics import redis_metrics
from jobs.redis_health import queue_figures, redis_health
from jobs.redis_models import ModelRouter
from jobs.redis_records import JobRecords
from jobs.job import BackendUnsupported, Job, JobState, NotAccepting, QueueFull
from params import GenerationRequest

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 0.1  # how often a waiting request re-reads its job
SUBMIT_LOCK_SECONDS = 5  # the cross-process lock that makes QUEUE_SIZE hold


class RedisJobQueue:
    """The job queue on Redis: the same Protocol and Job objects as jobs.JobQueue."""

    def __init__(self, settings: Settings, connection=None):
        self.settings = settings
        self.connection = connection or rc.connect(settings)
        self._engine = RemoteEngine(settings, self.connection)
        self.records = JobRecords(self.connection, settings.job_retention_seconds,
                                  settings.job_max_attempts)
        self.models = ModelRouter(settings, self.connection, self._engine)
        self._accepting = True
        self.metrics = redis_metrics(self.connection, self._engine)

    @property
    def engine(self) -> RemoteEngine:
        """The workers' engine as their heartbeats describe it."""
        return self._engine

    # ------------------------------------------------------------------ control
    def start(self) -> "RedisJobQueue":
        """Nothing runs here: the workers are separate processes."""
        from config import redact_url

        log.info("jobs go to Redis %s; start workers with `python worker.py`",
                 redact_url(self.settings.redis_url))
        return self

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until a worker with a loaded model is alive; for tools and tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready_workers():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(WAIT_POLL_SECONDS)
        return True

    def stop(self, grace_seconds: float) -> None:
        """Refuse new jobs here; the queued and running ones live on in Redis."""
        self._accepting = False

    @property
    def accepting(self) -> bool:
        """False once this web process is shutting down."""
        return self._accepting

    # ------------------------------------------------------------------ jobs
    def submit(self, request: GenerationRequest, client: str = "") -> Job:
        """Queue a job, or raise NotAccepting / QueueFull."""
        return self.submit_many([request], client)[0]

    def submit_switch(self, model: str, client: str = "") -> Job:
        """Make `model` the default of requests that name none (each worker serves its own
        models: nothing loads); a finished job, or BackendUnsupported if nobody serves it."""
        self.models.choose(model)
        job = Job(request=GenerationRequest(prompt="", model=model, steps=1), seed=0,
                  client=client, kind="switch_model", state=JobState.SUCCEEDED,
                  started_at=rc.now(), finished_at=rc.now(), step=1)
        job.done.set()
        return job

    def submit_many(self, requests: list[GenerationRequest], client: str = "",
                    kind: str = "generate") -> list[Job]:
        """Queue several jobs atomically (all or none) in the shared queue; QUEUE_SIZE holds
        across every web process through a Redis lock around count-and-enqueue."""
        from redis.exceptions import RedisError

        if not self._accepting:
            raise NotAccepting("shutting_down", "this server is shutting down; retry "
                               "against another instance or after it restarts", 30)
        try:
            if not self._ready_workers():
                raise NotAccepting("no_workers", "no worker with a loaded model is running; "
                                   "start one with `python worker.py` (GET /health says "
                                   "when one is ready)", 10)
            model = self.models.target(requests[0].model)  # a batch is of one model
            with self.connection.lock("sd:submit-lock", timeout=SUBMIT_LOCK_SECONDS):
                if self._waiting() + len(requests) > self.settings.queue_size:
                    raise QueueFull(self.records.retry_after(self.settings.default_steps))
                jobs = self.records.enqueue(requests, client, self.engine.has_tiny_decoder,
                                           model, self.settings.fair_share)
        except RedisError as exc:
            raise NotAccepting("unhealthy", rc.unreachable_message(self.settings, exc),
                               10) from None
        for job in jobs:
            log.info("job %s queued in Redis", job.id)
        return jobs

    def upscale(self, image: Any, name: str, size: tuple[int, int]) -> Any:
        """Pillow's resamplers here in the web process (no model needed); a model upscaler
        is BackendUnsupported: the workers run only generation jobs so far."""
        if name not in (NONE, *PILLOW_UPSCALERS):
            raise BackendUnsupported(
                "upscaler_unsupported", f"upscaler {name!r} is a model, and model upscalers "
                "run only with QUEUE_BACKEND=memory for now; use Lanczos (or another Pillow "
                "upscaler) here", None)
        from engine.upscalers import upscale_image

        return upscale_image(image, name, size, self.settings)

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None if unknown or expired."""
        return self.records.get(job_id)

    def pace_book(self) -> dict[str, dict[str, float]]:
        """The measured pace per kind of image, as every worker folded it into Redis."""
        import json

        return {kind.decode(): json.loads(figures)
                for kind, figures in self.connection.hgetall(rc.PACE_KEY).items()}

    def recent(self, limit: int | None = None) -> list[Job]:
        """Known jobs, newest first."""
        oldest = rc.now() - self.settings.job_retention_seconds
        ids = [i.decode() for i in self.connection.zrevrangebyscore(
            rc.RECENT_KEY, "+inf", oldest, start=0, num=limit or -1)]
        return self.records.many(ids)

    def current(self) -> Job | None:
        """A running job (the one started first when several workers run)."""
        for job_id in self.records.running_ids():
            job = self.get(job_id)
            if job is not None and job.state == JobState.RUNNING:
                return job
        return None

    def active(self) -> Job | None:
        """A running job, else the next one waiting; None when idle."""
        running = self.current()
        if running is not None:
            return running
        waiting = self.records.next_waiting_id()
        return self.get(waiting) if waiting else None

    def cancel(self, job_id: str, skip: bool = False) -> Job | None:
        """A queued job leaves the queue now; a running one stops at its next step (its
        worker's step callback reads the flag). Returns the job, or None if unknown."""
        job = self.get(job_id)
        if job is None or job.state.finished:
            return job
        retention = self.settings.job_retention_seconds
        self.connection.set(rc.cancel_key(job_id), "skip" if skip else "cancel", ex=retention)
        if job.state == JobState.QUEUED:
            self.records.cancel_queued(job_id)
        log.info("job %s cancel requested", job_id)
        self.refresh(job)
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is finished (re-reading Redis); True if it is."""
        if job.done.is_set():  # finished (a switch here is finished when made): final
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh(job).state.finished:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_SECONDS)
        return True

    def mark_delivered(self, job: Job) -> None:
        """Count-based pruning does not apply here (Redis TTLs do); kept for the interface."""
        job.delivered = True

    def forget(self, job_id: str) -> Job | None:
        """Drop a finished job now: its RQ record, its PNG and its place in the recent list
        (GET /jobs, the history)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob

        job = self.get(job_id)
        if job is None or not job.state.finished:
            return None
        self.connection.zrem(rc.RECENT_KEY, job_id)
        self.connection.delete(rc.png_key(job_id))
        try:
            RQJob.fetch(job_id, connection=self.connection).delete()
        except NoSuchJobError:
            pass  # expired meanwhile: nothing left to drop
        log.info("job %s forgotten (its image was deleted)", job_id)
        return job

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""
        self.refresh(job)
        if job.state == JobState.RUNNING:
            return 0
        if job.state != JobState.QUEUED:
            return None
        queue = rc.model_queue(self.connection, job.request.model or "")
        position = queue.get_job_position(job.id)
        return None if position is None else position + 1

    def preview(self, job: Job) -> bytes | None:
        """The newest preview its worker rendered; asking also tells the worker to render
        one at its next step (so an unwatched job pays nothing for previews)."""
        self.refresh(job)
        if job.state.finished:
            return job.png
        self.connection.set(rc.preview_wanted_key(job.id), 1, ex=rc.PREVIEW_WANTED_SECONDS)
        return self.connection.get(rc.preview_key(job.id))

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the JSON the API returns, with the worker that ran it."""
        position = self.queue_position(job)
        workers = self.engine.served().get(job.request.model or "", 0)
        return job.to_json(position, self.records.eta(job, position, workers))

    def stats(self) -> dict[str, Any]:
        """Queue figures for /health (raises redis errors: `health` reports them)."""
        return queue_figures(self.settings, self.connection, self._accepting)

    def health(self) -> Health:
        """/health under redis: Redis, the workers and the queue (never raises)."""
        return redis_health(self.settings, self.connection, self._accepting,
                            self.engine.model_name)

    def watch(self, job: Job) -> RedisWatch:
        """A pub/sub subscription to the job's changes (see jobs.redis_events)."""
        return RedisWatch(self.connection, job.id)

    def refresh(self, job: Job) -> Job:
        """Re-read the job from Redis into `job` (see jobs.redis_records)."""
        return self.records.refresh(job)

    # ------------------------------------------------------------------ internals
    def _ready_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.engine.workers() if w["state"] == "ready"]

    def _waiting(self) -> int:
        """Jobs waiting in every model's queue (QUEUE_SIZE bounds them all together)."""
        return sum(queue.count for queue in rc.model_queues(self.connection))

