"""Who may call the API, from where, and how often: security headers, CORS, the
cross-site request guard, API key / HTTP Basic auth and rate limits.

`install(app, settings)` adds them as Flask hooks. Refusals are raised as `ApiError`, so
each dialect's blueprint renders them in its own error shape.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from api import ApiError
from config import Settings

log = logging.getLogger(__name__)

# Endpoints that start generations: rate limited. Extras (upscaling, png-info) are cheap
# next to a diffusion run, so only these count. Every endpoint outside OPEN_ENDPOINTS needs
# the API key / Basic credentials when one is set.
GENERATING_ENDPOINTS = {"core.generate", "jobs.create_job", "a1111.txt2img", "a1111.img2img",
                        "openai_images.generations", "openai_images.edits"}
OPEN_ENDPOINTS = {"core.index", "core.health", "core.favicon", "static",
                  "openapi.openapi_json"}
# Open too with METRICS_PUBLIC=1, for a Prometheus that holds no API key.
METRICS_ENDPOINTS = {"metrics.metrics"}
# Sent on every response. The page is one HTML file, one script module and one stylesheet
# from this server; its images are blob: URLs of fetched PNGs (fetched so the credential can
# be sent). Nothing may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Methods that change state: a page on another site must not be able to send them.
STATE_CHANGING = {"POST", "PUT", "DELETE", "PATCH"}
REALM = "sd-cpu-server"
# The page sends this header on its own requests; their 401 then carries no `Basic`
# challenge, which would make the browser pop its own login dialog over the page's.
PAGE_HEADER, PAGE_VALUE = "X-Requested-With", "sd-cpu-page"
# What a 401 to the page announces instead of Basic: a scheme browsers do not know.
PAGE_BASIC_CHALLENGE = f'xBasic realm="{REALM}"'
DEFAULT_PORTS = {"http": "80", "https": "443"}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def install(app: Flask, settings: Settings) -> None:
    """Security headers, CORS (closed unless CORS_ORIGINS), the cross-site guard, API key /
    Basic auth (when API_KEY / API_AUTH), rate limits (RATE_LIMIT)."""
    @app.after_request
    def add_security_headers(response: Response) -> Response:
        # after_request also runs on the responses of error handlers, so errors carry them.
        response.headers.update(SECURITY_HEADERS)
        return response

    if settings.cors_origins:
        from flask_cors import CORS

        origins = "*" if "*" in settings.cors_origins else list(settings.cors_origins)
        CORS(app, origins=origins, send_wildcard=origins == "*",
             expose_headers=["X-Seed", "X-Job-Id", "Location", "X-Generation-Seconds",
                             "Retry-After"],
             allow_headers=["Content-Type", "Authorization", PAGE_HEADER])

    allowed_hosts = host_names(settings)
    if allowed_hosts:
        @app.before_request
        def refuse_other_hosts():
            # A page on attacker.example whose name is re-pointed at 127.0.0.1 (DNS
            # rebinding) is same-origin with itself: only the Host header gives it away.
            host = host_name(request.host)
            if host not in allowed_hosts:
                raise ApiError(400, "host_not_allowed", f"this server answers to "
                               f"{', '.join(allowed_hosts)}, not {host!r}; set ALLOWED_HOSTS "
                               "to add the name you use", param="Host")

    @app.before_request
    def refuse_cross_site():
        # Form and multipart posts are "simple" requests: a browser sends them from any
        # site without a CORS preflight, so CORS alone does not stop them.
        if request.method in STATE_CHANGING:
            check_same_site(settings.cors_origins)

    if settings.api_key or settings.api_auth:
        open_endpoints = OPEN_ENDPOINTS | (METRICS_ENDPOINTS if settings.metrics_public
                                           else set())

        @app.before_request
        def require_credentials():
            if request.endpoint in open_endpoints or request.method == "OPTIONS":
                return None
            given = request.headers.get("Authorization", "")
            if not authorized(given, settings.api_key, settings.api_auth):
                raise unauthorized(settings, request.headers.get(PAGE_HEADER) == PAGE_VALUE)
            g.sd_identity = identity(given, settings.api_auth)
            return None

    if settings.rate_limit:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        limiter = Limiter(get_remote_address, app=app, storage_uri=settings.rate_limit_storage_uri,
                          headers_enabled=True, default_limits=[])
        for endpoint in GENERATING_ENDPOINTS & set(app.view_functions):
            app.view_functions[endpoint] = limiter.limit(settings.rate_limit)(
                app.view_functions[endpoint])
        app.extensions["sd_limiter"] = limiter


def host_names(settings: Settings) -> tuple[str, ...]:
    """The Host names to answer to, or () for any (ALLOWED_HOSTS; auto = the loopback names
    when HOST is a loopback address)."""
    wanted = tuple(h.lower() for h in settings.allowed_hosts)
    if "*" in wanted:
        return ()
    if wanted in ((), ("auto",)):
        return LOOPBACK_HOSTS if host_name(settings.host) in LOOPBACK_HOSTS else ()
    return tuple(h for h in wanted if h != "auto")


def host_name(host: str) -> str:
    """A Host header (or address) without its port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def auth_kind(settings: Settings) -> str:
    """Which credential the server asks for: 'none', 'bearer', 'basic' or 'either'."""
    return {(False, False): "none", (True, False): "bearer", (False, True): "basic",
            (True, True): "either"}[(bool(settings.api_key), bool(settings.api_auth))]


