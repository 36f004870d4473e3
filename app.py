"""The Flask application: `create_app(settings)` wires settings, engine, job queue and routes;
`main()` serves it with waitress (Flask's dev server if waitress is missing).

    python app.py          # listens on HOST:PORT at once; the model loads in the background
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from typing import Any, Callable, NamedTuple

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from api import (ApiError, Services, a1111, core, events, images, jobs, metrics,
                 openai_images, openapi, render_native_error, security)
# Re-exported: who may call what is decided in api/security.py.
from api.security import GENERATING_ENDPOINTS, OPEN_ENDPOINTS, SECURITY_HEADERS  # noqa: F401
from config import Settings, process_settings
from jobs.backend import QueueBackend
from jobs.streams import StreamSlots

log = logging.getLogger("sd_server")

# Each blueprint's error shape; the native one everywhere else (and where no route matched).
ERROR_RENDERERS: dict[str, Callable[[ApiError], Response]] = {
    a1111.bp.name: a1111.render_error, openai_images.bp.name: openai_images.render_error}


def create_app(settings: Settings | None = None, start_worker: bool = True) -> Flask:
    """Build the app; with `start_worker` the model starts loading in the background now."""
    settings = settings or Settings.from_env()
    if settings.queue_backend == "redis":
        # The workers share this Redis: so do the rate-limit counters (unless set elsewhere).
        if settings.rate_limit_storage_uri == "memory://":
            settings = settings.with_overrides(rate_limit_storage_uri=settings.redis_url)
    app = Flask(__name__)
    # The larger bound: routes that take no images refuse more than MAX_REQUEST_BYTES
    # themselves (api.json_body), before reading the body.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_request_bytes
    app.json.sort_keys = False
    queue = _job_queue(settings)
    app.extensions["sd_server"] = Services(settings=settings, engine=queue.engine, queue=queue,
                                           streams=StreamSlots(settings.event_streams))

    app.wsgi_app = ResponseTracker(app)
    _register_blueprints(app)
    _install_request_log(app)  # before security: after_request hooks run in reverse order
    metrics.count_responses(app)
    security.install(app, settings)
    _install_error_handlers(app)
    if start_worker:
        queue.start()
    return app


def _job_queue(settings: Settings) -> QueueBackend:
    """The queue backend of QUEUE_BACKEND (the one place that chooses): memory = the model
    and its worker thread in this process; redis = the shared RQ queue, its engine the
    workers' account of theirs (workers: worker.py)."""
    if settings.queue_backend == "redis":
        from jobs.redis_queue import RedisJobQueue

        return RedisJobQueue(settings)
    from engine import Engine  # torch is imported here, after settings are known to be valid
    from jobs import JobQueue

    return JobQueue(Engine(settings), settings)


class ResponseTracker:
    """WSGI middleware counting the responses not yet handed to the server, so a shutdown
    waits for the image a finished job is still sending. Wraps `app.wsgi_app`; its counter
    (a jobs.OpenResponses) is `app.extensions[ResponseTracker.EXTENSION]`."""

    EXTENSION = "sd_open_responses"

    def __init__(self, app: Flask):
        from jobs import OpenResponses

        self.wsgi_app = app.wsgi_app
        self.responses = app.extensions.setdefault(self.EXTENSION, OpenResponses())

    def __call__(self, environ: dict, start_response: Callable):
        from werkzeug.wsgi import ClosingIterator

        self.responses.opened()
        try:
            body = self.wsgi_app(environ, start_response)
        except BaseException:
            self.responses.closed()
            raise
        # The server closes the body once it has sent it all: only then is it delivered.
        return ClosingIterator(body, [self.responses.closed])


def _register_blueprints(app: Flask) -> None:
    for module in (core, jobs, images, events, metrics, openapi, a1111, openai_images):
        app.register_blueprint(module.bp)


def _install_request_log(app: Flask) -> None:
    """One log line per request outcome; probes and polling at DEBUG so they don't flood."""
    import time

    from flask import g

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def log_outcome(response):
        if response.status_code < 400:
            # Flask-Limiter sends Retry-After on every response; it only means something on
            # 429/503, and some clients misread it elsewhere.
            response.headers.pop("Retry-After", None)
        started = g.get("request_started")
        ms = (time.perf_counter() - started) * 1000 if started else 0.0
        # Probes and polling would flood the log (a loading model answers /health 503).
        quiet = request.path == "/health" or (request.method == "GET" and
                                              response.status_code < 400)
        log.log(logging.DEBUG if quiet else logging.INFO, "%s %s -> %d (%.0f ms)",
                request.method, request.path, response.status_code, ms)
        return response


