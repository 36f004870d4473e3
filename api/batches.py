"""Batches for the compatibility dialects: several images from one request, as jobs.

A1111's batch_size x n_iter and OpenAI's n become one job per image with consecutive
seeds, queued atomically (all or none) and awaited in order, so every dialect shares the
native validation, limits and queue.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import replace

from api import services, submit_many, wait_for
from jobs import JobState
from params import MAX_SEED, GenerationRequest

log = logging.getLogger(__name__)


def batch_seeds(seed: int | None, count: int) -> list[int]:
    """Consecutive seeds from `seed` (A1111's rule), or from a random start when None.

    A random start leaves room for the whole batch; a given seed near 2^32 wraps to 0
    rather than failing, because the client only chose the first one.
    """
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 2 - count)
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


def submit_batch(request: GenerationRequest, count: int) -> list:
    """Queue `count` jobs of `request` with consecutive seeds, atomically; 503 when full."""
    return submit_many([replace(request, seed=s) for s in batch_seeds(request.seed, count)])


def wait_batch(jobs: list) -> bool:
    """Wait for the jobs in order; once one is cancelled or fails, cancel the rest.

    That is A1111's interrupt: it stops the running image and the rest of its batch. A
    skipped job (A1111's skip) is the exception: the batch goes on without it.
    Returns False if the client went away (every unfinished job is then cancelled).
    """
    queue = services().queue
    for index, job in enumerate(jobs):
        if not wait_for(job):
            for rest in jobs[index + 1:]:
                queue.cancel(rest.id)
            return False
        if job.png is None and job.skip_requested and job.state is JobState.CANCELLED:
            log.info("job %s skipped; its batch goes on", job.id)
            continue
        if job.png is None:
            for rest in jobs[index + 1:]:
                queue.cancel(rest.id)
            if index + 1 < len(jobs):
                log.info("job %s %s; cancelled the %d left in its batch", job.id,
                         job.state.value, len(jobs) - index - 1)
            break
    for job in jobs:  # the cancelled rest finish at once (queued) or within one step
        queue.wait(job)
    return True


def run_batch(request: GenerationRequest, count: int, dialect: str,
              ignored: list[str]) -> list | None:
    """Log what the dialect ignores, queue the batch and wait; None if the client left."""
    if ignored:
        log.info("%s: ignoring fields this server does not support: %s", dialect,
                 ", ".join(ignored))
    jobs = submit_batch(request, count)
    return jobs if wait_batch(jobs) else None
