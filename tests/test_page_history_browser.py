"""Every kept image on the page, in a real browser (Debian's chromium and Playwright, sharing
tests/test_page_browser.py's fixtures) against a waitress server on the tiny model: pages
through more images than fit one page, including ones only in OUTPUT_DIR; the viewer (a
modal dialog: focus stays inside, Escape closes) shows the settings the server parsed, fills
the form with them, makes the image the input, downloads it; delete asks first and needs
the credential."""
from __future__ import annotations

from tests.test_api_images import saved_png
from tests.test_page_browser import (ARTIFACTS, browser, csp_violations, expect,  # noqa: F401
                                     image_size, open_ready, page)
from tests.test_page_image_browser import newest_job


def generate(page, prompt: str, steps: str = "2", scheduler: str = "") -> None:
    """Make one image through the form and wait for it."""
    page.fill("#prompt", prompt)
    if not page.locator("#advanced").evaluate("d => d.open"):
        page.click("summary")
    page.fill("#steps", steps)
    if scheduler:
        page.select_option("#scheduler", scheduler)
    count = page.locator("#history .history-item").count()
    page.click("#generate")
    expect(page.locator("#history .history-item")).to_have_count(count + 1)


def gallery_names(page) -> list[str]:
    """The names of the images on the gallery's page, in order."""
    return page.eval_on_selector_all("#gallery .history-item", "items => items.map(i => i.dataset.name)")


def focus_in_viewer(page) -> bool:
    """Whether the focused element is inside the open viewer."""
    return page.evaluate("() => document.activeElement.closest('dialog')?.id === 'viewer'")


def test_pages_through_memory_and_disk_images(page, live_server, tmp_path):
    out = tmp_path / "out"
    server = live_server(OUTPUT_DIR=str(out))
    open_ready(page, server)
    generate(page, "a fresh cat")
    for n in range(13):  # only on disk: written after the start, older than the new image
        saved_png(out, f"old{n:02d}-{n}-an-old.png", n, age=1000 + n)
    page.reload()
    expect(page.locator("#gallery-status")).to_have_text("Images 1–12 of 14, newest first.")
    names = gallery_names(page)
    assert names[0].startswith(newest_job(server).id) and names[1:] == [
        f"old{n:02d}-{n}-an-old.png" for n in range(11)]
    expect(page.locator("#gallery-newer")).to_be_disabled()
    assert image_size(page, "#gallery .history-item:first-child img") == (64, 64)

    page.click("#gallery-older")
    expect(page.locator("#gallery-status")).to_have_text("Images 13–14 of 14, newest first.")
    assert gallery_names(page) == ["old11-11-an-old.png", "old12-12-an-old.png"]
    expect(page.locator("#gallery-older")).to_be_disabled()
    expect(page.locator("#gallery-newer")).to_be_focused()  # the focus stays on the pager
    page.screenshot(path=ARTIFACTS / "gallery-page-2.png", full_page=True)

    # A disk-only image's settings come from its infotext, read by the server's parser.
    page.click("#gallery [data-name='old12-12-an-old.png'] button")
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-title")).to_have_text("an old 12")
    expect(page.locator("#viewer-settings")).to_contain_text("CFG scale6")
    page.click("#viewer-reuse")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value("an old 12")
    expect(page.locator("#negative_prompt")).to_have_value("blur")
    expect(page.locator("#steps")).to_have_value("3")
    expect(page.locator("#guidance_scale")).to_have_value("6")
    expect(page.locator("#scheduler")).to_have_value("Euler")
    expect(page.locator("#seed")).to_have_value("12")
    expect(page.locator("#prompt")).to_be_focused()

    page.click("#gallery-newer")
    expect(page.locator("#gallery-status")).to_contain_text("Images 1–12 of 14")


