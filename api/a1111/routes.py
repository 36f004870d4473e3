"""A1111 generation and control routes: txt2img, progress, interrupt, skip, and the model
and sampler lists (img2img, options, extras and the other lists have their own modules)."""
from __future__ import annotations

import base64
import logging
import time
from datetime import datetime

from flask import jsonify, request

from api import json_body, listed_models, model_facts, services
from api.a1111.blueprint import (A1111_DOC, GENERATION_DOC, MODELS_RESPONSE, PROGRESS_RESPONSE,
                                 SAMPLERS_RESPONSE, bp)
from api.a1111.generation import (SAMPLER_ALIASES, generate,
                                  model_hash, model_title, parse_a1111)
from api.a1111.hires import (HIRES_KNOWN, HIRES_RENAMED, hires_fields, hires_info,
                             txt2img_hires_schema)
from api.openapi import doc
from params import SCHEDULERS

log = logging.getLogger(__name__)


@bp.post("/txt2img")
@doc("AUTOMATIC1111 txt2img: batch_size x n_iter images with consecutive seeds, as base64 "
     "PNGs. After POST /sdapi/v1/interrupt it answers 200 with the images finished before "
     "the interrupt (maybe none) and \"interrupted\": true in info; an image skipped with "
     "POST /sdapi/v1/skip is left out (its seed in info's skipped_seeds). enable_hr runs the "
     "hires fix: the first pass at width x height, an upscale (hr_scale or hr_resize_x/y, by "
     "hr_upscaler), then hr_second_pass_steps of img2img at denoising_strength.",
     request=txt2img_hires_schema, **GENERATION_DOC)
def txt2img():
    """Generate like A1111's /sdapi/v1/txt2img and answer images, parameters and info."""
    body = json_body()
    parsed = parse_a1111(body, extra=hires_fields(body), renamed=HIRES_RENAMED,
                         known=HIRES_KNOWN)
    return generate("txt2img", body, parsed, info_extra=hires_info(parsed.request))


@bp.get("/progress")
@doc("AUTOMATIC1111 progress over the running request's batch: job_count = its images, "
     "job_no = the image being made (0-based), progress = (images done + this image's "
     "fraction) / job_count, sampling_steps = the steps that really run (steps, or steps x "
     "denoising_strength for img2img, plus the second pass's with enable_hr; PNDM's extra "
     "internal step is never counted), and a "
     "base64 preview of the current latents. Idle: job_count 0.",
     responses={200: PROGRESS_RESPONSE}, errors=(401,),
     query={"skip_current_image": {"type": "boolean", "default": False}}, **A1111_DOC)
def progress():
    """Report the running batch as A1111's progress: fraction, ETA, steps and a preview."""
    queue = services().queue
    state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0,
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    job = queue.active()  # between two images of a batch: the next one, not "idle"
    if job is None:
        return jsonify({"progress": 0.0, "eta_relative": 0.0, "state": state,
                        "current_image": None, "textinfo": None})
    snap = queue.snapshot(job)
    step, total = snap["step"], snap["total_steps"]
    fraction = min(step / total, 1.0) if total else 0.0
    count, index = job.batch_size, job.batch_index
    state.update(skipped=job.skip_requested,
                 interrupted=job.cancel_requested and not job.skip_requested,
                 job=f"job {job.id}", job_count=count, job_no=index,
                 job_timestamp=datetime.fromtimestamp(job.created_at).strftime("%Y%m%d%H%M%S"),
                 sampling_step=step, sampling_steps=total)
    image = None
    if request.args.get("skip_current_image", "").lower() not in ("1", "true", "yes"):
        png = queue.preview(job)
        image = base64.b64encode(png).decode() if png else None
    switching = services().engine.status.switching  # a queued switch, or a job's `model`
    textinfo = (f"Loading model {switching['to']}" if switching else
                f"Image {index + 1}/{count}, step {step}/{total}")
    return jsonify({"progress": round((index + fraction) / count, 4),
                    "eta_relative": batch_eta(job, snap["eta_seconds"], fraction),
                    "state": state, "current_image": image, "textinfo": textinfo})


