"""The AUTOMATIC1111 dialect (`/sdapi/v1/...`), for clients such as `webuiapi`.

A txt2img body is translated into the native fields and validated by
`params.parse_generation_request`, so limits and messages match the native API. Fields A1111
has but this server does not (hires fix, face restoration, scripts, override_settings...)
are accepted, ignored and logged. batch_size x n_iter images are made one after another
with consecutive seeds, as A1111 does. An interrupt stops the running image and the rest
of its batch; txt2img then answers 200 with the images finished before it (maybe none)
and `"interrupted": true` in its info, as A1111 answers an interrupted run with 200.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api import ApiError, error_json, failed_job_error, json_body, services
from api.batches import run_batch
from api.openapi import ERROR_SCHEMA, doc
from jobs import JobState
from params import (DEFAULT_SCHEDULER, SCHEDULERS, SPEED_OPTIONS, GenerationRequest,
                    ValidationError, field_value, image_count_field, json_object, parse_generation_request,
                    request_fields)

log = logging.getLogger(__name__)

bp = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")

# A1111 answers bad bodies with 422 (FastAPI); clients expect it.
INVALID = 422
# Native field <- A1111 field, for the fields that only differ in name.
RENAMED = {"cfg_scale": "guidance_scale"}
PASSED = ("prompt", "negative_prompt", "steps", "width", "height", *SPEED_OPTIONS)
# The other A1111 names for our samplers (old k-diffusion names; PLMS is what A1111 calls
# PNDM without its Runge-Kutta warm-up steps, which is how we configure it).
SAMPLER_ALIASES = {"Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"],
                   "LMS": ["k_lms"], "DDIM": ["ddim"], "PNDM": ["PLMS", "pndm", "plms"],
                   "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M Karras": ["k_dpmpp_2m_ka"]}
# A1111 >= 1.9 names the sigma schedule separately; these are the ones we can honour.
AUTOMATIC_SCHEDULES = {"", "automatic"}
KARRAS = {"DPM++ 2M": "DPM++ 2M Karras", "DPM++ 2M Karras": "DPM++ 2M Karras"}

A1111_ERROR_SCHEMA = {"type": "object", "required": ["error", "message"], "properties": {
    **ERROR_SCHEMA["properties"],
    "detail": {"type": "string", "description": "the message again, where A1111 puts it"}}}
TXT2IMG_RESPONSE = {"type": "object", "required": ["images", "parameters", "info"],
                    "properties": {
    "images": {"type": "array", "items": {"type": "string", "format": "byte"},
               "description": "base64 PNGs, one per finished image"},
    "parameters": {"type": "object", "description": "the request with the values used"},
    "info": {"type": "string", "description": "JSON: seed, all_seeds, prompt, infotexts, "
             "sampler_name, interrupted, job_ids, ..."}}}
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
    key: {"type": "string", "nullable": True}
    for key in ("title", "model_name", "hash", "sha256", "filename", "config")}}}
A1111_DOC = {"tags": ("a1111",), "error_schema": A1111_ERROR_SCHEMA}


def txt2img_schema() -> dict[str, Any]:
    """The txt2img body A1111 clients send, with this server's limits."""
    settings = services().settings
    native = {s.name: s.schema() for s in request_fields(settings)}
    limit = settings.max_batch
    return {"type": "object", "required": ["prompt"], "additionalProperties": True,
            "description": "Other A1111 fields (enable_hr, restore_faces, scripts, other "
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


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(INVALID, "invalid_field", message, param=field)


def resolve_sampler(name: Any, schedule: Any, field: str = "sampler_name") -> str:
    """Our scheduler name for an A1111 sampler (+ separate schedule) name, or 422."""
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "default")):
        sampler = DEFAULT_SCHEDULER
    elif not isinstance(name, str):
        raise _invalid(field, f"'{field}' must be a sampler name (got {name!r})")
    else:
        wanted = name.strip().lower()
        sampler = next((ours for ours in SCHEDULERS if wanted == ours.lower() or
                        wanted in (a.lower() for a in SAMPLER_ALIASES.get(ours, ()))), None)
        if sampler is None:
            raise _invalid(field, f"sampler '{name}' is not available here; use one of "
                           f"{', '.join(SCHEDULERS)} (GET /sdapi/v1/samplers)")
    if schedule is None or (isinstance(schedule, str) and
                            schedule.strip().lower() in AUTOMATIC_SCHEDULES):
        return sampler
    if isinstance(schedule, str) and schedule.strip().lower() == "karras":
        if sampler in KARRAS:
            return KARRAS[sampler]
        raise _invalid("scheduler", f"scheduler 'Karras' works here only with sampler "
                       f"'DPM++ 2M' (got sampler '{name}')")
    raise _invalid("scheduler", f"scheduler {schedule!r} is not available here; use "
                   "'automatic', or 'Karras' with sampler 'DPM++ 2M'")


