"""Live previews of a generation's latents, cheap enough to render at every step."""
from __future__ import annotations

from PIL import Image

from engine.images import encode_png

# A1111's "Approx cheap" latent -> RGB map for SD 1.x latents (4 channels -> 3 colours):
# a fixed linear map, so a preview costs microseconds and needs no VAE decode.
LATENT_RGB_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173),
                      (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
PREVIEW_SCALE = 4  # preview pixels per latent pixel (a 512x512 image previews at 256x256)


def latent_preview_png(latents, taesd=None) -> bytes:
    """A small PNG of the first image's latents: through TAESD when given (a real picture),
    else through the fixed 4x3 linear map (microseconds, colours only)."""
    import torch

    if taesd is not None:
        from engine.decoders import decode_tiny

        # TAESD draws 8 pixels per latent; the preview shows 4. Halving the latents first
        # gives the preview's size directly at a quarter of the decode's work (it runs on a
        # request thread, beside the generation).
        with torch.inference_mode():
            small = torch.nn.functional.avg_pool2d(latents[:1].detach().float(), 2,
                                                   ceil_mode=True)
            image = decode_tiny(taesd, small)[0]
        rgb = ((image + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
        picture = Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB")
        size = (latents.shape[-1] * PREVIEW_SCALE, latents.shape[-2] * PREVIEW_SCALE)
        if picture.size != size:  # odd latent sizes round up in the pooling
            picture = picture.resize(size, Image.Resampling.BILINEAR)
        return encode_png(picture)
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32)
    lat = latents[0].detach().to(torch.float32)  # (4, h, w)
    rgb = torch.einsum("chw,cr->hwr", lat, factors)
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(rgb, "RGB")
    image = image.resize((image.width * PREVIEW_SCALE, image.height * PREVIEW_SCALE),
                         Image.Resampling.BILINEAR)
    return encode_png(image)
