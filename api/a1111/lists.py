"""A1111 list endpoints: what this server really has, in A1111's shapes."""
from __future__ import annotations

from api.a1111 import bp  # noqa: F401  (routes register on the dialect's blueprint)
