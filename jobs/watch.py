"""How a job's watchers (its event stream, the metrics) learn that it changed, without polling.

Each backend hands out a `JobWatch` per event stream (QueueBackend.watch). The memory backend's
is `StateWatch`: the queue's state carries one `JobSignals`, told of every start, step and
finish (by the worker's StateRecorder and QueueState.finish), which wakes every waiting watch
and calls the finish listeners (the metrics). The Redis backend's is jobs/redis_events.py's
`RedisWatch`, on Redis pub/sub.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from jobs.job import Job, JobState

log = logging.getLogger(__name__)


class JobWatch(Protocol):
    """One watcher's line to one job: wait for its next change; `close` when done."""

    def wait(self, timeout: float) -> None:
        """Return when the job may have changed, or after `timeout` seconds."""

    def preview_step(self) -> int:
        """The newest step whose preview GET /jobs/<id>/preview serves now (0: none yet)."""

    def close(self) -> None:
        """Stop watching (frees what the watch holds, e.g. a Redis connection)."""


class JobSignals:
    """The memory backend's notifications: a change counter that watches wait on, and the
    listeners told of each finished job. Never calls back into the queue's lock, so it may
    be told of changes while that lock is held."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._version = 0
        self.finish_listeners: list[Callable[[Job], None]] = []

    def changed(self) -> None:
        """A job was queued, started or made a step: wake every watch."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def finished(self, job: Job) -> None:
        """A job reached its final state: wake every watch and tell the listeners (a
        listener's failure is logged, never raised into the worker)."""
        self.changed()
        for listener in self.finish_listeners:
            try:
                listener(job)
            except Exception:
                log.exception("a finish listener failed on job %s", job.id)

    @property
    def version(self) -> int:
        """How many changes so far."""
        with self._changed:
            return self._version

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the counter moves past `seen` (or `timeout`); the counter then."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen, timeout)
            return self._version


class StateWatch:
    """The memory backend's JobWatch: woken by the queue's JobSignals. Every step's latents
    are kept, and GET /jobs/<id>/preview renders them on demand, so a running job's preview
    is always its current step."""

    def __init__(self, signals: JobSignals, job: Job):
        self.signals, self.job = signals, job
        self._seen = signals.version

    def wait(self, timeout: float) -> None:
        """Return at the next change of any job (cheap: few streams), or after `timeout`."""
        self._seen = self.signals.wait(self._seen, timeout)

    def preview_step(self) -> int:
        """The running job's current step (its latents are the preview)."""
        return self.job.step if self.job.state == JobState.RUNNING else 0

    def close(self) -> None:
        """Nothing is held."""
