"""The OpenAI Images dialect (`/v1/images/generations`, `/v1/images/edits`, `/v1/models`),
for the `openai` SDK.

The body (JSON, or multipart/form-data for edits) is translated into the native fields and validated by
`params.parse_generation_request`; `n` images are made one after another with
consecutive seeds. Every error raised in this blueprint leaves in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`, which the SDK turns into its exceptions.
"""
from __future__ import annotations

import base64
import logging
import re
import time
from typing import Any, Mapping

from flask import Blueprint, Response, jsonify, url_for

from api import (ApiError, body_too_large, error_json, failed_job_error, json_body,
                 MODEL_FACTS_SCHEMA, listed_models, model_facts, parse_request, services)
from api.batches import run_batch
from api.openapi import doc
from errors import ValidationError
from params import (DEFAULT_STRENGTH, SPEED_OPTIONS, field_value,
                    image_count_field, json_object, request_fields)

log = logging.getLogger(__name__)

bp = Blueprint("openai_images", __name__, url_prefix="/v1")

RESPONSE_FORMATS = ("b64_json", "url")
# OpenAI fields that do not apply to this server: accepted and ignored (logged).
IGNORED = {"quality", "style", "user", "output_format", "background", "moderation",
           "output_compression", "partial_images", "safety_identifier", "complexity",
           "frame_count", "frame_duration_ms", "svg", "stream"}
# Native fields a client may add (the SDK's extra_body), beyond what OpenAI has.
EXTENSIONS = ("negative_prompt", "seed", "steps", "guidance_scale", "scheduler", "eta",
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
                                         "owned_by": {"type": "string"},
                                         **MODEL_FACTS_SCHEMA}}}}}
OPENAI_DOC = {"tags": ("openai",), "error_schema": OPENAI_ERROR_SCHEMA}


