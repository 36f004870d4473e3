"""The generation worker of QUEUE_BACKEND=redis: loads the model once, then takes jobs from
the shared RQ queue on REDIS_URL, one at a time, until SIGTERM/SIGINT (after its job).

    python worker.py       # same settings and .env as app.py; run one per machine or more

Run as many as there are machines (or cores to spare) pointing at the same Redis. It is an
RQ `SimpleWorker` (jobs/redis_worker.py): jobs run in this process, so the model loaded
here serves every job instead of being loaded again per job.
"""
from __future__ import annotations

import sys

from config import process_settings, redact_url


def main() -> int:
    """Entry point: validate settings, check Redis, load the model, serve jobs."""
    settings = process_settings()
    if settings is None:
        return 2
    if settings.queue_backend != "redis":
        print("worker.py serves QUEUE_BACKEND=redis; with QUEUE_BACKEND=memory app.py runs "
              "the jobs itself (set QUEUE_BACKEND=redis in .env to scale out)", file=sys.stderr)
        return 2
    from redis.exceptions import RedisError

    from engine import Engine  # torch is imported here, after settings are known to be valid
    from jobs.redis_worker import serve

    try:
        serve(settings, Engine(settings))
    except RedisError as exc:
        print(f"Redis at {redact_url(settings.redis_url)} is unreachable "
              f"({type(exc).__name__}); start redis-server or fix REDIS_URL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
