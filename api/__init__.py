"""The HTTP layer: thin routes that parse, validate, submit to the job queue and respond.

Every error from every route is an `ApiError` by the time it leaves (app.py turns Flask's
own errors into one), and each dialect renders it in its one shape: `render_native_error`
here gives `{"error": "<short code>", "message": "<what to do>"}`; app.py chooses the
dialect's renderer by blueprint, so a client never sees an HTML page.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection

from flask import Response, current_app, jsonify, request

from catalog.models import ModelEntry
from config import Settings
from jobs import JobState, NotAccepting, QueueFull
from jobs.backend import EngineView, QueueBackend
from jobs.streams import StreamSlots
from params import GenerationRequest, model_card, parse_generation_request


@dataclass
class Services:
    """What the routes need, stored on the app (never a module-level global): they see the
    engine and the queue only through the Protocols of jobs.backend, whichever backend runs."""

    settings: Settings
    engine: EngineView
    queue: QueueBackend
    streams: StreamSlots  # the event streams open now, at most EVENT_STREAMS


def services() -> Services:
    """The current app's settings, engine and job queue."""
    return current_app.extensions["sd_server"]


def parse_request(body: Any, explicit: Collection[str] | None = None) -> GenerationRequest:
    """A native body validated for the model being served now (its recipe fills the fields
    left out; see params.parse_generation_request); ValidationError for the dialect to
    render."""
    svc = services()
    return parse_generation_request(body, svc.settings, served=svc.engine.model,
                                    explicit=explicit)


def listed_models() -> list[ModelEntry]:
    """The models a request may name (the catalogue's loadable ones, or what the Redis
    workers serve), the served one as the engine loaded it (with the family it found in the
    loaded configs)."""
    engine = services().engine
    served = engine.model
    return [served if served is not None and e.source == served.source else e
            for e in engine.available_models()]


# model_facts' keys, for the OpenAPI document of every model list.
MODEL_FACTS_SCHEMA = {
    "family": {"type": "string", "description": "sd1, sd2, sd-turbo, sdxs or unknown"},
    "family_label": {"type": "string", "description": "the family as the page shows it"},
    "defaults": {"type": "object", "description": "what a request that sets none of "
                 "scheduler, steps, guidance_scale, width, height, eta gets (the model's card, "
                 "built in for SD-Turbo and SDXS); negative_prompt: whether one does anything"}}

def model_facts(entry: ModelEntry | None) -> dict[str, Any]:
    """What the model lists and the page show beside a model's name: its family and the
    recipe a request that sets none of those fields gets (params.model_card)."""
    if entry is None:
        return {"family": "unknown", "family_label": "unknown until loaded", "defaults": {}}
    return {"family": entry.family.id, "family_label": entry.family.label,
            "defaults": model_card(entry)}


class ApiError(Exception):
    """Raised anywhere in a request to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.param = param


def error_json(body: dict, exc: ApiError) -> Response:
    """`body` as the JSON response to `exc`, with its status and headers (every dialect)."""
    response = jsonify(body)
    response.status_code = exc.status
    for key, value in exc.headers.items():
        response.headers[key] = str(value)
    return response


def render_native_error(exc: ApiError) -> Response:
    """The native (and job API) error shape: `{"error": <code>, "message": <what to do>}`."""
    return error_json({"error": exc.code, "message": exc.message}, exc)


# Deeper JSON than any real request needs (A1111's script arguments nest about 5 levels). A
# fixed bound keeps every later step that walks the body (validation messages, echoing it
# back as JSON) far from Python's recursion limit, wherever the request's stack stands.
MAX_JSON_DEPTH = 64


def json_body(image_fields: tuple[str, ...] = ()) -> Any:
    """The request's JSON body, or ApiError 415 (not JSON) / 400 (malformed or too deep) /
    413 (too big). A body may exceed MAX_REQUEST_BYTES (up to MAX_IMAGE_REQUEST_BYTES) only
    on a route that takes images (`image_fields`) and only when it carries one of them."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with 'Content-Type: application/json'")
    settings = services().settings
    size = request.content_length
    if size is not None and size > settings.max_request_bytes and not image_fields:
        raise body_too_large(settings, size)  # refused before a byte is read
    try:
        body = request.get_json(silent=True)
        too_deep = _nesting_depth(body) > MAX_JSON_DEPTH
    except RecursionError:  # the decoder recurses per level; silent= only catches ValueError
        too_deep = True
    if too_deep:
        raise ApiError(400, "invalid_json", f"the request body nests arrays/objects more "
                       f"than {MAX_JSON_DEPTH} levels deep; send a flat JSON object such as "
                       '{"prompt": "a cat"}')
    size = len(request.get_data(cache=True))
    if body is None and size <= settings.max_request_bytes:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON")
    if size > settings.max_request_bytes and not (
            isinstance(body, dict) and any(body.get(name) for name in image_fields)):
        raise body_too_large(settings, size)
    return body