def parse_txt2img(body: Any) -> tuple[GenerationRequest, int, int, list[str]]:
    """An A1111 txt2img body -> (request, batch_size, n_iter, ignored fields), or 422."""
    settings = services().settings
    try:
        overrides = json_object(body).get("override_settings")
        # A1111 clients set per-request options through override_settings; ours too.
        native = {name: overrides[name] for name in SPEED_OPTIONS
                  if isinstance(overrides, dict) and name in overrides}
        native.update({name: body[name] for name in PASSED if name in body})
        native.update({ours: body[theirs] for theirs, ours in RENAMED.items() if theirs in body})
        if body.get("seed") not in (None, -1):  # -1 is A1111's "random"
            native["seed"] = body["seed"]
        # sampler_name wins over the deprecated sampler_index, as in A1111.
        field = "sampler_name" if body.get("sampler_name") else "sampler_index"
        if any(body.get(name) is not None for name in ("sampler_name", "sampler_index",
                                                        "scheduler")):
            # Only a sampler the client named: otherwise a speed preset's sampler applies.
            native["scheduler"] = resolve_sampler(body.get(field), body.get("scheduler"), field)
        req = parse_generation_request(native, settings)
        batch_size, n_iter = (field_value(image_count_field(name, settings), body)
                              for name in ("batch_size", "n_iter"))
    except ValidationError as exc:
        theirs = {ours: theirs for theirs, ours in RENAMED.items()}.get(exc.field, exc.field)
        raise _invalid(theirs, exc.message.replace(f"'{exc.field}'", f"'{theirs}'")) from None
    if batch_size * n_iter > settings.max_batch:
        raise _invalid("batch_size", f"batch_size x n_iter = {batch_size * n_iter} images; "
                       f"this server makes 1..{settings.max_batch} per request "
                       "(MAX_BATCH)")
    known = {*PASSED, *RENAMED, "seed", "sampler_name", "sampler_index", "scheduler",
             "batch_size", "n_iter", "send_images", "override_settings"}
    ignored = [k for k in body if k not in known]
    if isinstance(overrides, dict):
        ignored += [f"override_settings.{k}" for k in overrides if k not in SPEED_OPTIONS]
    elif overrides is not None:
        ignored.append("override_settings")
    return req, batch_size, n_iter, sorted(ignored)


def model_hash() -> str:
    """A sha256 naming the served model (of its id: a diffusers folder has no single
    checkpoint file for A1111's file hash)."""
    return hashlib.sha256(services().settings.model_id.encode()).hexdigest()


def model_title() -> str:
    """A1111's checkpoint title: name and short hash."""
    return f"{services().settings.model_id} [{model_hash()[:10]}]"


def sampler_label(scheduler: str) -> str:
    """The A1111 name of a native scheduler value ('default' -> the model's own)."""
    return services().engine.default_sampler if scheduler == DEFAULT_SCHEDULER else scheduler


@bp.post("/txt2img")
@doc("AUTOMATIC1111 txt2img: batch_size x n_iter images with consecutive seeds, as base64 "
     "PNGs. After POST /sdapi/v1/interrupt it answers 200 with the images finished before "
     "the interrupt (maybe none) and \"interrupted\": true in info.",
     request=txt2img_schema, responses={200: TXT2IMG_RESPONSE},
     errors=(400, 401, 413, 415, 422, 429, 500, 503), **A1111_DOC)
def txt2img():
    """Generate like A1111's /sdapi/v1/txt2img and answer images, parameters and info."""
    body = json_body()
    req, batch_size, n_iter, ignored = parse_txt2img(body)
    started = time.monotonic()
    jobs = run_batch(req, batch_size * n_iter, "a1111 txt2img", ignored)
    if jobs is None:
        return Response(status=499)  # the client hung up; nobody reads this
    done = [job for job in jobs if job.png is not None]
    failed = next((job for job in jobs if job.state is JobState.FAILED), None)
    if failed is not None:
        raise failed_job_error(failed)
    interrupted = len(done) < len(jobs)
    svc = services()
    sampler = sampler_label(req.scheduler)
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * len(jobs),
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * len(jobs),
        "seed": jobs[0].seed, "all_seeds": [job.seed for job in jobs],
        "subseed": -1, "all_subseeds": [-1] * len(jobs), "subseed_strength": 0,
        "width": req.width, "height": req.height, "sampler_name": sampler,
        "cfg_scale": req.guidance_scale, "steps": req.steps, "batch_size": batch_size,
        "n_iter": n_iter, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": svc.settings.model_id, "sd_model_hash": model_hash()[:10],
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": None,
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [job.request.infotext(job.seed, svc.settings.model_id,
                                           svc.engine.default_sampler) for job in done],
        "styles": [], "job_timestamp": datetime.fromtimestamp(
            jobs[0].created_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "interrupted": interrupted, "job_ids": [job.id for job in jobs],
        "ignored_fields": ignored,
    }
    parameters = {**body, "prompt": req.prompt, "negative_prompt": req.negative_prompt,
                  "seed": jobs[0].seed, "steps": req.steps, "cfg_scale": req.guidance_scale,
                  "width": req.width, "height": req.height, "sampler_name": sampler,
                  "batch_size": batch_size, "n_iter": n_iter}
    send = body.get("send_images", True) is not False
    if send:  # with send_images false the images wait in /jobs/<id>/image (job_ids in info)
        for job in done:
            services().queue.mark_delivered(job)
    log.info("a1111 txt2img: %d/%d images, seeds %s, %.1f s%s", len(done), len(jobs),
             info["all_seeds"], time.monotonic() - started,
             " (interrupted)" if interrupted else "")
    return jsonify({"images": [base64.b64encode(job.png).decode() for job in done] if send
                    else [], "parameters": parameters, "info": json.dumps(info)})


