"""What the web (jobs/redis_queue.py) and the workers (jobs/redis_worker.py) share on Redis:
the queue's name, the key layout, the heartbeat format and the job-state mapping.

Layout (everything but RQ's own keys starts with `sd:`):

    rq:queue:sd-generate:<model>  RQ's queue of one model; each job is an RQ job whose args are
                              (GenerationRequest, seed) and whose meta holds the progress
                              (microblog's shape: the worker writes, the web reads)
    sd:png:<id>               the finished PNG, TTL = JOB_RETENTION_SECONDS
    sd:preview:<id>           the newest live preview PNG (rendered only when asked for)
    sd:preview-wanted:<id>    set by the web while someone polls the preview (short TTL)
    sd:cancel:<id>            "cancel" or "skip": the worker's step callback reads it
    sd:checkpoint:<id>        the running job's newest checkpoint, to resume it elsewhere
    sd:reap:<id>              a short lock: one process queues a dead worker's job again
    sd:client:<id>            who queued the job: fair share orders the queue by it
    sd:recent                 sorted set of job ids by creation time, for GET /jobs
    sd:stats                  completed, failed, seconds_per_step
    sd:default-model          the model A1111's options switched requests without one to
    sd:worker:<name>          a worker's heartbeat (JSON), TTL = HEARTBEAT_TTL_SECONDS:
                              gone = the worker is dead (its running job then fails)
"""
from __future__ import annotations

import json
import time
from typing import Any

from config import Settings, redact_url
from jobs.job import JobState

# One RQ queue per model: a worker takes jobs only from the queues of the models it serves.
QUEUE_PREFIX = "sd-generate:"
# The model A1111's options chose for requests that name none (as A1111's global option).
DEFAULT_MODEL_KEY = "sd:default-model"
# A worker refreshes its heartbeat this often, and is taken for dead when it has not for
# HEARTBEAT_TTL_SECONDS: short enough that a killed worker's job fails within seconds,
# long enough that a busy CPU (the UNet holds both cores) never misses one.
HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 5
# RQ's default job timeout (180 s) would kill a full-size generation; a day bounds a hung one.
JOB_TIMEOUT_SECONDS = 24 * 3600
# How long the web's "someone is watching the preview" flag lives without a new poll.
PREVIEW_WANTED_SECONDS = 5
# How long a cancel flag is kept (it only matters until the job ends).
RECENT_KEY, STATS_KEY = "sd:recent", "sd:stats"


def png_key(job_id: str) -> str:
    """Where a finished job's PNG lives."""
    return f"sd:png:{job_id}"


def preview_key(job_id: str) -> str:
    """Where a running job's newest preview lives."""
    return f"sd:preview:{job_id}"


def preview_wanted_key(job_id: str) -> str:
    """Set while a client polls the preview: the worker renders one only then."""
    return f"sd:preview-wanted:{job_id}"


def cancel_key(job_id: str) -> str:
    """Set to 'cancel' or 'skip' to stop a job at its next step."""
    return f"sd:cancel:{job_id}"


def checkpoint_key(job_id: str) -> str:
    """A running job's newest checkpoint (engine.resume's bytes), for a later attempt."""
    return f"sd:checkpoint:{job_id}"


def client_key(job_id: str) -> str:
    """Who queued the job (for fair share and ownership)."""
    return f"sd:client:{job_id}"


def reap_lock_key(job_id: str) -> str:
    """Held briefly by the one process that queues a dead worker's job again."""
    return f"sd:reap:{job_id}"


def heartbeat_key(worker_name: str) -> str:
    """A worker's heartbeat: present while it lives."""
    return f"sd:worker:{worker_name}"


def queue_name(model: str) -> str:
    """The RQ queue of one model's jobs."""
    return QUEUE_PREFIX + model


def model_queue(connection, model: str):
    """The RQ Queue of one model's jobs."""
    from rq import Queue

    return Queue(queue_name(model), connection=connection)


def model_queues(connection) -> list:
    """Every model's RQ Queue that exists in Redis (RQ keeps the set of queues)."""
    from rq import Queue

    return [q for q in Queue.all(connection=connection) if q.name.startswith(QUEUE_PREFIX)]


def origin_queue(rq_job):
    """The RQ Queue a job was queued on (its model's)."""
    from rq import Queue

    return Queue(rq_job.origin, connection=rq_job.connection)


def connect(settings: Settings):
    """A Redis client for REDIS_URL that fails fast when the server is unreachable."""
    from redis import Redis

    return Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=10,
                          health_check_interval=30)


def unreachable_message(settings: Settings, exc: BaseException) -> str:
    """One line for a Redis that does not answer; the URL without its password."""
    return (f"Redis at {redact_url(settings.redis_url)} is unreachable "
            f"({type(exc).__name__}); start redis-server or fix REDIS_URL")


def alive_workers(connection) -> list[dict[str, Any]]:
    """The heartbeats of every live worker (RQ's worker registry, filtered by our
    heartbeat: RQ keeps a killed worker registered for minutes)."""
    from rq import Worker

    names = sorted(w.name for w in Worker.all(connection=connection))
    if not names:
        return []
    beats = connection.mget([heartbeat_key(name) for name in names])
    return [json.loads(beat) for beat in beats if beat]


def job_state(rq_status: str | None, meta: dict[str, Any]) -> JobState:
    """Our state of an RQ job: the worker's recorded outcome wins over RQ's status (a
    cancelled or failed generation returns normally, so RQ calls it finished)."""
    if meta.get("outcome"):
        return JobState(meta["outcome"])
    return {"queued": JobState.QUEUED, "deferred": JobState.QUEUED,
            "scheduled": JobState.QUEUED, "started": JobState.RUNNING,
            "finished": JobState.SUCCEEDED, "failed": JobState.FAILED,
            "canceled": JobState.CANCELLED, "stopped": JobState.CANCELLED,
            }.get(rq_status or "", JobState.FAILED)


def now() -> float:
    """Wall-clock seconds (shared by every process, unlike a monotonic clock)."""
    return time.time()
