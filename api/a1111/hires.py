"""A1111's hires fix on txt2img: `enable_hr` and its `hr_*` fields -> the native `hires`
object (validated by params like every dialect's), the info A1111 answers with, and
GET /sdapi/v1/latent-upscale-modes.

Without `enable_hr` the hr_* fields and `denoising_strength` are read by nobody, as in A1111
(SillyTavern sends them with every txt2img). An absent `denoising_strength` is A1111's UI
default, 0.7; an `hr_upscaler` name is one of the latent modes or GET upscalers' names.
"""
from __future__ import annotations

from typing import Any, Mapping

from flask import jsonify

from api.a1111.blueprint import A1111_DOC, bp, txt2img_schema
from api import ApiError, services
from api.a1111.generation import invalid, resolve_sampler
from api.a1111.lists import NAMED_LIST
from api.openapi import doc
from params import GenerationRequest, request_fields
from params.hires import LATENT_UPSCALERS

# native hires.<field> <- A1111 field
HIRES_FIELDS = {"scale": "hr_scale", "width": "hr_resize_x", "height": "hr_resize_y",
                "upscaler": "hr_upscaler", "steps": "hr_second_pass_steps",
                "denoising_strength": "denoising_strength", "prompt": "hr_prompt",
                "negative_prompt": "hr_negative_prompt"}
# For error messages: the A1111 field behind each native one.
HIRES_RENAMED = {"hires": "enable_hr", "hires.scheduler": "hr_sampler_name",
                 **{f"hires.{ours}": theirs for ours, theirs in HIRES_FIELDS.items()}}
# Read here (firstphase_* are A1111's pre-1.0 fields, ignored by A1111 itself since).
HIRES_KNOWN = {"enable_hr", "hr_sampler_name", "hr_scheduler", "firstphase_width",
               "firstphase_height", *HIRES_FIELDS.values()}
SAME_SAMPLER = ("", "use same sampler")


def hires_fields(body: Any) -> dict[str, Any]:
    """{"hires": {...}} in native names when the body asks for the hires fix, else {}."""
    if not isinstance(body, Mapping) or body.get("enable_hr") not in (True, 1):
        return {}
    hires = {ours: body[theirs] for ours, theirs in HIRES_FIELDS.items()
             if body.get(theirs) is not None}
    sampler = body.get("hr_sampler_name")
    if isinstance(sampler, str) and sampler.strip().lower() not in SAME_SAMPLER:
        try:
            hires["scheduler"] = resolve_sampler(sampler, body.get("hr_scheduler"),
                                                 "hr_sampler_name")
        except ApiError as exc:  # its message names the sampler; say which field held it
            theirs = "hr_scheduler" if exc.param == "scheduler" else "hr_sampler_name"
            raise invalid(theirs, f"'{theirs}': {exc.message}") from None
    elif sampler is not None and not isinstance(sampler, str):
        hires["scheduler"] = sampler  # the validator names what is wrong with it
    return {"hires": hires}


def txt2img_hires_schema() -> dict[str, Any]:
    """The txt2img body's schema with the hires fix fields (from the native `hires` object's)."""
    schema = txt2img_schema()
    native = next(spec for spec in request_fields(services().settings) if spec.name == "hires")
    props = native.schema()["properties"]
    schema["properties"].update({
        "enable_hr": {"type": "boolean", "default": False, "description": "Hires fix: the "
                      "hr_* fields and denoising_strength apply only with it"},
        **{theirs: props[ours] for ours, theirs in HIRES_FIELDS.items()},
        "hr_sampler_name": {"type": "string", "description": "the second pass's sampler; "
                            "absent or 'Use same sampler' = sampler_name"}})
    return schema


def hires_info(request: GenerationRequest) -> dict[str, Any]:
    """A1111's info additions for a hires fix: denoising_strength and the Hires keys of
    extra_generation_params (the same values the infotext carries)."""
    hires = request.hires
    if hires is None:
        return {}
    extra: dict[str, Any] = ({"Hires resize": f"{hires.width}x{hires.height}"}
                             if hires.width or hires.height else {"Hires upscale": hires.scale})
    if hires.steps:
        extra["Hires steps"] = hires.steps
    extra["Hires upscaler"] = hires.upscaler
    return {"denoising_strength": hires.denoising_strength, "extra_generation_params": extra}


@bp.get("/latent-upscale-modes")
@doc("AUTOMATIC1111 latent upscale modes: the hr_upscaler names that interpolate the first "
     "pass's latents (the image upscalers are GET upscalers').",
     responses={200: NAMED_LIST}, errors=(401,), **A1111_DOC)
def latent_upscale_modes():
    """A1111's latent upscale modes, by name."""
    return jsonify([{"name": name} for name in LATENT_UPSCALERS])
