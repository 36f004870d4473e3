"""The sampler tables: A1111's sampler names, the diffusers scheduler each one builds (read by
the engine's scheduler views, engine/img2img.py) and A1111's name for a model's own scheduler.
Plain data, so validation, the routes and the engine share one table."""
from __future__ import annotations

from typing import Any

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

# What A1111 calls the scheduler a diffusers model ships with, for infotexts.
SAMPLER_OF_CLASS = {"PNDMScheduler": "PNDM", "DDIMScheduler": "DDIM",
                    "EulerDiscreteScheduler": "Euler", "LMSDiscreteScheduler": "LMS",
                    "EulerAncestralDiscreteScheduler": "Euler a",
                    "DPMSolverMultistepScheduler": "DPM++ 2M",
                    "UniPCMultistepScheduler": "UniPC", "HeunDiscreteScheduler": "Heun",
                    "KDPM2DiscreteScheduler": "DPM2",
                    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
                    "DEISMultistepScheduler": "DEIS", "LCMScheduler": "LCM"}
