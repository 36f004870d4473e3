"""The job queue: the only module with threads and locks.

One worker thread loads the model and then runs jobs one at a time (the pipeline is not
thread-safe, and two generations on a 2-core laptop would only slow each other down).
Requests wait in a bounded FIFO; every job has an id, a state, step/total, timings, a
live preview and, when it succeeds, its PNG. Finished jobs are kept for a bounded time and
count so a page reload or a slow client does not lose them, and saved to OUTPUT_DIR.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from config import Settings
from params import GenerationRequest, MAX_SEED

log = logging.getLogger(__name__)


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the three final states."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class QueueFull(RuntimeError):
    """No room in the queue right now; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__("the queue is full")
        self.retry_after = retry_after


class NotAccepting(RuntimeError):
    """The server is not taking jobs: model loading, load failed, or shutting down."""

    def __init__(self, reason: str, message: str, retry_after: int | None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class JobCancelled(Exception):
    """Raised inside the engine's step callback to stop a cancelled job at once."""


@dataclass
class Job:
    """One generation: its request, state, progress and result."""

    request: GenerationRequest
    seed: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0  # UNet steps; set from the request, corrected by the pipeline
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    png: bytes | None = None
    seconds_per_step: float | None = None
    nsfw: bool = False
    saved_path: str | None = None
    client: str = ""
    delivered: bool = False  # the image reached a client; until then count-pruning spares it
    cancel_requested: bool = False
    latents: Any = None  # the newest latents, for the preview (engine-owned tensor)
    preview_step: int = -1
    preview_png: bytes | None = None
    step_marks: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self.total_steps = self.total_steps or self.request.steps


def random_seed() -> int:
    """A fresh seed in 0..2^32-1."""
    import secrets

    return secrets.randbelow(MAX_SEED + 1)


class JobQueue:
    """Bounded FIFO of generation jobs served by one worker thread that owns the engine."""

    def __init__(self, engine, settings: Settings, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}  # every job still known, oldest first
        self._running: Job | None = None
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seconds_per_step: float | None = None  # from earlier runs, for first-step ETAs
        self._open_responses = 0  # HTTP responses not yet fully handed to the server
        self._responses_done = threading.Condition(self._lock)
        self.completed = 0
        self.failed = 0

    # ------------------------------------------------------------------ control
    def start(self) -> "JobQueue":
        """Start the worker: it loads the model in the background, then serves jobs."""
        self._thread = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        self._thread.start()
        return self

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until the model load has finished (ready or failed); for tools and tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.engine.status.state == "loading":
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, grace_seconds: float) -> None:
        """Refuse new jobs, cancel queued ones, let the running job finish within the grace
        period (then cancel it), and stop the worker."""
        with self._lock:
            self._accepting = False
            for job in list(self._waiting):
                self._finish(job, JobState.CANCELLED, "the server is shutting down")
            self._waiting.clear()
            running = self._running
        if running is not None and not running.done.wait(grace_seconds):
            log.warning("shutdown: cancelling job %s after %.0f s grace", running.id,
                        grace_seconds)
            self.cancel(running.id)
            running.done.wait(60)
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            # The model load cannot be interrupted; don't hang shutdown on it.
            self._thread.join(timeout=5)

    def drain_in_background(self, grace_seconds: float, then: Callable[[], None],
                            response_timeout: float = 30.0) -> threading.Thread:
        """Shut down off the caller's thread: stop (see `stop`), wait until every open HTTP
        response has been handed to the server, then call `then` (e.g. exit the process)."""
        def drain() -> None:
            self.stop(grace_seconds)
            self.wait_responses_closed(response_timeout)
            then()

        thread = threading.Thread(target=drain, name="shutdown", daemon=True)
        thread.start()
        return thread

    def response_opened(self) -> None:
        """An HTTP request started (counted so shutdown never cuts a response short)."""
        with self._lock:
            self._open_responses += 1

    def response_closed(self) -> None:
        """An HTTP response body was fully handed to the server."""
        with self._lock:
            self._open_responses -= 1
            self._responses_done.notify_all()

    def wait_responses_closed(self, timeout: float) -> bool:
        """Block until no response is open (True) or the timeout passes (False)."""
        with self._lock:
            return self._responses_done.wait_for(lambda: self._open_responses <= 0, timeout)

    # ------------------------------------------------------------------ jobs
    def submit(self, request: GenerationRequest, client: str = "") -> Job:
        """Queue a job, or raise NotAccepting / QueueFull."""
        return self.submit_many([request], client)[0]

    def submit_many(self, requests: list[GenerationRequest], client: str = "") -> list[Job]:
        """Queue several jobs atomically (a batch): all are accepted, or none is."""
        status = self.engine.status
        with self._lock:
            if not self._accepting:
                raise NotAccepting("shutting_down", "the server is shutting down; retry "
                                   "against another instance or after it restarts", 30)
            if status.state == "loading":
                raise NotAccepting("loading", "the model is still loading; retry in a few "
                                   "seconds (GET /health says when it is ready)", 10)
            if status.state == "failed":
                raise NotAccepting("model_unavailable", f"the model failed to load: "
                                   f"{status.error}", None)
            if len(self._waiting) + len(requests) > self.settings.queue_size:
                raise QueueFull(self._retry_after_locked())
            jobs = []
            for request in requests:
                seed = request.seed if request.seed is not None else random_seed()
                job = Job(request=request, seed=seed, client=client, created_at=self.clock())
                self._waiting.append(job)
                self._jobs[job.id] = job
                jobs.append(job)
            self._prune_locked()
            self._wake.notify_all()
        for job in jobs:
            log.info("job %s queued (position %s)", job.id, self.queue_position(job))
        return jobs

    def current(self) -> Job | None:
        """The running job, if any."""
        with self._lock:
            return self._running

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None if unknown or no longer retained."""
        with self._lock:
            self._prune_locked()
            return self._jobs.get(job_id)

    def recent(self, limit: int | None = None) -> list[Job]:
        """Known jobs, newest first."""
        with self._lock:
            self._prune_locked()
            jobs = list(reversed(self._jobs.values()))
        return jobs[:limit] if limit else jobs

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one leaves the queue now, a running one stops at its next
        step. Finished jobs are left as they are. Returns the job, or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state.finished:
                return job
            job.cancel_requested = True
            if job.state == JobState.QUEUED:
                self._waiting.remove(job)
                self._finish(job, JobState.CANCELLED, "cancelled before it started")
        log.info("job %s cancel requested", job_id)
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is finished; True if it is."""
        return job.done.wait(timeout)

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""
        with self._lock:
            return self._position_locked(job)

    def _position_locked(self, job: Job) -> int | None:
        """queue_position, for a caller that holds the lock."""
        if job.state == JobState.RUNNING:
            return 0
        try:
            return self._waiting.index(job) + 1
        except ValueError:
            return None

    def preview(self, job: Job) -> bytes | None:
        """A PNG of the job's newest latents (rendered once per step, on demand)."""
        with self._lock:
            if job.state.finished and job.png is not None:
                return job.png  # done: the real image beats any approximation
            latents, step = job.latents, job.step
            if latents is None:
                return job.preview_png
            if job.preview_step == step and job.preview_png is not None:
                return job.preview_png
        png = self.engine.preview_png(latents)
        with self._lock:
            job.preview_png, job.preview_step = png, step
        return png

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the JSON the API returns."""
        with self._lock:
            position = self._position_locked(job)
            eta = self._eta_locked(job)
            return {
                "id": job.id, "state": job.state.value, "step": job.step,
                "total_steps": job.total_steps,
                "progress": round(job.step / job.total_steps, 4) if job.total_steps else 0.0,
                "eta_seconds": None if eta is None else round(eta, 1),
                "queue_position": position, "seed": job.seed,
                "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
                "finished_at": _iso(job.finished_at), "error": job.error,
                "seconds_per_step": job.seconds_per_step,
                "seconds": (round(job.finished_at - job.started_at, 2)
                            if job.finished_at and job.started_at else None),
                "nsfw": job.nsfw, "request": job.request.to_dict(),
            }

    def stats(self) -> dict[str, Any]:
        """Queue figures for /health."""
        with self._lock:
            return {"waiting": len(self._waiting), "running": int(self._running is not None),
                    "capacity": self.settings.queue_size, "completed": self.completed,
                    "failed": self.failed, "accepting": self._accepting,
                    "seconds_per_step": (round(self._seconds_per_step, 3)
                                         if self._seconds_per_step else None)}

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun."""
        return self._accepting

    # ------------------------------------------------------------------ internals
    def _eta_locked(self, job: Job) -> float | None:
        """Seconds until the job is done: this run's measured s/step, else earlier runs'."""
        if job.state.finished:
            return 0.0
        per_step = self._seconds_per_step
        if job.state == JobState.RUNNING and len(job.step_marks) >= 2:
            marks = job.step_marks
            per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
        elif job.state == JobState.RUNNING and job.step_marks and job.started_at:
            per_step = per_step or (job.step_marks[0] - job.started_at)
        if not per_step:
            return None
        remaining = job.total_steps - job.step
        if job.state == JobState.QUEUED:
            position = self._position_locked(job)
            ahead = list(self._waiting)[: position - 1] if position else []
            remaining = job.total_steps + sum(j.total_steps for j in ahead)
            if self._running is not None:
                remaining += self._running.total_steps - self._running.step
        elif job.step_marks:
            # Time already spent on the step in progress counts against it.
            elapsed = self.clock() - job.step_marks[-1]
            return max(0.0, remaining * per_step - min(elapsed, per_step))
        return remaining * per_step

    def _retry_after_locked(self) -> int:
        """A Retry-After estimate: the running job's remaining time, at least a few seconds."""
        eta = self._eta_locked(self._running) if self._running else None
        return max(5, int(eta or 30))

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        """Move a job to a final state (caller holds the lock)."""
        job.state = state
        job.error = error
        job.finished_at = self.clock()
        job.latents = None
        job.done.set()

    def mark_delivered(self, job: Job) -> None:
        """Record that a client received the job's image (it may now be pruned by count)."""
        with self._lock:
            job.delivered = True

    def _prune_locked(self) -> None:
        """Forget finished jobs beyond the retention age and count.

        The count limit never drops an image nobody has fetched yet: under load that would
        lose accepted work. Undelivered images are kept until JOB_RETENTION_SECONDS.
        """
        now = self.clock()
        finished = [j for j in self._jobs.values() if j.state.finished]
        expired = {j.id for j in finished
                   if now - (j.finished_at or now) > self.settings.job_retention_seconds}
        keep = [j for j in finished if j.id not in expired
                and (j.delivered or j.png is None)]
        excess = len(keep) - self.settings.job_retention_count
        if excess > 0:
            expired.update(j.id for j in sorted(keep, key=lambda j: j.finished_at)[:excess])
        for job_id in expired:
            del self._jobs[job_id]

    def _work(self) -> None:
        """Worker loop: restore saved history, load the model, then run jobs until stopped."""
        self._restore_saved()
        self.engine.load()
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state = JobState.RUNNING
                job.started_at = self.clock()
                self._running = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: Job) -> None:
        """Run one job; any exception fails this job only."""
        def on_step(step: int, total: int, latents: Any) -> None:
            now = self.clock()
            with self._lock:
                job.step, job.total_steps = step, total
                job.step_marks.append(now)
                job.latents = latents.detach().clone()
                if job.cancel_requested:
                    raise JobCancelled()

        req = job.request
        try:
            result = self.engine.generate(req, job.seed, on_step)
        except JobCancelled:
            with self._lock:
                self._finish(job, JobState.CANCELLED, f"cancelled at step {job.step} of "
                                                      f"{job.total_steps}")
            log.info("job %s cancelled at step %d/%d", job.id, job.step, job.total_steps)
            return
        except Exception as exc:  # a failed generation fails this job only
            message = explain_generation_error(exc, req)
            with self._lock:
                self.failed += 1
                self._finish(job, JobState.FAILED, message)
            log.exception("job %s failed: %s", job.id, message)
            return
        saved = self._save(job, result.png)
        with self._lock:
            job.png = result.png
            job.nsfw = result.nsfw
            job.seconds_per_step = result.seconds_per_step
            job.saved_path = saved
            if result.seconds_per_step:
                self._seconds_per_step = result.seconds_per_step
            self.completed += 1
            self._finish(job, JobState.SUCCEEDED)
        log.info("generated job=%s prompt_chars=%d steps=%d size=%dx%d seconds=%.2f "
                 "s_per_step=%.3f seed=%d", job.id, len(req.prompt), req.steps, req.width,
                 req.height, result.seconds, result.seconds_per_step, job.seed)

    def _restore_saved(self) -> None:
        """Bring back the images saved by earlier runs (within retention) as finished jobs,
        so a restart does not empty the page's history or break /jobs/<id>/image links."""
        if not self.settings.output_dir:
            return
        from PIL import Image

        from params import parse_infotext

        folder = Path(self.settings.path(self.settings.output_dir))
        oldest = self.clock() - self.settings.job_retention_seconds
        try:
            files = [(p.stat().st_mtime, p) for p in folder.glob("*/*.png")]
        except OSError:
            return
        files = sorted(f for f in files if f[0] >= oldest)[-self.settings.job_retention_count:]
        restored = []
        for mtime, path in files:
            try:
                png = path.read_bytes()
                with Image.open(path) as image:
                    request, seed = parse_infotext(image.info["parameters"])
            except (OSError, KeyError, ValueError):
                continue  # not one of ours, or damaged: leave it on disk, skip it
            job_id = path.name.split("-", 1)[0]
            job = Job(request=request, seed=seed, id=job_id, state=JobState.SUCCEEDED,
                      created_at=mtime, finished_at=mtime, png=png, saved_path=str(path),
                      delivered=True)
            job.step = job.total_steps
            job.done.set()
            restored.append(job)
        with self._lock:
            for job in restored:
                self._jobs.setdefault(job.id, job)
        if restored:
            log.info("restored %d saved images from %s", len(restored), folder)

    def _save(self, job: Job, png: bytes) -> str | None:
        """Keep the image on disk too, so nothing is lost when the process ends."""
        if not self.settings.output_dir:
            return None
        try:
            day = datetime.now().strftime("%Y-%m-%d")
            folder = Path(self.settings.path(self.settings.output_dir)) / day
            folder.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", job.request.prompt.lower()).strip("-")[:40]
            path = folder / f"{job.id}-{job.seed}-{slug or 'image'}.png"
            path.write_bytes(png)
            return str(path)
        except OSError as exc:  # a full disk must not fail a finished generation
            log.warning("could not save job %s to %s: %s", job.id, self.settings.output_dir, exc)
            return None


def explain_generation_error(exc: BaseException, request: GenerationRequest) -> str:
    """An actionable one-line message for a failed generation (never a stack trace)."""
    text = str(exc).lower()
    # torch reports a failed allocation as RuntimeError("... can't allocate memory ...").
    if isinstance(exc, MemoryError) or "out of memory" in text or "allocate memory" in text:
        return (f"out of memory generating {request.width}x{request.height}: try a smaller "
                "size or fewer steps, or close other programs")
    return (f"generation failed ({type(exc).__name__}); try fewer steps or a smaller size, "
            "and check the server log for details")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()
