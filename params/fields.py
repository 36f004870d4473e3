"""What a request may contain: each field's JSON type, bounds, default and description
(`FieldSpec`), which drives validation and the OpenAPI document, and the one check of a value
against its spec, with the message that names the field and its range."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from catalog.upscalers import upscaler_names
from config import Settings
from errors import ValidationError
from params.hires import (DEFAULT_DENOISING, DEFAULT_UPSCALER, LATENT_UPSCALERS, MAX_SCALE,
                          MIN_SCALE)
from params.prompt import MAX_LORA_WEIGHT, MAX_LORAS, MIN_LORA_WEIGHT
from params.request import DEFAULT_MASK_BLUR, DEFAULT_STRENGTH, MAX_SEED
from params.samplers import DEFAULT_SCHEDULER, ETA_SAMPLERS, SCHEDULERS

MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0

# Speed presets: request defaults that trade quality for time (README: Speed options has
# each option's published quality cost). A field the request names itself always wins.
# "quality" is today's defaults: the server's knobs (CFG_CUTOFF, DEEP_CACHE, VAE_DECODER,
# all off unless the operator sets them) and whatever the client asks for.
# The values were chosen on the full-size architecture (bench/results.md).
PRESETS: dict[str, dict[str, Any]] = {
    "quality": {},
    "balanced": {"scheduler": "DPM++ 2M Karras", "steps": 15, "cfg_cutoff": 0.5,
                 "deep_cache": 2},
    "fast": {"scheduler": "DPM++ 2M Karras", "steps": 8, "cfg_cutoff": 0.5, "deep_cache": 3,
             "vae_decoder": "tiny"},
}
# Request fields for the speed options, accepted in every dialect.
SPEED_OPTIONS = ("speed_preset", "cfg_cutoff", "deep_cache", "vae_decoder")


@dataclass(frozen=True)
class FieldSpec:
    """One request field: JSON type, bounds and description (drives validation and OpenAPI)."""

    name: str
    type: str  # "string" | "integer" | "number"
    description: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    multiple_of: int | None = None
    enum: tuple[str, ...] | None = None
    nullable: bool = False
    exclusive_minimum: bool = False  # the minimum itself is not allowed
    default: Any = None
    setting: str | None = None  # the knob that sets `maximum`, named in error messages
    properties: tuple["FieldSpec", ...] = ()  # an object field's own fields (hires)

    def schema(self) -> dict[str, Any]:
        """This field as a JSON Schema (OpenAPI 3.0 flavour)."""
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.type == "array":  # the one array field: loras
            out["items"] = {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "weight": {
                    "type": "number", "minimum": MIN_LORA_WEIGHT, "maximum": MAX_LORA_WEIGHT,
                    "default": 1.0}}}
            out["maxItems"] = MAX_LORAS
        if self.properties:
            out["additionalProperties"] = False
            out["properties"] = {spec.name.split(".", 1)[-1]: spec.schema()
                                 for spec in self.properties}
        for key, value in (("minimum", self.minimum), ("maximum", self.maximum),
                           ("maxLength", self.max_length), ("multipleOf", self.multiple_of),
                           ("default", self.default)):
            if value is not None:
                out[key] = value
        if self.enum:
            out["enum"] = list(self.enum)
        if self.exclusive_minimum:
            out["exclusiveMinimum"] = True
        if self.nullable:
            out["nullable"] = True
        return out


def request_fields(settings: Settings) -> list[FieldSpec]:
    """The native request fields with this server's limits."""
    size = dict(type="integer", minimum=settings.min_size, maximum=settings.max_size,
                multiple_of=8, default=settings.default_size)
    return [
        FieldSpec("prompt", "string", "What to draw.", required=True,
                  max_length=settings.max_prompt_length),
        FieldSpec("negative_prompt", "string", "What to avoid.",
                  max_length=settings.max_prompt_length, default=""),
        FieldSpec("seed", "integer", "Random seed; omit or null for a random one (always "
                  "reported back).", minimum=0, maximum=MAX_SEED, nullable=True),
        FieldSpec("steps", "integer", "Denoising steps.", minimum=1,
                  maximum=settings.max_steps, default=settings.default_steps),
        FieldSpec("guidance_scale", "number", "Classifier-free guidance (CFG) scale.",
                  minimum=MIN_GUIDANCE, maximum=MAX_GUIDANCE, default=settings.default_guidance),
        FieldSpec("width", description="Image width in pixels, a multiple of 8.", **size),
        FieldSpec("height", description="Image height in pixels, a multiple of 8.", **size),
        FieldSpec("scheduler", "string", "Sampler (A1111 name); 'default' = the model's own.",
                  enum=(DEFAULT_SCHEDULER, *SCHEDULERS), default=DEFAULT_SCHEDULER),
        FieldSpec("eta", "number", "Noise added back at each step by the samplers that take "
                  f"it ({', '.join(ETA_SAMPLERS)}: TCD's gamma); absent = the sampler's "
                  "default (0), or the LoRA's recipe.", minimum=0.0, maximum=1.0,
                  nullable=True),
        *speed_fields(settings),
        *image_fields(settings),
        FieldSpec("model", "string", "A model from GET /v1/models (MODELS_DIR or MODEL_ID) to "
                  "make this image with; the server switches to it first and keeps it "
                  "loaded (one model in memory at a time). Absent = the one being served.",
                  nullable=True),
        FieldSpec("loras", "array", "LoRAs from LORA_DIR with their weights, as "
                  '[{"name": "style", "weight": 0.8}]; <lora:name:weight> in the prompt does '
                  "the same. With a few-step LoRA (LCM, Hyper-SD, TCD, PCM), absent "
                  "steps/guidance/scheduler/eta follow its recipe (LCM: 4, 1, LCM).",
                  nullable=True),
        FieldSpec("hires", "object", "Hires fix: the first pass at width x height, an upscale, "
                  "then an img2img pass at the larger size over the same model (A1111's "
                  "enable_hr); progress counts both passes. Absent or null = none.",
                  nullable=True, properties=tuple(hires_fields(settings))),
    ]


