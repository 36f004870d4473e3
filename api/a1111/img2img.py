"""A1111 img2img and inpainting: `POST /sdapi/v1/img2img`.

The body maps onto the native fields: init_images[0] -> init_image, mask -> mask_image,
denoising_strength -> strength, inpainting_mask_invert -> mask_invert, mask_blur (or the
larger of mask_blur_x/mask_blur_y) -> mask_blur, resize_mode as is; the rest is txt2img's.
Without width and height the output takes the input image's own aspect, fitted to
MIN_SIZE..MAX_SIZE in multiples of 8 (A1111 would use 512x512: a client that wants that
sends it, as webuiapi does). A1111 fields we do not have (inpainting_fill, inpaint_full_res,
initial_noise_multiplier, image_cfg_scale, more than one init image, ...) are accepted,
ignored and logged, as in txt2img.
"""
from __future__ import annotations

from typing import Any, Mapping

from api import json_body, services
from api.a1111.blueprint import GENERATION_DOC, bp, txt2img_schema
from api.a1111.generation import generate, invalid, parse_a1111
from api.openapi import doc
from params import image_fields

# Native image field -> its A1111 name, so an error names what the client sent.
RENAMED_BACK = {"init_image": "init_images", "mask_image": "mask",
                "strength": "denoising_strength", "mask_invert": "inpainting_mask_invert"}
# The img2img fields this route reads (beside txt2img's).
IMG2IMG_KNOWN = {"init_images", "mask", "denoising_strength", "inpainting_mask_invert",
                 "mask_blur", "mask_blur_x", "mask_blur_y", "resize_mode",
                 "include_init_images"}
IMAGE_BODY_FIELDS = ("init_images", "mask")


def img2img_schema() -> dict[str, Any]:
    """The img2img body A1111 clients send: txt2img's plus the input image and mask."""
    schema = txt2img_schema()
    native = {s.name: s.schema() for s in image_fields(services().settings)}
    schema["required"] = ["init_images"]
    schema["description"] = (
        "Other A1111 fields (inpainting_fill, inpaint_full_res, initial_noise_multiplier, "
        "image_cfg_scale, restore_faces, scripts, ...) are accepted and ignored. Without "
        "width and height the output keeps the input image's aspect, fitted to the size "
        "limits.")
    schema["properties"] = {
        **schema["properties"],
        "prompt": {**schema["properties"]["prompt"], "description": "What to draw."},
        "init_images": {"type": "array", "minItems": 1, "items": {"type": "string"},
                        "description": "the input image (base64 or a data: URL) first; "
                                       "further images are ignored"},
        "mask": {**native["mask_image"], "description": "inpainting: a mask of the input "
                 "image's size; white = repaint, black = keep"},
        "denoising_strength": native["strength"],
        "inpainting_mask_invert": native["mask_invert"],
        "mask_blur": native["mask_blur"],
        "mask_blur_x": {**native["mask_blur"], "description": "used (the larger of x/y) "
                        "when mask_blur is absent"},
        "mask_blur_y": {**native["mask_blur"], "description": "see mask_blur_x"},
        "resize_mode": native["resize_mode"],
        "include_init_images": {"type": "boolean", "default": False, "description":
                                "echo init_images and mask in parameters (else null)"}}
    return schema


def native_image_fields(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The img2img body's image fields as native ones, plus what of them is ignored."""
    images = body.get("init_images")
    if images is None:
        raise invalid("init_images", "'init_images' is required: a list holding the input "
                      "image, base64 or a data: URL")
    if not isinstance(images, list) or not images:
        raise invalid("init_images", "'init_images' must be a list holding the input image "
                      f"(base64 or a data: URL), got {type(images).__name__}"
                      f"{' (empty)' if images == [] else ''}")
    native = {"init_image": images[0], "mask_image": body.get("mask") or None}
    for ours, theirs in (("strength", "denoising_strength"), ("resize_mode", "resize_mode"),
                         ("mask_invert", "inpainting_mask_invert")):
        value = body.get(theirs)
        # A1111 (pydantic) takes true/false for its 0/1 invert flag; so do we.
        native[ours] = int(value) if ours == "mask_invert" and isinstance(value, bool) \
            else value
    blur = body.get("mask_blur")
    if blur is None:  # A1111 sets mask_blur_x/_y from mask_blur; alone, we take the larger
        sides = [body[k] for k in ("mask_blur_x", "mask_blur_y") if body.get(k) is not None]
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in sides)
        # A value that is no number goes on as it is, for the validator to name.
        blur = (max(sides) if numbers else sides[0]) if sides else None
    native["mask_blur"] = blur
    return ({k: v for k, v in native.items() if v is not None},
            ["init_images[1:]"] if len(images) > 1 else [])


@bp.post("/img2img")
@doc("AUTOMATIC1111 img2img and inpainting: init_images[0] repainted by denoising_strength "
     "(steps x denoising_strength steps run), only where `mask` is white when a mask is sent; "
     "batch_size x n_iter images with consecutive seeds, answered like txt2img (info has "
     "denoising_strength; parameters has init_images and mask null unless "
     "include_init_images). Interrupt and skip work as in txt2img.",
     request=img2img_schema, **GENERATION_DOC)
def img2img():
    """Repaint an input image like A1111's /sdapi/v1/img2img."""
    body = json_body(image_fields=IMAGE_BODY_FIELDS)
    if not isinstance(body, dict):
        raise invalid("body", "send a JSON object with 'init_images' and 'prompt'")
    extra, more_ignored = native_image_fields(body)
    parsed = parse_a1111(body, extra, RENAMED_BACK, IMG2IMG_KNOWN)
    parsed.ignored = sorted(parsed.ignored + more_ignored)
    req = parsed.request
    info = {"denoising_strength": req.strength, "is_using_inpainting_conditioning": False,
            "extra_generation_params": {"Mask blur": req.mask_blur}
            if req.mask_image is not None else {}}
    echo = body.get("include_init_images") is True
    parameters = {"denoising_strength": req.strength,
                  "init_images": body["init_images"] if echo else None,
                  "mask": body.get("mask") if echo else None}
    return generate("img2img", body, parsed, info, parameters)
