"""`python worker.py` (or `python app.py`) with a step gate, for tests across processes: the
same program, engine and tiny pipeline, paused after each step until the test lets it go
on, through Redis (TEST_GATE_URL). Not a fake: every step still runs; this only makes "the
worker is busy" deterministic across processes, as tests/conftest.py's StepGate does in one.

    python tests/gated_worker.py        # with the environment of `python worker.py`
    python tests/gated_worker.py app    # with the environment of `python app.py`
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REACHED, PERMITS, OPEN = "test-gate:reached", "test-gate:permits", "test-gate:open"
PERMIT_WAIT_SECONDS = 60


def gated_generate(real_generate, pause):
    """`real_generate` (Engine.generate) with `pause(step)` after every step's own callback
    (which records progress and raises when the job is cancelled): the one step-gate wrapper
    of the tests, in one process (tests/conftest.py's StepGate) or across them (below)."""
    def gated(self, request, seed, on_step=None, *more, **options):
        def paused(step, total, latents):
            if on_step is not None:
                on_step(step, total, latents)
            pause(step)

        return real_generate(self, request, seed, paused, *more, **options)

    return gated


def install_gate(url: str) -> None:
    """Wrap Engine.generate so that every step waits for a permit (unless the gate is open)."""
    import redis

    import engine as engine_module

    connection = redis.Redis.from_url(url)

    def pause(step: int) -> None:
        connection.set(REACHED, step)
        if not connection.get(OPEN):
            granted = connection.blpop([PERMITS], timeout=PERMIT_WAIT_SECONDS)
            assert granted is not None, "the test never released the gate"

    engine_module.Engine.generate = gated_generate(engine_module.Engine.generate, pause)


if __name__ == "__main__":
    install_gate(os.environ["TEST_GATE_URL"])
    if sys.argv[1:] == ["app"]:
        import app

        sys.exit(app.main())
    import worker

    sys.exit(worker.main())
