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


def test_no_axe_violations_with_the_mask_painter_and_the_image_viewer_open(page, live_server):
    from tests.test_page_image_browser import png, upload
    from tests.test_page_mask_browser import stroke

    server = live_server()
    open_ready(page, server)
    upload(page, "#init-image-file", png(64, 64))
    page.click("#mask-paint-toggle")
    stroke(page, [(0.2, 0.2), (0.6, 0.6)])
    expect(page.locator("#mask-paint-status")).to_contain_text("Painted mask")
    assert axe_violations(page) == []  # the mask painter open, with a painted mask
    page.set_viewport_size({"width": 360, "height": 800})
    assert axe_violations(page) == []
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    page.screenshot(path=ARTIFACTS / "a11y-mask-painter-phone.png", full_page=True)

    page.set_viewport_size({"width": 1100, "height": 900})
    page.fill("#prompt", "a painted window")
    page.click("#generate")
    expect(page.locator("#gallery .history-item")).to_have_count(1)
    page.click("#gallery .history-item button")
    expect(page.locator("#viewer")).to_be_visible()
    page.click("#viewer summary")  # the infotext as written, opened
    assert axe_violations(page) == []  # the image viewer open
    page.click("#viewer-delete")
    expect(page.locator("#confirm-delete")).to_be_visible()
    assert axe_violations(page) == []  # and the question before deleting
    page.click("#confirm-keep")
    page.set_viewport_size({"width": 360, "height": 800})
    assert axe_violations(page) == []  # the viewer at a phone's width
    overflow = page.evaluate("""() => { const v = document.getElementById("viewer");
        return [document.documentElement.scrollWidth - document.documentElement.clientWidth,
                v.scrollWidth - v.clientWidth, v.getBoundingClientRect().right]; }""")
    assert overflow[0] <= 0 and overflow[1] <= 0 and overflow[2] <= 360
    page.screenshot(path=ARTIFACTS / "a11y-viewer-phone.png")
