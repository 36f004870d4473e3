"""The redis backend's worker process (`python worker.py`): load the model once, then take
jobs from the shared RQ queue one at a time.

RQ's `SimpleWorker` runs each job in this process instead of forking (or, in RQ 3,
spawning) a fresh one per job, so the model loaded here serves every job: a fresh
process would load ~4 GB again for each image. `run_job` is the RQ job function; it finds
the loaded engine in this module's `_context`, set once by `serve`. A heartbeat thread
publishes this worker's state (loading/ready, model, current job) every second; the web
reads it for /health and treats a worker whose heartbeat lapsed as dead.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from catalog.models import ModelEntry, find_model, list_models
from config import Settings, redact_url
from errors import ModelUnavailable, UnknownModel
from jobs import redis_common as rc
from engine.status import GenerationResult
from jobs import runner
from jobs.backend import ImageEngine
from jobs.job import Job, JobCancelled, JobState
from jobs.pace import merged
from jobs.redis_events import announce, count_end, worker_figures
from jobs.redis_reaper import Reaper
from jobs.store import OutputStore
from params import GenerationRequest

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What `run_job` needs, loaded once per worker process."""

    settings: Settings
    engine: ImageEngine
    store: OutputStore
    connection: Any
    name: str
    served: list[ModelEntry] = field(default_factory=list)  # the models it takes jobs for
    current_job: str | None = None


_context: WorkerContext | None = None


def default_name() -> str:
    """host-<4 hex>-pid: says where to look, and is new at every start (a restarted container
    often gets its old pid back, and RQ refuses a name it still counts as active)."""
    return f"{socket.gethostname()}-{secrets.token_hex(2)}-{os.getpid()}"


def serve(settings: Settings, engine: ImageEngine, name: str | None = None,
          burst: bool = False) -> None:
    """Load the model into `engine`, then serve the queue until SIGTERM/SIGINT (after the
    running job)."""
    global _context
    from rq import SimpleWorker

    connection = rc.connect(settings)
    connection.ping()  # fail at once, with the URL redacted by the caller's message
    name = name or default_name()
    served = served_models(settings)
    _context = WorkerContext(settings, engine, OutputStore(settings), connection, name, served)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(_context, stop), daemon=True,
                            name="heartbeat")
    beat.start()
    log.info("worker %s: loading %s (Redis %s)", name, settings.model_id,
             redact_url(settings.redis_url))
    engine.load()
    if engine.status.state != "ready":
        stop.set()
        raise SystemExit(f"worker {name}: the model failed to load: {engine.status.error}")
    # One queue per served model: jobs for a model no worker here serves are never taken.
    worker = SimpleWorker([rc.model_queue(connection, entry.name) for entry in served],
                          connection=connection, name=name)
    log.info("worker %s: serving %s", name, ", ".join(entry.name for entry in served))
    _publish(_context)  # ready now: registered with RQ below, within the same second
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level.upper())
    finally:
        stop.set()
        connection.delete(rc.heartbeat_key(name))


def served_models(settings: Settings) -> list[ModelEntry]:
    """The catalogue entries this worker serves: WORKER_MODELS (loaded one at a time, as the
    jobs ask), else MODEL_ID's; SystemExit naming one that is not in the catalogue."""
    if not settings.worker_models:
        return [list_models(settings)[0]]
    entries = []
    for wanted in settings.worker_models:
        try:
            entries.append(find_model(settings, wanted))
        except (UnknownModel, ModelUnavailable) as exc:
            raise SystemExit(f"WORKER_MODELS: {exc}") from None
    return entries


def _heartbeat(context: WorkerContext, stop: threading.Event) -> None:
    """Publish this worker's state every HEARTBEAT_SECONDS until stopped, and queue again
    the jobs of workers that died (nobody need be watching them); a Redis hiccup only skips
    a beat."""
    settings = context.settings
    reaper = Reaper(context.connection, settings.job_retention_seconds,
                    settings.job_max_attempts)
    while not stop.is_set():
        try:
            _publish(context)
            reaper.sweep()
        except Exception as exc:  # Redis away: the worker itself will notice on dequeue
            log.warning("worker %s: heartbeat failed: %s", context.name, type(exc).__name__)
        stop.wait(rc.HEARTBEAT_SECONDS)


def _publish(context: WorkerContext) -> None:
    """Write the heartbeat: what /health and the web's stand-in engine read."""
    engine, status = context.engine, context.engine.status
    beat = {"name": context.name, "host": socket.gethostname(), "pid": os.getpid(),
            "state": status.state, "phase": status.phase, "error": status.error,
            "progress": status.progress, "model_name": engine.model_name,
            "model": asdict(engine.model) if engine.model is not None else None,
            "default_sampler": engine.default_sampler if status.state == "ready" else None,
            "taesd": engine.has_tiny_decoder, "info": engine.info(),
            "models": [asdict(entry) for entry in context.served],
            "job": context.current_job, "at": rc.now()}
    context.connection.set(rc.heartbeat_key(context.name), json.dumps(beat),
                           ex=rc.HEARTBEAT_TTL_SECONDS)


