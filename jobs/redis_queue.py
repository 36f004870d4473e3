"""RedisJobQueue: the JobQueue interface on RQ and Redis (QUEUE_BACKEND=redis).

The web process keeps no job state of its own: every call reads Redis, so several web
processes behind a load balancer, or a restarted one, see the same jobs. Workers
(`python worker.py`, jobs/redis_worker.py) take the jobs; the keys are described in
jobs/redis_common.py. The `Job` objects handed to the routes are snapshots that `wait`,
`snapshot` and `queue_position` refresh from Redis.

A worker killed mid-job (its heartbeat lapses for HEARTBEAT_TTL_SECONDS) fails that job
with a message naming the worker; it is not re-queued, because a job that killed its worker
(e.g. out of memory) would kill the next one too. The client retries.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from config import Settings
from jobs import redis_common as rc
from jobs.eta import eta_seconds
from jobs.batch import build_batch
from jobs.job import Job, JobState, NotAccepting, QueueFull
from params import GenerationRequest

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 0.1  # how often a waiting request re-reads its job
SUBMIT_LOCK_SECONDS = 5  # the cross-process lock that makes QUEUE_SIZE hold


class BackendUnsupported(NotAccepting):
    """A request this backend cannot run yet: a client error (4xx), not an outage."""

    status = 400


class RedisJobQueue:
    """The job queue on Redis: same methods and Job objects as jobs.JobQueue."""

    def __init__(self, settings: Settings, connection=None):
        from rq import Queue

        self.settings = settings
        self.connection = connection or rc.connect(settings)
        self.rq = Queue(rc.QUEUE_NAME, connection=self.connection)
        from jobs.redis_engine import RemoteEngine

        self.engine = RemoteEngine(settings, self.connection)
        self._accepting = True

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

    @property
    def worker_error(self) -> None:
        """No in-process worker can stop here; dead workers show in /health instead."""
        return None

    # ------------------------------------------------------------------ jobs
    def submit(self, request: GenerationRequest, client: str = "") -> Job:
        """Queue a job, or raise NotAccepting / QueueFull."""
        return self.submit_many([request], client)[0]

    def submit_switch(self, model: str, client: str = "") -> Job:
        """Model switching is not done across workers yet: a 4xx that says so."""
        raise _no_switching()

    def submit_many(self, requests: list[GenerationRequest], client: str = "",
                    kind: str = "generate") -> list[Job]:
        """Queue several jobs atomically (all or none) in the shared queue; QUEUE_SIZE holds
        across every web process through a Redis lock around count-and-enqueue."""
        from redis.exceptions import RedisError

        if kind != "generate" or any(r.model is not None for r in requests):
            raise _no_switching()
        if not self._accepting:
            raise NotAccepting("shutting_down", "this server is shutting down; retry "
                               "against another instance or after it restarts", 30)
        try:
            if not self._ready_workers():
                raise NotAccepting("no_workers", "no worker with a loaded model is running; "
                                   "start one with `python worker.py` (GET /health says "
                                   "when one is ready)", 10)
            with self.connection.lock("sd:submit-lock", timeout=SUBMIT_LOCK_SECONDS):
                if self.rq.count + len(requests) > self.settings.queue_size:
                    raise QueueFull(self._retry_after())
                jobs = self._enqueue(requests, client)
        except RedisError as exc:
            raise NotAccepting("unhealthy", rc.unreachable_message(self.settings, exc),
                               10) from None
        for job in jobs:
            log.info("job %s queued in Redis", job.id)
        return jobs

    def _enqueue(self, requests: list[GenerationRequest], client: str) -> list[Job]:
        """Create the RQ jobs and our records in one pipeline."""
        from jobs.redis_worker import run_job

        created, data = rc.now(), []
        retention = self.settings.job_retention_seconds
        jobs = build_batch(requests, client, created, self.engine.has_tiny_decoder)
        for job in jobs:
            meta = {"client": client, "created_at": created, "batch_id": job.batch_id,
                    "batch_index": job.batch_index, "batch_size": job.batch_size,
                    "total_steps": job.total_steps}
            request = job.request
            data.append(self.rq.prepare_data(
                run_job, (request, job.seed), job_id=job.id, meta=meta, result_ttl=retention,
                failure_ttl=retention, timeout=rc.JOB_TIMEOUT_SECONDS,
                description=f"generate {request.width}x{request.height} {request.steps} steps"))
        with self.connection.pipeline() as pipe:
            self.rq.enqueue_many(data, pipeline=pipe)
            pipe.zadd(rc.RECENT_KEY, {job.id: created for job in jobs})
            pipe.zremrangebyscore(rc.RECENT_KEY, "-inf", created - retention)
            pipe.execute()
        return jobs

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None if unknown or expired."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob

        try:
            rq_job = RQJob.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return None
        return self._from_rq(rq_job)

    def recent(self, limit: int | None = None) -> list[Job]:
        """Known jobs, newest first."""
        from rq.job import Job as RQJob

        oldest = rc.now() - self.settings.job_retention_seconds
        ids = [i.decode() for i in self.connection.zrevrangebyscore(
            rc.RECENT_KEY, "+inf", oldest, start=0, num=limit or -1)]
        return [self._from_rq(j) for j in RQJob.fetch_many(ids, connection=self.connection)
                if j is not None]

    def current(self) -> Job | None:
        """A running job (the one started first when several workers run)."""
        from rq.registry import StartedJobRegistry

        for job_id in StartedJobRegistry(queue=self.rq).get_job_ids():
            job = self.get(job_id)
            if job is not None and job.state == JobState.RUNNING:
                return job
        return None

    def active(self) -> Job | None:
        """A running job, else the next one waiting; None when idle."""
        running = self.current()
        if running is not None:
            return running
        waiting = self.rq.get_job_ids(0, 1)
        return self.get(waiting[0]) if waiting else None

    def cancel(self, job_id: str, skip: bool = False) -> Job | None:
        """A queued job leaves the queue now; a running one stops at its next step (its
        worker's step callback reads the flag). Returns the job, or None if unknown."""
        job = self.get(job_id)
        if job is None or job.state.finished:
            return job
        retention = self.settings.job_retention_seconds
        self.connection.set(rc.cancel_key(job_id), "skip" if skip else "cancel", ex=retention)
        if job.state == JobState.QUEUED:
            from rq.job import Job as RQJob

            rq_job = RQJob.fetch(job_id, connection=self.connection)
            rq_job.meta.update(outcome=JobState.CANCELLED.value, finished_at=rc.now(),
                               error="cancelled before it started")
            rq_job.save_meta()
            rq_job.cancel()
        log.info("job %s cancel requested", job_id)
        self.refresh(job)
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is finished (re-reading Redis); True if it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh(job).state.finished:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_SECONDS)
        return True

    def mark_delivered(self, job: Job) -> None:
        """Count-based pruning does not apply here (Redis TTLs do); kept for the interface."""
        job.delivered = True

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""
        self.refresh(job)
        if job.state == JobState.RUNNING:
            return 0
        if job.state != JobState.QUEUED:
            return None
        position = self.rq.get_job_position(job.id)
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
        body = job.to_json(position, self._eta(job, position))
        body["worker"] = getattr(job, "worker", None)
        return body

    def stats(self) -> dict[str, Any]:
        """Queue figures for /health (raises redis errors: /health reports them)."""
        from rq.registry import StartedJobRegistry

        figures = self.connection.hgetall(rc.STATS_KEY)
        sps = figures.get(b"seconds_per_step")
        return {"backend": "redis", "waiting": self.rq.count,
                "running": StartedJobRegistry(queue=self.rq).count,
                "capacity": self.settings.queue_size,
                "completed": int(figures.get(b"completed", 0)),
                "failed": int(figures.get(b"failed", 0)), "accepting": self._accepting,
                "seconds_per_step": round(float(sps), 3) if sps else None,
                "worker_error": None}

    def health(self) -> tuple[int, dict[str, Any]]:
        """/health under redis: (status code, body)."""
        from redis.exceptions import RedisError

        from config import redact_url

        try:
            queue, workers = self.stats(), rc.alive_workers(self.connection)
        except RedisError as exc:
            return 503, {"status": "unhealthy", "backend": "redis",
                         "redis": redact_url(self.settings.redis_url),
                         "error": rc.unreachable_message(self.settings, exc),
                         "advice": "start redis-server (or fix REDIS_URL); queued jobs are "
                                   "kept in Redis and go on once it is back"}
        body: dict[str, Any] = {"backend": "redis", "model": self.engine.model_name,
                                "queue": queue, "workers": [
            {k: w.get(k) for k in ("name", "host", "pid", "state", "phase", "job")}
            for w in workers]}
        ready = [w for w in workers if w["state"] == "ready"]
        if not self._accepting:
            return 503, {**body, "status": "shutting_down"}
        if not ready:
            return 503, {**body, "status": "no_workers", "error": "no worker with a loaded "
                         "model is alive" + (" (some are loading)" if workers else ""),
                         "advice": "start one with `python worker.py` (same .env, same "
                                   "REDIS_URL); jobs wait in Redis until one is ready"}
        return 200, {**body, "status": "healthy", **(ready[0].get("info") or {}),
                     "model": ready[0]["model_name"]}

    # ------------------------------------------------------------------ internals
    def refresh(self, job: Job) -> Job:
        """Re-read the job's progress and outcome from Redis into `job`; a running job
        whose worker's heartbeat lapsed is failed here (whichever web process sees it)."""
        from rq.job import Job as RQJob

        rq_job = RQJob(job.id, connection=self.connection)
        status = rq_job.get_status(refresh=True)
        meta = rq_job.get_meta(refresh=True)
        state = rc.job_state(status and status.value, meta)
        if state == JobState.RUNNING and self._abandoned(rq_job, meta):
            meta = self._fail_abandoned(rq_job, meta)
            state = JobState.FAILED
        self._apply(job, state, meta)
        return job

    def _apply(self, job: Job, state: JobState, meta: dict[str, Any]) -> None:
        """Copy what Redis knows into the Job the routes read."""
        job.step = meta.get("step", 0)
        job.total_steps = meta.get("total_steps") or job.total_steps
        job.started_at, job.finished_at = meta.get("started_at"), meta.get("finished_at")
        job.error, job.nsfw = meta.get("error"), bool(meta.get("nsfw"))
        job.seconds_per_step, job.rejected = meta.get("seconds_per_step"), bool(
            meta.get("rejected"))
        job.saved_path, job.step_marks = meta.get("saved_path"), meta.get("step_marks") or []
        job.worker = meta.get("worker")  # extra attribute: the job JSON's `worker`
        flag = self.connection.get(rc.cancel_key(job.id))
        job.cancel_requested, job.skip_requested = bool(flag), flag == b"skip"
        if state == JobState.SUCCEEDED and job.png is None:
            job.png = self.connection.get(rc.png_key(job.id))
        if state == JobState.FAILED and not job.error:
            job.error = "the worker failed running this job; the details are in its log"
        job.state = state
        if state.finished:
            job.done.set()

    def _abandoned(self, rq_job, meta: dict[str, Any]) -> bool:
        """True when the worker running this job no longer heartbeats."""
        name = meta.get("worker") or rq_job.worker_name
        return bool(name) and not self.connection.exists(rc.heartbeat_key(name))

    def _fail_abandoned(self, rq_job, meta: dict[str, Any]) -> dict[str, Any]:
        """Fail a job whose worker died (kill -9, power loss): not re-queued (see above)."""
        from rq.job import JobStatus
        from rq.registry import FailedJobRegistry, StartedJobRegistry

        from rq.job import Job as RQJob

        rq_job = RQJob.fetch(rq_job.id, connection=self.connection)  # whole: RQ re-saves it
        name = meta.get("worker") or rq_job.worker_name
        meta.update(outcome=JobState.FAILED.value, finished_at=rc.now(), error=(
            f"the worker {name} stopped while running this job (no heartbeat for "
            f"{rc.HEARTBEAT_TTL_SECONDS} s); retry the request"))
        rq_job.meta = meta
        rq_job.save_meta()
        with self.connection.pipeline() as pipe:
            rq_job.set_status(JobStatus.FAILED, pipeline=pipe)
            StartedJobRegistry(queue=self.rq).remove_executions(rq_job, pipeline=pipe)
            FailedJobRegistry(queue=self.rq).add(rq_job, ttl=self.settings.job_retention_seconds,
                                                  pipeline=pipe)
            pipe.hincrby(rc.STATS_KEY, "failed", 1)
            pipe.execute()
        log.warning("job %s failed: worker %s died", rq_job.id, name)
        return meta

    def _from_rq(self, rq_job) -> Job:
        """A Job for the routes from an RQ job (its args are the request and seed)."""
        request, seed = rq_job.args
        meta = rq_job.meta
        job = Job(request=request, seed=seed, id=rq_job.id, client=meta.get("client", ""),
                  created_at=meta.get("created_at", rc.now()),
                  batch_id=meta.get("batch_id", rq_job.id),
                  batch_index=meta.get("batch_index", 0), batch_size=meta.get("batch_size", 1))
        return self.refresh(job)

    def _ready_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.engine.workers() if w["state"] == "ready"]

    def _eta(self, job: Job, position: int | None) -> float | None:
        """ETA; a queued job's counts the jobs ahead as its size, shared over the workers."""
        figures = self.connection.hget(rc.STATS_KEY, "seconds_per_step")
        earlier = float(figures) if figures else None
        steps_left = job.total_steps - job.step
        if job.state == JobState.QUEUED and position:
            workers = max(1, len(self._ready_workers()))
            steps_left = job.total_steps + (position - 1) * job.total_steps / workers
        return eta_seconds(job.state, int(steps_left), job.step_marks, job.started_at,
                           rc.now(), earlier)

    def _retry_after(self) -> int:
        """Retry-After for a full queue: about one job's time, at least a few seconds."""
        figures = self.connection.hget(rc.STATS_KEY, "seconds_per_step")
        return max(5, int(float(figures) * 25) if figures else 30)


def _no_switching() -> BackendUnsupported:
    return BackendUnsupported("model_switching_unsupported", "model switching needs "
                              "QUEUE_BACKEND=memory for now (this server runs "
                              "QUEUE_BACKEND=redis); leave out the model field", None)
