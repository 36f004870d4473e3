"""The worker: where the picture is made.

One thread restores the images saved by earlier runs, loads the model, then runs jobs
one at a time: the pipeline is not thread-safe, and two generations on a 2-core laptop
would only slow each other down. Nothing a job or a file does may end this thread
unnoticed: a failure fails that job (or skips that file) and is logged with its
traceback, and if the thread ends anyway, `Worker.error` says so for /health.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from jobs.job import Job, JobCancelled, JobState, explain_generation_error
from jobs.state import QueueState
from jobs.store import OutputStore
from errors import UnsupportedRequest

log = logging.getLogger(__name__)

# How long `stop` waits for the thread to end; the model load cannot be interrupted.
WORKER_JOIN_SECONDS = 5
# How often `wait_until_loaded` looks at the engine's status.
LOAD_POLL_SECONDS = 0.02
UNEXPECTED_JOB_ERROR = ("the server hit an unexpected error running this job; the details "
                        "are in its log")


class Worker:
    """The one thread that takes jobs from the queue's state and runs them on the engine,
    saving each image to the store."""

    def __init__(self, state: QueueState, engine: Any, store: OutputStore,
                 clock: Callable[[], float]):
        self.state = state
        self.engine = engine
        self.store = store
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._stop_requested = False

    def start(self) -> None:
        """Start the thread: restore, load the model in the background, then serve jobs."""
        self._thread = threading.Thread(target=self._work, name="generation-worker",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread once it has no job (the queue has cancelled or finished them)."""
        self._stop_requested = True
        with self.state.lock:
            self.state.stopping = True
            self.state.wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            # The model load cannot be interrupted; don't hang shutdown on it.
            self._thread.join(timeout=WORKER_JOIN_SECONDS)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> str | None:
        """Why the thread ended on its own; None while it runs, before start, after stop."""
        if self._error or self._stop_requested or self._thread is None or self.alive:
            return self._error
        return "the generation worker stopped unexpectedly"  # ended without a trace

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until the model load has finished (ready or failed) or the thread died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.engine.status.state == "loading" and self.error is None:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(LOAD_POLL_SECONDS)
        return True

    # ------------------------------------------------------------------ the thread
    def _work(self) -> None:
        """Restore saved history, load the model, then run jobs until stopped."""
        try:
            self._restore()
            self.engine.load()
            while (job := self._take_next()) is not None:
                try:
                    self._run(job)
                except Exception:  # a fault outside the generation fails this job only
                    log.exception("job %s: unexpected error in the worker", job.id)
                    self._finish(job, JobState.FAILED, UNEXPECTED_JOB_ERROR)
        except BaseException as exc:  # even SystemExit: /health must learn there is no worker
            self._error = f"the generation worker stopped unexpectedly ({type(exc).__name__})"
            log.exception("%s; no job can run until the server restarts", self._error)
            self._fail_unfinished(f"{self._error}; restart the server")

    def _restore(self) -> None:
        """Bring back saved images as finished jobs; a failure only loses that history."""
        try:
            restored = self.store.restore()
        except Exception:
            log.exception("could not restore saved images; starting with an empty history")
            return
        with self.state.lock:
            for job in restored:
                self.state.jobs.setdefault(job.id, job)  # a job already known wins

    def _take_next(self) -> Job | None:
        """Block until a job waits, mark it running and return it; None once stopping."""
        state = self.state
        with state.lock:
            while not state.waiting and not state.stopping:
                state.wake.wait()
            if state.stopping:
                return None
            job = state.running = state.waiting.popleft()
            job.state, job.started_at = JobState.RUNNING, self.clock()
            return job

    def _run(self, job: Job) -> None:
        """Generate the job's image, save it, and record the outcome."""
        req = job.request
        if job.kind == "switch_model":
            self._switch(job)
            return
        try:
            result = self.engine.generate(req, job.seed, lambda step, total, latents:
                                          self._record_step(job, step, total, latents))
        except JobCancelled:
            self._finish(job, JobState.CANCELLED,
                         f"cancelled at step {job.step} of {job.total_steps}")
            log.info("job %s cancelled at step %d/%d", job.id, job.step, job.total_steps)
            return
        except Exception as exc:  # a failed generation fails this job only
            message = explain_generation_error(exc, req)
            job.rejected = isinstance(exc, UnsupportedRequest)
            self._finish(job, JobState.FAILED, message)
            log.exception("job %s failed: %s", job.id, message)
            return
        saved = self.store.save(job, result.png)
        with self.state.lock:
            job.png, job.nsfw, job.saved_path = result.png, result.nsfw, saved
            job.seconds_per_step = result.seconds_per_step
            # A cached or batch-1 step is up to 10x cheaper: such a job's pace would make
            # every other job's ETA (and Retry-After) far too short.
            if result.seconds_per_step and req.cfg_cutoff >= 1 and req.deep_cache <= 1:
                self.state.seconds_per_step = result.seconds_per_step
            self.state.completed += 1
            self.state.finish(job, JobState.SUCCEEDED, None, self.clock())
        log.info("generated job=%s prompt_chars=%d steps=%d size=%dx%d seconds=%.2f "
                 "s_per_step=%.3f decode_s=%.2f seed=%d preset=%s cfg_cutoff=%g deep_cache=%d "
                 "vae=%s", job.id, len(req.prompt), req.steps, req.width, req.height,
                 result.seconds, result.seconds_per_step, result.decode_seconds, job.seed,
                 req.speed_preset, req.cfg_cutoff, req.deep_cache, req.vae_decoder)

    def _switch(self, job: Job) -> None:
        """Run a model-switch job: load its model; on failure the old model serves again."""
        try:
            self.engine.switch_model(job.request.model)
        except Exception as exc:
            job.rejected = isinstance(exc, UnsupportedRequest)
            self._finish(job, JobState.FAILED, str(exc) if job.rejected else
                         f"model switch failed ({type(exc).__name__}); see the server log")
            log.exception("job %s: switch to %s failed", job.id, job.request.model)
            return
        with self.state.lock:
            job.step = job.total_steps
            self.state.finish(job, JobState.SUCCEEDED, None, self.clock())

    def _record_step(self, job: Job, step: int, total: int, latents: Any) -> None:
        """The engine's step callback: record progress; raise JobCancelled (inside the
        engine, which stops the run at once) if a cancel was asked for."""
        now = self.clock()
        with self.state.lock:
            job.step, job.total_steps = step, total
            job.step_marks.append(now)
            job.latents = latents  # the engine's copy, ours to keep for the preview
            if job.cancel_requested:
                raise JobCancelled()

    def _finish(self, job: Job, state: JobState, error: str) -> None:
        """End a job that did not succeed (one already finished stays as it is)."""
        with self.state.lock:
            if job.state.finished:
                return
            if state == JobState.FAILED:
                self.state.failed += 1
            self.state.finish(job, state, error, self.clock())

    def _fail_unfinished(self, message: str) -> None:
        """The thread is ending on its own: fail the running and waiting jobs, so nobody
        waits for a result that can never come."""
        state = self.state
        with state.lock:
            for job in [state.running, *state.waiting]:
                if job is not None and not job.state.finished:
                    state.failed += 1
                    state.finish(job, JobState.FAILED, message, self.clock())
            state.waiting.clear()
