"""The native `hires` object's one validator, for every dialect (its fields are
params.fields.hires_fields)."""
from __future__ import annotations

from typing import Any, Mapping

from config import Settings
from errors import ValidationError
from params.fields import field_value, hires_fields
from params.hires import HiresFix, hires_sizes


def parse_hires(value: Any, width: int, height: int, settings: Settings) -> HiresFix | None:
    """The native `hires` object, checked for a first pass of width x height, or
    ValidationError naming hires.<field> (an output beyond MAX_HIRES_SIZE names what set it)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ValidationError("hires", "'hires' must be an object such as "
                                       '{"scale": 2, "upscaler": "Latent"}, or null')
    specs = hires_fields(settings)
    names = {spec.name.split(".", 1)[1] for spec in specs}
    unknown = sorted(str(k) for k in value if k not in names)
    if unknown:
        raise ValidationError(f"hires.{unknown[0]}", f"unknown field 'hires.{unknown[0]}'; "
                              f"allowed: {', '.join(sorted(names))}")
    body = {f"hires.{k}": v for k, v in value.items()}
    values = {spec.name.split(".", 1)[1]: field_value(spec, body) for spec in specs}
    for name in ("prompt", "negative_prompt"):
        values[name] = values[name] or None  # "" is A1111's "the same as the first pass"
    hires = HiresFix(**values)
    upscale, output = hires_sizes(width, height, hires)
    largest = max(*upscale, *output)
    if largest > settings.max_hires_size:
        field = "hires.width" if hires.width >= hires.height and hires.width else \
            "hires.height" if hires.height else "hires.scale"
        raise ValidationError(field, f"a {width}x{height} first pass upscaled to "
                              f"{upscale[0]}x{upscale[1]} is over this server's largest "
                              f"hires size, {settings.max_hires_size} (MAX_HIRES_SIZE); "
                              f"lower '{field}'")
    if min(*output) < settings.min_size:
        raise ValidationError("hires.scale", f"the hires output {output[0]}x{output[1]} is "
                              f"under MIN_SIZE ({settings.min_size})")
    return hires
