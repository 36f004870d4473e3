"""What a job is: its request, state, progress and result, and the errors around it."""
from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from errors import UnsupportedRequest
from params import MAX_SEED, GenerationRequest


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the three final states."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class QueueFull(RuntimeError):
    """No room in the queue right now; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__("the queue is full")
        self.retry_after = retry_after


class NotAccepting(RuntimeError):
    """The server is not taking jobs: model loading, load failed, worker stopped, or
    shutting down (`status` 503: retry later)."""

    status = 503

    def __init__(self, reason: str, message: str, retry_after: int | None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class BackendUnsupported(NotAccepting):
    """A request this queue backend cannot run (e.g. a model switch under Redis): a client
    error (4xx), not an outage."""

    status = 400


class JobCancelled(Exception):
    """Raised inside the engine's step callback to stop a cancelled job at once."""


@dataclass
class Job:
    """One generation: its request, state, progress and result."""

    request: GenerationRequest
    seed: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0  # set from the request, corrected by the pipeline's first step
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    png: bytes | None = None
    seconds_per_step: float | None = None
    nsfw: bool = False
    saved_path: str | None = None
    client: str = ""
    worker: str | None = None  # the Redis worker that runs it (None: this process)
    attempts: int = 0  # runs started: a job whose worker died runs again, from its checkpoint
    resumed_at_step: int | None = None  # the step the latest attempt went on from
    delivered: bool = False  # the image reached a client; until then count-pruning spares it
    cancel_requested: bool = False
    rejected: bool = False  # failed because the model cannot run this request (API: 4xx)
    kind: str = "generate"  # or "switch_model": load request.model, make no image
    skip_requested: bool = False  # A1111 skip: this image stops, the rest of its batch runs
    # Jobs queued together (an A1111 or OpenAI batch) know their batch, for A1111's
    # /progress; a job queued alone is a batch of 1.
    batch_id: str = ""
    batch_index: int = 0
    batch_size: int = 1
    latents: Any = None  # the newest latents, for the preview (engine-owned tensor)
    preview_step: int = -1
    preview_png: bytes | None = None
    preview_rendering: bool = False  # a request thread is rendering a preview right now
    step_marks: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self.total_steps = self.total_steps or self.request.denoising_steps

    def to_json(self, queue_position: int | None, eta_seconds: float | None) -> dict[str, Any]:
        """The job as the JSON the API returns, given what only the queue knows."""
        return {
            "id": self.id, "state": self.state.value, "step": self.step,
            "total_steps": self.total_steps,
            "progress": round(self.step / self.total_steps, 4) if self.total_steps else 0.0,
            "eta_seconds": None if eta_seconds is None else round(eta_seconds, 1),
            "queue_position": queue_position, "seed": self.seed,
            "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "error": self.error,
            "seconds_per_step": self.seconds_per_step,
            "seconds": (round(self.finished_at - self.started_at, 2)
                        if self.finished_at and self.started_at else None),
            "nsfw": self.nsfw, "kind": self.kind, "worker": self.worker,
            "attempts": self.attempts, "resumed_at_step": self.resumed_at_step,
            "request": self.request.to_dict(),
        }


def random_seed() -> int:
    """A fresh seed in 0..2^32-1."""
    return secrets.randbelow(MAX_SEED + 1)


def explain_generation_error(exc: BaseException, request: GenerationRequest) -> str:
    """An actionable one-line message for a failed generation (never a stack trace)."""
    if isinstance(exc, UnsupportedRequest):  # the engine's own message says what to change
        return str(exc)
    text = str(exc).lower()
    # torch reports a failed allocation as RuntimeError("... can't allocate memory ...").
    if isinstance(exc, MemoryError) or "out of memory" in text or "allocate memory" in text:
        return (f"out of memory generating {request.width}x{request.height}: try a smaller "
                "size or fewer steps, or close other programs")
    return (f"generation failed ({type(exc).__name__}); try fewer steps or a smaller size, "
            "and check the server log for details")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()
