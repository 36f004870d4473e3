"""The A1111 dialect's blueprint, its error shape and the schemas its routes document."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from api import MODEL_FACTS_SCHEMA, ApiError, error_json, services
from api.openapi import ERROR_SCHEMA
from params import SPEED_OPTIONS, image_count_field, request_fields

bp = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")

A1111_ERROR_SCHEMA = {"type": "object", "required": ["error", "message"], "properties": {
    **ERROR_SCHEMA["properties"],
    "detail": {"type": "string", "description": "the message again, where A1111 puts it"}}}
TXT2IMG_RESPONSE = {"type": "object", "required": ["images", "parameters", "info"],
                    "properties": {
    "images": {"type": "array", "items": {"type": "string", "format": "byte"},
               "description": "base64 PNGs, one per finished image"},
    "parameters": {"type": "object", "description": "the request with the values used"},
    "info": {"type": "string", "description": "JSON: seed, all_seeds, prompt, infotexts, "
             "sampler_name, interrupted, skipped_seeds, job_ids, ..."}}}
PROGRESS_RESPONSE = {"type": "object", "properties": {
    "progress": {"type": "number"}, "eta_relative": {"type": "number"},
    "state": {"type": "object", "properties": {
        "skipped": {"type": "boolean"}, "interrupted": {"type": "boolean"},
        "job": {"type": "string"}, "job_count": {"type": "integer"},
        "job_timestamp": {"type": "string"}, "job_no": {"type": "integer"},
        "sampling_step": {"type": "integer"}, "sampling_steps": {"type": "integer"}}},
    "current_image": {"type": "string", "format": "byte", "nullable": True},
    "textinfo": {"type": "string", "nullable": True}}}
SAMPLERS_RESPONSE = {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "aliases": {"type": "array", "items": {"type": "string"}},
    "options": {"type": "object"}}}}
MODELS_RESPONSE = {"type": "array", "items": {"type": "object", "properties": {
    **{key: {"type": "string", "nullable": True}
       for key in ("title", "model_name", "hash", "sha256", "filename", "config")},
    **MODEL_FACTS_SCHEMA}}}
A1111_DOC = {"tags": ("a1111",), "error_schema": A1111_ERROR_SCHEMA}
# What a generation route (txt2img, img2img) may answer besides 200.
GENERATION_DOC = {**A1111_DOC, "responses": {200: TXT2IMG_RESPONSE},
                  "errors": (400, 401, 413, 415, 422, 429, 500, 503)}


def txt2img_schema() -> dict[str, Any]:
    """The txt2img body A1111 clients send, with this server's limits."""
    settings = services().settings
    native = {s.name: s.schema() for s in request_fields(settings)}
    limit = settings.max_batch
    return {"type": "object", "required": ["prompt"], "additionalProperties": True,
            "description": "Other A1111 fields (restore_faces, scripts, other "
                           "override_settings, ...) are accepted and ignored. The speed "
                           "options may also come in override_settings (a body field wins).",
            "properties": {
                "prompt": native["prompt"], "negative_prompt": native["negative_prompt"],
                "seed": {"type": "integer", "minimum": -1, "maximum": native["seed"]["maximum"],
                         "description": "-1 (or absent) for a random seed; image i of the "
                                        "batch uses seed + i"},
                "steps": native["steps"], "cfg_scale": native["guidance_scale"],
                "width": native["width"], "height": native["height"],
                "sampler_name": {"type": "string", "description": "an A1111 sampler name or "
                                 "alias, see GET /sdapi/v1/samplers"},
                "sampler_index": {"type": "string", "description": "legacy sampler_name"},
                "scheduler": {"type": "string", "enum": ["automatic", "Automatic", "karras",
                                                          "Karras"]},
                "batch_size": image_count_field("batch_size", settings).schema(),
                "n_iter": {**image_count_field("n_iter", settings).schema(),
                           "description": f"batch_size x n_iter <= {limit} (MAX_BATCH)"},
                "send_images": {"type": "boolean", "default": True},
                **{name: native[name] for name in SPEED_OPTIONS},
                "override_settings": {"type": "object", "description": "speed_preset, "
                                      "cfg_cutoff, deep_cache and vae_decoder are read from "
                                      "here too; other keys are ignored"}}}


def render_error(exc: ApiError) -> Response:
    """This dialect's error shape: ours plus A1111's `detail`, which its clients print."""
    return error_json({"error": exc.code, "message": exc.message, "detail": exc.message}, exc)
