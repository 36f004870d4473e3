"""The page follows a job by its event stream (GET /jobs/<id>/events) in a real browser
(Debian's chromium driven by Playwright, with tests/test_page_browser.py's fixtures) against
waitress on the tiny model, the gate pausing the real pipeline at each step: the steps shown
come from the stream (no polling); a stream dropped by the server is opened again and the
page carries on; where streams are refused the page polls instead.

These tests fail, never skip, without chromium or Playwright."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import playwright.sync_api  # noqa: F401  imported first: a missing Playwright fails here
import pytest

from tests.helpers import poll_until
from tests.test_page_browser import (ARTIFACTS, CHROMIUM, browser,  # noqa: F401
                                     csp_violations, expect, image_size, open_ready, page)


@pytest.fixture(scope="module", autouse=True)
def require_chromium():
    """The shared browser fixture skips without chromium outside CI; these tests fail."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")


class Requests:
    """The job requests a page makes: its event streams and its polls of GET /jobs/<id>."""

    def __init__(self, page):
        self.streams: list[str] = []
        self.polls: list[str] = []
        page.on("request", self.seen)

    def seen(self, request) -> None:
        if re.search(r"/jobs/[0-9a-f]+/events$", request.url):
            self.streams.append(request.url)
        elif re.search(r"/jobs/[0-9a-f]+$", request.url) and request.method == "GET":
            self.polls.append(request.url)


def generate_until_step_one(page, server, gate) -> Requests:
    """Open the page, generate 6 steps and wait until it shows step 1 (the gate holds it
    there); the page's job requests from the start."""
    requests = Requests(page)
    open_ready(page, server)
    page.fill("#prompt", "a lighthouse at dusk")
    page.click("summary")
    page.fill("#steps", "6")
    page.click("#generate")
    gate.wait_reached()
    expect(page.locator("#progress-text")).to_contain_text("Step 1 of 6")
    return requests


def two_more_steps_show(page, gate) -> None:
    """Let two steps run; the page must show the third."""
    gate.release(2)
    expect(page.locator("#progress-text")).to_contain_text("Step 3 of 6")


def drop_event_streams(server) -> int:
    """Close, from the server's side, each connection that serves an event stream (as a
    proxy's timeout or a network drop would); how many there were. Reaches into waitress's
    socket map: no public API closes one connection."""
    from waitress.channel import HTTPChannel

    dropped = 0
    for channel in list(server.server._map.values()):
        if isinstance(channel, HTTPChannel) and channel.requests and \
                channel.requests[0].path.endswith("/events"):
            channel.socket.shutdown(socket.SHUT_RDWR)
            dropped += 1
    return dropped


def test_the_page_shows_each_step_from_the_stream_without_polling(page, live_server, gate):
    server = live_server()
    requests = generate_until_step_one(page, server, gate)
    two_more_steps_show(page, gate)
    assert image_size(page, "#preview")[0] > 0  # fetched when the stream said it was ready
    gate.open()
    assert image_size(page, "#result-image") == (64, 64)
    expect(page.locator("#progress-panel")).to_be_hidden()
    expect(page.locator("#result-params")).to_contain_text("Steps6")
    job = server.app.extensions["sd_server"].queue.recent(1)[0]
    assert requests.streams == [f"{server.url}/jobs/{job.id}/events"]
    assert requests.polls == []  # every step and the end came pushed


def test_a_stream_dropped_by_the_server_is_reopened_and_the_page_carries_on(page, live_server,
                                                                             gate):
    server = live_server()
    requests = generate_until_step_one(page, server, gate)
    assert drop_event_streams(server) == 1
    two_more_steps_show(page, gate)  # made while the page has no stream
    poll_until(lambda: len(requests.streams) >= 2, 20, "the page to open its stream again")
    page.screenshot(path=ARTIFACTS / "stream-reopened.png")
    gate.open()
    assert image_size(page, "#result-image") == (64, 64)
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#history .history-item")).to_have_count(1)


def test_where_streams_are_refused_the_page_polls(page, live_server, gate):
    server = live_server(EVENT_STREAMS="0")
    requests = generate_until_step_one(page, server, gate)
    two_more_steps_show(page, gate)
    gate.open()
    assert image_size(page, "#result-image") == (64, 64)
    assert len(requests.streams) == 1 and requests.polls  # refused once (503), then polled
