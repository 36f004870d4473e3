"""The one validator every dialect calls: a native JSON body into a GenerationRequest, or a
ValidationError naming the field (models and LoRAs checked against the catalogue, the model's
and few-step LoRAs' recipes applied to the fields left out, images decoded and fitted)."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Collection, Mapping

from catalog.loras import LoraEntry, find_lora
from catalog.models import ModelEntry, find_model, list_models
from config import Settings
from errors import LoraError, ModelUnavailable, UnknownModel, ValidationError
from params import uploads
from params.fields import checked_defaults, field_value, json_object, request_fields, with_preset
from params.hires_validate import parse_hires
from params.prompt import MAX_LORA_WEIGHT, MAX_LORAS, MIN_LORA_WEIGHT, lora_tags
from params.recipes import (deep_cache_problem, lora_problem, lora_recipe, model_card,
                            recipe_fields)
from params.request import IMAGE_FIELDS, GenerationRequest


def parse_generation_request(body: Any, settings: Settings, served: ModelEntry | None = None,
                             explicit: Collection[str] | None = None) -> GenerationRequest:
    """Validate a native JSON body into a GenerationRequest, or raise ValidationError.

    Fields left out get the recipe of the model the request runs on (its `model`, else
    `served`, the one being served, else MODEL_ID's) and of its few-step LoRAs (see
    params.recipes). `explicit` names the fields the client itself set (default: those in
    `body`); a speed option that does not apply to the model's family is refused when the
    client set it, and left off when it came from a default."""
    json_object(body)
    specs = request_fields(settings)
    known = {s.name for s in specs}
    unknown = sorted(str(k) for k in body if k not in known)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field '{unknown[0]}'; allowed fields: "
                                          f"{', '.join(sorted(known))}")
    special = (*IMAGE_FIELDS, "loras", "hires")
    images = {name: body.get(name) for name in IMAGE_FIELDS}
    if images["init_image"] is not None:
        # img2img may go without a prompt (A1111 and webuiapi send "" by default).
        specs = [replace(s, required=False, default="") if s.name == "prompt" else s
                 for s in specs]
    by_name = {s.name: s for s in specs}
    text_only = {k: v for k, v in body.items() if k not in special}
    prompt = field_value(by_name["prompt"], text_only)
    loras, lora_entries = _loras(prompt, body.get("loras"), settings)
    target = _target_model(field_value(by_name["model"], text_only), settings, served)
    recipes = [(f"model '{target.name}''s card", model_card(target))] if target else []
    recipes += [(f"LoRA '{e.name}''s recipe", lora_recipe(e)) for e, _field in lora_entries]
    defaults: dict[str, Any] = {}
    for source, recipe in recipes:  # each LoRA's over the model's (few-step LoRAs win)
        left_out = {k: v for k, v in recipe_fields(recipe).items() if body.get(k) is None}
        defaults.update(checked_defaults(left_out, specs, source))
    values = with_preset(text_only, [s for s in specs if s.name not in special], defaults)
    values["loras"] = loras
    if body.get("hires") not in (None, False) and images["init_image"] is not None:
        raise ValidationError("hires", "'hires' is a txt2img option: send it without "
                                       "'init_image'")
    values["hires"] = parse_hires(body.get("hires"), values["width"], values["height"],
                                  settings)
    if target is not None:
        values["model"] = target.name if values["model"] is not None else None
        _fit_family(values, target, lora_entries, explicit if explicit is not None else
                    {name for name, value in body.items() if value is not None})
    if images["init_image"] is None:
        if images["mask_image"] is not None:
            raise ValidationError("mask_image", "'mask_image' needs 'init_image': inpainting "
                                                "repaints part of an input image")
        return GenerationRequest(**values)
    return _with_images(values, images, body, settings)


def catalogue_model(wanted: str, settings: Settings, field: str = "model") -> str:
    """The catalogue name of the model `wanted` names (title, name, file or hash), or
    ValidationError naming `field` and listing the models (or why that one cannot load)."""
    return catalogue_entry(wanted, settings, field).name


def catalogue_entry(wanted: str, settings: Settings, field: str = "model") -> ModelEntry:
    """The catalogue entry `wanted` names; ValidationError as catalogue_model's."""
    try:
        return find_model(settings, wanted)
    except (UnknownModel, ModelUnavailable) as exc:
        raise ValidationError(field, str(exc)) from None


def _target_model(wanted: str | None, settings: Settings,
                  served: ModelEntry | None) -> ModelEntry | None:
    """The model a request will run on: the one it names, else the served one, else (before
    the first load) MODEL_ID's catalogue entry."""
    if wanted is not None:
        return catalogue_entry(wanted, settings)
    if served is not None:
        return served
    first = list_models(settings)
    return first[0] if first else None


def _fit_family(values: dict[str, Any], target: ModelEntry,
                loras: list[tuple[LoraEntry, str]], explicit: Collection[str]) -> None:
    """Refuse what the model's family cannot run (a LoRA made for another family; DeepCache
    the client asked for on a UNet without a mid block), naming the reason; a DeepCache
    interval that came from a preset or the server's default is left off instead."""
    family, name = target.family, target.name
    for entry, field in loras:
        problem = lora_problem(entry, family, name)
        if problem:
            raise ValidationError(field, problem)
    if values["deep_cache"] > 1 and deep_cache_problem(family, name):
        if "deep_cache" in explicit:
            raise ValidationError("deep_cache", deep_cache_problem(family, name))
        values["deep_cache"] = 1


def _loras(prompt: str, field: Any, settings: Settings
           ) -> tuple[tuple[tuple[str, float, float], ...], list[tuple[LoraEntry, str]]]:
    """The request's LoRAs (prompt tags, then the `loras` field), each checked against
    LORA_DIR, with their catalogue entries and the field that named them; ValidationError
    naming the field."""
    _clean, found = lora_tags(prompt, "prompt")
    tagged = len(found)
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
        return (), []
    entries = []
    for index, (name, *_) in enumerate(found):
        named_in = "prompt" if index < tagged else "loras"
        try:
            entries.append((find_lora(settings, name), named_in))
        except LoraError as exc:
            raise ValidationError(named_in, str(exc)) from None
    return tuple(found), entries


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
    if request.denoising_steps < 1 and body.get("steps") is None:
        # A few-step recipe (SD-Turbo's 1 step) with a strength below 1: as SD-Turbo's model
        # card says, steps x strength must reach 1, so take the fewest steps that do.
        steps = min(math.ceil(1 / request.strength - 1e-9), settings.max_steps)
        request = replace(request, steps=max(steps, request.steps))
    if request.denoising_steps < 1:
        raise ValidationError("strength", f"steps x strength = {request.steps} x "
                                          f"{request.strength:g} runs no step; raise 'strength'"
                                          " or 'steps'")
    return request


