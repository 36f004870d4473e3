"""The HTTP layer: thin routes that parse, validate, submit to the job queue and respond.

Every error from every route leaves through `error_response`, so clients always get
`{"error": "<short code>", "message": "<what to do>"}` and never an HTML page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, jsonify, request

from config import Settings


@dataclass
class Services:
    """What the routes need, stored on the app (never a module-level global)."""

    settings: Settings
    engine: Any
    queue: Any


def services() -> Services:
    """The current app's settings, engine and job queue."""
    return current_app.extensions["sd_server"]


class ApiError(Exception):
    """Raised anywhere in a request to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.param = param


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    """The one JSON error shape every route uses."""
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = str(value)
    return response


def rate_limit_retry_after(exc: Exception) -> int:
    """Seconds until a Flask-Limiter window resets (60 if the exception does not say)."""
    limit = getattr(getattr(exc, "limit", None), "limit", None)
    return int(getattr(limit, "get_expiry", lambda: 60)())


def json_body() -> Any:
    """The request's JSON body, or ApiError 415 (not JSON) / 400 (malformed)."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with 'Content-Type: application/json'")
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON")
    return body


def client_id() -> str:
    """Who sent the request, for logs and job ownership (address, never credentials)."""
    return request.remote_addr or ""


def submit(generation_request) -> Any:
    """Queue a validated request; full queue / not ready become 503 with Retry-After."""
    return submit_many([generation_request])[0]


def submit_many(generation_requests: list) -> list:
    """Queue several validated requests atomically (all or none), errors as in `submit`."""
    from jobs import NotAccepting, QueueFull

    queue = services().queue
    try:
        return queue.submit_many(generation_requests, client=client_id())
    except QueueFull as exc:
        count = len(generation_requests)
        room = "is full" if count == 1 else f"has no room for {count} more jobs"
        raise ApiError(503, "queue_full", f"the queue {room} ({queue.settings.queue_size} "
                       f"may wait); retry in about {exc.retry_after} s",
                       {"Retry-After": exc.retry_after}) from None
    except NotAccepting as exc:
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        raise ApiError(503, exc.reason, exc.message, headers) from None


# How often a synchronous request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25
# What a client refused during shutdown is told to wait before retrying.
SHUTDOWN_RETRY_AFTER_SECONDS = 30


def wait_for(job) -> bool:
    """Wait for a job while the client is connected; cancel it if the client goes away.

    Waitress (with channel_request_lookahead > 0) tells us when the peer closed the
    connection; a gone client's queued job then never starts and a running one stops at its
    next step. Returns False if the client left.
    """
    queue = services().queue
    gone = request.environ.get("waitress.client_disconnected")
    while not queue.wait(job, DISCONNECT_POLL_SECONDS):
        if gone is not None and gone():
            queue.cancel(job.id)
            current_app.logger.info("client went away; job %s cancelled", job.id)
            return False
    return True


def failed_job_error(job) -> ApiError:
    """The error for a job that did not succeed."""
    if job.state.value == "cancelled" and not services().queue.accepting:
        return ApiError(503, "shutting_down", "the server is shutting down and cancelled this "
                        "job before it could run; retry after it restarts",
                        {"Retry-After": SHUTDOWN_RETRY_AFTER_SECONDS})
    if job.state.value == "cancelled":
        return ApiError(409, "cancelled", job.error or "the job was cancelled")
    return ApiError(500, "generation_failed", job.error or "generation failed; try fewer "
                    "steps or a smaller size")
