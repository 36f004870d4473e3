"""Names, not paths, on the page: a model given as a path (MODEL_ID=/.../tinyck.safetensors)
shows in the header as its name and A1111's short hash, and the model menu lists names.
Debian's chromium driven by Playwright against a live server on the tiny model."""
from __future__ import annotations

from tests.test_api_models import model_shelf  # noqa: F401  (a fixture: MODELS_DIR)
from tests.test_page_browser import (ARTIFACTS, browser, csp_violations,  # noqa: F401
                                     expect, open_ready, page)


def test_the_header_names_a_model_given_by_path_with_its_short_hash(page, live_server,
                                                                    model_shelf):
    path = str(model_shelf / "tinyck.safetensors")
    server = live_server(MODEL_ID=path, MODELS_DIR=str(model_shelf))
    open_ready(page, server)
    short_hash = server.app.extensions["sd_server"].engine.model.short_hash
    status = page.locator("#server-status")
    expect(status).to_contain_text(f"Ready · tinyck [{short_hash}] ·")
    assert str(model_shelf) not in status.inner_text()
    menu = page.locator("#model option").all_text_contents()  # (in the closed "More")
    assert any(text.startswith("tinyck ·") for text in menu), menu
    assert not any(str(model_shelf) in text for text in menu), menu
    page.screenshot(path=ARTIFACTS / "model-name-header.png")
