"""What a generation request may contain: the fields, their limits, and one validator.

Every HTTP dialect (native, jobs, AUTOMATIC1111, OpenAI) turns its body into the native
field names and calls `parse_generation_request`, so limits and messages are the same
everywhere. `request_fields` is also what the OpenAPI document is generated from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from config import Settings

MAX_SEED = 2**32 - 1
MIN_GUIDANCE, MAX_GUIDANCE = 0.0, 20.0

# A1111 sampler name -> (diffusers scheduler class, extra config). "default" keeps the
# model's own scheduler (PNDM for SD v1-4).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
DEFAULT_SCHEDULER = "default"

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
# What A1111 calls the scheduler a diffusers model ships with, for infotexts.
SAMPLER_OF_CLASS = {"PNDMScheduler": "PNDM", "DDIMScheduler": "DDIM",
                    "EulerDiscreteScheduler": "Euler", "LMSDiscreteScheduler": "LMS",
                    "EulerAncestralDiscreteScheduler": "Euler a",
                    "DPMSolverMultistepScheduler": "DPM++ 2M",
                    "UniPCMultistepScheduler": "UniPC", "HeunDiscreteScheduler": "Heun",
                    "KDPM2DiscreteScheduler": "DPM2",
                    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
                    "DEISMultistepScheduler": "DEIS", "LCMScheduler": "LCM"}
# img2img/inpainting fields: the images are decoded and fitted by `uploads` at parse time.
IMAGE_FIELDS = ("init_image", "mask_image")
DEFAULT_STRENGTH = 0.75
DEFAULT_MASK_BLUR = 4  # A1111's default


# A1111's extra-network syntax for LoRAs in a prompt: <lora:name>, <lora:name:weight> or
# <lora:name:text-encoder weight:UNet weight>.
LORA_TAG = re.compile(r"<lora:([^<>]*)>")
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -4.0, 4.0
MAX_LORAS = 8
# What a request with an LCM-LoRA gets for the fields it does not name (few steps, guidance 1:
# no CFG, so one UNet pass per step): latent-consistency's own recommendation.
LCM_DEFAULTS = {"scheduler": "LCM", "steps": 4, "guidance_scale": 1.0}


class ValidationError(ValueError):
    """A request field is missing or out of range; `field` names it for the client."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class UnsupportedRequest(ValueError):
    """A valid request that the loaded model cannot run (e.g. a LoRA made for another
    model); raised by the engine, it fails the job with this message and the HTTP layer
    answers 4xx, as for a bad field."""


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

    def schema(self) -> dict[str, Any]:
        """This field as a JSON Schema (OpenAPI 3.0 flavour)."""
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.type == "array":  # the one array field: loras
            out["items"] = {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "weight": {
                    "type": "number", "minimum": MIN_LORA_WEIGHT, "maximum": MAX_LORA_WEIGHT,
                    "default": 1.0}}}
            out["maxItems"] = MAX_LORAS
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
        *speed_fields(settings),
        *image_fields(settings),
        FieldSpec("model", "string", "A model from GET /v1/models (MODELS_DIR or MODEL_ID) to "
                  "make this image with; the server switches to it first and keeps it "
                  "loaded (one model in memory at a time). Absent = the one being served.",
                  nullable=True),
        FieldSpec("loras", "array", "LoRAs from LORA_DIR with their weights, as "
                  '[{"name": "style", "weight": 0.8}]; <lora:name:weight> in the prompt does '
                  "the same. With an LCM-LoRA, absent steps/guidance/scheduler become 4, 1 "
                  "and LCM.", nullable=True),
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


