"""What the engine reports, torch-free: its status for /health, a finished image, and the
step callback's shape. The job queue reads these (through jobs.backend's Protocols) without
importing the runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

StepCallback = Callable[[int, int, Any], None]  # (step, total, latents tensor)
# (checkpoint bytes, the user's step it was taken after): keep it to resume the job from
CheckpointSink = Callable[[bytes, int], None]


@dataclass
class GenerationResult:
    """One finished image and how it was made."""

    png: bytes
    seed: int
    width: int
    height: int
    steps: int
    seconds: float
    seconds_per_step: float
    nsfw: bool = False
    parameters: str = ""
    decode_seconds: float = 0.0


@dataclass(frozen=True)
class EngineStatus:
    """What /health reports about the model (immutable: the engine replaces it whole)."""

    state: str = "loading"  # loading | ready | failed
    phase: str = "starting"  # what the load is doing now, for /health and the page
    progress: dict | None = None  # bytes_done/bytes_total of a long phase
    error: str = ""
    load_seconds: float | None = None
    dtype: str = ""
    optimizations: tuple[str, ...] = ()
    torch_threads: int = 0
    precision: dict | None = None  # the probe's figures and the choice made
    hint: str = ""  # advice when the probe found a faster precision than the one in use
    switching: dict | None = None  # {"from", "to"} while a model switch runs
