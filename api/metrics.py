"""GET /metrics: Prometheus text (jobs/metrics.py lists every metric), and the count of every
HTTP response by route and status.

Protected like the API when API_KEY / API_AUTH is set, unless METRICS_PUBLIC=1 (see
api/security.py). Under QUEUE_BACKEND=redis every process's counts are in Redis, so any web
process answers for all of them.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, request

from api import ApiError, services
from api.openapi import doc

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format


@bp.get("/metrics")
@doc("Prometheus metrics (text format): jobs submitted and finished, queue depth, running "
     "jobs, seconds per image and per step, model load and switch seconds, workers, HTTP "
     "requests, refusals. Needs the API key unless METRICS_PUBLIC=1.",
     responses={200: "text/plain"}, errors=(401, 503), tags=("monitoring",))
def metrics():
    """Every metric, as Prometheus scrapes it."""
    try:
        text = services().queue.metrics.text()
    except Exception as exc:  # e.g. Redis unreachable: the scrape fails, visibly
        log.warning("metrics unavailable: %s", exc)
        raise ApiError(503, "metrics_unavailable", f"the metrics cannot be read now "
                       f"({type(exc).__name__}); GET /health says what is wrong") from None
    return Response(text, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def count_responses(app: Flask) -> None:
    """Count every response by route (its URL rule, so job ids do not multiply the series),
    method and status; a 429 also as a rate-limited refusal."""
    @app.after_request
    def count(response: Response) -> Response:
        metrics = services().queue.metrics
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.request(route, request.method, response.status_code)
        if response.status_code == 429:
            metrics.refused("rate_limited")
        return response