def image_count_field(name: str, settings: Settings) -> FieldSpec:
    """How many images a compatible-API request asks for (A1111 batch_size and n_iter,
    OpenAI n): 1..MAX_BATCH, one after another with consecutive seeds."""
    return FieldSpec(name, "integer", "Images to make, with consecutive seeds.", minimum=1,
                     maximum=settings.max_batch, default=1, setting="MAX_BATCH")


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: every field present and within this server's limits."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = 25
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = DEFAULT_SCHEDULER
    speed_preset: str = "quality"
    cfg_cutoff: float = 1.0
    deep_cache: int = 1
    vae_decoder: str = "full"
    # img2img / inpainting: Pillow images already fitted to width x height (RGB; mask 'L',
    # white = repaint), or None for txt2img.
    init_image: Any = field(default=None, compare=False, repr=False)
    mask_image: Any = field(default=None, compare=False, repr=False)
    strength: float = DEFAULT_STRENGTH
    resize_mode: int = 0
    mask_blur: int = DEFAULT_MASK_BLUR
    mask_invert: int = 0
    # (name, text-encoder weight, UNet weight) for each LoRA, from the prompt's <lora:...>
    # tags and the `loras` field; the prompt keeps its tags (the PNG's infotext shows them).
    loras: tuple[tuple[str, float, float], ...] = ()
    model: str | None = None  # a catalogue model to switch to first (None: the served one)

    @property
    def clip_prompt(self) -> str:
        """The prompt the text encoder sees: without its <lora:...> tags."""
        return LORA_TAG.sub("", self.prompt).strip() if "<lora:" in self.prompt else self.prompt

    @property
    def mode(self) -> str:
        """txt2img, img2img or inpaint."""
        if self.init_image is None:
            return "txt2img"
        return "img2img" if self.mask_image is None else "inpaint"

    @property
    def denoising_steps(self) -> int:
        """The steps that really run: all of them for txt2img, steps x strength for img2img
        (as diffusers and A1111 count them)."""
        if self.init_image is None:
            return self.steps
        return min(int(self.steps * self.strength), self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-ready values (an image as its size, never its pixels)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in IMAGE_FIELDS:
            image = out[name]
            out[name] = None if image is None else {"width": image.width,
                                                    "height": image.height}
        return out

    def infotext(self, seed: int, model: str, default_sampler: str = "PNDM",
                 lora_hashes: Mapping[str, str] | None = None) -> str:
        """A1111's `parameters` text: prompt (with every LoRA as a <lora:...> tag), negative
        prompt, then the settings line (with A1111's `Lora hashes`, name: sha256[:12])."""
        sampler = default_sampler if self.scheduler == DEFAULT_SCHEDULER else self.scheduler
        tagged = {name for name, *_ in lora_tags(self.prompt)[1]} if "<lora:" in self.prompt \
            else set()
        extra_tags = " ".join(f"<lora:{name}:{te:g}>" if te == unet else
                              f"<lora:{name}:{te:g}:{unet:g}>"
                              for name, te, unet in self.loras if name not in tagged)
        lines = [f"{self.prompt} {extra_tags}".strip()]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        speed = "".join(f", {label}: {value}" for label, value in (
            ("CFG cutoff", f"{self.cfg_cutoff:g}" if self.cfg_cutoff < 1 else None),
            ("DeepCache", self.deep_cache if self.deep_cache > 1 else None),
            ("VAE", "TAESD" if self.vae_decoder == "tiny" else None),
            ("Denoising strength", f"{self.strength:g}" if self.init_image is not None
             else None),
            ("Mask blur", self.mask_blur if self.mask_image is not None else None),
            ("Lora hashes", '"' + ", ".join(f"{n}: {h[:12]}" for n, h in lora_hashes.items())
             + '"' if lora_hashes else None))
            if value is not None)
        lines.append(f"Steps: {self.steps}, Sampler: {sampler}, CFG scale: "
                     f"{self.guidance_scale:g}, Seed: {seed}, Size: {self.width}x{self.height}"
                     f"{speed}, Model: {model}")
        return "\n".join(lines)


def parse_infotext(text: str) -> tuple[GenerationRequest, int]:
    """The inverse of `GenerationRequest.infotext`: (request, seed), or ValueError."""
    lines = text.split("\n")
    settings_line = lines[-1]
    values = dict(re.findall(r"(?:^|, )([A-Za-z][A-Za-z ]*): ([^,]*)", settings_line))
    negative_at = next((i for i, ln in enumerate(lines[:-1])
                        if ln.startswith("Negative prompt: ")), None)
    if negative_at is None:
        prompt, negative = "\n".join(lines[:-1]), ""
    else:
        prompt = "\n".join(lines[:negative_at])
        negative = "\n".join(lines[negative_at:-1])[len("Negative prompt: "):]
    try:
        width, height = (int(v) for v in values["Size"].split("x"))
        sampler = values.get("Sampler", DEFAULT_SCHEDULER)
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative, seed=int(values["Seed"]),
            steps=int(values["Steps"]), guidance_scale=float(values["CFG scale"]),
            width=width, height=height,
            scheduler=sampler if sampler in SCHEDULERS else DEFAULT_SCHEDULER,
            cfg_cutoff=float(values.get("CFG cutoff", 1)),
            deep_cache=int(values.get("DeepCache", 1)),
            vae_decoder="tiny" if values.get("VAE") == "TAESD" else "full",
            strength=float(values.get("Denoising strength", DEFAULT_STRENGTH)),
            mask_blur=int(values.get("Mask blur", DEFAULT_MASK_BLUR)))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not an infotext this server wrote: {exc}") from None
    return request, request.seed


