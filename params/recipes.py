"""Recipes: the settings a model or a few-step LoRA is meant to run with, and what a model's
family cannot run. Torch-free data and rules: the one validator applies them at parse time,
the engine checks the refusals again on the model it really runs.

A request gets, for each field it leaves out, the first of: its few-step LoRA's recipe, its
model's card (`<name>.json` beside the model, over the family's built-in one), its speed
preset, the server's default. A field the client sends always wins.
"""
from __future__ import annotations

from typing import Any, Mapping

from catalog.families import TEXT_ENCODER_OF_WIDTH, ModelFamily
from catalog.loras import FewStep, LoraEntry
from catalog.models import ModelEntry

# The request fields a card or recipe may set.
RECIPE_FIELDS = ("scheduler", "steps", "guidance_scale", "width", "height", "eta")
# One step, no classifier-free guidance, Euler from t=999: what SD-Turbo's and SDXS's model
# cards say (stabilityai/sd-turbo; IDKiro/sdxs-512-0.9 uses timesteps=[999]).
ONE_STEP = {"scheduler": "Euler trailing", "steps": 1, "guidance_scale": 0.0}
BUILT_IN_CARDS: dict[str, dict[str, Any]] = {"sd-turbo": ONE_STEP, "sdxs": ONE_STEP}
# latent-consistency/lcm-lora-sdv1-5: few steps, guidance 1 (no CFG: one UNet pass per step).
LCM_DEFAULTS = {"scheduler": "LCM", "steps": 4, "guidance_scale": 1.0}


def few_step_recipe(few: FewStep) -> dict[str, Any]:
    """What a few-step LoRA's authors run it with (their model cards):
    LCM-LoRA: LCM, 4 steps, guidance 1. TCD-SD15 (h1t): TCD, 4 steps, guidance 0, eta 0.3.
    Hyper-SD15 (ByteDance): 1-step TCD with eta 1; N steps DDIM trailing, guidance 0; the
    -CFG ones guidance 5 (5-8) with a negative prompt. PCM (wangfuyun): TCD, its N steps,
    guidance 0 (smallcfg) or 7.5 (normalcfg); the LCM-like one LCM, 4 steps, guidance 0."""
    if few.kind == "lcm" or (few.kind == "pcm" and few.variant == "lcmlike"):
        return {**LCM_DEFAULTS, **({"guidance_scale": 0.0} if few.kind == "pcm" else {})}
    if few.kind == "tcd":
        return {"scheduler": "TCD", "steps": few.steps or 4, "guidance_scale": 0.0, "eta": 0.3}
    if few.kind == "hyper-sd":
        if few.steps == 1:
            return {"scheduler": "TCD", "steps": 1, "guidance_scale": 0.0, "eta": 1.0}
        return {"scheduler": "DDIM trailing", "steps": few.steps or 4,
                "guidance_scale": 5.0 if few.cfg else 0.0}
    if few.kind == "pcm":
        return {"scheduler": "TCD", "steps": few.steps or 4,
                "guidance_scale": 7.5 if few.cfg else 0.0}
    return {}


def lora_recipe(entry: LoraEntry) -> dict[str, Any]:
    """A LoRA's request defaults: its kind's recipe, with what its own card sets over it."""
    card = {k: v for k, v in entry.card.items() if k in RECIPE_FIELDS}
    return {**(few_step_recipe(entry.few_step) if entry.few_step else {}), **card}


def model_card(entry: ModelEntry | None) -> dict[str, Any]:
    """How a model is meant to run: its family's built-in card (one step for SD-Turbo and SDXS;
    the native size for every family but SD 1.x, whose size is DEFAULT_SIZE), then its own
    card's values over it. `negative_prompt` says whether a negative prompt does anything
    (not without classifier-free guidance: guidance at or below 1)."""
    if entry is None:
        return {}
    family = entry.family
    card: dict[str, Any] = dict(BUILT_IN_CARDS.get(family.id, {}))
    if family.id not in ("sd1", "unknown") and family.native_size:
        card["width"] = card["height"] = family.native_size
    own = entry.card
    card.update({k: v for k, v in own.items() if k in (*RECIPE_FIELDS, "negative_prompt")})
    if "negative_prompt" not in card:
        guidance = card.get("guidance_scale")
        card["negative_prompt"] = not (isinstance(guidance, (int, float)) and guidance <= 1)
    return card


def deep_cache_problem(family: ModelFamily, model: str) -> str:
    """Why DeepCache cannot run on this model, or ""."""
    if family.mid_block:
        return ""
    return (f"deep_cache is not available for model '{model}' ({family.label}): its pruned "
            "UNet has no mid block, the deep features DeepCache reuses; send deep_cache 1")


def lora_problem(lora: LoraEntry, family: ModelFamily, model: str) -> str:
    """Why this LoRA does not fit the model's family, or "" (when nothing tells, the engine's
    load says whether it fits)."""
    made, ours = lora.cross_attention_dim, family.cross_attention_dim
    if made and ours and made != ours:
        return (f"LoRA '{lora.name}' was made for {_width(made)} text embeddings; model "
                f"'{model}' ({family.label}) has {_width(ours)}: a LoRA fits only the family "
                "it was trained on")
    if lora.mid_block and not family.mid_block:
        return (f"LoRA '{lora.name}' changes a UNet mid block; model '{model}' "
                f"({family.label}) has a pruned UNet without one: it would apply only in part")
    return ""


def recipe_fields(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields a card or recipe sets (a card's other facts left out)."""
    return {k: v for k, v in recipe.items() if k in RECIPE_FIELDS}


def _width(width: int) -> str:
    family = TEXT_ENCODER_OF_WIDTH.get(width)
    return f"{width}-wide ({family})" if family else f"{width}-wide"
