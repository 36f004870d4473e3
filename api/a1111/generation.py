"""What txt2img and img2img share: an A1111 body -> the native request, the batch's jobs ->
A1111's answer (images, parameters, info).

The body is translated into native field names and validated by
`params.parse_generation_request`, so limits and messages match the native API; an error
names the A1111 field. Fields A1111 has but this server does not are returned as `ignored`
(logged by api.batches, listed in info). This module imports nothing from the package's
__init__ (which imports it), so it holds the helpers the route modules share.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from flask import Response, jsonify

from api import ApiError, failed_job_error, parse_request, services
from api.a1111.speed_options import with_speed_defaults
from api.batches import run_batch
from jobs import JobState
from errors import ValidationError
from params import (DEFAULT_SCHEDULER, SCHEDULERS, SPEED_OPTIONS, GenerationRequest,
                    field_value, image_count_field, json_object)

log = logging.getLogger(__name__)

# A1111 answers bad bodies with 422 (FastAPI); clients expect it.
INVALID = 422
# Native field <- A1111 field, for the fields that only differ in name.
RENAMED = {"cfg_scale": "guidance_scale"}
PASSED = ("prompt", "negative_prompt", "steps", "width", "height", "eta", *SPEED_OPTIONS)
# The other A1111 names for our samplers (old k-diffusion names; PLMS is what A1111 calls
# PNDM without its Runge-Kutta warm-up steps, which is how we configure it).
SAMPLER_ALIASES = {"Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"],
                   "LMS": ["k_lms"], "DDIM": ["ddim"], "PNDM": ["PLMS", "pndm", "plms"],
                   "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M Karras": ["k_dpmpp_2m_ka"]}
# A1111 >= 1.9 names the sigma schedule separately; these are the ones we can honour.
AUTOMATIC_SCHEDULES = {"", "automatic"}
KARRAS = {"DPM++ 2M": "DPM++ 2M Karras", "DPM++ 2M Karras": "DPM++ 2M Karras"}
# SGM Uniform starts at the last training timestep, as diffusers' trailing spacing does
# (what SD-Turbo and Hyper-SD are run with in A1111).
SGM_UNIFORM = {"Euler": "Euler trailing", "Euler trailing": "Euler trailing",
               "DDIM": "DDIM trailing", "DDIM trailing": "DDIM trailing"}
SCHEDULE_SAMPLERS = {"karras": KARRAS, "sgm uniform": SGM_UNIFORM, "sgm_uniform": SGM_UNIFORM}
# Body fields every A1111 generation route reads itself (the rest are ignored and logged).
COMMON_KNOWN = {*PASSED, *RENAMED, "seed", "sampler_name", "sampler_index", "scheduler",
                "batch_size", "n_iter", "send_images", "override_settings"}


@dataclass
class A1111Request:
    """A parsed A1111 generation body: the native request, the batch, what was ignored."""

    request: GenerationRequest
    batch_size: int
    n_iter: int
    ignored: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Images to make: batch_size x n_iter, one after another."""
        return self.batch_size * self.n_iter


def invalid(field_name: str, message: str) -> ApiError:
    """A1111's 422 for a bad field, naming it."""
    return ApiError(INVALID, "invalid_field", message, param=field_name)


def resolve_sampler(name: Any, schedule: Any, field_name: str = "sampler_name") -> str:
    """Our scheduler name for an A1111 sampler (+ separate schedule) name, or 422."""
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "default")):
        sampler = DEFAULT_SCHEDULER
    elif not isinstance(name, str):
        raise invalid(field_name, f"'{field_name}' must be a sampler name (got {name!r})")
    else:
        wanted = name.strip().lower()
        sampler = next((ours for ours in SCHEDULERS if wanted == ours.lower() or
                        wanted in (a.lower() for a in SAMPLER_ALIASES.get(ours, ()))), None)
        if sampler is None:
            raise invalid(field_name, f"sampler '{name}' is not available here; use one of "
                          f"{', '.join(SCHEDULERS)} (GET /sdapi/v1/samplers)")
    if schedule is None or (isinstance(schedule, str) and
                            schedule.strip().lower() in AUTOMATIC_SCHEDULES):
        return sampler
    table = SCHEDULE_SAMPLERS.get(schedule.strip().lower()) if isinstance(schedule, str) \
        else None
    if table is not None:
        if sampler in table:
            return table[sampler]
        raise invalid("scheduler", f"scheduler {schedule.strip()!r} works here only with "
                      f"the samplers {', '.join(repr(k) for k in table)} (got sampler "
                      f"'{name}')")
    raise invalid("scheduler", f"scheduler {schedule!r} is not available here; use "
                  "'automatic', 'Karras' with sampler 'DPM++ 2M', or 'SGM Uniform' with "
                  "'Euler' or 'DDIM'")


