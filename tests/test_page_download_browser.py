"""The page during a first start's download, in a real browser (Debian's chromium and
Playwright, with tests/test_page_browser.py's fixtures) against a waitress server whose
model comes from the fake Hub of tests/test_engine_download.py, served slowly."""
from __future__ import annotations

import re

from tests.conftest import LiveServer
from tests.test_engine_download import REPO, hub  # noqa: F401
from tests.test_page_browser import ARTIFACTS, browser, csp_violations, expect, page  # noqa: F401


def test_the_page_shows_the_download_progress_then_ready(page, hub, make_app):  # noqa: F811
    hub.chunk, hub.delay = 16 * 1024, 0.02  # about 0.8 MB/s: several health polls long
    server = LiveServer(make_app(wait=False, MODEL_ID=REPO))
    try:
        page.goto(server.url)
        status = page.locator("#server-status")
        expect(status).to_contain_text(re.compile(
            r"Downloading the model: \d+\.\d of \d+\.\d GB.*\(\d+ of \d+ files\)"), timeout=30_000)
        first = status.text_content()
        page.screenshot(path=ARTIFACTS / "downloading.png")
        expect(status).not_to_have_text(first, timeout=30_000)  # the figures move
        expect(page.locator("#generate")).to_be_disabled()
        expect(status).to_contain_text("Ready", timeout=120_000)
        expect(page.locator("#generate")).to_be_enabled()
    finally:
        server.close()
