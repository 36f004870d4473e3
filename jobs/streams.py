"""Event streams (GET /jobs/<id>/events): what a stream tells as its job goes on, and how many
may be open at once.

Waitress serves each request on one of THREADS worker threads, and a streaming response keeps
its thread until the stream ends: yielding often does not give the thread back. So streams are
bounded: `StreamSlots` lets EVENT_STREAMS be open at once in this process, and the route
refuses the next with 503 and Retry-After (the page then polls). A stream sleeps on its
backend's JobWatch (woken by each change, not polling), and ends when its job ends, when its
client has gone (noticed within WAKE_SECONDS), or when this process shuts down.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from jobs.watch import JobWatch

if TYPE_CHECKING:
    from jobs.backend import QueueBackend
    from jobs.job import Job

# A comment line this often keeps proxies and browsers from taking a quiet stream for dead.
HEARTBEAT_SECONDS = 15.0
# The longest a stream sleeps without looking at its job and its client.
WAKE_SECONDS = 1.0
# A queued job's ETA is told again only once it moved this much (seconds, or a fraction).
ETA_SLACK_SECONDS, ETA_SLACK_FRACTION = 5.0, 0.2
FINISHED_STATES = ("succeeded", "failed", "cancelled")

Event = tuple[str, dict[str, Any]]  # (event name, JSON data)


class StreamSlots:
    """How many event streams may be open at once in this process (thread-safe)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Open a stream if a slot is free (True); False when all `limit` are taken."""
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            return True

    def give_back(self) -> None:
        """A stream ended: its slot is free again."""
        with self._lock:
            self._open = max(0, self._open - 1)

    @property
    def open(self) -> int:
        """Streams open now."""
        with self._lock:
            return self._open


def follow_job(queue: "QueueBackend", job: "Job", watch: JobWatch, gone: Callable[[], bool],
               heartbeat_seconds: float | None = None,
               clock: Callable[[], float] = time.monotonic) -> Iterator[Event | None]:
    """The job's events as it goes on, None for a heartbeat: 'queued' (position, ETA),
    'progress' (step of steps, ETA), 'preview' (a preview of that step is ready) and, last,
    'finished' (the job as GET /jobs/<id> shows it). Ends after 'finished', once the client
    is `gone()`, or when the queue stops accepting (this process is shutting down)."""
    heartbeat_seconds = heartbeat_seconds or HEARTBEAT_SECONDS  # read now: tests shorten it
    told = _Told()
    quiet_since = clock()
    while True:
        snapshot = queue.snapshot(job)
        news = told.news(snapshot, watch.preview_step())
        yield from news
        if news:
            quiet_since = clock()
        if snapshot["state"] in FINISHED_STATES or not queue.accepting:
            return
        watch.wait(WAKE_SECONDS)
        if gone():
            return
        if clock() - quiet_since >= heartbeat_seconds:
            yield None
            quiet_since = clock()


class _Told:
    """What a stream has told so far, so it tells only what is new."""

    def __init__(self) -> None:
        self.position: int | None = None
        self.eta: float | None = None
        self.step: tuple[int, int] | None = None
        self.preview = 0

    def news(self, job: dict[str, Any], preview_step: int) -> list[Event]:
        """The events that `job` (a snapshot) and the watch's preview step add."""
        state, ids = job["state"], {"id": job["id"], "state": job["state"]}
        if state == "queued":
            position, eta = job["queue_position"], job["eta_seconds"]
            if position == self.position and not _eta_moved(self.eta, eta):
                return []
            self.position, self.eta = position, eta
            return [("queued", {**ids, "queue_position": position, "eta_seconds": eta})]
        if state == "running":
            events: list[Event] = []
            step = (job["step"], job["total_steps"])
            if step != self.step:
                self.step = step
                events.append(("progress", {**ids, "step": step[0], "total_steps": step[1],
                                            "progress": job["progress"],
                                            "eta_seconds": job["eta_seconds"],
                                            "attempts": job.get("attempts"),
                                            "resumed_at_step": job.get("resumed_at_step")}))
            if preview_step > self.preview:
                self.preview = preview_step
                events.append(("preview", {**ids, "step": preview_step}))
            return events
        return [("finished", job)]


def _eta_moved(told: float | None, now: float | None) -> bool:
    """Whether a queued job's ETA changed enough to be told again."""
    if told is None or now is None:
        return told is None and now is not None
    return abs(now - told) > max(ETA_SLACK_SECONDS, ETA_SLACK_FRACTION * told)