def parse_a1111(body: Any, extra: Mapping[str, Any] | None = None,
                renamed: Mapping[str, str] | None = None,
                known: set[str] | frozenset[str] = frozenset()) -> A1111Request:
    """An A1111 generation body -> the native request and batch, or 422 naming the A1111
    field. `extra` holds native fields the route translated itself (img2img's images),
    `renamed` maps their native names back to A1111's for messages, `known` lists the
    route's own A1111 fields so they are not reported as ignored."""
    settings = services().settings
    back = {ours: theirs for theirs, ours in RENAMED.items()} | dict(renamed or {})
    try:
        overrides = json_object(body).get("override_settings")
        # A1111 clients set per-request options through override_settings; ours too.
        native = {name: overrides[name] for name in SPEED_OPTIONS
                  if isinstance(overrides, dict) and name in overrides}
        native.update({name: body[name] for name in PASSED if name in body})
        native.update({ours: body[theirs] for theirs, ours in RENAMED.items() if theirs in body})
        native.update(extra or {})
        if isinstance(overrides, dict) and overrides.get("sd_model_checkpoint"):
            # A1111 switches for this request; here the model then stays loaded (a switch
            # back would cost a second load: send the old one with the next request).
            native["model"] = overrides["sd_model_checkpoint"]
            back.setdefault("model", "override_settings.sd_model_checkpoint")
        if body.get("seed") not in (None, -1):  # -1 is A1111's "random"
            native["seed"] = body["seed"]
        # sampler_name wins over the deprecated sampler_index, as in A1111.
        sampler_field = "sampler_name" if body.get("sampler_name") else "sampler_index"
        if any(body.get(name) is not None for name in ("sampler_name", "sampler_index",
                                                        "scheduler")):
            # Only a sampler the client named: otherwise a speed preset's sampler applies.
            native["scheduler"] = resolve_sampler(body.get(sampler_field),
                                                  body.get("scheduler"), sampler_field)
        # Speed options POSTed to /sdapi/v1/options act as defaults (a body field wins).
        # The stored options are defaults the client did not set in this request.
        req = parse_request(with_speed_defaults(native),
                            explicit={k for k, v in native.items() if v is not None})
        batch_size, n_iter = (field_value(image_count_field(name, settings), body)
                              for name in ("batch_size", "n_iter"))
    except ValidationError as exc:
        theirs = back.get(exc.field, exc.field)
        raise invalid(theirs, exc.message.replace(f"'{exc.field}'", f"'{theirs}'")) from None
    if batch_size * n_iter > settings.max_batch:
        raise invalid("batch_size", f"batch_size x n_iter = {batch_size * n_iter} images; "
                      f"this server makes 1..{settings.max_batch} per request (MAX_BATCH)")
    ignored = [k for k in body if k not in COMMON_KNOWN | set(known)]
    if isinstance(overrides, dict):
        ignored += [f"override_settings.{k}" for k in overrides
                    if k not in (*SPEED_OPTIONS, "sd_model_checkpoint")]
    elif overrides is not None:
        ignored.append("override_settings")
    return A1111Request(req, batch_size, n_iter, sorted(ignored))


def model_hash(entry=None) -> str:
    """A1111's sha256 of a catalogue model (default: the served one): its file's for a
    single-file checkpoint, else a hash of its name (a folder has no one file to hash)."""
    entry = entry or services().engine.model
    if entry is None:  # still loading: name it by MODEL_ID
        return hashlib.sha256(services().settings.model_id.encode()).hexdigest()
    return entry.sha256 or hashlib.sha256(entry.name.encode()).hexdigest()


