"""QueueState: what the queue (jobs/queue.py) and its worker (jobs/worker.py) share, and
the one lock that guards it. Every change to a job happens under this lock."""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from jobs.eta import eta_seconds, retry_after_seconds
from jobs.fairness import fair_index
from jobs.job import Job, JobState
from jobs.journal import Journal
from jobs.retention import expired_job_ids
from jobs.watch import JobSignals


@dataclass
class QueueState:
    """Jobs waiting, running and remembered, plus the figures /health reports; read or
    change any field only while holding `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: collections.deque[Job] = field(default_factory=collections.deque)
    jobs: dict[str, Job] = field(default_factory=dict)  # every job still known, oldest first
    running: Job | None = None
    accepting: bool = True  # False once shutdown has begun
    stopping: bool = False  # True when the worker should end
    seconds_per_step: float | None = None  # measured by the last run, for first-step ETAs
    pace: dict[str, dict] = field(default_factory=dict)  # jobs.pace: figures per kind
    completed: int = 0
    failed: int = 0
    journal: Journal | None = None  # the accepted jobs on disk (JOURNAL_PATH), when on
    # Told of every start, step and finish: event streams wait on it, metrics count finishes.
    signals: JobSignals = field(default_factory=JobSignals)

    def __post_init__(self) -> None:
        # Signalled when a job is queued or the worker should stop.
        self.wake = threading.Condition(self.lock)

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""
        if job.state == JobState.RUNNING:
            return 0
        try:
            return self.waiting.index(job) + 1
        except ValueError:
            return None

    def eta(self, job: Job, now: float) -> float | None:
        """The job's ETA (jobs.eta) from what the queue knows now: a queued job's counts
        the running job's rest and the jobs ahead of it."""
        steps_left = job.total_steps - job.step
        if job.state == JobState.QUEUED:
            position = self.position(job)
            ahead = list(self.waiting)[: position - 1] if position else []
            steps_left = job.total_steps + sum(j.total_steps for j in ahead)
            if self.running is not None:
                steps_left += self.running.total_steps - self.running.step
        return eta_seconds(job.state, steps_left, job.step_marks, job.started_at, now,
                           self.seconds_per_step)

    def retry_after(self, now: float) -> int:
        """A Retry-After for a full queue: the running job's remaining time, at least a few
        seconds."""
        running = self.running
        return retry_after_seconds(self.eta(running, now) if running else None)

    def enqueue(self, job: Job, fair: bool) -> None:
        """Add a new job to the waiting line: at its fair-share place (jobs.fairness), or
        last; and to the known jobs."""
        place = len(self.waiting)
        if fair:
            running = [self.running.client] if self.running else []
            place = fair_index([j.client for j in self.waiting], job.client, running)
        self.waiting.insert(place, job)
        self.jobs[job.id] = job

    def forget_expired(self, now: float, seconds: int, count: int) -> None:
        """Forget finished jobs beyond JOB_RETENTION_SECONDS and _COUNT (jobs.retention),
        in memory and in the journal."""
        expired = list(expired_job_ids(self.jobs.values(), now, seconds, count))
        for job_id in expired:
            del self.jobs[job_id]
        if expired and self.journal is not None:
            self.journal.forget(expired)

    def finish(self, job: Job, state: JobState, error: str | None, now: float) -> None:
        """Move a job to a final state and wake whoever waits for it."""
        job.state, job.error, job.finished_at = state, error, now
        job.latents = None
        if self.running is job:
            self.running = None
        if self.journal is not None:
            self.journal.finished(job)
        job.done.set()
        self.signals.finished(job)
