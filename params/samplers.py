"""The sampler tables: A1111's sampler names, the diffusers scheduler each one builds (read by
the engine's scheduler views, engine/img2img.py) and A1111's name for a model's own scheduler.
Plain data, so validation, the routes and the engine share one table."""
from __future__ import annotations

from typing import Any

# A1111 sampler name -> (diffusers scheduler class, extra config). "default" keeps the
# model's own scheduler (PNDM for SD v1-4). Every other one is built from the model's own
# scheduler config (betas, prediction_type: v-prediction models stay v) plus its extras.
# "trailing" spacing starts at the last training timestep (t=999), which one- and few-step
# models are distilled for (SD-Turbo, SDXS, Hyper-SD; A1111 calls it "SGM Uniform").
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "DDIM trailing": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False,
                                        "timestep_spacing": "trailing"}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
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
    # Trajectory Consistency Distillation's sampler (TCD and Hyper-SD LoRAs); `eta` (the
    # paper's gamma) sets how much noise each step adds back.
    "TCD": ("TCDScheduler", {}),
}
# Samplers whose step takes `eta` (the request's `eta` field); the others ignore it.
ETA_SAMPLERS = ("DDIM", "DDIM trailing", "TCD")
DEFAULT_SCHEDULER = "default"

# What A1111 calls the scheduler a diffusers model ships with, for infotexts.
SAMPLER_OF_CLASS = {"PNDMScheduler": "PNDM", "DDIMScheduler": "DDIM",
                    "EulerDiscreteScheduler": "Euler", "LMSDiscreteScheduler": "LMS",
                    "EulerAncestralDiscreteScheduler": "Euler a",
                    "DPMSolverMultistepScheduler": "DPM++ 2M",
                    "UniPCMultistepScheduler": "UniPC", "HeunDiscreteScheduler": "Heun",
                    "KDPM2DiscreteScheduler": "DPM2",
                    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
                    "DEISMultistepScheduler": "DEIS", "LCMScheduler": "LCM",
                    "TCDScheduler": "TCD"}


def sampler_of_config(config: dict[str, Any] | None) -> str:
    """A1111's name for the scheduler a model ships with (its config), e.g. "Euler trailing"
    for SD-Turbo's; the class name when it has none here."""
    name = (config or {}).get("_class_name", "")
    sampler = SAMPLER_OF_CLASS.get(name, name or "default")
    trailing = f"{sampler} trailing"
    if (config or {}).get("timestep_spacing") == "trailing" and trailing in SCHEDULERS:
        return trailing
    return sampler
