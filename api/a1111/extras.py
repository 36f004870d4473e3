"""A1111 extras: upscaling (`extra-single-image`, `extra-batch-images`), `png-info` and `interrogate`."""
from __future__ import annotations

from api.a1111 import bp  # noqa: F401  (routes register on the dialect's blueprint)
