"""The memory backend's /health: the worker thread, the model's state and the queue, in the
order a user needs them (a dead worker first: nothing would ever run)."""
from __future__ import annotations

from typing import Any

from jobs.backend import EngineView, Health

# What /health tells a prober to wait while the model loads.
LOADING_RETRY_AFTER = 5


def memory_health(engine: EngineView, queue: dict[str, Any]) -> Health:
    """200 healthy; 503 unhealthy (worker dead or load failed), shutting_down or loading
    (with the load's phase and progress, and a Retry-After)."""
    status = engine.status
    body: dict[str, Any] = {"model": engine.model_name, "queue": queue}
    if queue["worker_error"]:  # nothing would ever run: say so, whatever the model does
        return Health(503, {**body, "status": "unhealthy",
                            "error": queue["worker_error"] + "; restart the server"})
    if status.state == "ready" and not queue["accepting"]:
        return Health(503, {**body, "status": "shutting_down"})
    if status.state == "ready":
        body.update(status="healthy", **engine.info())
        if (queue.get("journal") or {}).get("error"):  # serving, but restarts may lose jobs
            body["warning"] = queue["journal"]["error"]
        if status.switching:  # serving stays up: the switch is a job, the rest wait behind it
            body.update(switching=status.switching, phase=status.phase,
                        progress=status.progress)
        return Health(200, body)
    if status.state == "failed":
        return Health(503, {**body, "status": "unhealthy", "error": status.error})
    return Health(503, {**body, "status": "loading", "phase": status.phase,
                        "progress": status.progress, "precision": status.precision,
                        "hint": status.hint or None,
                        "message": "the model is loading; generation is available when "
                                   "status is 'healthy'"}, retry_after=LOADING_RETRY_AFTER)