@bp.get("/progress")
@doc("AUTOMATIC1111 progress of the running generation, with a base64 preview of its "
     "current latents.", responses={200: PROGRESS_RESPONSE}, errors=(401,),
     query={"skip_current_image": {"type": "boolean", "default": False}}, **A1111_DOC)
def progress():
    """Report the running job as A1111's progress: fraction, ETA, steps and a preview."""
    queue = services().queue
    stats = queue.stats()
    state = {"skipped": False, "interrupted": False, "job": "", "job_count":
             stats["waiting"] + stats["running"], "job_timestamp": "0", "job_no": 0,
             "sampling_step": 0, "sampling_steps": 0}
    job = queue.current()
    if job is None:
        return jsonify({"progress": 0.0, "eta_relative": 0.0, "state": state,
                        "current_image": None, "textinfo": None})
    snap = queue.snapshot(job)
    state.update(interrupted=job.cancel_requested, job=f"job {job.id}",
                 job_timestamp=datetime.fromtimestamp(job.created_at).strftime("%Y%m%d%H%M%S"),
                 sampling_step=snap["step"], sampling_steps=snap["total_steps"])
    image = None
    if request.args.get("skip_current_image", "").lower() not in ("1", "true", "yes"):
        png = queue.preview(job)
        image = base64.b64encode(png).decode() if png else None
    return jsonify({"progress": snap["progress"], "eta_relative": snap["eta_seconds"] or 0.0,
                    "state": state, "current_image": image,
                    "textinfo": f"Step {snap['step']}/{snap['total_steps']}"})


@bp.post("/interrupt")
@doc("AUTOMATIC1111 interrupt: the running generation (whichever API started it) stops "
     "within one step, and so does the rest of its txt2img batch.",
     responses={200: {"type": "object"}}, errors=(401,), **A1111_DOC)
def interrupt():
    """Cancel the running job; its txt2img request then cancels the rest of its batch."""
    queue = services().queue
    job = queue.current()
    if job is not None:
        queue.cancel(job.id)
        log.info("a1111 interrupt: job %s", job.id)
    return jsonify({})


@bp.get("/samplers")
@doc("AUTOMATIC1111 sampler list: the samplers this server has, with their A1111 aliases.",
     responses={200: SAMPLERS_RESPONSE}, errors=(401,), **A1111_DOC)
def samplers():
    """List samplers as A1111 does: name, aliases, options."""
    return jsonify([{"name": name, "aliases": SAMPLER_ALIASES.get(name, []),
                     "options": {"scheduler": "karras"} if "Karras" in name else {}}
                    for name in SCHEDULERS])


@bp.get("/schedulers")
@doc("AUTOMATIC1111 (>= 1.9) schedule list: 'automatic' and 'Karras' (DPM++ 2M only).",
     responses={200: {"type": "array", "items": {"type": "object"}}}, errors=(401,),
     **A1111_DOC)
def schedulers():
    """List the sigma schedules a txt2img `scheduler` field may name."""
    return jsonify([{"name": "automatic", "label": "Automatic", "aliases": None,
                     "default_rho": -1, "need_inner_model": False},
                    {"name": "karras", "label": "Karras", "aliases": None,
                     "default_rho": 7.0, "need_inner_model": False}])


@bp.get("/sd-models")
@doc("AUTOMATIC1111 checkpoint list: the one model this server serves (hash = sha256 of "
     "its id).", responses={200: MODELS_RESPONSE}, errors=(401,), **A1111_DOC)
def sd_models():
    """The served model as A1111's checkpoint entry."""
    settings = services().settings
    return jsonify([{"title": model_title(), "model_name": settings.model_id,
                     "hash": model_hash()[:10], "sha256": model_hash(),
                     "filename": settings.model_source, "config": None}])


@bp.get("/scripts")
@doc("AUTOMATIC1111 script list: none (clients such as webuiapi probe it for extensions).",
     responses={200: {"type": "object"}}, errors=(401,), **A1111_DOC)
def scripts():
    """No scripts or extensions here."""
    return jsonify({"txt2img": [], "img2img": []})


# The other A1111 routes live in their own modules and register on `bp` when imported.
from api.a1111 import extras, img2img, lists, options  # noqa: E402,F401
