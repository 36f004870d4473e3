"""Images that come with a request (img2img, inpainting, edits, extras, png-info).

Every dialect hands its image fields here: base64 text, a data URL or raw bytes become a
Pillow image, or a `ValidationError` naming the field ("not an image", a decompression bomb,
too many pixels). The helpers then fit the init image and its mask to the output size the
way A1111 does (`resize_mode`), blur or invert the mask, and turn an OpenAI mask (transparent
= repaint) into ours (white = repaint). Pillow only: no torch here.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from errors import ValidationError

# A1111's resize modes (img2img `resize_mode`); 3 ("latent upscale") resizes like 0 here.
JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = 0, 1, 2, 3
RESIZE_MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE)
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_image(field: str, data: str | bytes, max_pixels: int) -> Image.Image:
    """A base64 string, data URL or raw bytes as an upright Pillow image (EXIF rotation
    applied), or ValidationError naming `field`. The pixel count is checked from the header
    before any pixel is decoded, so a decompression bomb costs nothing."""
    raw = _bytes_of(field, data)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at 2x its limit raises) about big images; we check ourselves.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ValidationError(field, f"'{field}' is {image.width}x{image.height} = "
                                             f"{pixels} pixels; the limit is {max_pixels} "
                                             "(MAX_INPUT_PIXELS): send a smaller image")
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(field, f"'{field}' is not an image Pillow can read "
                                     "(send PNG, JPEG or WebP, base64-encoded)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError(field, f"'{field}' declares more pixels than any real image "
                                     "(a decompression bomb); send a smaller image") from None
    return ImageOps.exif_transpose(image)


def _bytes_of(field: str, data: str | bytes) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    elif isinstance(data, str):
        text = _DATA_URL.sub("", data.strip(), count=1)
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(field, f"'{field}' must be a base64-encoded image or a "
                                         "data: URL") from None
    else:
        raise ValidationError(field, f"'{field}' must be a base64-encoded image or a data: "
                                     f"URL (got {type(data).__name__})")
    if not raw:
        raise ValidationError(field, f"'{field}' is empty; send an image")
    return raw


def rgb(image: Image.Image) -> Image.Image:
    """The image as RGB; transparent areas become white rather than black."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.mode == "P" and "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """An output size for an image of `width`x`height`: the same aspect as near as the
    bounds allow, scaled down so both sides fit `max_size` (or up so the shorter one reaches
    `min_size`), each side a multiple of 8 within min..max."""
    scale = min(1.0, max_size / max(width, height))
    if min(width, height) * scale < min_size:
        scale = min_size / min(width, height)
    def side(value: int) -> int:
        return max(min_size, min(max_size, int(round(value * scale / 8)) * 8))
    return side(width), side(height)


def resize(image: Image.Image, width: int, height: int, mode: int = JUST_RESIZE,
           resample: int = Image.Resampling.LANCZOS) -> Image.Image:
    """Fit `image` to width x height as A1111's resize_mode does: 0 stretch, 1 crop the
    overflow (centre), 2 fit inside and fill the bars with the stretched edges."""
    if image.size == (width, height):
        return image
    if mode == CROP_AND_RESIZE:
        return ImageOps.fit(image, (width, height), method=resample)
    if mode == RESIZE_AND_FILL:
        inner = ImageOps.contain(image, (width, height), method=resample)
        filled = image.resize((width, height), resample=resample)
        filled.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return filled
    return image.resize((width, height), resample=resample)


def prepare_mask(mask: Image.Image, init: Image.Image, field: str, width: int, height: int,
                 mode: int = JUST_RESIZE, blur: int = 0, invert: bool = False) -> Image.Image:
    """The mask as an 'L' image of width x height (white = repaint), fitted like the init
    image; ValidationError naming `field` when its size differs from the init image's."""
    if mask.size != init.size:
        raise ValidationError(field, f"'{field}' is {mask.width}x{mask.height} but the "
                                     f"input image is {init.width}x{init.height}; send a mask "
                                     "of the same size")
    gray = mask.convert("L") if "A" not in mask.getbands() else rgb(mask).convert("L")
    if invert:
        gray = ImageOps.invert(gray)
    gray = resize(gray, width, height, mode, Image.Resampling.BILINEAR)
    if blur > 0:
        gray = gray.filter(ImageFilter.GaussianBlur(blur))
    return gray


def mask_from_alpha(mask: Image.Image) -> Image.Image:
    """OpenAI's mask convention (fully transparent pixels = repaint) as ours (white =
    repaint), as an 'L' image of the same size."""
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a == 0 else 0)


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes (no metadata)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
