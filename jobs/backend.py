"""The two seams of the house, declared: the engine as the queue and the routes see it, and
the queue backend the routes submit to. The memory backend (jobs/queue.py, with the real
Engine in this process) and the Redis backend (jobs/redis_queue.py, with RemoteEngine
standing in for the workers' engines) implement them in full; the routes (api/) know only
these Protocols, never which backend runs.

A backend that cannot do something says so through the interface: `submit_switch` raises
`BackendUnsupported` (a 4xx), it is never a route's business to know why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from catalog.models import ModelEntry
from config import Settings
from engine.status import CheckpointSink, EngineStatus, GenerationResult, StepCallback
from jobs.job import Job
from jobs.metrics import JobMetrics
from jobs.watch import JobWatch
from params import GenerationRequest


@runtime_checkable
class EngineView(Protocol):
    """What the routes and the queue read of the engine, from any thread."""

    @property
    def status(self) -> EngineStatus:
        """The latest status snapshot (loading / ready / failed, phase, progress...)."""

    @property
    def model(self) -> ModelEntry | None:
        """The catalogue entry being served, or None before the first load."""

    @property
    def model_name(self) -> str:
        """The served model as clients name it."""

    @property
    def default_sampler(self) -> str:
        """A1111's name for the model's own scheduler."""

    @property
    def has_tiny_decoder(self) -> bool:
        """Whether TAESD is loaded (else a 'tiny' decode runs the full VAE)."""

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs."""

    def available_models(self) -> list[ModelEntry]:
        """The models a request may name here (the catalogue, or what the workers serve)."""


@runtime_checkable
class ImageEngine(EngineView, Protocol):
    """What a worker runs: the engine that loads the model and makes the images (only the
    worker's thread calls these; `preview_png` may be called from any thread)."""

    def load(self) -> None:
        """Load the model; on failure set status 'failed', never raise."""

    def generate(self, request: GenerationRequest, seed: int,
                 on_step: StepCallback | None = None, resume_from: bytes | None = None,
                 on_checkpoint: CheckpointSink | None = None) -> GenerationResult:
        """Make one image; `on_step(step, total, latents)` after every step may raise to
        stop it (`latents` is the receiver's own copy); `on_checkpoint(bytes, step)` keeps
        checkpoints and `resume_from` goes on from one, to the same bytes."""

    def switch_model(self, wanted: str) -> bool:
        """Serve the catalogue model `wanted` instead; False when it already is."""

    def preview_png(self, latents: Any) -> bytes:
        """A small PNG of the given latents."""

    def upscale(self, image: Any, name: str, size: tuple[int, int]) -> Any:
        """The PIL image upscaled by upscaler `name` to exactly `size`; UnsupportedRequest
        for a name it does not have (callers take turns with generation)."""


@dataclass(frozen=True)
class Health:
    """The /health answer: status code, body and, while loading, a Retry-After."""

    code: int
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: int | None = None


@runtime_checkable
class QueueBackend(Protocol):
    """Where a request waits and how the routes follow it, whatever runs the jobs."""

    settings: Settings
    metrics: JobMetrics  # what it counts, and /metrics' text (jobs/metrics.py)

    @property
    def engine(self) -> EngineView:
        """The engine as this backend knows it (the real one, or the workers' account)."""

    @property
    def accepting(self) -> bool:
        """False once this process is shutting down."""

    def start(self) -> "QueueBackend":
        """Begin serving (the memory backend starts its worker thread)."""

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until a model is ready to serve jobs (or the load failed)."""

    def stop(self, grace_seconds: float) -> None:
        """Refuse new jobs; let the running one finish within the grace period."""

    def submit(self, request: GenerationRequest, client: str = "") -> Job:
        """Queue a job, or raise NotAccepting / QueueFull."""

    def submit_many(self, requests: list[GenerationRequest], client: str = "",
                    kind: str = "generate") -> list[Job]:
        """Queue several jobs atomically (a batch): all are accepted, or none is."""

    def submit_switch(self, model: str, client: str = "") -> Job:
        """Queue a model switch, or raise BackendUnsupported where switching is not done."""

    def upscale(self, image: Any, name: str, size: tuple[int, int]) -> Any:
        """The PIL image upscaled by upscaler `name` to exactly `size`, now, between two
        jobs for a model upscaler; UnsupportedRequest for a name we cannot use, NotAccepting
        (BackendUnsupported where the backend cannot run model upscalers)."""

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None if unknown or no longer retained."""

    def recent(self, limit: int | None = None) -> list[Job]:
        """Known jobs, newest first."""

    def current(self) -> Job | None:
        """A running job, if any."""

    def active(self) -> Job | None:
        """The running job, else the next one waiting; None when idle."""

    def cancel(self, job_id: str, skip: bool = False) -> Job | None:
        """Cancel a job (a queued one at once, a running one at its next step)."""

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job is finished; True if it is."""

    def mark_delivered(self, job: Job) -> None:
        """Record that a client received the job's image."""

    def forget(self, job_id: str) -> Job | None:
        """Drop a finished job and its image now (a user deleted it); None if unknown or
        not finished (a queued or running job is cancelled, not forgotten)."""

    def pace_book(self) -> dict[str, dict[str, float]]:
        """The measured pace per kind of image (jobs.pace: seconds per step, fixed seconds)."""

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run, 0 while running, None once finished."""

    def preview(self, job: Job) -> bytes | None:
        """A PNG of the job's newest step (the final image once done), or None."""

    def watch(self, job: Job) -> JobWatch:
        """A way to wait for the job's next change, for its event stream (close it after)."""

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job as the JSON the API returns."""

    def stats(self) -> dict[str, Any]:
        """Queue figures for /health."""

    def health(self) -> Health:
        """The whole /health answer of this backend (never raises)."""
