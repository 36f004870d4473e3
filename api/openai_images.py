"""The OpenAI Images dialect (`/v1/images/generations`, `/v1/models`), for the `openai` SDK.

The body is translated into the native fields and validated by
`params.parse_generation_request`; `n` images are made one after another with
consecutive seeds. Every error raised in this blueprint leaves in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`, which the SDK turns into its exceptions.
"""
from __future__ import annotations

import base64
import logging
import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api import ApiError, error_json, failed_job_error, json_body, services
from api.batches import run_batch
from api.openapi import doc
from params import (SPEED_OPTIONS, ValidationError, field_value, image_count_field,
                    json_object, parse_generation_request, request_fields)

log = logging.getLogger(__name__)

bp = Blueprint("openai_images", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("b64_json", "url")
# OpenAI fields that do not apply to this server: accepted and ignored (logged).
IGNORED = {"quality", "style", "user", "output_format", "background", "moderation",
           "output_compression", "partial_images", "safety_identifier", "complexity",
           "frame_count", "frame_duration_ms", "svg", "stream"}
# Native fields a client may add (the SDK's extra_body), beyond what OpenAI has.
EXTENSIONS = ("negative_prompt", "seed", "steps", "guidance_scale", "scheduler",
              *SPEED_OPTIONS)
SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")

OPENAI_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": "string", "nullable": True},
        "code": {"type": "string", "nullable": True}}}}}
IMAGES_RESPONSE = {"type": "object", "required": ["created", "data"], "properties": {
    "created": {"type": "integer", "description": "Unix time"},
    "data": {"type": "array", "items": {"type": "object", "properties": {
        "b64_json": {"type": "string", "format": "byte"},
        "url": {"type": "string", "description": "absolute URL of /jobs/{id}/image, kept "
                "for JOB_RETENTION_SECONDS"},
        "revised_prompt": {"type": "string"}, "seed": {"type": "integer"}}}},
    "model": {"type": "string"}, "size": {"type": "string"},
    "output_format": {"type": "string"}}}
MODELS_RESPONSE = {"type": "object", "properties": {
    "object": {"type": "string"}, "data": {"type": "array", "items": {
        "type": "object", "properties": {"id": {"type": "string"},
                                         "object": {"type": "string"},
                                         "created": {"type": "integer"},
                                         "owned_by": {"type": "string"}}}}}}
OPENAI_DOC = {"tags": ("openai",), "error_schema": OPENAI_ERROR_SCHEMA}


def generations_schema() -> dict[str, Any]:
    """The images/generations body, with this server's limits."""
    s = services().settings
    native = {f.name: f.schema() for f in request_fields(s)}
    return {"type": "object", "required": ["prompt"], "properties": {
        "prompt": native["prompt"],
        "n": image_count_field("n", s).schema(),
        "size": {"type": "string", "default": default_size(),
                 "description": f"WxH, each a multiple of 8 in {s.min_size}..{s.max_size}, "
                                "or 'auto'"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS),
                            "default": "b64_json"},
        "model": {"type": "string", "description": "accepted; the served model is used"},
        **{name: {"description": "accepted and ignored"} for name in sorted(IGNORED)},
        **{name: native[name] for name in EXTENSIONS}}}


def default_size() -> str:
    """The size used when a request names none (DEFAULT_SIZE, square)."""
    side = services().settings.default_size
    return f"{side}x{side}"


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def render_error(exc: ApiError) -> Response:
    """This dialect's error shape, which the `openai` SDK turns into its exceptions."""
    return error_json({"error": {"message": exc.message, "type": error_type(exc.status),
                                 "param": exc.param, "code": exc.code}}, exc)


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_value", message, param=param)


