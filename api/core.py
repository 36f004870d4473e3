"""Core routes: the page, the health probe and synchronous generation."""
from __future__ import annotations

import time

from flask import (Blueprint, Response, current_app, jsonify, render_template, request,
                   send_from_directory)

from api import (ApiError, failed_job_error, json_body, listed_models, model_facts,
                 parse_request, services, submit, wait_for)
from api.openapi import doc
from api.security import auth_kind
from catalog.loras import list_loras
from catalog.upscalers import list_upscalers, upscaler_names
from errors import ValidationError
from jobs.pace import estimate as pace_estimate
from params import (DEFAULT_MASK_BLUR, DEFAULT_SCHEDULER, IMAGE_FIELDS, PRESETS, SCHEDULERS,
                    lora_recipe, model_card)
from params.hires import LATENT_UPSCALERS

bp = Blueprint("core", __name__)

HEALTH_SCHEMA = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["loading", "healthy", "unhealthy", "shutting_down",
                                             "no_workers"]},
    "device": {"type": "string"},
    "model": {"type": "string", "description": "the served model's name (a folder's name, a "
              "file's stem, a Hub id; never a path)"},
    "model_hash": {"type": "string", "nullable": True, "description": "A1111's short hash "
                   "(sha256[:10]) of a one-file model; null for a folder or Hub model"},
    "dtype": {"type": "string"},
    "upscalers_skipped": {"type": "array", "description": "ESRGAN-family files in "
                          "MODELS_DIR that cannot be used, each with the reason (A1111's "
                          "upscalers list has no place for them)", "items": {
                              "type": "object", "properties": {
                                  "file": {"type": "string"}, "reason": {"type": "string"}}}},
    "optimizations": {"type": "array", "items": {"type": "string"}},
    "phase": {"type": "string", "description": "what the load is doing now"},
    "progress": {"type": "object", "nullable": True, "description": "bytes_done, bytes_total "
                 "and eta_seconds of a long load phase (the first bf16 conversion)"},
    "precision": {"type": "object", "nullable": True, "description": "the load-time probe: "
                  "bf16 vs fp32 speed on this CPU and the dtype chosen"},
    "hint": {"type": "string", "nullable": True, "description": "advice, e.g. a faster "
             "precision this CPU offers"},
    "engine": {"type": "object", "description": "what runs the UNet: name (torch or "
               "openvino); for openvino the precision it chose, threads, compile and export "
               "seconds, memory"},
    "switching": {"type": "object", "description": "from/to while a model switch runs"},
    "family": {"type": "object", "nullable": True, "description": "the served model's "
               "family (id, label, prediction_type, native_size...), read from its configs"},
    "defaults": {"type": "object", "description": "what a request that leaves them out gets "
                 "on the served model (its card; built in for SD-Turbo and SDXS)"},
    "queue": {"type": "object"}, "error": {"type": "string"}}}


def request_limits(settings) -> dict:
    """What a request may ask for on this server, as the page and /health report it."""
    return {"max_prompt_length": settings.max_prompt_length, "min_size": settings.min_size,
            "max_size": settings.max_size, "max_steps": settings.max_steps,
            "default_steps": settings.default_steps, "default_size": settings.default_size,
            "max_hires_size": settings.max_hires_size}