def lora_tags(text: str, field: str = "prompt") -> tuple[str, list[tuple[str, float, float]]]:
    """(text without its <lora:...> tags, [(name, text-encoder weight, UNet weight)]) as A1111
    reads them: a missing weight is 1, one weight applies to both; ValidationError naming
    `field` for an empty name, a weight that is not a number or outside -4..4, a LoRA named
    twice, or a nested/unclosed tag."""
    found: list[tuple[str, float, float]] = []

    def take(match: re.Match) -> str:
        name, *weights = (part.strip() for part in match.group(1).split(":"))
        tag = match.group(0)
        if not name:
            raise ValidationError(field, f"'{tag}' names no LoRA; write <lora:name:weight>")
        if len(weights) > 2:
            raise ValidationError(field, f"'{tag}' has too many parts; write "
                                         "<lora:name:weight>")
        values = []
        for raw in weights or [""]:
            try:
                value = float(raw) if raw else 1.0
            except ValueError:
                raise ValidationError(field, f"'{tag}': the weight {raw!r} is not a number")
            if not (MIN_LORA_WEIGHT <= value <= MAX_LORA_WEIGHT):
                raise ValidationError(field, f"'{tag}': the weight must be "
                                             f"{MIN_LORA_WEIGHT:g}..{MAX_LORA_WEIGHT:g}")
            values.append(value)
        if any(name == seen[0] for seen in found):
            raise ValidationError(field, f"LoRA '{name}' is named twice; give it once, with "
                                         "the weight you want")
        found.append((name, values[0], values[-1]))
        return ""

    clean = LORA_TAG.sub(take, text)
    if "<lora:" in clean:
        raise ValidationError(field, "a '<lora:' tag is nested or not closed; write "
                                     "<lora:name:weight>")
    clean = re.sub(r"\s+,", ",", re.sub(r"\s{2,}", " ", clean))
    return clean.strip(" ,"), found


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
        value = float(value)
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
    from engine.models import ModelUnavailable, UnknownModel, find_model  # no torch

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
    from engine.loras import LoraError, find_lora  # reads file headers only, no torch

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
    import uploads  # Pillow work; params itself stays free of image code

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


def with_preset(body: Mapping, specs: list[FieldSpec]) -> dict[str, Any]:
    """Every field's checked value: what the body says, else its speed preset's value, else
    the server default. The preset's own values are checked like a client's (a preset's
    steps above MAX_STEPS is clamped, never an error the client did not cause)."""
    by_name = {spec.name: spec for spec in specs}
    preset = field_value(by_name["speed_preset"], body)
    values = {}
    for spec in specs:
        absent = spec.name not in body or body[spec.name] is None
        if absent and spec.name in PRESETS[preset]:
            value = PRESETS[preset][spec.name]
            if spec.maximum is not None and isinstance(value, (int, float)):
                value = min(value, spec.maximum)
            values[spec.name] = _check(spec, value)
        else:
            values[spec.name] = field_value(spec, body)
    return values
