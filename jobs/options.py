"""OptionsStore: the AUTOMATIC1111 options that POST /sdapi/v1/options set, one per app.

A1111 clients treat options as the server's global settings (SillyTavern sets the model
there, Open WebUI posts the whole dict back), so unlike every other request this one changes
shared state; the store is the one place that state lives, behind its own lock. It is held
in memory only: a restart forgets it, as the README says. Which keys mean something, and
their validation, is the HTTP layer's business (api/a1111/options.py); the store only keeps
values and bounds their size, so a client cannot grow it without limit.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Mapping


class OptionsFull(ValueError):
    """Storing these options would pass the store's size bound."""


class OptionsStore:
    """A JSON-valued dict shared by every request thread; updates are all-or-nothing."""

    def __init__(self, initial: Mapping[str, Any], max_bytes: int):
        self._lock = threading.Lock()
        self._values: dict[str, Any] = dict(initial)
        self.max_bytes = max_bytes

    def snapshot(self) -> dict[str, Any]:
        """A copy of every stored option (values are JSON, so a shallow copy of the
        top level is enough for readers that only serialise it)."""
        with self._lock:
            return dict(self._values)

    def get(self, key: str, default: Any = None) -> Any:
        """One option's value."""
        with self._lock:
            return self._values.get(key, default)

    def update(self, values: Mapping[str, Any]) -> list[str]:
        """Store `values` (all or none); the keys whose value changed. OptionsFull when the
        stored options would pass `max_bytes` as JSON."""
        with self._lock:
            changed = [key for key, value in values.items()
                       if key not in self._values or self._values[key] != value]
            if not changed:
                return []
            merged = {**self._values, **values}
            size = len(json.dumps(merged))
            if size > self.max_bytes:
                raise OptionsFull(f"the options would take {size} bytes as JSON; this server "
                                  f"keeps at most {self.max_bytes}")
            self._values = merged
            return changed