def image_fields(settings: Settings) -> list[FieldSpec]:
    """img2img and inpainting: an input image, how much to change it, and a mask."""
    return [
        FieldSpec("init_image", "string", "img2img: the input image, base64 or a data: URL "
                  f"(PNG/JPEG/WebP, at most {settings.max_input_pixels} pixels; EXIF rotation "
                  "honoured). Without width/height the output keeps its aspect, fitted to "
                  "MAX_SIZE and rounded to multiples of 8.", nullable=True),
        FieldSpec("strength", "number", "img2img: how much to change the input image (0 = "
                  "keep, 1 = ignore it); steps x strength denoising steps run.", minimum=0.0,
                  maximum=1.0, exclusive_minimum=True, default=DEFAULT_STRENGTH),
        FieldSpec("mask_image", "string", "Inpainting: a mask of the input image's size, "
                  "base64 or a data: URL; white = repaint, black = keep.", nullable=True),
        FieldSpec("resize_mode", "integer", "How the input image and mask fit width x height "
                  "(A1111): 0 stretch, 1 crop, 2 fit and fill, 3 as 0.", minimum=0, maximum=3,
                  default=0),
        FieldSpec("mask_blur", "integer", "Inpainting: Gaussian blur radius of the mask's "
                  "edge, in pixels.", minimum=0, maximum=64, default=DEFAULT_MASK_BLUR),
        FieldSpec("mask_invert", "integer", "Inpainting: 1 = repaint the black part instead.",
                  minimum=0, maximum=1, default=0),
    ]


def speed_fields(settings: Settings) -> list[FieldSpec]:
    """The opt-in speed options, with this server's defaults (every dialect accepts them)."""
    return [
        FieldSpec("speed_preset", "string", "Defaults for the fields below and steps/scheduler: "
                  "quality (none lossy), balanced or fast; fields you send win.",
                  enum=tuple(PRESETS), default=settings.speed_preset),
        FieldSpec("cfg_cutoff", "number", "Stop classifier-free guidance after this fraction "
                  "of the steps (the UNet then runs at batch 1); 1 = off.", minimum=0.0,
                  maximum=1.0, exclusive_minimum=True, default=settings.cfg_cutoff),
        FieldSpec("deep_cache", "integer", "DeepCache interval: the whole UNet runs every N-th "
                  "step, the steps between reuse its deep features; 1 = off.", minimum=1, maximum=5,
                  default=settings.deep_cache),
        FieldSpec("vae_decoder", "string", "Final decode: full (the model's VAE) or tiny "
                  "(TAESD: faster, softer).", enum=("full", "tiny"),
                  default=settings.vae_decoder),
    ]


