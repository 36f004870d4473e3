"""JobQueue: the in-process queue backend (jobs.backend.QueueBackend, QUEUE_BACKEND=memory),
where a request waits. A bounded FIFO of jobs, each with an id, a state,
step/total, timings, a live preview and, when it succeeds, its PNG.

Finished jobs are kept for a bounded time and count (jobs/retention.py) so a page reload
or a slow client does not lose them. One `Worker` (jobs/worker.py) runs the jobs; the two
share a `QueueState` (jobs/state.py) and its one lock.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from catalog.upscalers import NONE, PILLOW_UPSCALERS
from config import Settings
from engine.status import EngineStatus
from jobs.backend import Health, ImageEngine
from jobs.health import memory_health
from jobs.previews import latest_preview
from jobs.batch import build_batch
from jobs.job import Job, JobState, NotAccepting, QueueFull
from jobs.journal import JournalError, open_journal
from jobs.metrics import memory_metrics
from jobs.state import QueueState
from jobs.store import OutputStore
from jobs.watch import StateWatch
from jobs.worker import Worker
from params import GenerationRequest

log = logging.getLogger(__name__)

# How long shutdown waits for a cancelled running job to reach its next step.
CANCEL_WAIT_SECONDS = 60


class JobQueue:
    """Bounded FIFO of generation jobs served by one worker thread that owns the engine."""

    def __init__(self, engine: ImageEngine, settings: Settings, clock: Callable[[], float] = time.time,
                 store: OutputStore | None = None):
        self.engine = engine
        self.settings = settings
        self.clock = clock
        # Both read the clock through the queue, so a clock a test sets here reaches them.
        self.store = store or OutputStore(settings, clock=self._now)
        journal, self._journal_error = open_journal(settings)
        self._state = QueueState(journal=journal)
        self._worker = Worker(self._state, engine, self.store, self._now,
                              settings.job_max_attempts)
        self.metrics = memory_metrics(self._state, engine, lambda: self._worker.alive)

    # ------------------------------------------------------------------ control
    def start(self) -> "JobQueue":
        """Start the worker: it loads the model in the background, then serves jobs."""
        self._worker.start()
        return self

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until the model load has finished (ready or failed) or the worker died;
        for tools and tests."""
        return self._worker.wait_until_loaded(timeout)

    def stop(self, grace_seconds: float) -> None:
        """Refuse new jobs, cancel queued ones, let the running job finish within the grace
        period (then cancel it), and stop the worker."""
        state = self._state
        with state.lock:
            state.accepting = False
            for job in state.waiting:
                state.finish(job, JobState.CANCELLED, "the server is shutting down",
                             self.clock())
            state.waiting.clear()
            running = state.running
        if running is not None and not running.done.wait(grace_seconds):
            log.warning("shutdown: cancelling job %s after %.0f s grace", running.id,
                        grace_seconds)
            self.cancel(running.id)
            running.done.wait(CANCEL_WAIT_SECONDS)
        self._worker.stop()

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun."""
        return self._state.accepting

    @property
    def worker_alive(self) -> bool:
        """True while the worker thread runs (False before `start` and after it ends)."""
        return self._worker.alive

    @property
    def worker_error(self) -> str | None:
        """Why the worker stopped on its own (no job can run: the server is unhealthy);
        None while it runs, before `start` and after a requested stop."""
        return self._worker.error

    # ------------------------------------------------------------------ jobs
    def submit(self, request: GenerationRequest, client: str = "") -> Job:
        """Queue a job, or raise NotAccepting / QueueFull."""
        return self.submit_many([request], client)[0]

    def submit_switch(self, model: str, client: str = "") -> Job:
        """Queue a model switch: it waits its turn like a job, so no running image is cut
        off, and the worker loads `model` (a catalogue name) when it comes up."""
        return self.submit_many([GenerationRequest(prompt="", model=model, steps=1)], client,
                                kind="switch_model")[0]

    def submit_many(self, requests: list[GenerationRequest], client: str = "",
                    kind: str = "generate") -> list[Job]:
        """Queue several jobs atomically (a batch): all are accepted, or none is."""
        status, worker_error, state = self.engine.status, self._worker.error, self._state
        tiny_decoder = self.engine.has_tiny_decoder
        with state.lock:
            refusal = not_accepting(state.accepting, worker_error, status)
            if refusal is not None:
                raise refusal
            if len(state.waiting) + len(requests) > self.settings.queue_size:
                raise QueueFull(state.retry_after(self.clock()))
            jobs = build_batch(requests, client, self.clock(), tiny_decoder, kind)
            if state.journal is not None:
                try:
                    state.journal.accepted(jobs)  # on disk before anyone hears "accepted"
                except JournalError as exc:
                    raise NotAccepting("journal_unavailable", str(exc), 30) from None
            for job in jobs:
                state.enqueue(job, fair=self.settings.fair_share)
            self._state.forget_expired(self.clock(), self.settings.job_retention_seconds,
                                        self.settings.job_retention_count)
            state.wake.notify_all()
        for job in jobs:
            log.info("job %s queued (position %s)", job.id, self.queue_position(job))
        return jobs

    def upscale(self, image: Any, name: str, size: tuple[int, int]) -> Any:
        """Upscale on the engine now: a Pillow resampler at once in this thread, a model
        after the running job and before the next (jobs.turn), never beside a generation."""
        if not self._state.accepting:
            raise not_accepting(False, None, self.engine.status)
        if name in (NONE, *PILLOW_UPSCALERS):
            return self.engine.upscale(image, name, size)
        with self._worker.turn.request():
            return self.engine.upscale(image, name, size)

    def current(self) -> Job | None:
        """The running job, if any."""
        with self._state.lock:
            return self._state.running

    def active(self) -> Job | None:
        """The running job, else the next one waiting (between two images of a batch the
        worker has not yet taken the next); None when idle."""
        with self._state.lock:
            state = self._state
            return state.running or (state.waiting[0] if state.waiting else None)

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None if unknown or no longer retained."""
        with self._state.lock:
            self._state.forget_expired(self.clock(), self.settings.job_retention_seconds,
                                        self.settings.job_retention_count)
            return self._state.jobs.get(job_id)

    def pace_book(self) -> dict[str, dict[str, float]]:
        """The measured pace per kind of image, as the worker folded it in."""
        with self._state.lock:
            return {kind: dict(figures) for kind, figures in self._state.pace.items()}

    def recent(self, limit: int | None = None) -> list[Job]:
        """Known jobs, newest first."""
        with self._state.lock:
            self._state.forget_expired(self.clock(), self.settings.job_retention_seconds,
                                        self.settings.job_retention_count)
            jobs = list(reversed(self._state.jobs.values()))
        return jobs[:limit] if limit else jobs

    def cancel(self, job_id: str, skip: bool = False) -> Job | None:
        """Cancel a job: a queued one leaves the queue now, a running one stops at its next
        step. Finished jobs are left as they are. Returns the job, or None if unknown.
        `skip` (A1111's skip) marks it so the rest of its batch still runs."""
        state = self._state
        with state.lock:
            job = state.jobs.get(job_id)
            if job is None or job.state.finished:
                return job
            job.cancel_requested = True
            job.skip_requested = job.skip_requested or skip
            if job.state == JobState.QUEUED:
                state.waiting.remove(job)
                state.finish(job, JobState.CANCELLED, "cancelled before it started",
                             self.clock())
        log.info("job %s cancel requested", job_id)
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is finished; True if it is."""
        return job.done.wait(timeout)

    def mark_delivered(self, job: Job) -> None:
        """Record that a client received the job's image (it may now be pruned by count)."""
        with self._state.lock:
            job.delivered = True

    def forget(self, job_id: str) -> Job | None:
        """Drop a finished job and its image (from memory and the journal) now."""
        state = self._state
        with state.lock:
            job = state.jobs.get(job_id)
            if job is None or not job.state.finished:
                return None
            del state.jobs[job_id]
            if state.journal is not None:
                state.journal.forget([job_id])
        log.info("job %s forgotten (its image was deleted)", job_id)
        return job

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""
        with self._state.lock:
            return self._state.position(job)

    def preview(self, job: Job) -> bytes | None:
        """A PNG of the job's newest latents (rendered once per step, on demand)."""
        return latest_preview(self._state, job, self.engine.preview_png)

    def watch(self, job: Job) -> StateWatch:
        """A way to wait for the job's next change (woken by the worker's every step)."""
        return StateWatch(self._state.signals, job)

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the JSON the API returns."""
        with self._state.lock:
            return job.to_json(self._state.position(job), self._state.eta(job, self.clock()))

    def stats(self) -> dict[str, Any]:
        """Queue figures for /health; a `worker_error` means no job can run any more."""
        worker_error, state = self._worker.error, self._state
        with state.lock:
            return {"backend": "memory", "waiting": len(state.waiting), "running": int(state.running is not None),
                    "capacity": self.settings.queue_size, "completed": state.completed,
                    "failed": state.failed, "accepting": state.accepting,
                    "seconds_per_step": (round(state.seconds_per_step, 3)
                                         if state.seconds_per_step else None),
                    "worker_error": worker_error,
                    "journal": (state.journal.status() if state.journal is not None else
                                {"path": None, "error": self._journal_error}
                                if self._journal_error else None)}

    def health(self) -> Health:
        """/health: the worker, the model's state and the queue (never raises)."""
        return memory_health(self.engine, self.stats())

    # ------------------------------------------------------------------ internals
    def _now(self) -> float:
        """`self.clock()`, looked up at each call."""
        return self.clock()


def not_accepting(accepting: bool, worker_error: str | None,
                  status: EngineStatus) -> NotAccepting | None:
    """Why this process takes no job now (shutting down, worker dead, model loading or
    failed), as the error to raise; None when it takes them."""
    if not accepting:
        return NotAccepting("shutting_down", "the server is shutting down; retry against "
                            "another instance or after it restarts", 30)
    if worker_error:
        return NotAccepting("worker_stopped", f"{worker_error}; restart the server (the "
                            "details are in its log)", None)
    if status.state == "loading":
        return NotAccepting("loading", "the model is still loading; retry in a few seconds "
                            "(GET /health says when it is ready)", 10)
    if status.state == "failed":
        return NotAccepting("model_unavailable", f"the model failed to load: {status.error}",
                            None)
    return None
