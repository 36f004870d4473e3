"""EngineTurn: whose turn it is to use the engine in this process, the job worker's or a
request's that runs something short on the engine itself (an extras upscale).

The worker takes a turn per job; a request's turn waits for the running job to finish and
goes before the next one (requests waiting here are served first, so a busy queue cannot
starve them, and one at a time). The next job may already show as running while it waits
for such a turn: the worker takes it off the queue, then its turn. The model load at start
is no turn: an upscale needs no SD model, so extras answer while it loads. Nothing else ever runs beside a generation: two torch
workloads on a small CPU only slow each other, and the engine is not thread-safe.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class EngineTurn:
    """One turn at a time on the engine; waiting requests go before the worker's next job."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy = False
        self._requests_waiting = 0

    @contextmanager
    def job(self) -> Iterator[None]:
        """The worker's turn for one job (waits while requests wait or run)."""
        with self._changed:
            while self._busy or self._requests_waiting:
                self._changed.wait()
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def request(self) -> Iterator[None]:
        """A request's turn: after the running job, before the next."""
        with self._changed:
            self._requests_waiting += 1
            try:
                while self._busy:
                    self._changed.wait()
            finally:
                self._requests_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()
