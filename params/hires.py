"""Hires fix (A1111's `enable_hr`): a txt2img first pass, an upscale, then an img2img pass at
the larger size. What a request may ask for (`HiresFix`), its one validator for every
dialect, and the sizes and step counts the engine and the progress count both use.

Sizes follow A1111's `calculate_target_resolution`: a scale multiplies the first pass's
size; a target width or height alone keeps the aspect; both fill the target (upscaled to
cover it, then the overflow cropped evenly). Every size is rounded down to a multiple of 8.
Steps follow A1111 too: the second pass runs exactly `steps` denoising steps (0 = the first
pass's count) whatever the denoising strength, from a schedule of `steps / strength`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping


# A1111's latent upscale modes (modules/shared.py latent_upscale_modes): the latents are
# interpolated (torch mode, antialias); no decode or encode between the passes.
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
# The image upscalers are those GET /sdapi/v1/upscalers lists (catalog.upscalers
# upscaler_names: "None" is a plain Lanczos resize, as in A1111; Pillow's; the ESRGAN files).
DEFAULT_UPSCALER = "Latent"  # A1111's default hires upscaler
DEFAULT_DENOISING = 0.7  # A1111's UI default for the hires pass
MIN_SCALE, MAX_SCALE = 1.0, 4.0  # A1111's UI slider
# A diffusers scheduler refuses more steps than the model was trained with.
MAX_SCHEDULE_STEPS = 1000


@dataclass(frozen=True)
class HiresFix:
    """A validated hires fix: how to upscale the first pass and repaint it."""

    scale: float = 2.0
    width: int = 0  # A1111 hr_resize_x: 0 = from `scale` (or from `height`, keeping aspect)
    height: int = 0  # hr_resize_y
    upscaler: str = DEFAULT_UPSCALER
    steps: int = 0  # 0 = as many as the first pass
    denoising_strength: float = DEFAULT_DENOISING
    prompt: str | None = None  # None = the first pass's
    negative_prompt: str | None = None
    scheduler: str | None = None  # None = the first pass's sampler

    @property
    def latent(self) -> bool:
        """Whether the upscale interpolates latents (else: decode, upscale, encode)."""
        return self.upscaler in LATENT_UPSCALERS

    def to_record(self) -> dict[str, Any]:
        """JSON-ready values (for the job journal and the Redis backend)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> "HiresFix | None":
        """The hires fix `to_record` wrote (None for none)."""
        return None if record is None else cls(**record)


def hires_sizes(width: int, height: int, hires: HiresFix) -> tuple[tuple[int, int],
                                                                    tuple[int, int]]:
    """((upscale width, height), (output width, height)) for a first pass of width x height:
    the upscale covers the output, which is cropped from its centre (equal unless both
    hires width and height are given with another aspect)."""
    def down8(value: float) -> int:
        return max(8, int(value) // 8 * 8)

    w, h = (down8(hires.width) if hires.width else 0), (down8(hires.height) if hires.height
                                                         else 0)
    if not w and not h:
        size = (down8(width * hires.scale), down8(height * hires.scale))
        return size, size
    if not h:
        size = (w, down8(w * height // width))
        return size, size
    if not w:
        size = (down8(h * width // height), h)
        return size, size
    if width / height < w / h:
        return (w, down8(w * height // width)), (w, h)
    return (down8(h * width // height), h), (w, h)


def second_pass_schedule(first_steps: int, hires: HiresFix) -> tuple[int, int]:
    """(schedule length, steps that run) of the second pass: diffusers' img2img runs
    int(length x strength) steps of a `length`-step schedule, so the length is the shortest
    one that runs the asked steps (A1111's count), capped at MAX_SCHEDULE_STEPS."""
    asked = hires.steps or first_steps
    strength = hires.denoising_strength
    length = min(max(asked, math.ceil(asked / strength - 1e-9)), MAX_SCHEDULE_STEPS)
    while length < MAX_SCHEDULE_STEPS and min(int(length * strength), length) < asked:
        length += 1  # a float rounding below the asked count
    return length, min(int(length * strength), length)
