"""Accessibility in a real browser: axe-core (vendored from its npm package under
tests/vendor/axe-core/, injected through Playwright's evaluate so the page's CSP is
untouched) finds zero violations on the page idle, while generating, with a result and the
expected time shown, at desktop and phone width. Debian's chromium."""
from __future__ import annotations

from pathlib import Path

from tests.test_page_browser import (ARTIFACTS, browser, csp_violations,  # noqa: F401
                                     expect, open_ready, page)

AXE = (Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js").read_text()


def axe_violations(page, include: str | None = None) -> list[str]:
    """Every axe-core violation on the page (or inside `include`), one line each."""
    page.evaluate(AXE)
    found = page.evaluate("""async (include) => {
        const result = await axe.run(include ? { include: [include] } : document,
                                     { resultTypes: ["violations"] });
        return result.violations.map(v => `${v.id}: ${v.help} (${v.nodes.map(
            n => n.target.join(" ")).join(", ")})`);
    }""", include)
    return found


def test_the_page_has_no_axe_violations_idle_generating_and_with_a_result(page, live_server,
                                                                          gate):
    server = live_server()
    open_ready(page, server)
    expect(page.locator("#estimate")).to_contain_text("Expected time")
    assert axe_violations(page) == []
    page.fill("#prompt", "a lighthouse")
    page.click("summary")  # the advanced settings open
    page.fill("#steps", "3")
    page.click("#generate")
    gate.wait_reached()
    expect(page.locator("#progress-text")).to_contain_text("Step 1 of 3")
    assert axe_violations(page) == []  # generating
    gate.open()
    expect(page.locator("#result-image")).to_be_visible()
    expect(page.locator("#estimate")).to_contain_text("Expected time: about")
    assert axe_violations(page) == []  # a result, the history and the expected time
    page.set_viewport_size({"width": 360, "height": 800})
    assert axe_violations(page) == []  # a phone's width
    page.screenshot(path=ARTIFACTS / "a11y-phone.png", full_page=True)
