"""Which finished jobs to forget: a pure rule on plain values (the queue holds the lock)."""
from __future__ import annotations

from typing import Iterable

from jobs.job import Job


def expired_job_ids(jobs: Iterable[Job], now: float, max_age_seconds: float,
                    max_count: int) -> set[str]:
    """Ids of finished jobs older than `max_age_seconds`, plus the oldest beyond `max_count`.

    The count limit never drops an image nobody has fetched yet: under load that would
    lose accepted work. Undelivered images are kept until they are `max_age_seconds` old.
    """
    finished = [j for j in jobs if j.state.finished]
    expired = {j.id for j in finished if now - (j.finished_at or now) > max_age_seconds}
    countable = [j for j in finished if j.id not in expired and (j.delivered or j.png is None)]
    excess = len(countable) - max_count
    if excess > 0:
        expired.update(j.id for j in sorted(countable, key=lambda j: j.finished_at)[:excess])
    return expired
