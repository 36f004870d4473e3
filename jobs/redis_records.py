"""The Redis backend's job records: a batch written as RQ jobs, and an RQ job read back as
the `Job` the routes use (a job whose worker died is handed to jobs.redis_reaper)."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from jobs import redis_common as rc
from jobs.batch import build_batch
from jobs.eta import eta_seconds, retry_after_seconds
from jobs.fairness import fair_index
from jobs.job import Job, JobState
from jobs.redis_events import announce_finished
from jobs.redis_reaper import Reaper
from params import GenerationRequest

log = logging.getLogger(__name__)


class JobRecords:
    """Writes batches as RQ jobs, reads RQ jobs into Jobs, refreshes them, and fails those
    whose worker died."""

    def __init__(self, connection, retention_seconds: int, max_attempts: int):
        self.connection = connection
        self.retention_seconds = retention_seconds
        self.reaper = Reaper(connection, retention_seconds, max_attempts)

    def enqueue(self, requests: list[GenerationRequest], client: str, tiny_decoder: bool,
                model: str, fair: bool = True) -> list[Job]:
        """Create the batch's RQ jobs on `model`'s queue (each request names the model, so
        a worker serving several switches to it) and the recent-jobs index entries in one
        pipeline, then move them to their fair-share places (jobs.fairness) when `fair`."""
        queue = rc.model_queue(self.connection, model)
        requests = [replace(request, model=model) for request in requests]
        from jobs.redis_worker import run_job

        created, data, retention = rc.now(), [], self.retention_seconds
        jobs = build_batch(requests, client, created, tiny_decoder)
        for job in jobs:
            meta = {"client": client, "created_at": created, "batch_id": job.batch_id,
                    "batch_index": job.batch_index, "batch_size": job.batch_size,
                    "total_steps": job.total_steps}
            request = job.request
            data.append(queue.prepare_data(
                run_job, (request, job.seed), job_id=job.id, meta=meta, result_ttl=retention,
                failure_ttl=retention, timeout=rc.JOB_TIMEOUT_SECONDS,
                description=f"generate {request.width}x{request.height} {request.steps} steps"))
        with self.connection.pipeline() as pipe:
            queue.enqueue_many(data, pipeline=pipe)
            pipe.zadd(rc.RECENT_KEY, {job.id: created for job in jobs})
            pipe.zremrangebyscore(rc.RECENT_KEY, "-inf", created - retention)
            for job in jobs:
                pipe.set(rc.client_key(job.id), client, ex=retention)
            pipe.execute()
        if fair:
            self._place_fairly(queue, [job.id for job in jobs], client)
        return jobs

    def _place_fairly(self, queue, new_ids: list[str], client: str) -> None:
        """Move the just-queued jobs from the end of the RQ list to their fair places, in
        one transaction that starts over if a worker takes a job meanwhile."""
        from redis.exceptions import WatchError
        from rq.registry import StartedJobRegistry

        running = [c.decode() for c in self.connection.mget(
            [rc.client_key(i) for i in StartedJobRegistry(queue=queue).get_job_ids()] or
            ["-"]) if c]
        key = queue.key
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    ids = [i.decode() for i in pipe.lrange(key, 0, -1)]
                    line = [i for i in ids if i not in new_ids]
                    clients = [c.decode() if c else "" for c in
                               pipe.mget([rc.client_key(i) for i in line])] if line else []
                    for job_id in (i for i in ids if i in new_ids):
                        place = fair_index(clients, client, running)
                        line.insert(place, job_id)
                        clients.insert(place, client)
                    pipe.multi()
                    if line != ids:
                        pipe.delete(key)
                        pipe.rpush(key, *line)
                    pipe.execute()
                    return
                except WatchError:
                    continue

    def running_ids(self) -> list[str]:
        """The ids of the jobs RQ counts as started, over every model's queue."""
        from rq.registry import StartedJobRegistry

        return [job_id for queue in rc.model_queues(self.connection)
                for job_id in StartedJobRegistry(queue=queue).get_job_ids()]

    def next_waiting_id(self) -> str | None:
        """The first waiting job of any model's queue, or None."""
        for queue in rc.model_queues(self.connection):
            waiting = queue.get_job_ids(0, 1)
            if waiting:
                return waiting[0]
        return None

    def cancel_queued(self, job_id: str) -> None:
        """Take a queued job off its queue, recorded as cancelled before it started."""
        from rq.job import Job as RQJob

        rq_job = RQJob.fetch(job_id, connection=self.connection)
        rq_job.meta.update(outcome=JobState.CANCELLED.value, finished_at=rc.now(),
                           error="cancelled before it started")
        rq_job.save_meta()
        rq_job.cancel()
        announce_finished(self.connection, job_id, JobState.CANCELLED)

    def eta(self, job: Job, position: int | None, workers: int) -> float | None:
        """ETA; a queued job's counts the jobs ahead as its size, shared over the `workers`
        that serve its model."""
        figures = self.connection.hget(rc.STATS_KEY, "seconds_per_step")
        earlier = float(figures) if figures else None
        steps_left = job.total_steps - job.step
        if job.state == JobState.QUEUED and position:
            steps_left = job.total_steps + (position - 1) * job.total_steps / max(1, workers)
        return eta_seconds(job.state, int(steps_left), job.step_marks, job.started_at,
                           rc.now(), earlier)

    def retry_after(self, default_steps: int) -> int:
        """Retry-After for a full queue: about one default job's time (DEFAULT_STEPS at the
        last measured pace), at least a few seconds."""
        figures = self.connection.hget(rc.STATS_KEY, "seconds_per_step")
        return retry_after_seconds(float(figures) * default_steps if figures else None)

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None if unknown or expired."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob

        try:
            rq_job = RQJob.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return None
        return self.from_rq(rq_job)

    def many(self, ids: list[str]) -> list[Job]:
        """The jobs with these ids that still exist, in order."""
        from rq.job import Job as RQJob

        return [self.from_rq(j) for j in RQJob.fetch_many(ids, connection=self.connection)
                if j is not None]

    def from_rq(self, rq_job) -> Job:
        """A Job for the routes from an RQ job (its args are the request and seed)."""
        request, seed = rq_job.args
        meta = rq_job.meta
        job = Job(request=request, seed=seed, id=rq_job.id, client=meta.get("client", ""),
                  created_at=meta.get("created_at", rc.now()),
                  batch_id=meta.get("batch_id", rq_job.id),
                  batch_index=meta.get("batch_index", 0), batch_size=meta.get("batch_size", 1))
        return self.refresh(job)

    def refresh(self, job: Job) -> Job:
        """Re-read the job's progress and outcome from Redis into `job`; a running job
        whose worker's heartbeat lapsed is reaped here (whichever process sees it first)."""
        from rq.job import Job as RQJob

        rq_job = RQJob(job.id, connection=self.connection)
        status = rq_job.get_status(refresh=True)
        meta = rq_job.get_meta(refresh=True)
        state = rc.job_state(status and status.value, meta)
        if state == JobState.RUNNING and self.reaper.abandoned(rq_job, meta):
            self.reaper.reap(job.id)  # run again from its checkpoint, or failed for good
            status = rq_job.get_status(refresh=True)
            meta = rq_job.get_meta(refresh=True)
            state = rc.job_state(status and status.value, meta)
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
        job.worker = meta.get("worker")
        job.attempts, job.resumed_at_step = meta.get("attempts", 0), meta.get("resumed_at_step")
        flag = self.connection.get(rc.cancel_key(job.id))
        job.cancel_requested, job.skip_requested = bool(flag), flag == b"skip"
        if state == JobState.SUCCEEDED and job.png is None:
            job.png = self.connection.get(rc.png_key(job.id))
        if state == JobState.FAILED and not job.error:
            job.error = "the worker failed running this job; the details are in its log"
        job.state = state
        if state.finished:
            job.done.set()
