"""The page's input image, mask and sign-in panel in a real browser (Debian's chromium and
Playwright, as tests/test_page_browser.py, whose fixtures these tests share) against a
waitress server on the tiny model: upload, drag and drop, "use as input", inpainting,
refused files, server errors and HTTP Basic credentials."""
from __future__ import annotations

import base64
import io
import json
import urllib.request

from PIL import Image

from tests.test_page_browser import (ARTIFACTS, browser, csp_violations, expect,  # noqa: F401
                                     image_size, open_ready, page)


def png(width: int, height: int, mask: bool = False) -> bytes:
    """A small PNG: a colour gradient, or a mask whose right half is white (repaint)."""
    if mask:
        image = Image.new("L", (width, height), 0)
        image.paste(255, (width // 2, 0, width, height))
    else:
        image = Image.new("RGB", (width, height))
        image.putdata([(x * 255 // width, y * 255 // height, 128)
                       for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def upload(page, selector: str, data: bytes, name: str = "photo.png",
           mime: str = "image/png") -> None:
    """Choose a file in a file input, as the picker would."""
    page.set_input_files(selector, {"name": name, "mimeType": mime, "buffer": data})


def job_json(server, job_id: str, auth: str = "") -> dict:
    """GET /jobs/<id>: what the server recorded of the request."""
    request = urllib.request.Request(f"{server.url}/jobs/{job_id}")
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def newest_job(server):
    """The job the server received last."""
    return server.app.extensions["sd_server"].queue.recent(1)[0]


def test_uploaded_image_and_strength_travel_with_the_request(page, live_server):
    server = live_server()
    open_ready(page, server)
    expect(page.locator("#init-image-options")).to_be_hidden()  # strength only with an image
    upload(page, "#init-image-file", png(96, 64))
    expect(page.locator("#init-image-info")).to_have_text("photo.png · 96×64")
    assert image_size(page, "#init-image-thumb") == (96, 64)
    assert page.get_attribute("#init-image-thumb", "src").startswith("blob:")
    page.focus("#strength")
    for _ in range(3):  # keyboard: 0.75 -> 0.60
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#strength-value")).to_have_text("0.60")
    page.click("summary")
    expect(page.locator("#width")).to_have_value("")  # "from the input image"
    expect(page.locator("#size-hint")).to_contain_text("96×64")
    page.fill("#steps", "4")
    expect(page.locator("#strength-hint")).to_contain_text("2 of 4 steps run")
    page.fill("#prompt", "the same scene at night")
    page.screenshot(path=ARTIFACTS / "input-image.png", full_page=True)
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#generate")
    body = json.loads(sent.value.post_data)
    assert body["init_image"].startswith("data:image/png;base64,")
    assert "width" not in body and "height" not in body  # the server fits the image
    assert sent.value.all_headers()["x-requested-with"] == "sd-cpu-page"

    assert image_size(page, "#result-image") == (96, 64)  # the input image's aspect
    expect(page.locator("#result-params")).to_contain_text("image to image, strength 0.6")
    job = job_json(server, newest_job(server).id)
    assert job["request"]["init_image"] == {"width": 96, "height": 64}
    assert job["request"]["strength"] == 0.6
    assert job["total_steps"] == 2  # steps x strength

    page.click("#init-image-remove")  # back to text-to-image and the sizes chosen before
    expect(page.locator("#init-image-options")).to_be_hidden()
    expect(page.locator("#width")).to_have_value("64")
    expect(page.locator("#init-image-zone")).to_be_focused()


def test_an_image_dropped_on_the_zone_becomes_the_input(page, live_server):
    server = live_server()
    # Playwright turns file-chooser interception on without waiting for the browser; asking
    # early keeps a fast Enter below from racing it (the dialog would open unseen).
    page.on("filechooser", lambda chooser: None)
    open_ready(page, server)
    page.evaluate("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        const zone = document.getElementById("init-image-zone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true,
                                                     cancelable: true }));
        }
    }""", base64.b64encode(png(64, 128)).decode())
    assert image_size(page, "#init-image-thumb") == (64, 128)
    expect(page.locator("#init-image-info")).to_contain_text("dropped.png")
    expect(page.locator("#strength")).to_be_visible()

    # The zone is a keyboard button: Enter opens the file picker.
    page.focus("#init-image-zone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files({"name": "picked.png", "mimeType": "image/png",
                             "buffer": png(128, 64)})
    expect(page.locator("#init-image-info")).to_contain_text("picked.png · 128×64")


def test_use_as_input_feeds_the_result_into_the_next_request(page, live_server):
    server = live_server()
    open_ready(page, server)
    page.fill("#prompt", "a red door")
    page.click("#generate")
    assert image_size(page, "#result-image") == (64, 64)
    first = newest_job(server)
    expect(page.locator("#init-image-thumb")).to_be_hidden()

    page.click("#use-as-input")
    assert image_size(page, "#init-image-thumb") == (64, 64)
    expect(page.locator("#init-image-info")).to_contain_text(f"a-red-door-{first.seed}.png")
    expect(page.locator("#init-image-zone")).to_be_focused()
    page.click("#generate")
    expect(page.locator("#result-params")).to_contain_text("image to image")
    second = newest_job(server)
    assert second.id != first.id
    sent = second.request.init_image  # the very pixels of the first result
    assert sent.size == (64, 64)
    assert sent.tobytes() == Image.open(io.BytesIO(first.png)).convert("RGB").tobytes()


def test_a_mask_makes_an_inpainting_job(page, live_server):
    server = live_server()
    open_ready(page, server)
    upload(page, "#init-image-file", png(64, 64))
    upload(page, "#mask-image-file", png(96, 64, mask=True), name="wrong.png")
    expect(page.locator("#form-error")).to_contain_text("must be the input image's size, 64×64")
    expect(page.locator("#mask-image-thumb")).to_be_hidden()

    upload(page, "#mask-image-file", png(64, 64, mask=True), name="mask.png")
    assert image_size(page, "#mask-image-thumb") == (64, 64)
    expect(page.locator("#form-error")).to_be_empty()
    page.fill("#prompt", "a window in the wall")
    page.click("#generate")
    expect(page.locator("#result-params")).to_contain_text("inpainting")
    job = job_json(server, newest_job(server).id)
    assert job["request"]["mask_image"] == {"width": 64, "height": 64}
    assert job["request"]["init_image"] == {"width": 64, "height": 64}

    page.click("#init-image-remove")  # no input image, no mask
    upload(page, "#init-image-file", png(64, 64))
    expect(page.locator("#mask-image-thumb")).to_be_hidden()


def test_files_that_are_not_images_and_server_refusals_show_in_the_error_area(page,
                                                                               live_server):
    server = live_server()
    open_ready(page, server)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    upload(page, "#init-image-file", b"just some notes\n", name="notes.txt", mime="text/plain")
    expect(page.get_by_role("alert")).to_contain_text('"notes.txt" is not an image')
    upload(page, "#init-image-file", b"\x89PNG not really", name="fake.png")
    expect(page.get_by_role("alert")).to_contain_text('"fake.png" is not an image')
    expect(page.locator("#init-image-options")).to_be_hidden()
    expect(page.locator("#init-image-thumb")).to_be_hidden()
    assert posts == []

    # The server's own refusal, naming the field: 2 steps x 0.05 runs no step.
    upload(page, "#init-image-file", png(64, 64))
    page.fill("#strength", "0.05")
    expect(page.locator("#strength-hint")).to_contain_text("too few")
    page.fill("#prompt", "barely changed")
    page.click("#generate")
    expect(page.get_by_role("alert")).to_contain_text("raise 'strength'")
    expect(page.locator("#generate")).to_be_enabled()
    assert server.app.extensions["sd_server"].queue.recent() == []


def test_basic_credentials_are_asked_for_kept_in_the_tab_and_sent(page, live_server):
    server = live_server(API_AUTH="ann:pa55:word")
    open_ready(page, server)
    expect(page.locator("#auth-user")).to_be_visible()
    expect(page.locator("#api-key")).to_be_hidden()  # API_AUTH alone: no key to ask for
    page.fill("#prompt", "a guarded gate")
    page.click("#generate")
    expect(page.locator("#form-error")).to_contain_text("needs a user name and password")
    expect(page.locator("#key-status")).to_contain_text("Enter the credentials")
    assert server.app.extensions["sd_server"].queue.recent() == []

    page.fill("#auth-user", "ann")
    page.fill("#auth-password", "pa55:word")  # a colon in the password is allowed
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-status")).to_contain_text("Signed in")
    page.click("#generate")
    assert image_size(page, "#result-image") == (64, 64)  # fetched with the credential
    storage = page.evaluate("() => [JSON.stringify(localStorage), JSON.stringify(sessionStorage)]")
    token = base64.b64encode(b"ann:pa55:word").decode()
    assert token not in storage[0] and "pa55" not in storage[0]  # never in localStorage
    assert token in storage[1]
    job = job_json(server, newest_job(server).id, auth=f"Basic {token}")
    assert job["state"] == "succeeded"

    page.reload()  # the same tab keeps the credential; the history loads with it
    expect(page.locator("#history .history-item")).to_have_count(1)
    expect(page.locator("#auth-user")).to_have_value("ann")
    expect(page.locator("#auth-password")).to_have_value("")


def test_with_both_credentials_configured_the_page_offers_either(page, live_server):
    server = live_server(API_KEY="k3y", API_AUTH="ann:pw")
    open_ready(page, server)
    expect(page.locator("#key-intro")).to_have_text(
        "This server needs its API key, or a user name and password.")
    expect(page.locator("#api-key")).to_be_visible()
    expect(page.locator("#auth-user")).to_be_visible()
    page.fill("#auth-user", "ann")
    page.fill("#auth-password", "pw")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#history-empty")).to_have_text("Nothing yet.")  # the list loaded


def test_the_model_menu_lists_models_dir_and_switches(page, live_server, tmp_path):
    from engine.random_model import build_random_pipeline

    build_random_pipeline(tmp_path / "models" / "second", "tiny", seed=1)
    server = live_server(MODELS_DIR=str(tmp_path / "models"))
    open_ready(page, server)
    page.click("summary")
    options = page.locator("#model option").all_text_contents()
    assert options[0] == "Current model" and "second · SD 1.x" in options
    page.select_option("#model", "second")
    page.fill("#prompt", "a cat")
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#generate")
    assert json.loads(sent.value.post_data)["model"] == "second"
    expect(page.locator("#result-image")).to_be_visible()
    assert newest_job(server).request.model == "second"
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        assert json.load(response)["model"] == "second"


def test_the_lora_menu_adds_a_tag_that_reaches_the_server(page, live_server, lora_dir):
    server = live_server(LORA_DIR=str(lora_dir))
    open_ready(page, server)
    page.click("summary")
    options = page.locator("#lora option").all_text_contents()
    assert "style-peft" in options and "lcm-lora-tiny (LCM: 4 steps, LCM, guidance 1)" in options
    page.fill("#prompt", "a cat")
    page.select_option("#lora", "style-peft")
    page.click("#lora-add")
    page.click("#lora-add")  # once is enough: no second tag
    expect(page.locator("#prompt")).to_have_value("a cat <lora:style-peft:1>")
    page.click("#generate")
    expect(page.locator("#result-image")).to_be_visible()
    assert newest_job(server).request.loras == (("style-peft", 1.0, 1.0),)
