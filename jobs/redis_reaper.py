"""What happens to a job whose Redis worker died (kill -9, the OOM killer, power loss): its
heartbeat lapses for HEARTBEAT_TTL_SECONDS, and the job is queued again, at the front, to go
on from its last checkpoint on any worker; after JOB_MAX_ATTEMPTS runs it fails, naming the
workers, because a job that kills every worker it runs on (out of memory, say) would go on
killing them.

Whoever notices first does it, once (a short Redis lock per job): a web process reading the
job, or a live worker's heartbeat thread sweeping the started jobs (so nobody needs to be
watching).
"""
from __future__ import annotations

import logging
from typing import Any

from jobs import redis_common as rc
from jobs.job import JobState
from jobs.redis_events import announce, announce_finished

log = logging.getLogger(__name__)

REAP_LOCK_SECONDS = 10


class Reaper:
    """Finds running jobs whose worker is gone and queues them again or fails them."""

    def __init__(self, connection, retention_seconds: int, max_attempts: int):
        self.connection = connection
        self.retention_seconds = retention_seconds
        self.max_attempts = max_attempts

    def abandoned(self, rq_job, meta: dict[str, Any]) -> bool:
        """True when the worker running this job no longer heartbeats."""
        name = meta.get("worker") or rq_job.worker_name
        return bool(name) and not self.connection.exists(rc.heartbeat_key(name))

    def sweep(self) -> int:
        """Reap every started job whose worker is gone; how many were."""
        from rq.job import Job as RQJob
        from rq.registry import StartedJobRegistry

        reaped = 0
        for queue in rc.model_queues(self.connection):
            for job_id in StartedJobRegistry(queue=queue).get_job_ids():
                rq_job = RQJob(job_id, connection=self.connection)
                meta = rq_job.get_meta(refresh=True)
                if not meta.get("outcome") and self.abandoned(rq_job, meta):
                    reaped += self.reap(job_id)
        return reaped

    def reap(self, job_id: str) -> bool:
        """Queue the job again (at the front, to resume) or fail it for good; False when
        another process is at it or it is no longer abandoned."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob
        from rq.job import JobStatus

        if not self.connection.set(rc.reap_lock_key(job_id), 1, nx=True,
                                   ex=REAP_LOCK_SECONDS):
            return False
        try:
            rq_job = RQJob.fetch(job_id, connection=self.connection)  # whole: RQ re-saves it
        except NoSuchJobError:
            return False
        meta = rq_job.meta
        if rq_job.get_status(refresh=False) != JobStatus.STARTED or meta.get("outcome") \
                or not self.abandoned(rq_job, meta):
            return False
        if meta.get("attempts", 0) < self.max_attempts:
            self._requeue(rq_job, meta)
        else:
            self._fail(rq_job, meta)
        return True

    def _requeue(self, rq_job, meta: dict[str, Any]) -> None:
        """Back to the front of the queue; its checkpoint stays in Redis for the next run."""
        from rq.job import JobStatus
        from rq.registry import StartedJobRegistry

        dead = meta.pop("worker", None) or rq_job.worker_name
        meta["requeued"] = meta.get("requeued", 0) + 1
        rq_job.meta = meta
        rq_job.save_meta()
        queue = rc.origin_queue(rq_job)
        with self.connection.pipeline() as pipe:
            StartedJobRegistry(queue=queue).remove_executions(rq_job, pipeline=pipe)
            rq_job.set_status(JobStatus.QUEUED, pipeline=pipe)
            queue.push_job_id(rq_job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        announce(self.connection, rq_job.id, "requeued")
        log.warning("job %s: worker %s died at step %s; queued again (attempt %d of %d) to "
                    "resume from step %s", rq_job.id, dead, meta.get("step"),
                    meta.get("attempts", 0) + 1, self.max_attempts,
                    meta.get("checkpoint_step", 0))

    def _fail(self, rq_job, meta: dict[str, Any]) -> None:
        """Failed for good: every attempt's worker died running it."""
        from rq.job import JobStatus
        from rq.registry import FailedJobRegistry, StartedJobRegistry

        workers = ", ".join(meta.get("workers") or [meta.get("worker") or rq_job.worker_name])
        attempts = meta.get("attempts", 0)
        meta.update(outcome=JobState.FAILED.value, finished_at=rc.now(), error=(
            f"the workers running this job stopped {attempts} times ({workers}: no heartbeat "
            f"for {rc.HEARTBEAT_TTL_SECONDS} s); it is not run again (JOB_MAX_ATTEMPTS="
            f"{self.max_attempts}): a smaller size or fewer steps may fit, or check the "
            "workers' memory"))
        rq_job.meta = meta
        rq_job.save_meta()
        queue = rc.origin_queue(rq_job)
        with self.connection.pipeline() as pipe:
            rq_job.set_status(JobStatus.FAILED, pipeline=pipe)
            StartedJobRegistry(queue=queue).remove_executions(rq_job, pipeline=pipe)
            FailedJobRegistry(queue=queue).add(rq_job, ttl=self.retention_seconds,
                                               pipeline=pipe)
            pipe.hincrby(rc.STATS_KEY, "failed", 1)
            pipe.execute()
        announce_finished(self.connection, rq_job.id, JobState.FAILED)
        log.warning("job %s failed: its workers died %d times (%s)", rq_job.id, attempts,
                    workers)
