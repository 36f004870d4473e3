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


class EventStream:
    """A Server-Sent Events client over a real HTTP connection (http.client, no browser):
    `next()` reads one event as (name, JSON data), a comment block as ('comment', text),
    and None once the server ended the stream."""

    def __init__(self, base_url: str, path: str, headers: dict | None = None,
                 timeout: float = 30):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port,
                                                     timeout=timeout)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()
        self.status, self.headers = self.response.status, self.response.headers

    def next(self):
        """The next event, comment block or None (the stream ended)."""
        import json

        name, data, comments = None, [], []
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.decode().rstrip("\r\n")
            if line == "":
                if data:
                    return name or "message", json.loads("\n".join(data))
                if comments:
                    return "comment", "\n".join(comments)
                continue  # a block of only `retry:` (or nothing): read on
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                comments.append(value)
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)

    def events_until(self, wanted: str, limit: int = 200) -> list:
        """Read events up to and including the first named `wanted`; all of them."""
        seen = []
        for _ in range(limit):
            event = self.next()
            assert event is not None, f"the stream ended before a {wanted!r} event: {seen}"
            seen.append(event)
            if event[0] == wanted:
                return seen
        raise AssertionError(f"no {wanted!r} event in {limit}: {seen[-5:]}")

    def close(self) -> None:
        """Hang up, as a browser closing its tab would (the response holds the socket too)."""
        self.response.close()
        self.connection.close()


def metric_samples(text: str) -> dict:
    """Prometheus text parsed by prometheus_client's own parser: {(sample name,
    frozenset of its labels' items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    """The value of one sample (0 when it is absent: a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def plain_pipeline(model_dir):
    """A diffusers StableDiffusionPipeline of a saved model, without the safety checker and
    the progress bar: the pipeline tests drive directly, beside the engine's."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_64(pipe, prompt: str = "a cat", negative: str | None = None):
    """One 64 px image as a float array: 2 steps, seed 7."""
    import torch

    return pipe(prompt, negative_prompt=negative, num_inference_steps=2, width=64, height=64,
                output_type="np", generator=torch.Generator().manual_seed(7)).images[0]