def body_too_large(settings: Settings, size: int) -> ApiError:
    """413 for a body over MAX_REQUEST_BYTES that carries no image."""
    return ApiError(413, "request_entity_too_large", f"the request body is {size} bytes; "
                    f"without images the limit is {settings.max_request_bytes} bytes "
                    f"(MAX_REQUEST_BYTES), with images {settings.max_image_request_bytes} "
                    "(MAX_IMAGE_REQUEST_BYTES)")


def _nesting_depth(value: Any) -> int:
    """How deeply arrays/objects nest in a decoded JSON value (without recursing, so any
    depth is measured safely); stops counting just past MAX_JSON_DEPTH."""
    deepest, pending = 0, [(value, 1)]
    while pending and deepest <= MAX_JSON_DEPTH:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def client_id() -> str:
    """Who sent the request, for fair share, job ownership and logs: the Basic user or the
    API key's holders when credentials are asked for, else the address (never a secret)."""
    from flask import g

    return g.get("sd_identity") or request.remote_addr or ""


def owners_apart(settings: Settings) -> bool:
    """Whether jobs belong to who made them: the credentials name several users (API_AUTH's
    users, and the API key as one more); one shared key behaves as an open server."""
    return len(settings.api_auth) + bool(settings.api_key) >= 2


def may_see(job) -> bool:
    """Whether this request may see the job: always, unless the credentials name several
    users (owners_apart): then only the one who made it."""
    return not owners_apart(services().settings) or job.client == client_id()


def submit_switch(model: str) -> Any:
    """Queue a switch to the catalogue model `model`; errors as in `submit`."""
    return _queued(lambda queue: queue.submit_switch(model, client=client_id()), 1)


def submit(generation_request) -> Any:
    """Queue a validated request; full queue / not ready become 503 with Retry-After."""
    return submit_many([generation_request])[0]


def submit_many(generation_requests: list) -> list:
    """Queue several validated requests atomically (all or none), errors as in `submit`."""
    return _queued(lambda queue: queue.submit_many(generation_requests, client=client_id()),
                   len(generation_requests))


# The dialect a blueprint speaks, for the metrics (the rest speak the native one).
DIALECTS = {"a1111": "a1111", "openai_images": "openai"}


def dialect() -> str:
    """The API dialect of the current request: native, a1111 or openai."""
    return DIALECTS.get(request.blueprint or "", "native")


def _queued(submit_to: Any, count: int) -> Any:
    """`submit_to(queue)`, with a full queue / not ready turned into 503 + Retry-After;
    counted for /metrics (submitted by dialect, or refused by reason)."""
    queue = services().queue
    try:
        queued = submit_to(queue)
    except QueueFull as exc:
        queue.metrics.refused("queue_full")
        room = "is full" if count == 1 else f"has no room for {count} more jobs"
        raise ApiError(503, "queue_full", f"the queue {room} ({queue.settings.queue_size} "
                       f"may wait); retry in about {exc.retry_after} s",
                       {"Retry-After": exc.retry_after}) from None
    except NotAccepting as exc:
        queue.metrics.refused(exc.reason)
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        # A backend that cannot run this request says 400 (BackendUnsupported), not 503.
        raise ApiError(exc.status, exc.reason, exc.message, headers) from None
    jobs = queued if isinstance(queued, list) else [queued]
    queue.metrics.submitted([job.id for job in jobs], dialect())
    return queued


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
    if job.state is JobState.CANCELLED and not services().queue.accepting:
        return ApiError(503, "shutting_down", "the server is shutting down and cancelled this "
                        "job before it could run; retry after it restarts",
                        {"Retry-After": SHUTDOWN_RETRY_AFTER_SECONDS})
    if job.state is JobState.CANCELLED:
        return ApiError(409, "cancelled", job.error or "the job was cancelled")
    if job.rejected:  # e.g. a LoRA made for another model: the client must change the request
        return ApiError(400, "unsupported_request", job.error or "this model cannot run "
                        "the request")
    return ApiError(500, "generation_failed", job.error or "generation failed; try fewer "
                    "steps or a smaller size")
