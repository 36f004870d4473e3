"""How long an image takes here, before it is made: the measured pace per kind of image.

A kind is what changes the cost of a step or of the image around the steps: the model,
size, sampler, mode (and img2img strength), classifier-free guidance on or off, the speed
options (CFG cutoff, DeepCache, tiny decoder). The steps are not part of it: a kind's pace is
its seconds per step plus its fixed seconds per image (text encoding, decoding, PNG), so one
image of a kind tells any step count. Pure arithmetic: each backend keeps the figures in its
own place (the memory queue under its lock, the Redis backend in PACE_KEY).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from engine.status import GenerationResult
from params import PRESETS, GenerationRequest

# A faster choice is named only when the expected time is over this many seconds.
SLOW_SECONDS = 60
# Each new image's weight in its kind's figures (a moving average: the first image of a kind,
# which may warm caches, fades out; a changed machine load shows within a few images).
NEW_WEIGHT = 0.5


def pace_kind(request: GenerationRequest, model: str) -> str:
    """The kind of image `request` makes on `model`, as one string key."""
    mode = request.mode if request.mode == "txt2img" else f"{request.mode}@{request.strength:g}"
    if request.hires is not None:  # a second pass at another size: its own kind
        h = request.hires
        mode += (f"+hires@{h.scale:g}:{h.width}x{h.height}:{h.upscaler}:{h.steps}:"
                 f"{h.denoising_strength:g}")
    return "|".join((model, f"{request.width}x{request.height}", request.scheduler, mode,
                     "cfg" if request.guidance_scale > 1 else "nocfg",
                     f"cutoff={request.cfg_cutoff:g}", f"deepcache={request.deep_cache}",
                     f"vae={request.vae_decoder}"))


def measured_pace(request: GenerationRequest, result: GenerationResult,
                  seconds: float | None = None) -> dict[str, float]:
    """One image's figures: seconds per step and the fixed seconds around the steps, of
    `seconds` (the job's whole run, saving included: what a user waits) or the engine's."""
    per_step = result.seconds_per_step or 0.0
    total = result.seconds if seconds is None else seconds
    return {"seconds_per_step": round(per_step, 4),
            "fixed_seconds": round(max(0.0, total - per_step * request.steps), 4),
            "images": 1}


def merged(old: Mapping[str, float] | None, new: Mapping[str, float]) -> dict[str, float]:
    """The kind's figures after one more image (a moving average)."""
    if not old:
        return dict(new)
    return {"seconds_per_step": round(old["seconds_per_step"] * (1 - NEW_WEIGHT)
                                      + new["seconds_per_step"] * NEW_WEIGHT, 4),
            "fixed_seconds": round(old["fixed_seconds"] * (1 - NEW_WEIGHT)
                                   + new["fixed_seconds"] * NEW_WEIGHT, 4),
            "images": int(old.get("images", 1)) + 1}


def expected_seconds(figures: Mapping[str, float] | None, steps: int) -> float | None:
    """Seconds for one image of `steps` at a kind's pace; None when not measured yet."""
    if not figures:
        return None
    return round(figures["fixed_seconds"] + figures["seconds_per_step"] * steps, 2)


def estimate(request: GenerationRequest, model: str, book: Mapping[str, Mapping[str, float]],
             one_step_models: list[str] = ()) -> dict[str, Any]:
    """The expected seconds for `request` on `model` (None: not measured yet) and, over
    SLOW_SECONDS, the faster choices: the other presets, and a 1-step model if installed
    (each with its expected seconds, None when that kind was not measured yet). A preset not
    measured yet is given the plain pace for its fewer steps: about, as its cheaper
    steps (CFG cutoff, DeepCache) only make it faster."""
    seconds = expected_seconds(book.get(pace_kind(request, model)), request.steps)
    answer: dict[str, Any] = {"seconds": seconds, "measured": seconds is not None,
                              "kind": pace_kind(request, model), "faster": []}
    if seconds is None or seconds <= SLOW_SECONDS:
        return answer
    for name, preset in PRESETS.items():
        if not preset or name == request.speed_preset:
            continue
        other = replace(request, speed_preset=name, **preset)
        other_seconds = expected_seconds(book.get(pace_kind(other, model)), other.steps)
        if other_seconds is None:  # not measured: at most the plain pace for fewer steps
            base = book.get(pace_kind(request, model))
            other_seconds = expected_seconds(base, other.steps)
        if other_seconds is not None and other_seconds < seconds:
            answer["faster"].append({"preset": name, "seconds": other_seconds})
    for name in one_step_models:
        if name == model:
            continue
        one = replace(request, steps=1, model=name)
        answer["faster"].append({"model": name, "steps": 1, "seconds": expected_seconds(
            book.get(pace_kind(one, name)), 1)})
    return answer
