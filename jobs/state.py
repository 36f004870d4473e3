"""QueueState: what the queue (jobs/queue.py) and its worker (jobs/worker.py) share, and
the one lock that guards it. Every change to a job happens under this lock."""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from jobs.job import Job, JobState
from jobs.journal import Journal
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
