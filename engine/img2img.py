"""txt2img, img2img and inpainting as views of the one loaded pipeline.

A view is a new diffusers pipeline object built from the loaded pipeline's `components`:
the UNet, VAE and text encoder are the same Python objects (no weight is copied; see
bench/img2img-memory.md), only the small per-call objects (scheduler, image processors) are
new. So a job may pick its mode and sampler without touching the shared pipeline.

Inpainting with SD v1-4 (a 4-channel UNet, not an inpainting model) is diffusers' latent
blend: after every step the latents outside the mask are replaced by the input image's
latents noised to that step. As A1111 does for such models, the finished picture is then
pasted over the input image through the (blurred) mask, so the pixels outside the mask are
the input's own, not their round trip through the VAE, and `mask_blur` softens the seam.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from params import DEFAULT_SCHEDULER, SCHEDULERS, GenerationRequest

# diffusers' pipeline class for each request mode (GenerationRequest.mode).
PIPELINE_CLASSES = {"txt2img": "StableDiffusionPipeline",
                    "img2img": "StableDiffusionImg2ImgPipeline",
                    "inpaint": "StableDiffusionInpaintPipeline"}
# The step callback may change these tensors; the inpaint ones carry the CFG batch of 2 too.
TENSOR_INPUTS = {"txt2img": ["latents", "prompt_embeds"],
                 "img2img": ["latents", "prompt_embeds"],
                 "inpaint": ["latents", "prompt_embeds", "mask", "masked_image_latents"]}


def pipeline_view(pipe, mode: str, scheduler_name: str, default_scheduler_config: dict):
    """`pipe` itself for txt2img with the model's scheduler; otherwise a new pipeline of the
    mode's class over the same modules, with its own scheduler (fresh from the config, so
    img2img's `set_begin_index` never lingers on the shared one)."""
    if mode == "txt2img" and scheduler_name in ("", DEFAULT_SCHEDULER):
        return pipe
    import diffusers

    if scheduler_name in ("", DEFAULT_SCHEDULER):
        scheduler = type(pipe.scheduler).from_config(default_scheduler_config)
    else:
        class_name, extra = SCHEDULERS[scheduler_name]
        scheduler = getattr(diffusers, class_name).from_config(default_scheduler_config,
                                                              **extra)
    components = {**pipe.components, "scheduler": scheduler}
    view = getattr(diffusers, PIPELINE_CLASSES[mode])(**components,
                                                      requires_safety_checker=False)
    view.set_progress_bar_config(disable=True)
    return view


def mode_arguments(request: GenerationRequest) -> dict[str, Any]:
    """The pipeline call's arguments that depend on the mode (the images are already
    width x height, multiples of 8, so diffusers' preprocessing does not resize them)."""
    if request.mode == "txt2img":
        return {"width": request.width, "height": request.height}
    arguments = {"image": request.init_image, "strength": request.strength}
    if request.mode == "inpaint":
        arguments.update(mask_image=request.mask_image, width=request.width,
                         height=request.height, padding_mask_crop=None)
    return arguments


def paste_over_input(image: Image.Image, request: GenerationRequest) -> Image.Image:
    """Inpainting: the generated pixels inside the mask, the input's outside, blended by the
    mask's grey levels (its blur); other modes: `image` unchanged."""
    if request.mode != "inpaint":
        return image
    return Image.composite(image, request.init_image, request.mask_image)
