"""The one job runner: how a job becomes an outcome, for the in-process worker thread
(jobs/worker.py) and the Redis worker processes (jobs/redis_worker.py) alike.

Each backend keeps progress and outcomes in its own place (a lock-guarded QueueState, or an
RQ job's meta in Redis); that place is a `JobRecorder`. What a run means is written once,
here: a switch job loads its model; a generation reports every step and stops at the next
one after a cancel; the outcome is recorded once (cancelled, failed with a message the user
can act on, or succeeded with the image saved first); the measured pace is kept only when
it is comparable with a plain job's.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from engine.status import GenerationResult
from errors import UnsupportedRequest
from jobs.backend import ImageEngine
from jobs.job import Job, JobCancelled, JobState, explain_generation_error
from jobs.pace import measured_pace, pace_kind
from jobs.store import OutputStore
from params import GenerationRequest

log = logging.getLogger(__name__)


class JobRecorder(Protocol):
    """Where a backend keeps a running job's progress and its outcome."""

    def step(self, job: Job, step: int, total: int, latents: Any) -> None:
        """Record that `step` of `total` is done (`latents` is ours to keep for a preview);
        raise JobCancelled when a cancel was asked for, to stop the run at once."""

    def succeeded(self, job: Job, result: GenerationResult | None, saved_path: str | None,
                  pace: float | None) -> None:
        """Record success: the image (None for a model switch), where it was saved, and the
        seconds per step to use for other jobs' ETAs (None when not comparable)."""

    def ended(self, job: Job, state: JobState, error: str, rejected: bool = False) -> None:
        """Record a job that did not succeed (`rejected`: the request was at fault, 4xx)."""

    def paced(self, kind: str, figures: dict[str, float]) -> None:
        """Fold one image's pace figures (jobs.pace) into its kind's, for estimates."""

    def checkpoint(self, job: Job, data: bytes, step: int) -> None:
        """Keep the job's newest checkpoint (taken after `step`), where a later attempt finds
        it even if this process dies."""

    def resume_point(self, job: Job) -> bytes | None:
        """The checkpoint an earlier attempt of this job kept, or None."""


def comparable_pace(request: GenerationRequest, result: GenerationResult) -> float | None:
    """The run's seconds per step when it can stand for a plain job's, else None: a cached
    (DeepCache) or batch-1 (CFG cutoff) step is up to 10x cheaper, and such a job's pace
    would make every other job's ETA (and Retry-After) far too short (a hires fix's second
    pass, at 4x the pixels, far too long)."""
    if result.seconds_per_step and request.cfg_cutoff >= 1 and request.deep_cache <= 1 \
            and request.hires is None:  # a hires pass's steps are larger ones
        return result.seconds_per_step
    return None


def run_job(job: Job, engine: ImageEngine, store: OutputStore, recorder: JobRecorder) -> None:
    """Run one job on `engine` and record its outcome through `recorder`; a failed or
    cancelled generation ends this job only (nothing raises out of here but the recorder's
    own errors)."""
    if job.kind == "switch_model":
        _switch(job, engine, recorder)
        return
    reached = [0, job.total_steps]  # the last step reported, for the cancel message
    resume_from = recorder.resume_point(job)

    def on_step(step: int, total: int, latents: Any) -> None:
        if resume_from is not None and job.resumed_at_step is None:
            job.resumed_at_step = step  # the first step this attempt reports
            log.info("job %s resumed at step %d/%d (attempt %d)", job.id, step, total,
                     job.attempts)
        reached[:] = [step, total]
        recorder.step(job, step, total, latents)

    # 1. generate, reporting every step and keeping checkpoints (from one, when resuming)
    request = job.request
    started = time.monotonic()
    try:
        result = engine.generate(request, job.seed, on_step, resume_from,
                                 lambda data, step: recorder.checkpoint(job, data, step))
    except JobCancelled:
        recorder.ended(job, JobState.CANCELLED, f"cancelled at step {reached[0]} of "
                                                f"{reached[1]}")
        log.info("job %s cancelled at step %d/%d", job.id, *reached)
        return
    except Exception as exc:  # a failed generation fails this job only
        message = explain_generation_error(exc, request)
        recorder.ended(job, JobState.FAILED, message, isinstance(exc, UnsupportedRequest))
        log.exception("job %s failed: %s", job.id, message)
        return
    # 2. save the image before anyone can see 'succeeded', then record the outcome
    saved = store.save(job, result.png)
    if resume_from is None:  # a resumed run skipped steps: its pace would mislead
        # before 'succeeded': whoever sees the image may ask for the next estimate at once
        recorder.paced(pace_kind(request, engine.model_name),
                       measured_pace(request, result, time.monotonic() - started))
    recorder.succeeded(job, result, saved, comparable_pace(request, result))
    log.info("generated job=%s worker=%s prompt_chars=%d steps=%d size=%dx%d seconds=%.2f "
             "s_per_step=%.3f decode_s=%.2f seed=%d preset=%s cfg_cutoff=%g deep_cache=%d "
             "vae=%s", job.id, job.worker or "in-process", len(request.prompt), request.steps,
             request.width, request.height, result.seconds, result.seconds_per_step,
             result.decode_seconds, job.seed, request.speed_preset, request.cfg_cutoff,
             request.deep_cache, request.vae_decoder)


def _switch(job: Job, engine: ImageEngine, recorder: JobRecorder) -> None:
    """A model-switch job: load its model; on failure the old model serves again."""
    try:
        engine.switch_model(job.request.model)
    except Exception as exc:
        rejected = isinstance(exc, UnsupportedRequest)
        recorder.ended(job, JobState.FAILED, str(exc) if rejected else
                       f"model switch failed ({type(exc).__name__}); see the server log",
                       rejected)
        log.exception("job %s: switch to %s failed", job.id, job.request.model)
        return
    recorder.succeeded(job, None, None, None)
