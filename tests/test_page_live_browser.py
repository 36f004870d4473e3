"""Live mode ("generate as you type") in a real browser on the tiny model: offered once the
server's measured pace says an image of the form's settings takes a few seconds, one job per
pause in typing (not one per keystroke), and a newer prompt cancels the job it supersedes.
Debian's chromium driven by Playwright against a live waitress server."""
from __future__ import annotations

from tests.helpers import poll_until
from tests.test_page_browser import (ARTIFACTS, browser, csp_violations,  # noqa: F401
                                     expect, open_ready, page)


def small_form(page) -> None:
    """The tiny model's smallest, quickest settings."""
    page.click("summary")
    page.fill("#steps", "3")
    page.select_option("#width", "64")
    page.select_option("#height", "64")


def test_typing_generates_and_a_newer_prompt_cancels_the_older_job(page, live_server, gate):
    server = live_server()
    queue = server.app.extensions["sd_server"].queue
    open_ready(page, server)
    offer = page.locator("#live-offer")
    expect(offer).to_be_hidden()  # nothing measured yet: no promise of seconds
    small_form(page)
    page.fill("#prompt", "a lighthouse")
    gate.open()
    page.click("#generate")
    expect(page.locator("#result-image")).to_be_visible()
    expect(offer).to_be_visible()  # the tiny model's image took well under a few seconds

    gate.close()  # from here each job waits at every step until the test lets it go on
    page.check("#live-mode")
    expect(page.locator("#live-hint")).to_contain_text("a pause in typing generates")
    page.fill("#prompt", "")
    page.locator("#prompt").press_sequentially("a red fox", delay=40)
    gate.wait_reached()  # the pause submitted one job, now paused at its first step
    older = queue.recent(1)[0]
    assert older.request.prompt == "a red fox"
    assert len(queue.recent()) == 2, "one job per pause in typing, not one per keystroke"

    page.locator("#prompt").press_sequentially(" in snow", delay=40)
    poll_until(lambda: len(queue.recent()) == 3, 20, "the newer prompt's job")
    newer = queue.recent(1)[0]
    assert newer.request.prompt == "a red fox in snow"
    assert newer.seed == older.seed, "live mode keeps one seed"
    assert older.cancel_requested or older.state.finished, "the superseded job was cancelled"
    gate.open()  # the older job's paused step ends, it sees the cancel; the newer one runs
    poll_until(lambda: newer.state.finished, 30, "the newer job to finish")
    assert older.state.value == "cancelled"
    assert newer.state.value == "succeeded"
    expect(page.locator("#result-message")).not_to_contain_text("Cancelled")
    page.screenshot(path=ARTIFACTS / "live-mode.png", full_page=True)


def test_live_mode_is_withdrawn_when_the_settings_get_slow(page, live_server):
    """A slow pace for the form's kind is written into the queue's book (the one fake here),
    as a full-size model would measure it."""
    server = live_server()
    queue = server.app.extensions["sd_server"].queue
    open_ready(page, server)
    small_form(page)
    page.fill("#prompt", "a lighthouse")
    page.click("#generate")
    expect(page.locator("#result-image")).to_be_visible()
    page.check("#live-mode")
    with queue._state.lock:
        for kind in queue._state.pace:
            queue._state.pace[kind] = {"seconds_per_step": 16.0, "fixed_seconds": 20.0,
                                       "images": 1}
    page.fill("#steps", "4")  # any change asks for the estimate again
    expect(page.locator("#live-offer")).to_be_hidden()
    assert not page.is_checked("#live-mode"), "slow settings switch live mode off"
    submitted = len(queue.recent())
    page.locator("#prompt").press_sequentially(" at dusk", delay=20)
    page.wait_for_timeout(1500)  # longer than the typing pause: nothing may be submitted
    assert len(queue.recent()) == submitted
