"""PNG encoding shared by results and previews."""
from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def encode_png(image: Image.Image, parameters: str = "") -> bytes:
    """PNG bytes, with A1111's `parameters` text chunk when given (deterministic output)."""
    info = None
    if parameters:
        info = PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
