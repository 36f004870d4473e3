"""Which model's queue a request goes to under Redis: each worker serves its own models
(MODEL_ID, or WORKER_MODELS), and a request goes to the queue of the model it names, or of
the default one; a model no live worker serves is a 400 listing the served ones."""
from __future__ import annotations

from catalog.models import list_models
from config import Settings
from jobs import redis_common as rc
from jobs.job import BackendUnsupported
from jobs.redis_engine import RemoteEngine


class ModelRouter:
    """Chooses the model (hence the RQ queue) of each request."""

    def __init__(self, settings: Settings, connection, engine: RemoteEngine):
        self.settings = settings
        self.connection = connection
        self.engine = engine

    def target(self, wanted: str | None) -> str:
        """The model a request runs on: the one it names (a catalogue name), else the
        default; BackendUnsupported naming the served ones when no live worker serves it."""
        served = self.engine.served()
        model = wanted or self.default(served)
        if model not in served:
            names = ", ".join(sorted(served)) or "none yet (GET /health lists the workers)"
            raise BackendUnsupported("model_not_served", f"no live worker serves model "
                                     f"{model!r}; the served models are: {names} (start "
                                     "`python worker.py` with MODEL_ID or WORKER_MODELS "
                                     "naming it)", None)
        return model

    def default(self, served: dict[str, int]) -> str:
        """A request without a model runs on: the one A1111's options chose, else MODEL_ID's
        (as this process's catalogue names it), else the first served one."""
        chosen = self.connection.get(rc.DEFAULT_MODEL_KEY)
        if chosen and chosen.decode() in served:
            return chosen.decode()
        own = list_models(self.settings)[0].name
        if own in served or not served:
            return own
        return sorted(served)[0]

    def choose(self, model: str) -> None:
        """Make `model` the default for requests that name none (A1111's options switch,
        shared by every web process); BackendUnsupported when nobody serves it."""
        self.connection.set(rc.DEFAULT_MODEL_KEY, self.target(model))
