"""/docs in a real browser: the vendored Swagger UI renders the server's /openapi.json
(its operations listed, one opened), under the server's Content-Security-Policy with no
violation, reached from the page's footer. Debian's chromium driven by Playwright."""
from __future__ import annotations

from tests.test_page_browser import (ARTIFACTS, TIMEOUT_MS, browser, csp_violations,  # noqa: F401
                                     expect, page)


def test_docs_lists_the_api_operations_under_the_csp(page, live_server):
    server = live_server()
    page.goto(server.url)
    footer_link = page.get_by_role("link", name="API reference")
    expect(footer_link).to_be_visible()
    footer_link.click()
    page.wait_for_url(server.url + "/docs")
    # Swagger UI draws one block per operation, with its method and path.
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=TIMEOUT_MS)
    for path in ("/health", "/jobs", "/sdapi/v1/txt2img", "/v1/images/generations"):
        expect(page.locator(f".opblock-summary-path[data-path='{path}']").first).to_be_visible()
    assert operations.count() > 20
    # Opening one shows its description and its responses.
    page.locator(".opblock-summary-path[data-path='/health']").first.click()
    expect(page.locator(".opblock.is-open")).to_contain_text("Readiness probe")
    expect(page.locator(".opblock.is-open .responses-wrapper")).to_contain_text("503")
    page.screenshot(path=ARTIFACTS / "docs.png", full_page=False)
    # The `page` fixture fails the test on any CSP violation or uncaught error.
