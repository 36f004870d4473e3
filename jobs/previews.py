"""Live previews for the memory backend: the running job's newest latents rendered to a PNG
on demand, at most once per step, outside the queue's lock (polls must never wait on a
render, and a render must never hold up the worker)."""
from __future__ import annotations

from typing import Any, Callable

from jobs.job import Job
from jobs.state import QueueState


def latest_preview(state: QueueState, job: Job, render: Callable[[Any], bytes]) -> bytes | None:
    """The job's preview: its final PNG once done, else its newest step's latents rendered
    by `render` (cached for that step; None before the first step)."""
    with state.lock:
        if job.state.finished and job.png is not None:
            return job.png  # done: the real image beats any approximation
        latents, step = job.latents, job.step
        if latents is None or (job.preview_step == step and job.preview_png is not None):
            return job.preview_png
        if job.preview_rendering:
            # Another poller (the page, an A1111 /progress) is rendering this step: a
            # second render would only take CPU from the generation.
            return job.preview_png
        job.preview_rendering = True
    try:
        png = render(latents)  # outside the lock: polls must not wait
    finally:
        with state.lock:
            job.preview_rendering = False
    with state.lock:
        job.preview_png, job.preview_step = png, step
    return png
