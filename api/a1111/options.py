"""A1111 options: GET the settings clients read, POST any subset of them.

Three kinds of key:
- supported (SPEED_OPTIONS): validated like the request fields, stored, and used as the
  server-wide default of later A1111 generations that do not name them
  (`with_speed_defaults`);
- the model (`sd_model_checkpoint`, and `sd_checkpoint_hash` which follows it): computed from
  the served model, never stored; naming the served model is a no-op, naming another from
  the catalogue queues a switch and answers once it is loaded (`switch_to`), naming none is
  a 422 listing the models (`check_checkpoint`);
- everything else: kept and echoed by GET (so a client's GET-then-POST round trip is
  lossless) but with no effect here, which the POST's answer and the log both say.
The store is in memory (jobs.options.OptionsStore): a restart forgets what was set.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from flask import jsonify

from api import ApiError, failed_job_error, json_body, services, submit_switch, wait_for
from api.a1111.blueprint import A1111_DOC, bp
from api.a1111.generation import INVALID, model_hash, model_title
from api.a1111.speed_options import store
from api.openapi import doc
from jobs import JobState
from jobs.options import OptionsFull
from errors import ValidationError
from params import field_value, speed_fields

log = logging.getLogger(__name__)

MODEL_KEYS = ("sd_model_checkpoint", "sd_checkpoint_hash")
OPTIONS_RESPONSE = {"type": "object", "additionalProperties": True, "properties": {
    "sd_model_checkpoint": {"type": "string", "description": "the served model's title, as "
                            "in GET /sdapi/v1/sd-models"},
    "sd_checkpoint_hash": {"type": "string", "description": "sha256 of the model's id"},
    "speed_preset": {"type": "string"}, "cfg_cutoff": {"type": "number"},
    "deep_cache": {"type": "integer"}, "vae_decoder": {"type": "string"}}}
SET_RESPONSE = {"type": "object", "properties": {
    "applied": {"type": "array", "items": {"type": "string"},
                "description": "keys stored that change later A1111 generations"},
    "no_effect": {"type": "array", "items": {"type": "string"},
                  "description": "keys kept and echoed by GET, with no effect here"}}}


def model_names() -> set[str]:
    """Every name a client may use for the served model: title, id, title without the hash,
    short and full hash, the source path (A1111 accepts all of these as checkpoint aliases)."""
    settings, engine = services().settings, services().engine
    title, sha = model_title(), model_hash()
    names = {title, engine.model_name, title.rsplit(" [", 1)[0], sha, sha[:10]}
    if engine.model is not None:
        names |= {engine.model.name, engine.model.filename, engine.model.source}
    else:
        names.add(str(settings.model_source))
    return names


def check_checkpoint(name: Any) -> str | None:
    """None when `name` is the served model, else the catalogue name to switch to; 422
    listing the models when it names none."""
    from params import catalogue_model

    if not isinstance(name, str):
        raise _invalid("sd_model_checkpoint", "'sd_model_checkpoint' must be a model title "
                       "from GET /sdapi/v1/sd-models")
    wanted = name.strip()
    if wanted in model_names() or wanted.removesuffix(".safetensors") in model_names():
        return None
    from errors import UnknownModel

    try:
        return catalogue_model(wanted, services().settings, "sd_model_checkpoint")
    except ValidationError as exc:
        if isinstance(exc.__context__, UnknownModel):  # list them as A1111 clients show them
            titles = ", ".join(model_title(e) for e in services().engine.available_models())
            raise _invalid("sd_model_checkpoint", f"model {wanted!r} is not here; the "
                           f"models are: {titles} (GET /sdapi/v1/sd-models)") from None
        raise _invalid("sd_model_checkpoint", exc.message) from None


def switch_to(model: str) -> None:
    """Queue a switch to `model` and wait for it, as A1111 answers only once the checkpoint
    is loaded; a failed load (the old model serves again) is a 4xx saying why."""
    job = submit_switch(model)
    if not wait_for(job):
        return
    if job.state is not JobState.SUCCEEDED:
        raise failed_job_error(job)


def _invalid(key: str, message: str) -> ApiError:
    return ApiError(INVALID, "invalid_option", message, param=key)


def _finite(key: str, value: Any) -> None:
    """422 for NaN/Infinity anywhere in a value: GET must give valid JSON back."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise _invalid(key, f"option '{key}' holds a non-finite number; send a finite "
                           "one")
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def validate(body: Any) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """An options body -> (supported values, other values, the model to switch to or None),
    or 422 naming the key."""
    if not isinstance(body, dict):
        raise _invalid("body", 'the body must be a JSON object of options, e.g. '
                       '{"sd_model_checkpoint": "..."} (GET /sdapi/v1/options lists them)')
    switch = None
    if "sd_model_checkpoint" in body:  # 422 before anything is stored
        switch = check_checkpoint(body["sd_model_checkpoint"])
    specs = {spec.name: spec for spec in speed_fields(services().settings)}
    supported, others = {}, {}
    for key, value in body.items():
        if key in specs:
            if value is None:
                raise _invalid(key, f"option '{key}' cannot be null")
            try:
                supported[key] = field_value(specs[key], {key: value})
            except ValidationError as exc:
                raise _invalid(key, f"option {exc.message}") from None
        elif key not in MODEL_KEYS:
            _finite(key, value)
            others[key] = value
    return supported, others, switch


@bp.get("/options")
@doc("AUTOMATIC1111 options: the served checkpoint, the speed options (speed_preset, "
     "cfg_cutoff, deep_cache, vae_decoder: the defaults of A1111 generations), the keys "
     "clients read, and whatever was POSTed (kept in memory, no effect).",
     responses={200: OPTIONS_RESPONSE}, errors=(401,), **A1111_DOC)
def options():
    """Every stored option, with sd_model_checkpoint naming the served model."""
    return jsonify({"sd_model_checkpoint": model_title(), "sd_checkpoint_hash": model_hash(),
                    **store().snapshot()})


@bp.post("/options")
@doc("AUTOMATIC1111 set options: any subset (e.g. the whole GET dict back). The speed "
     "options are validated (422 naming the key) and become the defaults of later A1111 "
     "generations; sd_model_checkpoint naming the served model is a no-op, another model "
     "from /sdapi/v1/sd-models is queued as a switch and answered once loaded (an unknown "
     "one is a 422 listing the models); other keys are kept and shown by GET but have no effect. In memory only: a "
     "restart forgets them.", request={"type": "object", "additionalProperties": True},
     responses={200: SET_RESPONSE}, errors=(400, 401, 413, 415, 422), **A1111_DOC)
def set_options():
    """Validate every key, then store them all (or none)."""
    body = json_body()
    supported, others, switch = validate(body)
    if switch is not None:
        switch_to(switch)
    try:
        changed = store().update({**supported, **others})
    except OptionsFull as exc:
        raise ApiError(413, "too_many_options", f"{exc}; send fewer or smaller options")
    if changed:
        effective = [key for key in changed if key in supported]
        idle = [key for key in changed if key in others]
        log.info("a1111 options set: %s%s", ", ".join(f"{k}={supported[k]!r}"
                                                     for k in effective) or "nothing in effect",
                 f"; no effect here: {', '.join(idle)}" if idle else "")
    return jsonify({"applied": sorted(supported), "no_effect": sorted(others)})
