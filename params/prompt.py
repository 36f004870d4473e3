"""A1111's prompt syntax: `<lora:name:weight>` tags, read and removed (the text encoder never
sees them). What a few-step LoRA changes in a request's defaults is params.recipes'."""
from __future__ import annotations

import re

from errors import ValidationError

# A1111's extra-network syntax for LoRAs in a prompt: <lora:name>, <lora:name:weight> or
# <lora:name:text-encoder weight:UNet weight>.
LORA_TAG = re.compile(r"<lora:([^<>]*)>")
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -4.0, 4.0
MAX_LORAS = 8


def clip_prompt(prompt: str) -> str:
    """The prompt the text encoder sees: without its <lora:...> tags."""
    return LORA_TAG.sub("", prompt).strip() if "<lora:" in prompt else prompt


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
