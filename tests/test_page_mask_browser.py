"""Painting the inpainting mask in a real browser (Debian's chromium and Playwright, sharing
tests/test_page_browser.py's fixtures) against a waitress server on the tiny model: strokes
with the mouse and a finger reach the server as `mask_image` with those pixels white;
eraser, undo, invert and clear; an uploaded mask opens in the painter; mask blur and the
resize mode travel with the request."""
from __future__ import annotations

import json
import re

from tests.test_page_browser import (ARTIFACTS, browser, csp_violations, expect,  # noqa: F401
                                     open_ready, page)
from tests.test_page_image_browser import newest_job, png, upload


def set_range(page, selector: str, value: int) -> None:
    """Move a range input as a drag would (value, then its input event)."""
    page.eval_on_selector(selector, """(e, v) => { e.value = v;
        e.dispatchEvent(new Event("input", { bubbles: true })) }""", value)


def stroke(page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse over the canvas through `points`, each a fraction of its width and
    height."""
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def painted_percent(page) -> int:
    """The share of the image the painter says is marked."""
    text = page.locator("#mask-paint-status").inner_text()
    found = re.search(r"about (\d+) %", text)
    return int(found.group(1)) if found else 0


def open_painter(page, server) -> None:
    """The page ready, a 64x64 input image chosen and the painter open."""
    open_ready(page, server)
    expect(page.locator("#mask-paint-toggle")).to_be_hidden()  # no image, nothing to paint on
    upload(page, "#init-image-file", png(64, 64))
    page.click("#mask-paint-toggle")
    expect(page.locator("#mask-painter")).to_be_visible()
    expect(page.locator("#mask-paint-toggle")).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#mask-paint-status")).to_have_text("Nothing painted yet.")
    assert page.eval_on_selector("#mask-canvas", "c => [c.width, c.height]") == [64, 64]


def test_painted_strokes_reach_the_server_as_the_mask(page, live_server):
    server = live_server()
    open_painter(page, server)
    set_range(page, "#mask-brush-size", 16)
    expect(page.locator("#mask-brush-size-value")).to_have_text("16 px")
    stroke(page, [(0.1, 0.25), (0.4, 0.25)])  # a band across the top left quarter
    assert 10 <= painted_percent(page) <= 20
    page.screenshot(path=ARTIFACTS / "mask-painter.png", full_page=True)
    page.fill("#mask-blur", "0")  # sharp edges: the pixels below are exact
    page.select_option("#resize-mode", "1")
    page.fill("#prompt", "a window in the wall")
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#generate")
    body = json.loads(sent.value.post_data)
    assert body["mask_image"].startswith("data:image/png;base64,")
    assert (body["mask_blur"], body["resize_mode"], body["mask_invert"]) == (0, 1, 0)
    expect(page.locator("#result-params")).to_contain_text("inpainting")

    request = newest_job(server).request
    assert (request.mask_blur, request.resize_mode) == (0, 1)
    mask = request.mask_image  # as the server received and prepared it
    assert mask.size == (64, 64) and mask.mode == "L"
    assert mask.getpixel((16, 16)) == 255 and mask.getpixel((10, 16)) == 255  # painted
    assert mask.getpixel((16, 48)) == 0 and mask.getpixel((56, 16)) == 0  # left alone
    white = mask.point(lambda v: 255 if v > 127 else 0).histogram()[255]
    assert 0.1 * 64 * 64 <= white <= 0.2 * 64 * 64


def test_eraser_undo_invert_and_clear(page, live_server):
    server = live_server()
    open_painter(page, server)
    expect(page.locator("#mask-undo")).to_be_disabled()
    set_range(page, "#mask-brush-size", 20)
    stroke(page, [(0.1, 0.5), (0.9, 0.5)])
    band = painted_percent(page)
    assert 25 <= band <= 40

    page.check("#mask-tool-eraser")
    stroke(page, [(0.05, 0.5), (0.5, 0.5)])  # half the band taken back
    erased = painted_percent(page)
    assert band * 0.3 <= erased <= band * 0.7

    page.click("#mask-undo")
    assert painted_percent(page) == band
    page.click("#mask-invert-paint")
    assert abs(painted_percent(page) - (100 - band)) <= 1
    page.click("#mask-undo")
    assert painted_percent(page) == band
    page.click("#mask-clear")
    expect(page.locator("#mask-paint-status")).to_have_text("Nothing painted yet.")
    page.click("#mask-invert-paint")  # everything repainted
    assert painted_percent(page) == 100

    page.click("#mask-paint-done")
    expect(page.locator("#mask-painter")).to_be_hidden()
    page.fill("#prompt", "all of it new")
    page.click("#generate")
    expect(page.locator("#result-params")).to_contain_text("inpainting")  # closed, still sent
    mask = newest_job(server).request.mask_image
    assert mask.getextrema() == (255, 255)


def test_a_finger_paints_too(browser, live_server):  # noqa: F811
    server = live_server()
    context = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True,
                                  is_mobile=True)
    try:
        page = context.new_page()
        open_painter(page, server)
        page.locator("#mask-canvas").scroll_into_view_if_needed()
        box = page.locator("#mask-canvas").bounding_box()
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator("#mask-paint-status")).to_contain_text("Painted mask")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
        page.screenshot(path=ARTIFACTS / "mask-painter-phone.png", full_page=True)
    finally:
        context.close()


def test_an_uploaded_mask_still_works_and_opens_in_the_painter(page, live_server):
    server = live_server()
    open_ready(page, server)
    upload(page, "#init-image-file", png(64, 64))
    upload(page, "#mask-image-file", png(64, 64, mask=True), name="mask.png")  # right half
    page.fill("#mask-blur", "0")
    page.fill("#prompt", "a door")
    page.click("#generate")
    expect(page.locator("#result-params")).to_contain_text("inpainting")
    mask = newest_job(server).request.mask_image
    assert mask.getpixel((48, 10)) == 255 and mask.getpixel((10, 10)) == 0
    first = newest_job(server).id

    page.click("#mask-paint-toggle")  # the file becomes the painting's start
    expect(page.locator("#mask-paint-status")).to_contain_text("about 50 %")
    expect(page.locator("#mask-image-thumb")).to_be_hidden()
    page.check("#mask-tool-eraser")
    set_range(page, "#mask-brush-size", 16)
    stroke(page, [(0.75, 0.01), (0.75, 0.99)])  # a 16 px column of the right half erased
    assert 20 <= painted_percent(page) <= 30
    page.click("#generate")
    expect(page.locator("#history .history-item")).to_have_count(2)
    second = newest_job(server)
    assert second.id != first
    mask = second.request.mask_image
    assert mask.getpixel((48, 32)) == 0 and mask.getpixel((36, 32)) == 255  # erased, kept
    assert mask.getpixel((10, 32)) == 0