def png_parameters(png: bytes) -> str:
    """The infotext the engine wrote into a PNG (model, LoRA hashes and all), as A1111's
    info.infotexts gives it."""
    from PIL import Image

    return Image.open(io.BytesIO(png)).info.get("parameters", "")


def model_title(entry=None) -> str:
    """A1111's checkpoint title of a catalogue model (default: the served one): its file
    name and short hash, as GET /sdapi/v1/sd-models lists it."""
    entry = entry or services().engine.model
    if entry is None:
        return f"{services().settings.model_id} [{model_hash()[:10]}]"
    return entry.title if entry.sha256 else f"{entry.name} [{model_hash(entry)[:10]}]"


def sampler_label(scheduler: str) -> str:
    """The A1111 name of a native scheduler value ('default' -> the model's own)."""
    return services().engine.default_sampler if scheduler == DEFAULT_SCHEDULER else scheduler


def generate(route: str, body: Mapping[str, Any], parsed: A1111Request,
             info_extra: Mapping[str, Any] | None = None,
             parameters_extra: Mapping[str, Any] | None = None) -> Response:
    """Run the batch and answer as A1111: images (base64 PNGs, those that finished),
    parameters (the body with the values used, plus `parameters_extra`) and info (a JSON
    string, plus `info_extra`). Interrupted -> 200 with what finished; skipped images are
    left out and listed in info's `skipped_seeds`."""
    req, started = parsed.request, time.monotonic()
    jobs = run_batch(req, parsed.count, f"a1111 {route}", parsed.ignored)
    if jobs is None:
        return Response(status=499)  # the client hung up; nobody reads this
    failed = next((job for job in jobs if job.state is JobState.FAILED), None)
    if failed is not None:
        raise failed_job_error(failed)
    done = [job for job in jobs if job.png is not None]
    skipped = [job for job in jobs if job.png is None and job.skip_requested]
    interrupted = len(done) + len(skipped) < len(jobs)  # a skip is not an interrupt
    svc = services()
    sampler = sampler_label(req.scheduler)
    count = len(jobs)
    info = {
        "prompt": req.prompt, "all_prompts": [req.prompt] * count,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * count,
        "seed": jobs[0].seed, "all_seeds": [job.seed for job in jobs],
        "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": req.width, "height": req.height, "sampler_name": sampler,
        "cfg_scale": req.guidance_scale, "steps": req.steps, "batch_size": parsed.batch_size,
        "n_iter": parsed.n_iter, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": svc.engine.model_name, "sd_model_hash": model_hash()[:10],
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": None,
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [png_parameters(job.png) for job in done],
        "styles": [], "job_timestamp": datetime.fromtimestamp(
            jobs[0].created_at).strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "interrupted": interrupted, "skipped_seeds": [job.seed for job in skipped],
        "job_ids": [job.id for job in jobs], "ignored_fields": parsed.ignored,
        **(info_extra or {}),
    }
    parameters = {**body, "prompt": req.prompt, "negative_prompt": req.negative_prompt,
                  "seed": jobs[0].seed, "steps": req.steps, "cfg_scale": req.guidance_scale,
                  "width": req.width, "height": req.height, "sampler_name": sampler,
                  "batch_size": parsed.batch_size, "n_iter": parsed.n_iter,
                  **(parameters_extra or {})}
    send = body.get("send_images", True) is not False
    if send:  # with send_images false the images wait in /jobs/<id>/image (job_ids in info)
        for job in done:
            svc.queue.mark_delivered(job)
    log.info("a1111 %s: %d/%d images, seeds %s, %.1f s%s%s", route, len(done), count,
             info["all_seeds"], time.monotonic() - started,
             f" ({len(skipped)} skipped)" if skipped else "",
             " (interrupted)" if interrupted else "")
    return jsonify({"images": [base64.b64encode(job.png).decode() for job in done] if send
                    else [], "parameters": parameters, "info": json.dumps(info)})
