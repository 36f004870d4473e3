"""The Redis backend's /health: Redis reachable, workers alive and ready, queue figures.
It never raises: Redis being away is itself the answer (503 unhealthy, with advice)."""
from __future__ import annotations

from typing import Any

from config import Settings, redact_url
from jobs import redis_common as rc
from jobs.backend import Health

REDIS_ADVICE = ("start redis-server (or fix REDIS_URL); queued jobs are kept in Redis and go "
                "on once it is back")
WORKER_ADVICE = ("start one with `python worker.py` (same .env, same REDIS_URL); jobs wait in "
                 "Redis until one is ready")
WORKER_FIELDS = ("name", "host", "pid", "state", "phase", "job")


def queue_figures(settings: Settings, connection, rq_queue, accepting: bool) -> dict[str, Any]:
    """Queue figures for /health (raises redis errors: `health` reports them)."""
    from rq.registry import StartedJobRegistry

    figures = connection.hgetall(rc.STATS_KEY)
    sps = figures.get(b"seconds_per_step")
    return {"backend": "redis", "waiting": rq_queue.count,
            "running": StartedJobRegistry(queue=rq_queue).count,
            "capacity": settings.queue_size,
            "completed": int(figures.get(b"completed", 0)),
            "failed": int(figures.get(b"failed", 0)), "accepting": accepting,
            "seconds_per_step": round(float(sps), 3) if sps else None,
            "worker_error": None}


def redis_health(settings: Settings, connection, rq_queue, accepting: bool,
                 model_name: str) -> Health:
    """200 healthy when a worker with a loaded model heartbeats; 503 shutting_down,
    no_workers (with advice) or unhealthy (Redis unreachable, with advice)."""
    from redis.exceptions import RedisError

    try:
        queue = queue_figures(settings, connection, rq_queue, accepting)
        workers = rc.alive_workers(connection)
    except RedisError as exc:
        return Health(503, {"status": "unhealthy", "backend": "redis",
                            "redis": redact_url(settings.redis_url),
                            "error": rc.unreachable_message(settings, exc),
                            "advice": REDIS_ADVICE})
    body: dict[str, Any] = {"backend": "redis", "model": model_name, "queue": queue,
                            "workers": [{k: w.get(k) for k in WORKER_FIELDS}
                                        for w in workers]}
    ready = [w for w in workers if w["state"] == "ready"]
    if not accepting:
        return Health(503, {**body, "status": "shutting_down"})
    if not ready:
        return Health(503, {**body, "status": "no_workers", "error": "no worker with a "
                            "loaded model is alive" + (" (some are loading)" if workers else ""),
                            "advice": WORKER_ADVICE})
    return Health(200, {**body, "status": "healthy", **(ready[0].get("info") or {}),
                        "model": ready[0]["model_name"]})
