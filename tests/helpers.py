"""Helpers shared by the test files: waiting for something that fails the test at its
deadline, and TCP ports (a free one; whether one accepts connections)."""
from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

T = TypeVar("T")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})  # a job's states once it ended


def poll_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02,
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    At the deadline the test fails with an AssertionError naming `what` and the last value
    seen: a wait never carries on silently. Exceptions of the `ignoring` types (say OSError
    while a server is still starting) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            value, last = None, exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last seen: {repr(last)[:500]})")
        time.sleep(interval)


def wait_state(client, job_id: str, states, timeout: float = 30) -> dict:
    """Poll GET /jobs/<id> (a Flask test client) until the job's state is one of `states`;
    its body then."""
    def reached():
        body = client.get(f"/jobs/{job_id}").json
        return body if body["state"] in states else None

    return poll_until(reached, timeout, f"job {job_id} to reach {sorted(states)}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port` right now."""
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def stop_process(process, timeout: float = 30) -> None:
    """Stop a child process if it still runs: SIGTERM, then SIGKILL after `timeout`."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
