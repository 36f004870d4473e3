"""The expected time before generating, in a real browser on the tiny model: "not measured
yet" until the first image of a kind, then within 25 % of that image's measured time for the
same settings, and "not measured yet" again for another kind. Debian's chromium driven by
Playwright against a live waitress server."""
from __future__ import annotations

from tests.test_page_browser import (ARTIFACTS, browser, csp_violations,  # noqa: F401
                                     expect, open_ready, page)


def test_the_expected_time_appears_after_one_image_and_matches_it(page, live_server):
    server = live_server()
    open_ready(page, server)
    estimate = page.locator("#estimate")
    expect(estimate).to_contain_text("not measured yet")
    page.fill("#prompt", "a lighthouse")
    page.click("summary")
    page.fill("#steps", "3")
    page.select_option("#width", "64")
    page.select_option("#height", "64")
    page.click("#generate")
    expect(page.locator("#result-image")).to_be_visible()
    expect(estimate).to_contain_text("Expected time: about")
    job = server.app.extensions["sd_server"].queue.recent(1)[0]
    took = job.finished_at - job.started_at
    expected = float(estimate.get_attribute("data-seconds"))  # the figure behind the words
    assert abs(expected - took) <= 0.25 * took, (expected, took)
    page.screenshot(path=ARTIFACTS / "estimate.png", full_page=True)
    page.fill("#steps", "12")  # more steps of the same kind: known at once, and longer
    page.wait_for_function("e => Number(document.getElementById('estimate').dataset.seconds)"
                           " > e", arg=expected)
    expect(estimate).to_contain_text("Expected time: about")
    page.select_option("#width", "128")  # another size: another kind
    expect(estimate).to_contain_text("not measured yet")


def test_over_a_minute_the_page_names_the_faster_presets(page, live_server):
    """The tiny model takes well under a minute, so the test writes a slow pace for the
    form's kind into the queue's book (the one fake here), as a full-size model would."""
    server = live_server()
    with page.expect_response(lambda r: r.request.method == "POST" and "/estimate" in r.url) \
            as answer:
        open_ready(page, server)
    kind = answer.value.json()["kind"]
    queue = server.app.extensions["sd_server"].queue
    with queue._state.lock:
        queue._state.pace[kind] = {"seconds_per_step": 16.0, "fixed_seconds": 20.0, "images": 1}
    page.click("summary")
    page.fill("#steps", "20")  # any change asks again
    estimate = page.locator("#estimate")
    expect(estimate).to_contain_text("Expected time: about 5 min 40 s")  # 20 x 16 + 20
    expect(estimate).to_contain_text("Faster: the Balanced preset (about 4 min 20 s)")
    expect(estimate).to_contain_text("the Fast preset (about 2 min 28 s)")  # 8 x 16 + 20
    page.screenshot(path=ARTIFACTS / "estimate-slow.png", full_page=True)
