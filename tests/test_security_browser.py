"""The cross-site request guard in a real browser: a page served from another local port
(another origin) makes the "simple" requests a browser sends without a CORS preflight (a
no-cors fetch of text/plain JSON or FormData, and a real multipart <form> submit) at a live
server. They are refused (403) and queue nothing, unless that origin is in CORS_ORIGINS.
Debian's chromium driven by Playwright, as in test_page_browser.py."""
from __future__ import annotations

import io
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tests.helpers import free_port

# The same headless chromium (skipped where it is not installed, a failure in CI).
from tests.test_page_browser import TIMEOUT_MS, browser  # noqa: E402,F401  (a fixture)

# The other site's page: its script fires the simple requests on load; the form is
# submitted by the test after it picks a file, as a user would.
OTHER_SITE_PAGE = """<!doctype html>
<html><body>
<form id="edit" method="post" enctype="multipart/form-data" action="{api}/v1/images/edits">
  <input type="file" id="image" name="image">
  <input name="prompt" value="a cat"><input name="size" value="64x64">
  <input name="steps" value="2">
</form>
<script>
  const api = "{api}";
  window.simpleRequests = Promise.all([
    fetch(api + "/generate", {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body: '{{"prompt": "a cat", "steps": 1}}'}}),
    fetch(api + "/v1/images/edits", {{method: "POST", mode: "no-cors",
      body: (() => {{ const f = new FormData(); f.append("prompt", "a cat"); return f; }})()}}),
  ]).then(() => "sent", (e) => "failed: " + e);
</script>
</body></html>"""


class OtherSite:
    """A tiny web site on its own port (so its own origin) serving one page."""

    def __init__(self, html: str, port: int):
        page = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def other_site():
    """Start OtherSite pages; they stop after the test."""
    sites = []

    def start(html: str, port: int) -> OtherSite:
        sites.append(OtherSite(html, port))
        return sites[-1]

    yield start
    for site in sites:
        site.close()


def png_bytes() -> bytes:
    """A small PNG to upload."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def jobs_of(server) -> list:
    """The server's job list (read directly, without a browser)."""
    import json

    with urllib.request.urlopen(server.url + "/jobs", timeout=10) as r:
        return json.load(r)["jobs"]


def visit_and_submit(browser, site, api_url: str) -> tuple[dict[str, int], int]:
    """Open the other site's page, let its simple requests go, then submit its form.
    Returns the status the browser got for each fetch (by path) and for the form."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    statuses: dict[str, int] = {}
    page.on("response", lambda r: statuses.__setitem__(r.url[len(api_url):], r.status)
            if r.url.startswith(api_url) and r.request.resource_type == "fetch" else None)
    try:
        page.goto(site.url)
        assert page.evaluate("window.simpleRequests") == "sent"
        page.set_input_files("#image", files=[{"name": "x.png", "mimeType": "image/png",
                                               "buffer": png_bytes()}])
        with page.expect_navigation() as navigation:
            page.evaluate("document.getElementById('edit').submit()")
        form_status = navigation.value.status
    finally:
        context.close()
    return statuses, form_status


def test_a_page_on_another_origin_cannot_make_the_server_generate(browser, live_server,
                                                                    other_site):
    server = live_server()
    site = other_site(OTHER_SITE_PAGE.format(api=server.url), free_port())
    statuses, form_status = visit_and_submit(browser, site, server.url)
    assert statuses == {"/generate": 403, "/v1/images/edits": 403}
    assert form_status == 403
    assert jobs_of(server) == []  # nothing was queued, let alone generated


def test_the_same_page_may_when_its_origin_is_in_cors_origins(browser, live_server,
                                                              other_site):
    """Allowed, the same requests reach the routes: the JSON one still wants JSON (415, a
    no-cors fetch cannot send it), the form's edit runs and answers the image."""
    site_port = free_port()
    server = live_server(CORS_ORIGINS=f"http://127.0.0.1:{site_port}")
    site = other_site(OTHER_SITE_PAGE.format(api=server.url), site_port)
    statuses, form_status = visit_and_submit(browser, site, server.url)
    assert statuses == {"/generate": 415, "/v1/images/edits": 400}  # no image in that one
    assert form_status == 200
    assert [job["state"] for job in jobs_of(server)] == ["succeeded"]
