"""The web page in a real browser (Debian's chromium driven by Playwright) against a real
waitress server on the tiny model: progress, preview, result, cancel, errors, loading state,
history, API key and a phone-sized viewport. Screenshots go to test-artifacts/."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, LiveServer

import os

if os.environ.get("CI"):  # in CI a missing browser stack must fail, not skip silently
    import playwright.sync_api as playwright_sync
else:
    playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 20_000  # the page polls once a second; generous for a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the whole module (starting it is the slow part)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed at /usr/bin/chromium (.ci/run installs it)")
        pytest.skip("chromium is not installed at /usr/bin/chromium")
    expect.set_options(timeout=TIMEOUT_MS)
    pw = playwright_sync.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    yield browser
    browser.close()
    pw.stop()


# Chromium reports a Content-Security-Policy violation twice: as a console error ("Refused
# to ... because it violates the following Content Security Policy directive") and as a
# `securitypolicyviolation` event, which this script (run before the page's own) logs too.
REPORT_CSP_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (e) =>
    console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture
def csp_violations() -> list[str]:
    """The Content-Security-Policy violations seen by `page` (a test may inspect them)."""
    return []


@pytest.fixture
def page(browser, csp_violations):
    """A fresh page (own localStorage); fails the test if the page's script throws or
    anything on the page breaks the server's Content-Security-Policy."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: csp_violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not csp_violations, f"Content-Security-Policy violations: {csp_violations}"


def open_ready(page, server) -> None:
    """Load the page and wait until the model is ready and Generate is enabled."""
    page.goto(server.url)
    expect(page.locator("#generate")).to_be_enabled()


