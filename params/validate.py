"""The one validator every dialect calls: a native JSON body into a GenerationRequest, or a
ValidationError naming the field (models and LoRAs checked against the catalogue, images
decoded and fitted)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from catalog.loras import find_lora
from catalog.models import find_model
from config import Settings
from errors import LoraError, ModelUnavailable, UnknownModel, ValidationError
from params import uploads
from params.fields import json_object, request_fields, with_preset
from params.prompt import LCM_DEFAULTS, MAX_LORA_WEIGHT, MAX_LORAS, MIN_LORA_WEIGHT, lora_tags
from params.request import IMAGE_FIELDS, GenerationRequest


def parse_generation_request(body: Any, settings: Settings) -> GenerationRequest:
    """Validate a native JSON body into a GenerationRequest, or raise ValidationError."""
    json_object(body)
    specs = request_fields(settings)
    known = {s.name for s in specs}
    unknown = sorted(str(k) for k in body if k not in known)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field '{unknown[0]}'; allowed fields: "
                                          f"{', '.join(sorted(known))}")
    special = (*IMAGE_FIELDS, "loras")
    images = {name: body.get(name) for name in IMAGE_FIELDS}
    if images["init_image"] is not None:
        # img2img may go without a prompt (A1111 and webuiapi send "" by default).
        specs = [replace(s, required=False, default="") if s.name == "prompt" else s
                 for s in specs]
    text_only = {k: v for k, v in body.items() if k not in special}
    values = with_preset(text_only, [s for s in specs if s.name not in special])
    values["loras"], lcm = _loras(values["prompt"], body.get("loras"), settings)
    if values["model"] is not None:
        values["model"] = catalogue_model(values["model"], settings)
    if lcm:
        values.update({name: value for name, value in LCM_DEFAULTS.items()
                       if body.get(name) is None})
        values["steps"] = min(values["steps"], settings.max_steps)
    if images["init_image"] is None:
        if images["mask_image"] is not None:
            raise ValidationError("mask_image", "'mask_image' needs 'init_image': inpainting "
                                                "repaints part of an input image")
        return GenerationRequest(**values)
    return _with_images(values, images, body, settings)


def catalogue_model(wanted: str, settings: Settings, field: str = "model") -> str:
    """The catalogue name of the model `wanted` names (title, name, file or hash), or
    ValidationError naming `field` and listing the models (or why that one cannot load)."""
    try:
        return find_model(settings, wanted).name
    except (UnknownModel, ModelUnavailable) as exc:
        raise ValidationError(field, str(exc)) from None


def _loras(prompt: str, field: Any, settings: Settings
           ) -> tuple[tuple[tuple[str, float, float], ...], bool]:
    """The request's LoRAs (prompt tags, then the `loras` field), each checked against
    LORA_DIR, and whether one of them is an LCM-LoRA; ValidationError naming the field."""
    _clean, found = lora_tags(prompt, "prompt")
    if field is not None:
        if not isinstance(field, list) or len(field) > MAX_LORAS:
            raise ValidationError("loras", f"'loras' must be a list of at most {MAX_LORAS} "
                                           '{"name": ..., "weight": ...} objects')
        for item in field:
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) \
                    or set(item) - {"name", "weight"}:
                raise ValidationError("loras", "each item of 'loras' must be "
                                               '{"name": <LoRA name>, "weight": <number>}')
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                    MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT):
                raise ValidationError("loras", f"the weight of LoRA '{item['name']}' must be "
                                               f"a number {MIN_LORA_WEIGHT:g}..{MAX_LORA_WEIGHT:g}")
            if any(item["name"].strip() == seen[0] for seen in found):
                raise ValidationError("loras", f"LoRA '{item['name']}' is named twice; give "
                                               "it once, with the weight you want")
            found.append((item["name"].strip(), float(weight), float(weight)))
    if len(found) > MAX_LORAS:
        raise ValidationError("loras", f"{len(found)} LoRAs; at most {MAX_LORAS} at once")
    if not found:
        return (), False
    lcm = False
    for name, *_ in found:
        try:
            lcm |= find_lora(settings, name).lcm
        except LoraError as exc:
            raise ValidationError("loras" if field and any(
                i.get("name") == name for i in field) else "prompt", str(exc)) from None
    return tuple(found), lcm


def _with_images(values: dict[str, Any], images: dict[str, Any], body: Mapping,
                 settings: Settings) -> GenerationRequest:
    """The request with its input image (and mask) decoded and fitted to the output size."""
    init = uploads.decode_image("init_image", images["init_image"], settings.max_input_pixels)
    mask = None
    if images["mask_image"] is not None:
        mask = uploads.decode_image("mask_image", images["mask_image"],
                                    settings.max_input_pixels)
    if body.get("width") is None and body.get("height") is None:
        values["width"], values["height"] = uploads.fit_size(
            init.width, init.height, settings.min_size, settings.max_size)
    width, height, mode = values["width"], values["height"], values["resize_mode"]
    if mask is not None:
        mask = uploads.prepare_mask(mask, init, "mask_image", width, height, mode,
                                    values["mask_blur"], bool(values["mask_invert"]))
    values["init_image"] = uploads.resize(uploads.rgb(init), width, height, mode)
    values["mask_image"] = mask
    request = GenerationRequest(**values)
    if request.denoising_steps < 1:
        raise ValidationError("strength", f"steps x strength = {request.steps} x "
                                          f"{request.strength:g} runs no step; raise 'strength'"
                                          " or 'steps'")
    return request