def hires_fields(settings: Settings) -> list[FieldSpec]:
    """The native `hires` object's fields (named hires.<field> in errors)."""
    size = dict(type="integer", minimum=0, maximum=settings.max_hires_size, default=0,
                setting="MAX_HIRES_SIZE")
    text = dict(type="string", max_length=settings.max_prompt_length, nullable=True)
    return [
        FieldSpec("hires.scale", "number", "Upscale factor of the first pass's size (when "
                  "width and height are 0).", minimum=MIN_SCALE, maximum=MAX_SCALE,
                  default=2.0),
        FieldSpec("hires.width", description="Output width instead of scale (A1111 "
                  "hr_resize_x); 0 = from height's aspect or scale.", **size),
        FieldSpec("hires.height", description="Output height instead of scale (A1111 "
                  "hr_resize_y); 0 = from width's aspect or scale.", **size),
        FieldSpec("hires.upscaler", "string", "A1111's latent modes (interpolate the latents) "
                  "or an image upscaler of GET /sdapi/v1/upscalers (decode, upscale, encode).",
                  enum=(*LATENT_UPSCALERS, *upscaler_names(settings)), default=DEFAULT_UPSCALER),
        FieldSpec("hires.steps", "integer", "Second-pass denoising steps; 0 = as many as the "
                  "first pass.", minimum=0, maximum=settings.max_steps, default=0,
                  setting="MAX_STEPS"),
        FieldSpec("hires.denoising_strength", "number", "How much the second pass changes "
                  "the upscaled image.", minimum=0.0, maximum=1.0, exclusive_minimum=True,
                  default=DEFAULT_DENOISING),
        FieldSpec("hires.prompt", description="Second-pass prompt; empty = the prompt.",
                  **text),
        FieldSpec("hires.negative_prompt", description="Second-pass negative prompt; empty = "
                  "the negative prompt.", **text),
        FieldSpec("hires.scheduler", "string", "Second-pass sampler; absent = the first "
                  "pass's.", enum=tuple(SCHEDULERS), nullable=True),
    ]


def image_count_field(name: str, settings: Settings) -> FieldSpec:
    """How many images a compatible-API request asks for (A1111 batch_size and n_iter,
    OpenAI n): 1..MAX_BATCH, one after another with consecutive seeds."""
    return FieldSpec(name, "integer", "Images to make, with consecutive seeds.", minimum=1,
                     maximum=settings.max_batch, default=1, setting="MAX_BATCH")


