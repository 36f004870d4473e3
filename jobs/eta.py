"""How long until a job is done: pure arithmetic on plain values.

The queue reads the values under its lock and calls `eta_seconds`; nothing here locks,
reads a clock or knows about other jobs, so every case can be tested with numbers.
"""
from __future__ import annotations

from typing import Sequence

from jobs.job import JobState


def eta_seconds(state: JobState, steps_left: int, step_marks: Sequence[float],
                started_at: float | None, now: float,
                earlier_seconds_per_step: float | None) -> float | None:
    """Seconds until a job is done, or None while no speed is known yet.

    `steps_left` counts every step still to run before this job is done (for a queued job,
    also the running job's rest and the jobs ahead of it); `step_marks` are the clock
    readings at each step the job reached; `earlier_seconds_per_step` is what the last
    finished run measured, if any.
    """
    if state.finished:
        return 0.0
    running = state == JobState.RUNNING
    per_step = earlier_seconds_per_step
    if running and len(step_marks) >= 2:
        # This run's own pace beats any earlier one: threads and size may differ.
        per_step = (step_marks[-1] - step_marks[0]) / (len(step_marks) - 1)
    elif running and step_marks and started_at:
        # One step seen: its time includes the text encoding, so prefer an earlier pace.
        per_step = per_step or (step_marks[0] - started_at)
    if not per_step:
        return None
    if running and step_marks:
        # Time already spent on the step in progress counts against it.
        elapsed = now - step_marks[-1]
        return max(0.0, steps_left * per_step - min(elapsed, per_step))
    return steps_left * per_step


# Retry-After bounds: never "retry now", and a guess when no pace has been measured yet.
MIN_RETRY_AFTER_SECONDS, UNKNOWN_RETRY_AFTER_SECONDS = 5, 30


def retry_after_seconds(eta: float | None) -> int:
    """A Retry-After for a full queue from the time until room frees up (None: unknown)."""
    return max(MIN_RETRY_AFTER_SECONDS, int(eta or UNKNOWN_RETRY_AFTER_SECONDS))