def parse_size(value: Any) -> tuple[int, int]:
    """'WxH' (or 'auto') -> (width, height) within MIN_SIZE..MAX_SIZE, multiples of 8."""
    s = services().settings
    allowed = (f"'WxH' with W and H multiples of 8 in {s.min_size}..{s.max_size} "
               f"(e.g. '{default_size()}'), or 'auto'")
    if value is None or value == "auto":
        value = default_size()
    match = SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid("size", f"'size' must be {allowed} (got {value!r})")
    width, height = int(match[1]), int(match[2])
    if not all(s.min_size <= side <= s.max_size and side % 8 == 0 for side in (width, height)):
        raise _invalid("size", f"'size' {value!r} is not supported here: it must be {allowed}")
    return width, height


def parse_generations(body: Any) -> tuple[Any, int, str, list[str]]:
    """An images/generations body -> (request, n, response_format, ignored), or 400."""
    try:
        return _parse_generations(json_object(body))
    except ValidationError as exc:
        raise _invalid(exc.field, exc.message) from None


def _parse_generations(body: dict) -> tuple[Any, int, str, list[str]]:
    unknown = sorted(k for k in body if k not in {"prompt", "n", "size", "response_format",
                                                  "model", *IGNORED, *EXTENSIONS})
    if unknown:  # OpenAI's own answer to an unknown field
        raise ApiError(400, "unknown_parameter", f"Unrecognized request argument supplied: "
                       f"{unknown[0]}", param=unknown[0])
    if body.get("stream"):
        raise _invalid("stream", "streaming is not supported here; leave 'stream' out")
    n = field_value(image_count_field("n", services().settings), body)
    response_format = body.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise _invalid("response_format", f"'response_format' must be 'b64_json' or 'url' "
                       f"(got {response_format!r})")
    width, height = parse_size(body.get("size"))
    native = {name: body[name] for name in ("prompt", *EXTENSIONS) if name in body}
    req = parse_generation_request({**native, "width": width, "height": height},
                                   services().settings)
    return req, n, response_format, sorted(k for k in body if k in IGNORED)


@bp.post("/images/generations")
@doc("OpenAI Images: generate n images (b64_json, or url = /jobs/{id}/image). Also "
     "accepts negative_prompt, seed, steps, guidance_scale, scheduler (image i uses "
     "seed + i) and the speed options speed_preset, cfg_cutoff, deep_cache, vae_decoder.", request=generations_schema, responses={200: IMAGES_RESPONSE},
     errors=(400, 401, 409, 413, 415, 429, 500, 503), **OPENAI_DOC)
def generations():
    """Generate like OpenAI's POST /v1/images/generations."""
    body = json_body()
    req, n, response_format, ignored = parse_generations(body)
    started = time.monotonic()
    jobs = run_batch(req, n, "openai images", ignored)
    if jobs is None:
        return Response(status=499)  # the client hung up; nobody reads this
    for job in jobs:
        if job.png is None:  # OpenAI has no partial answers: one failure fails the request
            raise failed_job_error(job)
    data = []
    for job in jobs:
        if response_format == "b64_json":  # a URL answer leaves the image to be fetched
            services().queue.mark_delivered(job)
        item = ({"b64_json": base64.b64encode(job.png).decode()} if response_format ==
                "b64_json" else {"url": url_for("jobs.job_image", job_id=job.id,
                                                _external=True)})
        data.append({**item, "revised_prompt": req.prompt, "seed": job.seed})
    model = services().settings.model_id
    log.info("openai images: %d images for model %r (served %s), seeds %s, %.1f s", n,
             body.get("model"), model, [job.seed for job in jobs], time.monotonic() - started)
    return jsonify({"created": int(time.time()), "data": data, "model": model,
                    "size": f"{req.width}x{req.height}", "output_format": "png"})


@bp.get("/models")
@doc("OpenAI model list: the one model this server serves.",
     responses={200: MODELS_RESPONSE}, errors=(401,), **OPENAI_DOC)
def models():
    """List the served model, as OpenAI's GET /v1/models does."""
    return jsonify({"object": "list", "data": [{
        "id": services().settings.model_id, "object": "model", "created": 0,
        "owned_by": "sd-cpu-server"}]})