def batch_eta(job, eta_seconds: float | None, fraction: float) -> float:
    """Seconds left for the whole batch: this image's ETA plus, for each image after it,
    as long as this one takes in all (measured so far, else estimated by the queue)."""
    this_image = eta_seconds or 0.0
    rest = job.batch_size - job.batch_index - 1
    if rest <= 0:
        return round(this_image, 1)
    per_image = this_image
    if job.started_at and fraction > 0:
        per_image = (time.time() - job.started_at) / fraction
    return round(this_image + rest * per_image, 1)


@bp.post("/interrupt")
@doc("AUTOMATIC1111 interrupt: the running generation (whichever API started it) stops "
     "within one step, and so does the rest of its txt2img/img2img batch.",
     responses={200: {"type": "object"}}, errors=(401,), **A1111_DOC)
def interrupt():
    """Cancel the running job; its A1111 request then cancels the rest of its batch."""
    queue = services().queue
    job = queue.current()
    if job is not None:
        queue.cancel(job.id)
        log.info("a1111 interrupt: job %s", job.id)
    return jsonify({})


@bp.post("/skip")
@doc("AUTOMATIC1111 skip: the running image stops within one step (its job ends "
     "cancelled) and the rest of its batch still runs; txt2img/img2img then answer with the "
     "images that finished, the skipped image's seed in info's skipped_seeds and "
     "\"interrupted\": false. A native job is a batch of 1: skipping it cancels it. Idle: "
     "nothing happens.", responses={200: {"type": "object"}}, errors=(401,), **A1111_DOC)
def skip():
    """Skip the running image: cancel it, but let the rest of its batch run."""
    queue = services().queue
    job = queue.current()
    if job is not None:
        queue.cancel(job.id, skip=True)
        log.info("a1111 skip: job %s (image %d of %d)", job.id, job.batch_index + 1,
                 job.batch_size)
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
@doc("AUTOMATIC1111 (>= 1.9) schedule list: 'automatic', 'Karras' (DPM++ 2M only) and "
     "'SGM Uniform' (Euler and DDIM: trailing spacing).",
     responses={200: {"type": "array", "items": {"type": "object"}}}, errors=(401,),
     **A1111_DOC)
def schedulers():
    """List the sigma schedules a txt2img `scheduler` field may name."""
    return jsonify([{"name": "automatic", "label": "Automatic", "aliases": None,
                     "default_rho": -1, "need_inner_model": False},
                    {"name": "karras", "label": "Karras", "aliases": None,
                     "default_rho": 7.0, "need_inner_model": False},
                    {"name": "sgm_uniform", "label": "SGM Uniform", "aliases": None,
                     "default_rho": -1, "need_inner_model": True}])


@bp.get("/sd-models")
@doc("AUTOMATIC1111 checkpoint list: MODEL_ID's model and every loadable model in "
     "MODELS_DIR (hash = the file's sha256 for a single-file checkpoint once it has been "
     "loaded; for a diffusers folder or Hub id a sha256 of its name).",
     responses={200: MODELS_RESPONSE}, errors=(401,), **A1111_DOC)
def sd_models():
    """The models a client may switch to, as A1111's checkpoint entries (plus each one's
    family and recipe)."""
    return jsonify([{"title": model_title(e), "model_name": e.name,
                     "hash": model_hash(e)[:10], "sha256": model_hash(e),
                     "filename": e.filename, "config": None, **model_facts(e)}
                    for e in listed_models()])


@bp.post("/refresh-checkpoints")
@doc("AUTOMATIC1111 refresh-checkpoints: MODELS_DIR is read on every request here, so there "
     "is nothing to refresh; answers 200.", responses={200: {"type": "object"}},
     errors=(401,), **A1111_DOC)
def refresh_checkpoints():
    """Nothing to do: /sd-models and switches read MODELS_DIR each time."""
    return jsonify({})


@bp.get("/scripts")
@doc("AUTOMATIC1111 script list: none (clients such as webuiapi probe it for extensions).",
     responses={200: {"type": "object"}}, errors=(401,), **A1111_DOC)
def scripts():
    """No scripts or extensions here."""
    return jsonify({"txt2img": [], "img2img": []})


# The other A1111 routes live in their own modules and register on `bp` when imported.
