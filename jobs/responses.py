"""OpenResponses: how many HTTP responses are still being handed to the server, so a
shutdown never exits while a finished job's image is on its way to a client."""
from __future__ import annotations

import threading


class OpenResponses:
    """A counter of open HTTP responses that shutdown can wait on (thread-safe)."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def opened(self) -> None:
        """A request started: its response is open until `closed`."""
        with self._changed:
            self._count += 1

    def closed(self) -> None:
        """A response body was fully handed to the server."""
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    @property
    def count(self) -> int:
        """Responses open right now."""
        with self._changed:
            return self._count

    def wait_all_closed(self, timeout: float | None) -> bool:
        """Block until no response is open (True) or the timeout passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count <= 0, timeout)
