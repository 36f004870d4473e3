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


def queue_figures(settings: Settings, connection, accepting: bool) -> dict[str, Any]:
    """Queue figures for /health, over every model's queue and per model (raises redis
    errors: `health` reports them)."""
    from rq.registry import StartedJobRegistry

    figures = connection.hgetall(rc.STATS_KEY)
    sps = figures.get(b"seconds_per_step")
    per_model = {queue.name[len(rc.QUEUE_PREFIX):]: {
        "waiting": queue.count, "running": StartedJobRegistry(queue=queue).count}
        for queue in rc.model_queues(connection)}
    return {"backend": "redis", "waiting": sum(m["waiting"] for m in per_model.values()),
            "running": sum(m["running"] for m in per_model.values()), "models": per_model,
            "capacity": settings.queue_size,
            "completed": int(figures.get(b"completed", 0)),
            "failed": int(figures.get(b"failed", 0)), "accepting": accepting,
            "seconds_per_step": round(float(sps), 3) if sps else None,
            "worker_error": None}


def served_by(workers: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each model the live workers serve, with the names of those (ready or loading)."""
    out: dict[str, list[str]] = {}
    for worker in workers:
        for model in worker.get("models") or []:
            out.setdefault(model["name"], []).append(worker["name"])
    return out


def redis_health(settings: Settings, connection, accepting: bool, model_name: str) -> Health:
    """200 healthy when a worker with a loaded model heartbeats; 503 shutting_down,
    no_workers (with advice) or unhealthy (Redis unreachable, with advice)."""
    from redis.exceptions import RedisError

    try:
        queue = queue_figures(settings, connection, accepting)
        workers = rc.alive_workers(connection)
    except RedisError as exc:
        return Health(503, {"status": "unhealthy", "backend": "redis",
                            "redis": redact_url(settings.redis_url),
                            "error": rc.unreachable_message(settings, exc),
                            "advice": REDIS_ADVICE})
    body: dict[str, Any] = {"backend": "redis", "model": model_name, "queue": queue,
                            "workers": [{**{k: w.get(k) for k in WORKER_FIELDS},
                                         "models": [m["name"] for m in w.get("models") or []]}
                                        for w in workers],
                            "models": served_by(workers)}
    ready = [w for w in workers if w["state"] == "ready"]
    if not accepting:
        return Health(503, {**body, "status": "shutting_down"})
    if not ready:
        return Health(503, {**body, "status": "no_workers", "error": "no worker with a "
                            "loaded model is alive" + (" (some are loading)" if workers else ""),
                            "advice": WORKER_ADVICE})
    return Health(200, {**body, "status": "healthy", **(ready[0].get("info") or {}),
                        "model": ready[0]["model_name"]})