def post_job(server, body: dict) -> dict:
    """Submit a job through the HTTP API, as another client would."""
    request = urllib.request.Request(f"{server.url}/jobs", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def image_size(page, selector: str) -> tuple[int, int]:
    """The decoded pixel size of an <img>, once it has loaded."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0 }",
        arg=selector)
    return tuple(page.eval_on_selector(selector, "i => [i.naturalWidth, i.naturalHeight]"))


def test_generate_shows_moving_progress_preview_and_the_image(page, live_server, gate):
    server = live_server()
    open_ready(page, server)
    expect(page.locator("#prompt-count")).to_have_text("0 / 200")
    page.fill("#prompt", "a lighthouse at dusk")
    expect(page.locator("#prompt-count")).to_have_text("20 / 200")
    page.click("summary")
    page.fill("#steps", "6")
    page.select_option("#width", "128")
    page.select_option("#height", "64")
    page.click("#generate")

    gate.wait_reached()  # the worker is paused after step 1
    # PNDM makes 7 UNet calls for 6 steps; the page counts the steps the user asked for.
    expect(page.locator("#progress-text")).to_contain_text("Step 1 of 6")
    expect(page.locator("#generate")).to_be_disabled()
    first = page.eval_on_selector("#progress", "p => p.value")
    gate.release(3)
    expect(page.locator("#progress-text")).to_contain_text("Step 4 of 6")
    assert page.eval_on_selector("#progress", "p => p.value") > first
    assert image_size(page, "#preview")[0] > 0  # the live preview of the latents
    page.screenshot(path=ARTIFACTS / "progress.png", full_page=True)

    gate.open()
    assert image_size(page, "#result-image") == (128, 64)
    params = page.locator("#result-params")
    expect(params).to_contain_text("128×64")
    expect(params).to_contain_text("Steps6")
    job = server.app.extensions["sd_server"].queue.recent(1)[0]
    expect(params).to_contain_text(str(job.seed))
    assert page.get_attribute("#download", "download") == f"a-lighthouse-at-dusk-{job.seed}.png"
    expect(page.locator("#progress-panel")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()
    page.screenshot(path=ARTIFACTS / "result.png", full_page=True)

    # The download link holds the real PNG bytes.
    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == f"a-lighthouse-at-dusk-{job.seed}.png"
    assert Path(download.path()).read_bytes() == job.png


def test_cancel_stops_the_job_and_the_page_says_cancelled(page, live_server, gate):
    server = live_server()
    open_ready(page, server)
    page.fill("#prompt", "a slow painting")
    page.click("summary")
    page.fill("#steps", "20")
    page.click("#generate")
    gate.wait_reached()
    expect(page.locator("#progress-text")).to_contain_text("Step 1 of")

    page.click("#cancel")
    expect(page.locator("#cancel")).to_have_text("Cancelling…")
    gate.open()  # let the paused step finish so the worker sees the cancel
    expect(page.locator("#result-message")).to_contain_text("Cancelled")
    expect(page.locator("#progress-panel")).to_be_hidden()
    expect(page.locator("#history [data-state='cancelled']")).to_have_count(1)
    assert server.app.extensions["sd_server"].queue.recent(1)[0].state.value == "cancelled"
    expect(page.locator("#generate")).to_be_enabled()


def test_waiting_job_shows_queue_position_and_resumes_after_reload(page, live_server, gate):
    server = live_server()
    post_job(server, {"prompt": "someone else's picture", "steps": 3})
    gate.wait_reached()  # the worker is busy with the other client's job
    open_ready(page, server)
    page.fill("#prompt", "my turn")
    page.click("#generate")
    expect(page.locator("#progress-text")).to_contain_text("position 1 in the queue")
    assert page.eval_on_selector("#progress", "p => p.hasAttribute('value')") is False

    page.reload()  # the page picks its waiting job up again
    expect(page.locator("#progress-text")).to_contain_text("position 1 in the queue")
    expect(page.locator("#generate")).to_be_disabled()
    page.screenshot(path=ARTIFACTS / "queued.png")
    gate.open()
    assert image_size(page, "#result-image") == (64, 64)
    mine = server.app.extensions["sd_server"].queue.recent(1)[0]
    assert mine.request.prompt == "my turn"
    expect(page.locator("#result-params")).to_contain_text(str(mine.seed))
    expect(page.locator("#history .history-item")).to_have_count(2)


def test_server_validation_error_is_shown_inline(page, live_server):
    server = live_server(MAX_PROMPT_LENGTH="10")
    open_ready(page, server)
    # Setting .value from script bypasses maxlength, as a paste into an old browser would.
    page.eval_on_selector("#prompt", """t => { t.value = "x".repeat(30);
        t.dispatchEvent(new Event("input")) }""")
    expect(page.locator("#prompt-count")).to_have_text("30 / 10")
    page.click("#generate")
    alert = page.get_by_role("alert").filter(has_text="prompt")
    expect(alert).to_have_text("'prompt' is 30 characters; the limit is 10")
    expect(page.locator("#generate")).to_be_enabled()  # fix it and try again
    assert server.app.extensions["sd_server"].queue.recent() == []


def test_speed_preset_fills_the_form_and_travels_with_the_request(page, live_server):
    server = live_server()
    open_ready(page, server)
    expect(page.locator("#preset-hint")).to_contain_text("full quality")
    page.select_option("#speed_preset", "fast")
    expect(page.locator("#preset-hint")).to_contain_text("DeepCache every 3 steps")
    page.click("summary")
    expect(page.locator("#steps")).to_have_value("8")
    expect(page.locator("#scheduler")).to_have_value("DPM++ 2M Karras")
    page.fill("#steps", "3")  # the user's own value wins over the preset's
    page.fill("#prompt", "a quick sketch")
    page.click("#generate")
    expect(page.locator("#result-params")).to_contain_text("fast: CFG cutoff 0.5, DeepCache 3")
    request = server.app.extensions["sd_server"].queue.recent(1)[0].request
    assert (request.speed_preset, request.steps, request.deep_cache) == ("fast", 3, 3)
    page.select_option("#speed_preset", "quality")
    expect(page.locator("#steps")).to_have_value("2")  # back to the server's default steps


def test_generate_is_disabled_while_the_model_loads(page, make_app):
    app = make_app(start_worker=False)  # the model has not started loading
    server = LiveServer(app)
    try:
        page.goto(server.url)
        expect(page.locator("#server-status")).to_contain_text("Loading the model")
        expect(page.locator("#generate-hint")).to_contain_text("loading")
        for _ in range(2):  # two more health polls later it is still off
            with page.expect_response(lambda response: response.url.endswith("/health")):
                pass
        expect(page.locator("#generate")).to_be_disabled()
        page.screenshot(path=ARTIFACTS / "loading.png")
        page.emulate_media(color_scheme="dark")
        page.screenshot(path=ARTIFACTS / "loading-dark.png")

        app.extensions["sd_server"].queue.start()
        expect(page.locator("#generate")).to_be_enabled()
        expect(page.locator("#server-status")).to_contain_text("Ready")
    finally:
        server.close()


def test_a_stopped_worker_is_named_not_taken_for_a_failed_model(page, make_app, monkeypatch):
    """The worker thread dies (a BaseException out of the load, injected: the real load
    catches every Exception): the page says the worker stopped and to restart, not that the
    model failed to load."""
    from engine import Engine

    def dies(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "load", dies)
    server = LiveServer(make_app(wait=False))
    try:
        page.goto(server.url)
        expect(page.locator("#server-status")).to_contain_text("The generation worker stopped")
        expect(page.locator("#generate-hint")).to_contain_text("restart the server")
        expect(page.locator("#generate")).to_be_disabled()
    finally:
        server.close()


def test_history_survives_reload_and_reuse_restores_settings(page, live_server):
    server = live_server()
    open_ready(page, server)
    page.fill("#prompt", "a red bicycle")
    page.click("summary")
    page.fill("#steps", "3")
    page.select_option("#scheduler", "Euler")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # keyboard submit
    assert image_size(page, "#result-image") == (64, 64)
    seed = server.app.extensions["sd_server"].queue.recent(1)[0].seed

    page.reload()
    item = page.locator("#history .history-item").first
    expect(item).to_have_attribute("data-state", "succeeded")
    expect(item).to_contain_text("a red bicycle")
    assert image_size(page, "#history .history-item img") == (64, 64)
    expect(page.locator("#result-panel")).to_be_hidden()
    page.click("summary")
    page.click("#reuse-seed")  # "last seed" is the newest image's, even after a reload
    expect(page.locator("#seed")).to_have_value(str(seed))
    page.check("#seed-random")
    expect(page.locator("#seed")).to_have_value("")

    item.get_by_role("button").click()
    assert image_size(page, "#result-image") == (64, 64)
    expect(page.locator("#result-params")).to_contain_text(str(seed))
    page.click("#reuse")
    expect(page.locator("#prompt")).to_have_value("a red bicycle")
    expect(page.locator("#steps")).to_have_value("3")
    expect(page.locator("#scheduler")).to_have_value("Euler")
    expect(page.locator("#seed")).to_have_value(str(seed))
    expect(page.locator("#seed-random")).not_to_be_checked()


def test_api_key_is_asked_for_stored_and_sent(page, live_server):
    server = live_server(API_KEY="s3cret-key")
    open_ready(page, server)
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator("#history-empty")).to_contain_text("API key")
    page.fill("#prompt", "a locked door")
    page.click("#generate")
    expect(page.locator("#form-error")).to_have_text(
        "This server needs an API key. Enter the credentials to use this server.")

    page.fill("#api-key", "s3cret-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-status")).to_contain_text("saved")
    page.click("#generate")
    assert image_size(page, "#result-image") == (64, 64)  # fetched with the key

    page.reload()  # the key is remembered; history loads with it
    expect(page.locator("#api-key")).to_have_value("s3cret-key")
    expect(page.locator("#history .history-item")).to_have_count(1)


def test_phone_width_has_no_horizontal_scroll_and_every_control_is_labelled(page, live_server):
    server = live_server()
    page.set_viewport_size({"width": 360, "height": 740})
    open_ready(page, server)
    page.fill("#prompt", "a very long prompt " + "with_an_unbreakable_word_" * 3)
    page.keyboard.press("Control+Enter")
    image_size(page, "#result-image")
    page.click("summary")
    expect(page.locator("#history .history-item")).to_have_count(1)
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    page.screenshot(path=ARTIFACTS / "phone.png", full_page=True)


def test_keyboard_alone_reaches_the_prompt_and_generates(page, live_server):
    server = live_server()
    open_ready(page, server)
    page.keyboard.press("Tab")  # the skip link comes first
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")  # following #prompt focuses the textarea
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("a cat")
    # Tab on through the form to the Generate button and press it.
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "generate":
            break
    expect(page.locator("#generate")).to_be_focused()
    outline = page.eval_on_selector("#generate", "b => getComputedStyle(b).outlineStyle")
    assert outline == "solid"  # a visible focus ring
    page.keyboard.press("Enter")
    assert image_size(page, "#result-image") == (64, 64)
    assert re.fullmatch(r"a-cat-\d+\.png", page.get_attribute("#download", "download"))


def test_the_policy_is_enforced_and_the_page_needs_nothing_it_forbids(page, live_server,
                                                                       csp_violations):
    """The page fixture fails any test whose page breaks the Content-Security-Policy; here,
    that such a break is really seen: an inline script and a data: image are refused."""
    server = live_server()
    open_ready(page, server)
    page.fill("#prompt", "a cat")
    page.click("#generate")
    assert image_size(page, "#result-image") == (64, 64)  # a blob: image, allowed
    expect(page.locator("link[rel=icon]")).to_have_attribute("href", "/favicon.ico")
    assert csp_violations == []
    page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true";
        document.body.append(script);
        const img = document.createElement("img");
        img.src = "data:image/gif;base64,R0lGODlhAQABAAAAACw=";
        document.body.append(img);
    }""")
    page.wait_for_function("() => document.querySelector('img[src^=data]').complete")
    assert page.evaluate("() => window.inlineRan") is None
    for directive in ("script-src", "img-src"):
        assert any(directive in v for v in csp_violations), csp_violations
    csp_violations.clear()  # seen as intended; the fixture checks for unintended ones