def test_the_viewer_shows_settings_traps_focus_and_reuses_them(page, live_server):
    server = live_server()
    open_ready(page, server)
    generate(page, "a red bicycle", steps="3", scheduler="Euler")
    job = newest_job(server)
    page.fill("#prompt", "something else")
    page.fill("#steps", "5")

    opener = page.locator("#gallery .history-item button").first
    opener.click()
    viewer = page.get_by_role("dialog", name="a red bicycle")
    expect(viewer).to_be_visible()
    assert image_size(page, "#viewer-image") == (64, 64)
    settings = page.locator("#viewer-settings")
    for text in ("Prompta red bicycle", "Steps3", "SamplerEuler", f"Seed{job.seed}",
                 "Size-164"):
        expect(settings).to_contain_text(text)
    expect(page.locator("#viewer-parameters")).to_contain_text("Steps: 3, Sampler: Euler")
    assert focus_in_viewer(page)
    for _ in range(10):
        page.keyboard.press("Tab")
        assert focus_in_viewer(page)
    for _ in range(10):
        page.keyboard.press("Shift+Tab")
        assert focus_in_viewer(page)
    page.screenshot(path=ARTIFACTS / "viewer.png")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(opener).to_be_focused()

    opener.press("Enter")  # the keyboard opens it too
    expect(viewer).to_be_visible()
    download = page.locator("#viewer-download")
    expect(download).to_have_attribute("download", f"{job.id}.png")
    with page.expect_download() as got:
        download.click()
    assert got.value.suggested_filename == f"{job.id}.png"
    page.click("#viewer-reuse")
    expect(viewer).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value("a red bicycle")
    expect(page.locator("#steps")).to_have_value("3")
    expect(page.locator("#scheduler")).to_have_value("Euler")
    expect(page.locator("#seed")).to_have_value(str(job.seed))

    opener.click()
    page.click("#viewer-use-input")
    expect(viewer).to_be_hidden()
    assert image_size(page, "#init-image-thumb") == (64, 64)
    expect(page.locator("#init-image-info")).to_contain_text(f"{job.id}.png")
    expect(page.locator("#init-image-zone")).to_be_focused()


def test_delete_asks_first_and_needs_the_credential(page, live_server, tmp_path):
    out = tmp_path / "out"
    server = live_server(OUTPUT_DIR=str(out), API_KEY="k3y")
    open_ready(page, server)
    expect(page.locator("#gallery-status")).to_have_text("Sign in to see the kept images.")
    page.fill("#api-key", "k3y")
    page.click("#key-form button[type=submit]")
    generate(page, "a keeper")
    old = saved_png(out, "old00-0-an-old.png", 0, age=100)
    page.reload()
    expect(page.locator("#gallery-status")).to_have_text("Images 1–2 of 2, newest first.")
    doomed = page.locator("#gallery [data-name='old00-0-an-old.png'] button")

    doomed.click()
    page.click("#viewer-delete")
    question = page.get_by_role("alertdialog", name="Delete this image?")
    expect(question).to_be_visible()
    expect(page.locator("#confirm-keep")).to_be_focused()  # the safe answer first
    page.keyboard.press("Escape")  # closes the question only
    expect(question).to_be_hidden()
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-delete")).to_be_focused()
    page.click("#viewer-delete")
    page.click("#confirm-keep")
    expect(question).to_be_hidden()
    assert old.exists()

    page.click("#viewer-close")
    page.click("#forget-key")  # no credential now: the server refuses the delete
    doomed.click()
    page.click("#viewer-delete")
    with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
        page.click("#confirm-delete-ok")
    assert answer.value.status == 401
    expect(page.locator("#viewer-status")).to_contain_text("needs an API key")
    assert old.exists()

    page.click("#viewer-close")
    page.fill("#api-key", "k3y")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#gallery-status")).to_have_text("Images 1–2 of 2, newest first.")
    doomed.click()
    page.click("#viewer-delete")
    page.click("#confirm-delete-ok")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator("#gallery-status")).to_have_text(
        "Deleted old00-0-an-old.png. Images 1–1 of 1, newest first.")
    assert not old.exists()
    assert len(gallery_names(page)) == 1
    expect(page.locator("#gallery .history-item button").first).to_be_focused()

    # A generated image's job leaves "Recent images" with it.
    expect(page.locator("#history .history-item")).to_have_count(1)
    page.click("#gallery .history-item button")
    page.click("#viewer-delete")
    page.click("#confirm-delete-ok")
    expect(page.locator("#gallery-status")).to_contain_text("No kept images yet.")
    expect(page.locator("#history .history-item")).to_have_count(0)
    assert list(out.glob("*/*.png")) == []
