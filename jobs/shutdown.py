"""Shutdown off the signal handler's thread, so the server keeps answering (503s, /health)
while the running job finishes and the last images reach their clients."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from jobs.queue import JobQueue
    from jobs.responses import OpenResponses

# How long shutdown waits for open responses once the queue has stopped.
RESPONSE_TIMEOUT_SECONDS = 30.0


def drain_in_background(queue: "JobQueue", responses: "OpenResponses",
                        grace_seconds: float, then: Callable[[], None],
                        response_timeout: float = RESPONSE_TIMEOUT_SECONDS) -> threading.Thread:
    """In a new thread: stop the queue (see `JobQueue.stop`), wait until every open HTTP
    response has been handed to the server, then call `then` (e.g. exit the process)."""
    def drain() -> None:
        queue.stop(grace_seconds)
        responses.wait_all_closed(response_timeout)
        then()

    thread = threading.Thread(target=drain, name="shutdown", daemon=True)
    thread.start()
    return thread
