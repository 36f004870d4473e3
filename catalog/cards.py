"""Model cards: the `<name>.json` a user puts beside a model (or a LoRA) to say how it is meant
to be run, read from disk on every use (editing it needs no restart). Torch-free.

    {"scheduler": "Euler trailing", "steps": 1, "guidance_scale": 0, "width": 512,
     "height": 512, "negative_prompt": false, "eta": 0.3,
     "family": "sd-turbo", "prediction_type": "v_prediction"}

A LoRA's card may also say what kind of few-step LoRA it is: `{"few_step": "tcd"}` (or
"hyper-sd", "pcm", "lcm"; `{"lcm": true}` as before; false for an ordinary LoRA).

Every key is optional. A1111's and the model cards' own words are taken too: `sampler` or
`sampler_name` for `scheduler`, `guidance` or `cfg_scale` for `guidance_scale`, `size`
(512 or "768x768") for width and height. The values are checked where they are used, like a
client's (params.cards), so a wrong one is named with its file. Other keys are ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog.families import read_json

SUFFIX = ".json"
# Card key -> the request field (or model fact) it sets.
ALIASES = {"scheduler": "scheduler", "sampler": "scheduler", "sampler_name": "scheduler",
           "steps": "steps", "guidance_scale": "guidance_scale", "guidance": "guidance_scale",
           "cfg_scale": "guidance_scale", "width": "width", "height": "height", "eta": "eta",
           "negative_prompt": "negative_prompt", "family": "family",
           "prediction_type": "prediction_type", "lcm": "lcm", "few_step": "few_step"}


def card_path(model_path: Path | str) -> Path:
    """Where the card of a model folder `<name>/` or file `<name>.<ext>` is: `<name>.json`
    beside it."""
    path = Path(model_path)
    name = path.name if path.is_dir() else path.stem
    return path.with_name(name + SUFFIX)


def read_card(model_path: Path | str | None) -> dict[str, Any]:
    """The card beside a model or LoRA, its keys in this server's words; {} when there is none
    (or it is not a JSON object)."""
    if not model_path:
        return {}
    raw = read_json(card_path(model_path))
    card = {ALIASES[k]: v for k, v in raw.items() if k in ALIASES}
    size = raw.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        card.setdefault("width", size)
        card.setdefault("height", size)
    elif isinstance(size, str) and "x" in size:
        width, _, height = size.partition("x")
        if width.strip().isdigit() and height.strip().isdigit():
            card.setdefault("width", int(width))
            card.setdefault("height", int(height))
    return card
