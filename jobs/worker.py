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
from pathlib import Path
from typing import Any, Callable

from engine.status import GenerationResult
from jobs.backend import ImageEngine
from jobs.job import Job, JobCancelled, JobState
from jobs.journal import Recovered
from jobs.pace import merged
from jobs.runner import run_job
from jobs.state import QueueState
from jobs.store import OutputStore
from jobs.turn import EngineTurn

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

    def __init__(self, state: QueueState, engine: ImageEngine, store: OutputStore,
                 clock: Callable[[], float], max_attempts: int = 1):
        self.state = state
        self.engine = engine
        self.store = store
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._stop_requested = False
        self.max_attempts = max_attempts  # runs a journaled job may have before it fails
        self._recorder = StateRecorder(state, clock)
        self.turn = EngineTurn()  # extras upscales run between jobs (JobQueue.upscale)

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
                    with self.turn.job():
                        run_job(job, self.engine, self.store, self._recorder)
                except Exception:  # a fault outside the generation fails this job only
                    log.exception("job %s: unexpected error in the worker", job.id)
                    self._recorder.ended(job, JobState.FAILED, UNEXPECTED_JOB_ERROR)
        except BaseException as exc:  # even SystemExit: /health must learn there is no worker
            self._error = f"the generation worker stopped unexpectedly ({type(exc).__name__})"
            log.exception("%s; no job can run until the server restarts", self._error)
            self._fail_unfinished(f"{self._error}; restart the server")

    def _restore(self) -> None:
        """Bring back saved images as finished jobs, then the journal's jobs: the waiting
        ones queued again in their order (an interrupted one first, to resume), the
        finished ones answering again; a failure only loses that history."""
        try:
            restored = self.store.restore()
        except Exception:
            log.exception("could not restore saved images; starting with an empty history")
            restored = []
        recovered = self._recover_journal()
        with self.state.lock:
            for job in restored:
                self.state.jobs.setdefault(job.id, job)  # a job already known wins
            for job in recovered.finished:
                if job.state != JobState.SUCCEEDED or job.id not in self.state.jobs:
                    self.state.jobs[job.id] = job
            for job in recovered.waiting:
                self.state.waiting.append(job)
                self.state.jobs[job.id] = job
            self.state.jobs = dict(sorted(self.state.jobs.items(),
                                          key=lambda item: item[1].created_at))
        if recovered.waiting:
            log.info("journal: %d accepted jobs queued again (%s)", len(recovered.waiting),
                     ", ".join(job.id for job in recovered.waiting))

    def _recover_journal(self) -> Recovered:
        """The journal's jobs, succeeded ones with their saved image (none without one)."""
        journal = self.state.journal
        if journal is None:
            return Recovered([], [])
        try:
            recovered = journal.recover(self.max_attempts, self.clock())
        except Exception:  # a journal we cannot read must not keep the server down
            log.exception("could not read the job journal %s", journal.path)
            journal.error = f"the job journal {journal.path} could not be read; see the log"
            return Recovered([], [])
        finished = []
        for job in recovered.finished:
            if job.state == JobState.SUCCEEDED:
                try:
                    job.png = Path(job.saved_path).read_bytes() if job.saved_path else None
                except OSError:
                    job.png = None
                if job.png is None:
                    continue  # the image is gone: there is nothing left to answer with
            finished.append(job)
        return Recovered(recovered.waiting, finished)

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
            job.attempts += 1
            if state.journal is not None:
                state.journal.started(job)
            state.signals.changed()
            return job

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


class StateRecorder:
    """The job runner's recorder (jobs.runner.JobRecorder) on the in-process QueueState:
    every change is made under its lock, and finishing a job wakes whoever waits for it."""

    def __init__(self, state: QueueState, clock: Callable[[], float]):
        self.state = state
        self.clock = clock

    def step(self, job: Job, step: int, total: int, latents: Any) -> None:
        """Record progress; raise JobCancelled (inside the engine, which stops the run at
        once) if a cancel was asked for."""
        now = self.clock()
        with self.state.lock:
            job.step, job.total_steps = step, total
            job.step_marks.append(now)
            job.latents = latents  # the engine's copy, ours to keep for the preview
            self.state.signals.changed()
            if job.cancel_requested:
                raise JobCancelled()

    def succeeded(self, job: Job, result: GenerationResult | None, saved_path: str | None,
                  pace: float | None) -> None:
        """Keep the image and figures (a model switch has none) and finish the job."""
        with self.state.lock:
            if result is None:  # a model switch: its one "step" is done
                job.step = job.total_steps
            else:
                job.png, job.nsfw, job.saved_path = result.png, result.nsfw, saved_path
                job.seconds_per_step = result.seconds_per_step
                if pace:
                    self.state.seconds_per_step = pace
                self.state.completed += 1
            self.state.finish(job, JobState.SUCCEEDED, None, self.clock())

    def paced(self, kind: str, figures: dict[str, float]) -> None:
        """Fold the figures into the kind's, under the queue's lock."""
        with self.state.lock:
            self.state.pace[kind] = merged(self.state.pace.get(kind), figures)

    def checkpoint(self, job: Job, data: bytes, step: int) -> None:
        """Keep the checkpoint in the journal, for the run after a restart (none without)."""
        if self.state.journal is not None:
            self.state.journal.keep_checkpoint(job.id, data, step)

    def resume_point(self, job: Job) -> bytes | None:
        """The checkpoint a run before the restart kept (only a later attempt has one)."""
        if self.state.journal is None or job.attempts <= 1:
            return None
        return self.state.journal.checkpoint(job.id)

    def ended(self, job: Job, state: JobState, error: str, rejected: bool = False) -> None:
        """End a job that did not succeed (one already finished stays as it is)."""
        with self.state.lock:
            if job.state.finished:
                return
            job.rejected = rejected
            if state == JobState.FAILED:
                self.state.failed += 1
            self.state.finish(job, state, error, self.clock())