def _describe(spec: FieldSpec) -> str:
    if spec.enum:
        return "one of " + ", ".join(repr(e) for e in spec.enum)
    if spec.type == "string":
        return f"a non-empty string of at most {spec.max_length} characters"
    kind = "an integer" if spec.type == "integer" else "a number"
    extra = f" that is a multiple of {spec.multiple_of}" if spec.multiple_of else ""
    lo, hi = spec.minimum, spec.maximum
    fmt = (lambda v: f"{v:g}") if spec.type == "number" else (lambda v: f"{int(v)}")
    setting = f" ({spec.setting})" if spec.setting else ""
    if spec.exclusive_minimum:
        return f"{kind} greater than {fmt(lo)} and at most {fmt(hi)}{setting}{extra}"
    return f"{kind} {fmt(lo)}..{fmt(hi)}{setting}{extra}"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check(spec: FieldSpec, value: Any) -> Any:
    """Return `value` converted for `spec`, or raise ValidationError naming the field."""
    def bad() -> ValidationError:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return ValidationError(spec.name, f"'{spec.name}' must be {_describe(spec)} "
                                          f"(got {shown})")

    if value is None and spec.nullable:
        return None
    if spec.type == "string":
        if not isinstance(value, str):
            raise bad()
        value = value.strip()
        if spec.enum:
            if value not in spec.enum:
                raise bad()
            return value
        if not value.isascii() and _LONE_SURROGATE.search(value):
            # JSON may escape half of a UTF-16 pair ("\ud800"); no tokenizer, PNG text chunk
            # or file name can hold it.
            raise ValidationError(spec.name, f"'{spec.name}' must be valid Unicode text: it "
                                             r"holds an unpaired surrogate such as \ud800")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise ValidationError(spec.name, f"'{spec.name}' is {len(value)} characters; the "
                                             f"limit is {spec.max_length}")
        if spec.required and not value:
            raise ValidationError(spec.name, f"'{spec.name}' must not be empty")
        return value
    # bool is an int subclass in Python; true/false is never a number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad()
    if spec.type == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                raise bad()
            value = int(value)
    else:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float (JSON allows 10**400)
            raise bad() from None
        if value != value:  # NaN
            raise bad()
    if not spec.minimum <= value <= spec.maximum:
        raise bad()
    if spec.exclusive_minimum and value == spec.minimum:
        raise bad()
    if spec.multiple_of and value % spec.multiple_of:
        raise bad()
    return value


def json_object(body: Any) -> Mapping:
    """`body` itself if it is a JSON object, else ValidationError (for every dialect)."""
    if not isinstance(body, Mapping):
        raise ValidationError("body", "the request body must be a JSON object, "
                                      'e.g. {"prompt": "a cat"}')
    return body


def field_value(spec: FieldSpec, body: Mapping) -> Any:
    """`spec`'s field from `body`, checked and converted; its default when an optional field
    is absent or null; ValidationError naming the field otherwise."""
    if spec.name not in body or (body[spec.name] is None and not spec.required):
        if spec.required:
            raise ValidationError(spec.name, f"'{spec.name}' is required")
        return spec.default
    return _check(spec, body[spec.name])


def with_preset(body: Mapping, specs: list[FieldSpec],
                defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every field's checked value: what the body says, else `defaults` (the model's and its
    LoRAs' recipes, already checked: `checked_defaults`), else its speed preset's value, else
    the server default. The preset's own values are checked like a client's (a preset's steps
    above MAX_STEPS is clamped, never an error the client did not cause)."""
    by_name = {spec.name: spec for spec in specs}
    preset = field_value(by_name["speed_preset"], body)
    defaults = defaults or {}
    values = {}
    for spec in specs:
        absent = spec.name not in body or body[spec.name] is None
        if absent and spec.name in defaults:
            values[spec.name] = defaults[spec.name]
        elif absent and spec.name in PRESETS[preset]:
            values[spec.name] = _check(spec, _clamped(spec, PRESETS[preset][spec.name]))
        else:
            values[spec.name] = field_value(spec, body)
    return values


def checked_defaults(defaults: Mapping[str, Any], specs: list[FieldSpec],
                     source: str) -> dict[str, Any]:
    """Request defaults from a model card or a LoRA recipe, each checked like a client's value
    (clamped into this server's limits: a 768 card size on MAX_SIZE=512 becomes 512); a value
    no clamp can fix is a ValidationError naming `source` (e.g. the card's file)."""
    by_name = {spec.name: spec for spec in specs}
    checked = {}
    for name, value in defaults.items():
        spec = by_name.get(name)
        if spec is None:
            continue
        try:
            checked[name] = _check(spec, _clamped(spec, value))
        except ValidationError as exc:
            raise ValidationError(name, f"{source} sets {exc.message}; fix it there, or send "
                                        f"'{name}' yourself") from None
    return checked


def _clamped(spec: FieldSpec, value: Any) -> Any:
    """A default number moved into the spec's range (a size also onto its multiple of 8)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if spec.maximum is not None:
        value = min(value, spec.maximum)
    if spec.minimum is not None and not spec.exclusive_minimum:
        value = max(value, spec.minimum)
    if spec.multiple_of and isinstance(value, int):
        value -= value % spec.multiple_of
    return value