def generations_schema() -> dict[str, Any]:
    """The images/generations body, with this server's limits."""
    s = services().settings
    native = {f.name: f.schema() for f in request_fields(s)}
    return {"type": "object", "required": ["prompt"], "properties": {
        "prompt": native["prompt"],
        "n": image_count_field("n", s).schema(),
        "size": {"type": "string", "default": "auto",
                 "description": f"WxH, each a multiple of 8 in {s.min_size}..{s.max_size}, "
                                "or 'auto' (the model card's size, else "
                                f"{default_size()})"},
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
    n, response_format, ignored = _batch_fields(body, GENERATIONS_FIELDS)
    native = {name: body[name] for name in ("prompt", *EXTENSIONS) if name in body}
    if body.get("size") not in (None, "auto"):  # else the model's recipe, or DEFAULT_SIZE
        native["width"], native["height"] = parse_size(body["size"])
    return parse_request(native), n, response_format, ignored


GENERATIONS_FIELDS = {"prompt", "n", "size", "response_format", "model", *IGNORED,
                      *EXTENSIONS}


def _batch_fields(body: Mapping, allowed: set[str]) -> tuple[int, str, list[str]]:
    """(n, response_format, ignored fields) of a generations or edits body, or 400."""
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:  # OpenAI's own answer to an unknown field
        raise ApiError(400, "unknown_parameter", f"Unrecognized request argument supplied: "
                       f"{unknown[0]}", param=unknown[0])
    if body.get("stream") and str(body["stream"]).lower() not in ("false", "0"):
        raise _invalid("stream", "streaming is not supported here; leave 'stream' out")
    n = field_value(image_count_field("n", services().settings), body)
    response_format = body.get("response_format") or "b64_json"
    if response_format not in RESPONSE_FORMATS:
        raise _invalid("response_format", f"'response_format' must be 'b64_json' or 'url' "
                       f"(got {response_format!r})")
    return n, response_format, sorted(k for k in body if k in IGNORED)


# Edits: the image fields, extensions for how much to change it, and OpenAI's edit-only
# fields this server ignores.
EDIT_FILES = ("image", "image[]", "mask")
EDIT_EXTENSIONS = ("strength", "resize_mode", "mask_blur")
EDIT_IGNORED = ("input_fidelity", "markup", "markup[]")
# strength without one: a mask repaints its area from noise (OpenAI's edit; SD's inpainting
# at strength 1 keeps the rest); a whole-image edit keeps the picture's layout (img2img).
MASK_STRENGTH, IMAGE_STRENGTH = 1.0, DEFAULT_STRENGTH
# Native field an edit's file becomes, and the OpenAI field its errors name.
PARAM_OF = {"init_image": "image", "mask_image": "mask"}


def edits_schema() -> dict[str, Any]:
    """The images/edits multipart body, with this server's limits."""
    s = services().settings
    native = {f.name: f.schema() for f in request_fields(s)}
    generations = generations_schema()["properties"]
    binary = {"type": "string", "format": "binary"}
    return {"type": "object", "required": ["image", "prompt"], "properties": {
        "image": {**binary, "description": f"PNG/JPEG/WebP, at most {s.max_input_pixels} "
                  "pixels (MAX_INPUT_PIXELS); 'image[]' also works (the first is used)"},
        "mask": {**binary, "description": "PNG of the image's size: fully transparent "
                 "pixels are repainted"},
        **{k: v for k, v in generations.items() if k != "size"},
        "size": {"type": "string", "description": "WxH as in generations; default: the "
                 "image's aspect fitted to MAX_SIZE, multiples of 8"},
        "strength": {**native["strength"], "description": "how much to change: default 1 "
                     f"with a mask, {IMAGE_STRENGTH:g} without"},
        **{name: native[name] for name in EDIT_EXTENSIONS[1:]},
        **{name: {"description": "accepted and ignored"} for name in EDIT_IGNORED}}}


def parse_edits() -> tuple[Any, int, str, list[str], Any]:
    """The multipart images/edits request -> (request, n, response_format, ignored, model),
    or 400/413/415 in OpenAI's shape."""
    from flask import request

    from params import uploads

    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send the edit as multipart/form-data "
                       "with the fields image, prompt and optionally mask, n, size, "
                       "response_format (as the openai SDK's images.edit does)")
    settings = services().settings
    files = request.files  # parsing it enforces MAX_IMAGE_REQUEST_BYTES (413)
    image_file = files.get("image") or files.get("image[]")
    if (request.content_length or 0) > settings.max_request_bytes and image_file is None:
        raise body_too_large(settings, request.content_length)
    body = _form_values(request.form, settings)
    try:
        n, response_format, ignored = _batch_fields(
            {**body, **{name: True for name in files}},
            {*GENERATIONS_FIELDS, *EDIT_FILES, *EDIT_EXTENSIONS, *EDIT_IGNORED})
        if image_file is None:
            raise ValidationError("image", "'image' is required: send the picture to edit as "
                                           "a file field of the multipart body")
        if not str(body.get("prompt") or "").strip():  # OpenAI requires it for edits
            raise ValidationError("prompt", "'prompt' is required: say what the edit should "
                                            "show")
        if len(files.getlist("image")) + len(files.getlist("image[]")) > 1:
            ignored.append("image (all but the first)")
        image_bytes = image_file.read()
        image = uploads.decode_image("image", image_bytes, settings.max_input_pixels)
        mask = _edit_mask(files.get("mask"), image, settings)
        native = {name: body[name] for name in ("prompt", *EXTENSIONS, *EDIT_EXTENSIONS)
                  if name in body}
        native.setdefault("strength", IMAGE_STRENGTH if mask is None else MASK_STRENGTH)
        if body.get("size") not in (None, "", "auto"):
            native["width"], native["height"] = parse_size(body["size"])
        native["init_image"] = image_bytes
        if mask is not None:
            native["mask_image"] = uploads.png_bytes(mask)
        req = parse_request(native)
    except ValidationError as exc:
        raise _invalid(PARAM_OF.get(exc.field, exc.field), exc.message.replace(
            f"'{exc.field}'", f"'{PARAM_OF.get(exc.field, exc.field)}'")) from None
    return req, n, response_format, ignored, body.get("model")


def _edit_mask(upload: Any, image: Any, settings: Any) -> Any:
    """Our mask (white = repaint) from OpenAI's: the 'mask' file's transparent pixels, else
    the image's own (DALL-E 2's rule); None when neither has any (a whole-image edit)."""
    from params import uploads

    if upload is None:
        if "A" not in image.getbands() and "transparency" not in image.info:
            return None
        mask = uploads.mask_from_alpha(image)
        return mask if mask.getextrema()[1] == 255 else None
    mask = uploads.decode_image("mask", upload.read(), settings.max_input_pixels)
    if mask.size != image.size:
        raise ValidationError("mask", f"'mask' is {mask.width}x{mask.height} but 'image' is "
                                      f"{image.width}x{image.height}; send a mask of the "
                                      "same size")
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise ValidationError("mask", "'mask' has no alpha channel: send a PNG whose fully "
                                      "transparent pixels mark the area to repaint")
    return uploads.mask_from_alpha(mask)


def _form_values(form: Mapping, settings: Any) -> dict[str, Any]:
    """Form fields (all text) typed like JSON: numbers for the numeric fields, so the one
    validator checks them; text that is no number stays text and is refused by name."""
    kinds = {f.name: f.type for f in request_fields(settings)}
    kinds["n"] = "integer"
    values: dict[str, Any] = {}
    for name, text in form.items():
        values[name] = text
        kind = kinds.get(name)
        if kind in ("integer", "number") and text.strip() in ("", "null"):
            values[name] = None
        elif kind == "integer" and re.fullmatch(r"\s*-?\d+\s*", text):
            values[name] = int(text)
        elif kind == "number":
            try:
                values[name] = float(text)
            except ValueError:
                pass
    return values


@bp.post("/images/generations")
@doc("OpenAI Images: generate n images (b64_json, or url = /jobs/{id}/image). Also "
     "accepts negative_prompt, seed, steps, guidance_scale, scheduler (image i uses "
     "seed + i) and the speed options speed_preset, cfg_cutoff, deep_cache, vae_decoder.",
     request=generations_schema, responses={200: IMAGES_RESPONSE},
     errors=(400, 401, 403, 409, 413, 415, 429, 500, 503), **OPENAI_DOC)
def generations():
    """Generate like OpenAI's POST /v1/images/generations."""
    body = json_body()
    req, n, response_format, ignored = parse_generations(body)
    return images_response(req, n, response_format, ignored, body.get("model"))


@bp.post("/images/edits")
@doc("OpenAI Images: edit an image (multipart/form-data). 'image' is the input (the first "
     "of 'image[]' when several are sent); 'mask' a PNG of the same size whose fully "
     "transparent pixels are repainted (without a mask, the image's own transparent pixels "
     "are, and an opaque image is changed as a whole: img2img). 'size' defaults to the "
     "image's aspect fitted to MAX_SIZE. Also accepts strength (default 1 with a mask, 0.75 "
     "without), resize_mode, mask_blur and the generations extensions.",
     request=edits_schema, content_type="multipart/form-data",
     responses={200: IMAGES_RESPONSE}, errors=(400, 401, 403, 409, 413, 415, 429, 500, 503),
     **OPENAI_DOC)
def edits():
    """Edit like OpenAI's POST /v1/images/edits."""
    req, n, response_format, ignored, model = parse_edits()
    return images_response(req, n, response_format, ignored, model)


def images_response(req: Any, n: int, response_format: str, ignored: list[str],
                    model_asked: Any) -> Response:
    """Make `n` images of `req` and answer OpenAI's images response (both routes)."""
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
    model = services().engine.model_name
    log.info("openai images (%s): %d images for model %r (served %s), seeds %s, %.1f s",
             req.mode, n, model_asked, model, [job.seed for job in jobs],
             time.monotonic() - started)
    return jsonify({"created": int(time.time()), "data": data, "model": model,
                    "size": f"{req.width}x{req.height}", "output_format": "png"})


@bp.get("/models")
@doc("OpenAI model list: the served model first, then every other loadable model in "
     "MODELS_DIR (switch with the native `model` field or A1111's options).",
     responses={200: MODELS_RESPONSE}, errors=(401,), **OPENAI_DOC)
def models():
    """List the models, as OpenAI's GET /v1/models does (the served one first), each with its
    family and recipe."""
    engine = services().engine
    entries = listed_models()
    served = engine.model
    if served is None:  # still loading: MODEL_ID's entry is the first
        first, rest = (entries[0] if entries else None), entries[1:]
    else:
        first, rest = served, [e for e in entries if e.source != served.source]
    listed = [(engine.model_name, first)] + [(e.name, e) for e in rest]
    return jsonify({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "sd-cpu-server",
         **model_facts(entry)} for name, entry in listed]})