def run_job(request: GenerationRequest, seed: int) -> None:
    """The RQ job function (queued by name: keep it): run one job on this worker's engine
    through the one job runner, recording progress in the job's meta and the PNG in Redis
    (and OUTPUT_DIR). A cancel or a failed generation is recorded as the job's outcome and
    returns normally."""
    from rq import get_current_job

    context = _context
    if context is None:
        raise RuntimeError("run_job needs a worker started by `python worker.py`")
    rq_job = get_current_job()
    conn = context.connection
    recorder = RedisRecorder(context, rq_job)
    meta = rq_job.meta
    meta.update(worker=context.name, started_at=rc.now(), step=0, step_marks=[],
                attempts=meta.get("attempts", 0) + 1, resumed_at_step=None,
                workers=[*meta.get("workers", []), context.name])
    job = Job(request=request, seed=seed, id=rq_job.id, worker=context.name,
              total_steps=meta.get("total_steps", 0), attempts=meta["attempts"])
    if conn.get(rc.cancel_key(rq_job.id)):  # cancelled while RQ handed it over
        recorder.ended(job, JobState.CANCELLED, "cancelled before it started")
        return
    rq_job.save_meta()
    announce(conn, rq_job.id, "started")
    context.current_job = rq_job.id
    try:
        runner.run_job(job, context.engine, context.store, recorder)
    finally:
        context.current_job = None
        conn.delete(rc.preview_wanted_key(rq_job.id), rc.checkpoint_key(rq_job.id))


class RedisRecorder:
    """The job runner's recorder (jobs.runner.JobRecorder) on an RQ job: progress in its meta
    (microblog's shape: the worker writes, the web reads), the PNG and figures in Redis."""

    def __init__(self, context: WorkerContext, rq_job):
        self.context = context
        self.rq_job = rq_job
        self.retention = context.settings.job_retention_seconds

    def step(self, job: Job, step: int, total: int, latents: Any) -> None:
        """Publish progress; render a preview only while someone watches; stop on a cancel
        flag."""
        conn, meta = self.context.connection, self.rq_job.meta
        meta.update(step=step, total_steps=total, resumed_at_step=job.resumed_at_step)
        meta["step_marks"].append(rc.now())
        self.rq_job.save_meta()
        flag, wanted = conn.mget(rc.cancel_key(job.id), rc.preview_wanted_key(job.id))
        if wanted:  # someone watches: render it now (nobody pays for unwatched previews)
            conn.set(rc.preview_key(job.id), self.context.engine.preview_png(latents),
                     ex=self.retention)
            conn.delete(rc.preview_wanted_key(job.id))
        announce(conn, job.id, f"{'preview' if wanted else 'step'}:{step}")
        if flag:
            raise JobCancelled()

    def succeeded(self, job: Job, result: GenerationResult | None, saved_path: str | None,
                  pace: float | None) -> None:
        """The PNG first (whoever sees 'succeeded' must find the image), then the figures."""
        conn = self.context.connection
        if result is not None:
            conn.set(rc.png_key(job.id), result.png, ex=self.retention)
            self.rq_job.meta.update(nsfw=result.nsfw, seconds_per_step=result.seconds_per_step,
                                    saved_path=saved_path)
            if pace:
                conn.hset(rc.STATS_KEY, "seconds_per_step", pace)
            conn.hincrby(rc.STATS_KEY, "completed", 1)
        self._finish(JobState.SUCCEEDED, None)

    def ended(self, job: Job, state: JobState, error: str, rejected: bool = False) -> None:
        """Record a cancel or a failure as the job's outcome."""
        self.rq_job.meta["rejected"] = rejected
        self._finish(state, error)

    def paced(self, kind: str, figures: dict[str, float]) -> None:
        """Fold the figures into the kind's in Redis (workers of one model rarely finish the
        same kind at once; then one image's figures are lost, not the book)."""
        conn = self.context.connection
        old = conn.hget(rc.PACE_KEY, kind)
        conn.hset(rc.PACE_KEY, kind, json.dumps(merged(json.loads(old) if old else None,
                                                       figures)))

    def checkpoint(self, job: Job, data: bytes, step: int) -> None:
        """Keep the newest checkpoint in Redis, for whichever worker runs the job next."""
        self.context.connection.set(rc.checkpoint_key(job.id), data, ex=self.retention)
        self.rq_job.meta["checkpoint_step"] = step

    def resume_point(self, job: Job) -> bytes | None:
        """The checkpoint an earlier attempt kept (its worker died), or None."""
        return self.context.connection.get(rc.checkpoint_key(job.id))

    def _finish(self, state: JobState, error: str | None) -> None:
        """Record a job's outcome in its meta (RQ marks the job finished after we return)."""
        self.rq_job.meta.update(outcome=state.value, error=error, finished_at=rc.now())
        # A finished job never resumes: its checkpoint goes before the outcome shows, so
        # whoever sees the outcome never finds a stale checkpoint (run_job's finally also
        # drops it when the runner raised).
        self.context.connection.delete(rc.checkpoint_key(self.rq_job.id))
        # Counted before the outcome shows: once it does, nothing but the news is left to do.
        count_end(self.context.connection, self.rq_job.id, state,
                  worker_figures(self.rq_job, self.context.engine))
        self.rq_job.save_meta()
        if state == JobState.FAILED:
            self.rq_job.connection.hincrby(rc.STATS_KEY, "failed", 1)
        announce(self.context.connection, self.rq_job.id, "finished")