def authorized(header: str, api_key: str, api_auth: Iterable[tuple[str, str]]) -> bool:
    """Whether an Authorization header carries the API key (Bearer) or one of the Basic
    credentials. Every comparison runs whatever the outcome, so the time taken does not
    tell which part (or which user) matched."""
    given = header.encode("utf-8", "surrogateescape")
    ok = bool(api_key) & hmac.compare_digest(given, f"Bearer {api_key}".encode())
    user, password = basic_credentials(header)
    for want_user, want_password in api_auth:
        for encoding in ("utf-8", "latin-1"):  # RFC 7617 says UTF-8; requests sends Latin-1
            try:
                wanted = want_user.encode(encoding), want_password.encode(encoding)
            except UnicodeEncodeError:
                wanted = want_user.encode("utf-8"), want_password.encode("utf-8")
            ok |= hmac.compare_digest(user, wanted[0]) & hmac.compare_digest(password, wanted[1])
    return ok


def identity(header: str, api_auth: Iterable[tuple[str, str]]) -> str:
    """Who an authorized request is: 'user:<name>' for a Basic user, 'key' for the API key
    (everyone who holds the one key is one client). Call only once `authorized` said yes."""
    user = basic_credentials(header)[0]
    for name, _password in api_auth:
        if user and user in (name.encode("utf-8"), name.encode("latin-1", "replace")):
            return f"user:{name}"
    return "key"


def basic_credentials(header: str) -> tuple[bytes, bytes]:
    """(user, password) bytes of an `Authorization: Basic <base64(user:pass)>` header, or
    two empty values (which match no configured pair: users and passwords are non-empty)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else (b"", b"")


def unauthorized(settings: Settings, from_page: bool) -> ApiError:
    """401 naming the credential(s) this server takes, with their WWW-Authenticate
    challenges (the page's own requests get no Basic challenge: see PAGE_HEADER)."""
    challenges, needs, ways = [], [], []
    if settings.api_key:
        needs.append("an API key")
        ways.append("'Authorization: Bearer <API_KEY>'")
    if settings.api_auth:
        challenges.append(PAGE_BASIC_CHALLENGE if from_page else
                          f'Basic realm="{REALM}", charset="UTF-8"')
        needs.append("a user and password")
        ways.append("HTTP Basic auth with a user:password from API_AUTH")
    if settings.api_key:
        challenges.append("Bearer")
    return ApiError(401, "unauthorized", f"this server needs {' or '.join(needs)}: send "
                    f"{' or '.join(ways)}", {"WWW-Authenticate": ", ".join(challenges)})


def check_same_site(cors_origins: tuple[str, ...]) -> None:
    """403 unless the request's Origin (or, without one, its Referer's origin) is this
    server or one of CORS_ORIGINS. Requests with neither header (curl, SDKs) pass."""
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        if not referer:
            return
        origin = origin_of(referer)
    origin = origin.strip()
    if same_host(origin, request.host) or "*" in cors_origins or \
            origin.rstrip("/") in {o.rstrip("/") for o in cors_origins}:
        return
    log.warning("refused a cross-site %s %s from origin %r", request.method, request.path,
                origin[:100])
    raise ApiError(403, "cross_site_request", f"refused a {request.method} from the web page "
                   f"at {origin[:100]!r}: call this API from this server's own page, or add "
                   "that origin to CORS_ORIGINS", param="Origin")


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, or 'null' when it has none."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "null"
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


def same_host(origin: str, host: str) -> bool:
    """Whether an origin names this server's Host. The scheme is not compared: behind a
    TLS-terminating proxy the browser says https and the server sees http."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return False  # 'null' (sandboxed and file: pages) and anything odd
    return _without_default_port(parts.netloc, parts.scheme) == \
        _without_default_port(host, parts.scheme)


def _without_default_port(netloc: str, scheme: str) -> str:
    netloc = netloc.lower()
    suffix = ":" + DEFAULT_PORTS[scheme]
    return netloc[:-len(suffix)] if netloc.endswith(suffix) else netloc
