"""Latents -> pixels: the model's own VAE (full), or TAESD (tiny), which also draws previews.

TAESD (`AutoencoderTiny`, madebyollin/taesd, about 10 MB) decodes SD 1.x latents in a
fraction of the full VAE's time and memory, at a visible quality cost (softer detail), so
it is opt-in for final images; as a live preview it beats the 4x3 linear map by far.
"""
from __future__ import annotations

import logging

from PIL import Image

from errors import ModelLoadError

log = logging.getLogger(__name__)


def load_tiny_decoder(source: str, required: bool):
    """The TAESD decoder from `source` (Hub id or folder), or None when it cannot be had.

    Only for previews (not `required`), it is read from a folder or the local Hub cache and
    never fetched: offline, a Hub lookup retried for ~30 s and held up every start (measured
    in the benchmark). With `required` (VAE_DECODER=tiny) it is downloaded when missing, and
    a failure stops the load with advice.
    """
    if not source:
        if required:
            raise ModelLoadError("VAE_DECODER=tiny needs TAESD_MODEL (e.g. madebyollin/taesd, "
                                 "or a local folder holding it)")
        return None
    import torch
    from diffusers import AutoencoderTiny

    try:
        taesd = AutoencoderTiny.from_pretrained(source, dtype=torch.float32,
                                                local_files_only=not required)
    except Exception as exc:  # any failure: previews fall back to the linear map
        if required:
            raise ModelLoadError(
                f"VAE_DECODER=tiny but TAESD_MODEL={source!r} could not be loaded "
                f"({type(exc).__name__}): download it once with network access (`hf download "
                f"{source}`), point TAESD_MODEL at a local folder, or set VAE_DECODER=full"
                ) from exc
        log.info("TAESD_MODEL=%r is not on this machine (%s): previews use the linear latent "
                 "map; for picture previews fetch it once (`hf download %s`, about 10 MB)",
                 source, type(exc).__name__, source)
        return None
    taesd.eval().requires_grad_(False)
    return taesd


def decode_full(vae, latents, generator=None):
    """Latents -> image tensor in [-1, 1] through the model's VAE, exactly as diffusers'
    StableDiffusionPipeline does it (the VAE may run in float32 beside a bf16 UNet)."""
    latents = latents.to(vae.dtype)
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False,
                      generator=generator)[0]


def decode_tiny(taesd, latents):
    """Latents -> image tensor in [-1, 1] through TAESD (it takes SD latents unscaled)."""
    return taesd.decode(latents.to(taesd.dtype) / taesd.config.scaling_factor,
                        return_dict=False)[0]


def decode_image(pipe, latents, taesd=None, generator=None) -> tuple[Image.Image, bool]:
    """Latents -> PIL image and the NSFW verdict, through TAESD when given, else the
    pipeline's VAE; the same calls in the same order as StableDiffusionPipeline's own tail,
    so the default output is byte-identical to diffusers'."""
    if taesd is not None:
        image = decode_tiny(taesd, latents)
    else:
        image = decode_full(pipe.vae, latents, generator)
    image, flagged = pipe.run_safety_checker(image, "cpu", pipe.text_encoder.dtype)
    denormalize = [True] * image.shape[0] if flagged is None else [not f for f in flagged]
    image = pipe.image_processor.postprocess(image, output_type="pil",
                                             do_denormalize=denormalize)[0]
    nsfw = bool(flagged and flagged[0])
    if nsfw:  # the checker already blacked the pixels; make that unmistakable
        image = Image.new("RGB", image.size, (0, 0, 0))
    return image, nsfw
