"""The web page under QUEUE_BACKEND=redis in a real browser (Debian's chromium driven by
Playwright, with tests/test_page_browser.py's fixtures) against a waitress server of the web
app alone, as `python app.py` runs it: a real redis-server, and a real `python worker.py`
when one is wanted. The page must say what /health says (no worker, Redis unreachable), with
its advice, keep Generate off meanwhile, and turn it on by itself once that is fixed.

These tests fail, never skip, without chromium, Playwright or redis-server."""
from __future__ import annotations

from pathlib import Path

import playwright.sync_api  # noqa: F401  imported first: a missing Playwright fails here
import pytest

from tests.conftest import LiveServer
from tests.redis_fixtures import *  # noqa: F401,F403  redis_server, redis_env, start_worker
from tests.redis_fixtures import START_SECONDS, RedisServer
from tests.test_page_browser import (ARTIFACTS, CHROMIUM, browser,  # noqa: F401
                                     csp_violations, expect, page)

# While not ready the page asks /health every 1.5 s (once ready, every 15 s): a change must
# show within this, or the page took the state for a final one.
NOTICED_MS = 6_000


@pytest.fixture(scope="module", autouse=True)
def require_chromium():
    """The shared browser fixture skips without chromium outside CI; these tests fail."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")


@pytest.fixture
def redis_web(make_app, redis_env):
    """Serve the web app (no model, no worker) on a Redis URL; closed after the test."""
    servers: list[LiveServer] = []
    keys = ("MODEL_ID", "QUEUE_BACKEND", "QUEUE_SIZE", "OUTPUT_DIR")

    def start(redis_url: str) -> LiveServer:
        app = make_app(wait=False, REDIS_URL=redis_url, **{k: redis_env[k] for k in keys})
        servers.append(LiveServer(app))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_no_worker_says_so_with_the_advice_and_turns_on_when_one_is_ready(
        page, redis_server, redis_web, start_worker):
    server = redis_web(redis_server.url)
    page.goto(server.url)
    status, hint = page.locator("#server-status"), page.locator("#generate-hint")
    expect(status).to_have_text("No worker is running")
    expect(hint).to_contain_text("No worker is running: start one with python worker.py "
                                 "(same .env, same REDIS_URL); jobs wait in Redis")
    expect(hint.locator("code")).to_have_text("python worker.py")
    expect(page.locator("#generate")).to_be_disabled()
    page.screenshot(path=ARTIFACTS / "redis-no-worker.png")

    start_worker()  # the page notices by itself: no reload
    expect(page.locator("#generate")).to_be_enabled(timeout=START_SECONDS * 1000)
    expect(status).to_contain_text("Ready")
    expect(hint).to_have_text("Ctrl+Enter also generates.")


def test_redis_down_says_so_with_the_advice_and_recovers_when_it_answers(
        page, redis_web, tmp_path):
    redis = RedisServer(tmp_path)  # a free port where nothing listens yet
    server = redis_web(redis.url)
    try:
        page.goto(server.url)
        status, hint = page.locator("#server-status"), page.locator("#generate-hint")
        expect(status).to_have_text("Redis cannot be reached")
        expect(hint).to_have_text(f"Redis cannot be reached at {redis.url}: start "
                                  "redis-server (or fix REDIS_URL); queued jobs are kept in "
                                  "Redis and go on once it is back.")
        expect(page.locator("#generate")).to_be_disabled()
        page.screenshot(path=ARTIFACTS / "redis-down.png")

        redis.start()  # the page asks again soon and says what is true now
        expect(status).to_have_text("No worker is running", timeout=NOTICED_MS)
        expect(page.locator("#generate")).to_be_disabled()
    finally:
        redis.stop()
