"""What a generation request may contain and its one validator for every dialect.

Every HTTP dialect (native, jobs, AUTOMATIC1111, OpenAI) turns its body into the native field
names and calls `parse_generation_request`, so limits and messages are the same everywhere.
Torch-free; it may read the catalogue (models, LoRAs) but never the engine.

    fields     FieldSpec, the fields with this server's limits, speed presets, value checks
    request    GenerationRequest: a validated request
    validate   parse_generation_request: a native body into a request
    prompt     A1111's prompt syntax: <lora:name:weight> tags
    infotext   the one writer and parser of A1111's PNG `parameters` text
    samplers   A1111's sampler names and the diffusers scheduler each builds
    recipes    how a model (its card) and a few-step LoRA are meant to run; what a family
               cannot run
    uploads    input images: decoded safely, fitted, masks prepared
"""
from params.fields import (PRESETS, SPEED_OPTIONS, FieldSpec, field_value, image_count_field,
                           image_fields, json_object, request_fields, speed_fields,
                           with_preset)
from params.request import (DEFAULT_MASK_BLUR, DEFAULT_STRENGTH, IMAGE_FIELDS, MAX_SEED,
                            GenerationRequest)
from params.recipes import lora_recipe, model_card
from params.samplers import DEFAULT_SCHEDULER, SAMPLER_OF_CLASS, SCHEDULERS
from params.validate import catalogue_model, parse_generation_request

__all__ = ["DEFAULT_MASK_BLUR", "DEFAULT_SCHEDULER", "DEFAULT_STRENGTH", "IMAGE_FIELDS",
           "MAX_SEED", "PRESETS", "SAMPLER_OF_CLASS", "SCHEDULERS", "SPEED_OPTIONS",
           "FieldSpec", "GenerationRequest", "catalogue_model", "field_value",
           "image_count_field", "image_fields", "json_object", "lora_recipe", "model_card",
           "parse_generation_request", "request_fields", "speed_fields", "with_preset"]
