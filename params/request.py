"""GenerationRequest: a validated request, every field present and within this server's limits."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field, fields, replace
from typing import Any

from params.hires import HiresFix, second_pass_schedule
from params.prompt import clip_prompt
from params.samplers import DEFAULT_SCHEDULER

MAX_SEED = 2**32 - 1
# img2img/inpainting fields: the images are decoded and fitted by `uploads` at parse time.
IMAGE_FIELDS = ("init_image", "mask_image")
DEFAULT_STRENGTH = 0.75
DEFAULT_MASK_BLUR = 4  # A1111's default


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
    eta: float | None = None  # None: the sampler's own default
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
    # txt2img only: upscale the first pass and run an img2img pass at the larger size
    hires: HiresFix | None = None

    @property
    def clip_prompt(self) -> str:
        """The prompt the text encoder sees: without its <lora:...> tags."""
        return clip_prompt(self.prompt)

    @property
    def mode(self) -> str:
        """txt2img, img2img or inpaint."""
        if self.init_image is None:
            return "txt2img"
        return "img2img" if self.mask_image is None else "inpaint"

    @property
    def denoising_steps(self) -> int:
        """The steps that really run: all of them for txt2img (plus the hires fix's second
        pass), steps x strength for img2img (as diffusers and A1111 count them)."""
        if self.init_image is None:
            return self.steps + (second_pass_schedule(self.steps, self.hires)[1]
                                 if self.hires is not None else 0)
        return min(int(self.steps * self.strength), self.steps)

    def as_run(self, tiny_decoder: bool) -> "GenerationRequest":
        """The request as an engine runs it: vae_decoder 'tiny' becomes 'full' where no tiny
        decoder (TAESD) is loaded, so the job, the page and the PNG say what really ran."""
        if self.vae_decoder == "tiny" and not tiny_decoder:
            return replace(self, vae_decoder="full")
        return self

    def to_record(self) -> dict[str, Any]:
        """The whole request as JSON-ready values, images as base64 PNG (for a journal that
        must give back the very request after a restart)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["loras"] = [list(lora) for lora in self.loras]
        out["hires"] = None if self.hires is None else self.hires.to_record()
        for name in IMAGE_FIELDS:
            if out[name] is not None:
                buffer = io.BytesIO()
                out[name].save(buffer, format="PNG")
                out[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "GenerationRequest":
        """The request `to_record` wrote (already validated when it was accepted)."""
        values = dict(record)
        values["loras"] = tuple(tuple(lora) for lora in values.get("loras") or ())
        values["hires"] = HiresFix.from_record(values.get("hires"))
        for name in IMAGE_FIELDS:
            if values.get(name) is not None:
                from PIL import Image

                image = Image.open(io.BytesIO(base64.b64decode(values[name])))
                image.load()
                values[name] = image
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-ready values (an image as its size, never its pixels)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["hires"] = None if self.hires is None else self.hires.to_record()
        for name in IMAGE_FIELDS:
            image = out[name]
            out[name] = None if image is None else {"width": image.width,
                                                    "height": image.height}
        return out
