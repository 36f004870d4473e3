"""The page's "Hires fix" switch (static/hires.js) in a real browser (Debian's chromium and
Playwright, with tests/test_page_browser.py's fixtures) against a waitress server: off, the
request has no hires object; on, its options show, the hint gives the output size, the
request carries them, progress counts both passes and the image is the larger size."""
from __future__ import annotations

import json

from tests.test_page_browser import (browser, csp_violations, expect, open_ready,  # noqa: F401
                                     page)


def test_hires_switch_sends_the_hires_object_and_shows_both_passes(page, live_server, gate):
    server = live_server(DEFAULT_STEPS="2")
    open_ready(page, server)
    expect(page.locator("#hires-options")).to_be_hidden()
    page.check("#hires")
    expect(page.locator("#hires-options")).to_be_visible()
    expect(page.locator("#hires-hint")).to_have_text(
        "Output: 128×128 px; progress counts both passes.")
    page.fill("#hires-scale", "20")
    expect(page.locator("#hires-hint")).to_contain_text("over this server's largest hires size")
    page.fill("#hires-scale", "1.5")
    page.select_option("#hires-upscaler", "Lanczos")
    page.fill("#hires-steps", "1")
    page.fill("#prompt", "a cat")
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#generate")
    body = json.loads(sent.value.post_data)
    assert body["hires"] == {"scale": 1.5, "upscaler": "Lanczos", "steps": 1,
                             "denoising_strength": 0.7}
    gate.wait_reached()
    gate.release(2)
    expect(page.locator("#progress-text")).to_contain_text("of 3")  # 2 + 1 steps
    gate.open()
    expect(page.locator("#result-image")).to_be_visible()
    width = page.eval_on_selector("#result-image", "img => img.naturalWidth")
    assert width == 96
    expect(page.locator("#result-params")).to_contain_text(
        "×1.5, Lanczos, 1 steps, denoising 0.7")
    page.uncheck("#hires")
    expect(page.locator("#hires-options")).to_be_hidden()
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#generate")
    assert "hires" not in json.loads(sent.value.post_data)