def _install_error_handlers(app: Flask) -> None:
    """Every error leaves as JSON in its dialect's shape, never an HTML page or a trace:
    each kind becomes an ApiError here and the blueprint's renderer (ERROR_RENDERERS)
    draws it."""
    def render(exc: ApiError) -> Response:
        return ERROR_RENDERERS.get(request.blueprint, render_native_error)(exc)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return render(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return render(http_api_error(exc, app.config["MAX_CONTENT_LENGTH"]))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(ApiError(500, "internal_error", "the server hit an unexpected error; "
                               "the details are in its log"))


def http_api_error(exc: HTTPException, max_request_bytes: int) -> ApiError:
    """A Flask/werkzeug error (404, 405, 413, Flask-Limiter's 429, ...) as an ApiError
    with a message saying what to do."""
    code = (exc.name or "error").lower().replace(" ", "_").replace("'", "")
    messages = {
        404: "no such endpoint; see GET /openapi.json for the API",
        405: f"method {request.method} is not allowed here",
        413: f"the request body is larger than {max_request_bytes} bytes "
             "(MAX_IMAGE_REQUEST_BYTES)",
        429: f"too many requests ({exc.description}); slow down and retry later",
    }
    headers = {}
    if exc.code == 429:
        headers["Retry-After"] = rate_limit_retry_after(exc)
    if exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return ApiError(exc.code or 500, code, messages.get(exc.code, exc.description or code),
                    headers)


def rate_limit_retry_after(exc: Exception) -> int:
    """Seconds until a Flask-Limiter window resets (60 if the exception does not say)."""
    limit = getattr(getattr(exc, "limit", None), "limit", None)
    return int(getattr(limit, "get_expiry", lambda: 60)())


# Requests waitress reads ahead on a connection; > 0 is what lets it notice a client that
# hung up while its request waits (the value itself barely matters).
REQUEST_LOOKAHEAD = 5


class Listening(NamedTuple):
    """A server bound to HOST:PORT but not answering yet; `run()` serves until exit."""

    kind: str  # "waitress", or "flask" for Flask's development server
    server: Any
    run: Callable[[], None]


class CannotListen(Exception):
    """HOST:PORT cannot be bound; the message is one line telling the user what to change."""


def listen(app: Flask, settings: Settings) -> Listening:
    """Bind HOST:PORT with waitress (Flask's dev server if waitress cannot be imported), or
    raise CannotListen. Binding comes before the model loads, so a taken port fails fast."""
    try:
        from waitress import create_server
    except ImportError:
        log.warning("waitress is not installed; falling back to Flask's development server "
                    "(pip install waitress for production use)")
        from werkzeug.serving import make_server

        dev = _bind(settings, make_server, settings.host, settings.port, app, threaded=True)
        return Listening("flask", dev, dev.serve_forever)
    # channel_request_lookahead lets waitress notice a client that hung up while its
    # request waits, so its generation can be cancelled (see api.wait_for).
    server = _bind(settings, create_server, app, host=settings.host, port=settings.port,
                   threads=settings.threads, channel_request_lookahead=REQUEST_LOOKAHEAD,
                   ident="sd-cpu-server")
    log.info("serving on http://%s:%d with waitress (%d threads)", settings.host,
             settings.port, settings.threads)
    return Listening("waitress", server, server.run)


def _bind(settings: Settings, make: Callable, *args: Any, **kwargs: Any) -> Any:
    """`make(*args, **kwargs)`, its bind failures turned into CannotListen."""
    try:
        return make(*args, **kwargs)
    except (OSError, ValueError) as exc:  # waitress: ValueError for a host it cannot resolve
        raise CannotListen(cannot_listen_message(exc, settings)) from None


def cannot_listen_message(exc: Exception, settings: Settings) -> str:
    """One line naming the knob to change for a failed bind."""
    number = getattr(exc, "errno", None)
    if number == errno.EADDRINUSE:
        return f"PORT {settings.port} is in use; set PORT=... or stop the other server"
    if number == errno.EACCES:
        return (f"PORT {settings.port} needs privileges this user lacks; set PORT=... "
                "(1024 or above)")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
        "no such address")
    return (f"HOST {settings.host} cannot be bound ({reason.lower()}); set HOST=... to an "
            "address of this machine (127.0.0.1, or 0.0.0.0 for every network)")


# After the last response is handed to waitress, time for its loop to push the bytes out.
RESPONSE_FLUSH_SECONDS = 0.5


def install_signal_handlers(app: Flask, settings: Settings,
                            exit_process: Callable[[int], None] = os._exit) -> Callable:
    """SIGTERM/SIGINT: refuse new jobs (503), let the running one finish (or cancel it after
    SHUTDOWN_GRACE_SECONDS), deliver every open response, then exit 0. Returns the handler."""
    from jobs import drain_in_background

    queue = app.extensions["sd_server"].queue
    responses = app.extensions[ResponseTracker.EXTENSION]
    received = []  # signal handlers run on the main thread only: a plain list is enough

    def exit_cleanly() -> None:
        import time

        time.sleep(RESPONSE_FLUSH_SECONDS)
        log.info("shutdown complete")
        logging.shutdown()
        # waitress has no stop API; every accepted job has finished or been cancelled and
        # every response has been handed over.
        exit_process(0)

    def handler(signum: int, _frame: Any) -> None:
        if received:
            return
        received.append(signum)
        log.info("received %s: draining (grace %d s)", signal.Signals(signum).name,
                 settings.shutdown_grace_seconds)
        # Drain off the signal handler so waitress keeps answering (503s, /health) meanwhile.
        drain_in_background(queue, responses, settings.shutdown_grace_seconds, exit_cleanly)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return handler


def main() -> int:
    """Entry point: validate settings, bind HOST:PORT, start loading the model, serve."""
    settings = process_settings()
    if settings is None:
        return 2
    app = create_app(settings, start_worker=False)
    try:
        server = listen(app, settings)
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return 1
    app.extensions["sd_server"].queue.start()  # the model loads while we already listen
    install_signal_handlers(app, settings)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
