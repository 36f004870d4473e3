"""A1111 img2img and inpainting: `POST /sdapi/v1/img2img`."""
from __future__ import annotations

from api.a1111 import bp  # noqa: F401  (routes register on the dialect's blueprint)