def parse_or_400(body) -> object:
    """Validate a native body; a bad field becomes 400 naming the field and its range."""
    try:
        return parse_request(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_field", exc.message, param=exc.field) from None


@bp.get("/")
@doc("The web page.", responses={200: "text/html"}, errors=())
def index():
    """Serve the browser form (each model with its family and recipe, each LoRA with its
    few-step recipe, for the page to fill in when one is picked)."""
    s = services().settings
    loras = list_loras(s)
    recipes = {e.name: lora_recipe(e) for e in loras}
    return render_template("index.html",
                           models={e.name: model_facts(e) for e in listed_models()},
                           loras=loras, lora_recipes=recipes,
                           lora_labels={e.name: recipe_label(e, recipes[e.name])
                                        for e in loras},
                           limits={
        **request_limits(s), "default_guidance": s.default_guidance,
        # "auth": which credential the page asks for (none, bearer, basic or either).
        "api_key_required": bool(s.api_key), "auth": auth_kind(s),
        "default_preset": s.speed_preset, "default_mask_blur": DEFAULT_MASK_BLUR},
        schedulers=[DEFAULT_SCHEDULER, *SCHEDULERS], presets=PRESETS,
        hires_upscalers=[*LATENT_UPSCALERS, *upscaler_names(s)])


def recipe_label(lora, recipe: dict) -> str:
    """A LoRA's recipe in a few words for the page's menu, e.g. 'TCD: 4 steps, TCD, guidance
    0', or '' for an ordinary LoRA."""
    if not recipe:
        return ""
    kind = lora.few_step.kind.upper() if lora.few_step else "recipe"
    parts = [f"{recipe['steps']} steps" if "steps" in recipe else "",
             recipe.get("scheduler", ""),
             f"guidance {recipe['guidance_scale']:g}" if "guidance_scale" in recipe else ""]
    return f"{kind}: " + ", ".join(part for part in parts if part)


@bp.get("/favicon.ico")
@doc("The page's icon (browsers ask for it at this path).",
     responses={200: "image/vnd.microsoft.icon"}, errors=())
def favicon():
    """Serve the icon from static/, where the page's <link rel=icon> also points."""
    return send_from_directory(current_app.static_folder, "favicon.ico",
                               mimetype="image/vnd.microsoft.icon")


@bp.get("/health")
@doc("Readiness probe: 200 when the model is loaded, 503 while loading or if loading failed. "
     "With QUEUE_BACKEND=redis: 200 when Redis answers and a worker with a loaded model "
     "heartbeats (workers, queue depth, model); 503 no_workers or unhealthy (Redis "
     "unreachable) with advice.",
     responses={200: HEALTH_SCHEMA, 503: HEALTH_SCHEMA}, errors=())
def health():
    """Report model state, device, dtype, active optimizations and queue figures."""
    svc = services()
    health = svc.queue.health()
    skipped = [{"file": entry.relative, "reason": entry.problem}
               for entry in list_upscalers(svc.settings) if entry.problem]
    response = jsonify({**health.body, "limits": request_limits(svc.settings),
                        "upscalers_skipped": skipped})
    if health.retry_after:
        response.headers["Retry-After"] = str(health.retry_after)
    return response, health.code


@bp.post("/generate")
@doc("Generate one image and wait for it (minutes on a CPU). Answers the PNG, with the seed "
     "and timings in headers and an A1111 'parameters' PNG text chunk.",
     request="generation", responses={200: "image/png"},
     errors=(400, 401, 409, 413, 415, 429, 500, 503), tags=("native",))
def generate():
    """Queue the request, wait for the image, answer image/png."""
    req = parse_or_400(json_body(IMAGE_FIELDS))
    started = time.monotonic()
    job = submit(req)
    if not wait_for(job):
        return Response(status=499)  # nobody is listening; waitress drops it
    if job.png is None:
        raise failed_job_error(job)
    services().queue.mark_delivered(job)
    response = Response(job.png, mimetype="image/png")
    response.headers["X-Seed"] = str(job.seed)
    response.headers["X-Job-Id"] = job.id
    response.headers["X-Generation-Seconds"] = f"{job.finished_at - job.started_at:.2f}"
    response.headers["X-Total-Seconds"] = f"{time.monotonic() - started:.2f}"
    response.headers["X-Seconds-Per-Step"] = f"{job.seconds_per_step or 0:.3f}"
    if job.nsfw:  # the safety checker flagged it: the PNG is blank, say so plainly
        response.headers["X-NSFW-Blocked"] = "true"
    response.headers["Content-Disposition"] = f'inline; filename="{job.id}-{job.seed}.png"'
    current_app.logger.debug("served job %s", job.id)
    return response


ESTIMATE_SCHEMA = {"type": "object", "properties": {
    "seconds": {"type": "number", "nullable": True, "description": "expected seconds for one "
                "image of these settings here; null until one image of this kind was made"},
    "measured": {"type": "boolean"},
    "model": {"type": "string", "description": "the model it would run on"},
    "kind": {"type": "string", "description": "model|size|sampler|mode|cfg|speed options: "
             "what the pace was measured for"},
    "faster": {"type": "array", "description": "over a minute: the faster choices (a preset, "
               "or a 1-step model) and their expected seconds (null: not measured yet)",
               "items": {"type": "object"}}}}


@bp.post("/estimate")
@doc("Expected seconds for one image of these settings on this machine (the generation body, "
     "without images; ?mode=img2img or inpaint for an input image), from the measured pace "
     "per model and kind of image; over a minute, the faster choices.",
     request="generation", query={"mode": {"type": "string",
                                           "enum": ["txt2img", "img2img", "inpaint"]}},
     responses={200: ESTIMATE_SCHEMA}, errors=(400, 401, 415), tags=("native",))
def estimate():
    """Estimate from the queue's pace book (nothing is queued)."""
    from dataclasses import replace

    req = parse_or_400(json_body())
    mode = request.args.get("mode", "txt2img")
    if mode in ("img2img", "inpaint"):  # the kind needs only which mode, not the pixels
        req = replace(req, init_image=mode, mask_image=mode if mode == "inpaint" else None)
    svc = services()
    model = req.model or svc.engine.model_name
    one_step = [e.name for e in listed_models() if model_card(e).get("steps") == 1]
    return jsonify({**pace_estimate(req, model, svc.queue.pace_book(), one_step),
                    "model": model})
