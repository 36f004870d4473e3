"""RemoteEngine: the web process's stand-in for the engine under QUEUE_BACKEND=redis.

The web loads no model; the routes still read `engine.status`, `model_name`, `model`,
`info()`, `default_sampler` and `has_tiny_decoder`. They get what the live workers
publish in their heartbeats (jobs/redis_worker.py), read at most once a second.
"""
from __future__ import annotations

import time
from typing import Any

from config import Settings
from engine.status import EngineStatus
from jobs import redis_common as rc

# Heartbeats change once a second; a route reading five attributes asks Redis once.
CACHE_SECONDS = 1.0


class RemoteEngine:
    """The engine as the live workers describe it (the first ready one speaks for all)."""

    def __init__(self, settings: Settings, connection):
        self.settings = settings
        self.connection = connection
        self._beats: list[dict[str, Any]] = []
        self._read_at = -CACHE_SECONDS

    def workers(self) -> list[dict[str, Any]]:
        """The live workers' heartbeats (cached briefly); raises redis errors."""
        # No ready worker yet: read again, so the first one is used the moment it is ready.
        stale = not any(b["state"] == "ready" for b in self._beats)
        if stale or time.monotonic() - self._read_at >= CACHE_SECONDS:
            self._beats = rc.alive_workers(self.connection)
            self._read_at = time.monotonic()
        return self._beats

    def _speaker(self) -> dict[str, Any] | None:
        """The first ready worker's heartbeat, else any live one's, else None."""
        try:
            beats = self.workers()
        except Exception:  # Redis away: /health says so; the routes see "loading"
            return None
        return next((b for b in beats if b["state"] == "ready"), beats[0] if beats else None)

    @property
    def status(self) -> EngineStatus:
        """ready when a worker with a loaded model is alive; loading otherwise."""
        beat = self._speaker()
        if beat is None:
            return EngineStatus(state="loading", phase="waiting for a worker")
        info = beat.get("info") or {}
        return EngineStatus(state=beat["state"], phase=beat["phase"], error=beat["error"],
                            progress=beat.get("progress"), dtype=info.get("dtype", ""),
                            optimizations=tuple(info.get("optimizations") or ()),
                            precision=info.get("precision"), hint=info.get("hint") or "")

    @property
    def model(self):
        """The served catalogue entry (catalog.models.ModelEntry), or None."""
        from catalog.models import ModelEntry

        beat = self._speaker()
        return ModelEntry.from_dict(beat["model"]) if beat and beat.get("model") else None

    @property
    def model_name(self) -> str:
        """The served model as clients name it (MODEL_ID until a worker says otherwise)."""
        beat = self._speaker()
        return beat["model_name"] if beat else self.settings.model_id

    @property
    def default_sampler(self) -> str:
        """A1111's name for the model's own scheduler, as a worker reported it."""
        beat = self._speaker()
        return (beat or {}).get("default_sampler") or "default"

    def served(self) -> dict[str, int]:
        """Each model the ready workers serve, with how many serve it (any may be loaded
        now: a worker serving several switches as its jobs ask)."""
        try:
            beats = self.workers()
        except Exception:  # Redis away: nothing is served
            return {}
        counts: dict[str, int] = {}
        for beat in beats:
            if beat["state"] == "ready":
                for entry in beat.get("models") or []:
                    counts[entry["name"]] = counts.get(entry["name"], 0) + 1
        return counts

    def available_models(self) -> list:
        """The catalogue entries the live workers serve (the loaded one as it is now)."""
        from catalog.models import ModelEntry

        try:
            beats = self.workers()
        except Exception:
            return []
        found: dict[str, ModelEntry] = {}
        for beat in beats:
            for entry in beat.get("models") or []:
                found.setdefault(entry["name"], ModelEntry.from_dict(entry))
        return list(found.values())

    @property
    def has_tiny_decoder(self) -> bool:
        """Whether the workers have TAESD loaded (as their heartbeat says)."""
        beat = self._speaker()
        return bool(beat and beat.get("taesd"))

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs, from a worker."""
        beat = self._speaker()
        return dict((beat or {}).get("info") or {"model": self.model_name, "device": "cpu"})
