"""GET /jobs/<id>/events: a job's progress pushed as Server-Sent Events, instead of polling.

Each event's data is JSON: `queued` (queue_position, eta_seconds), `progress` (step,
total_steps, progress, eta_seconds), `preview` (step: GET preview_url now shows it) and, last,
`finished` (the job as GET /jobs/<id> answers it, with image_url); a `: heartbeat` comment
every ~15 s while nothing happens. The stream ends after `finished`.

Each open stream holds one waitress thread, so at most EVENT_STREAMS are open at once in a
process (jobs/streams.py); the next is refused with 503 and Retry-After, and the client
polls GET /jobs/<id> instead.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterator

from flask import Blueprint, Response, request, url_for

from api import ApiError, services
from api.jobs import job_or_404
from api.openapi import doc
from jobs.streams import follow_job

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__)

# What an EventSource waits before it reconnects a dropped stream.
RECONNECT_MS = 2000
# What a client refused a stream is told to wait (it polls meanwhile).
BUSY_RETRY_AFTER_SECONDS = 15


@bp.get("/jobs/<job_id>/events")
@doc("A job's progress as Server-Sent Events (text/event-stream): queued, progress, preview, "
     "finished (with image_url); ends when the job ends. 503 + Retry-After when EVENT_STREAMS "
     "streams are open already: poll GET /jobs/{job_id} instead.",
     responses={200: "text/event-stream"}, errors=(401, 404, 503), tags=("jobs",))
def job_events(job_id: str):
    """Stream the job's events until it ends (or the client leaves)."""
    job = job_or_404(job_id)
    svc = services()
    if not svc.streams.take():
        raise ApiError(503, "too_many_streams", f"{svc.streams.limit} event streams are "
                       "open on this server (EVENT_STREAMS); poll GET "
                       f"/jobs/{job_id} instead, or retry later",
                       {"Retry-After": BUSY_RETRY_AFTER_SECONDS})
    try:
        watch = svc.queue.watch(job)  # before the first look: no change can slip between
    except Exception:
        svc.streams.give_back()
        raise
    links = {"status_url": url_for("jobs.get_job", job_id=job.id),
             "image_url": url_for("jobs.job_image", job_id=job.id),
             "preview_url": url_for("jobs.job_preview", job_id=job.id)}
    gone = request.environ.get("waitress.client_disconnected") or (lambda: False)

    def body() -> Iterator[str]:
        yield f"retry: {RECONNECT_MS}\n\n"
        try:
            for event in follow_job(svc.queue, job, watch, gone):
                yield ": heartbeat\n\n" if event is None else server_event(*event, links)
        except Exception:  # e.g. Redis went away: end the stream; the client reconnects
            log.exception("event stream of job %s failed", job.id)

    response = Response(body(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx would hold events back otherwise
    # Called by the server when it closes the body, even one never started.
    response.call_on_close(watch.close)
    response.call_on_close(svc.streams.give_back)
    return response


def server_event(name: str, data: dict[str, Any], links: dict[str, str]) -> str:
    """One SSE event: its name and its JSON data (with the job's URLs) on one line."""
    if name in ("preview", "finished"):
        data = {**data, "preview_url": links["preview_url"]}
    if name == "finished":
        data = {**data, **links}
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
