"""The page fills in a model's recipe (static/recipes.js) in a real browser (Debian's chromium
and Playwright, with tests/test_page_browser.py's fixtures) against a waitress server: picking
SD-Turbo puts its one step, Euler trailing, guidance 0 and size into the form and says the
negative prompt does nothing; the served model's recipe is filled in when the page opens; a
few-step LoRA brings its own; the request carries what the form shows."""
from __future__ import annotations

import json
import shutil

from tests.test_page_browser import (browser, csp_violations, expect, open_ready,  # noqa: F401
                                     page)


def form_recipe(page) -> tuple:
    """(steps, sampler, guidance, width, height) as the form shows them."""
    return tuple(page.input_value(f"#{name}") for name in (
        "steps", "scheduler", "guidance_scale", "width", "height"))


def test_picking_a_one_step_model_fills_in_its_recipe(page, live_server, family_model,
                                                      tmp_path, lora_dir):
    shutil.copytree(family_model("tiny-sd-turbo"), tmp_path / "models" / "turbo")
    server = live_server(MODELS_DIR=str(tmp_path / "models"), LORA_DIR=str(lora_dir),
                         DEFAULT_STEPS="3")
    open_ready(page, server)
    page.click("summary")
    expect(page.locator("#negative-hint")).to_be_hidden()
    assert form_recipe(page) == ("3", "default", "7.5", "64", "64")  # SD 1.x: the server's
    page.select_option("#model", "turbo")
    assert form_recipe(page) == ("1", "Euler trailing", "0", "64", "64")
    expect(page.locator("#negative-hint")).to_contain_text("a negative prompt changes nothing")
    expect(page.locator("#model-recipe")).to_have_text(
        "SD-Turbo: recommended 1 step, Euler trailing, guidance 0, 64×64.")
    page.select_option("#speed_preset", "fast")  # the model's steps win over the preset's
    assert form_recipe(page)[:2] == ("1", "Euler trailing")
    page.fill("#prompt", "a cat")
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#generate")
    body = json.loads(sent.value.post_data)
    assert (body["model"], body["steps"], body["scheduler"], body["guidance_scale"]) == (
        "turbo", 1, "Euler trailing", 0)
    expect(page.locator("#result-image")).to_be_visible()
    page.reload()  # the served model is SD-Turbo now: "Current model" is its recipe
    expect(page.locator("#generate")).to_be_enabled()
    page.click("summary")
    expect(page.locator("#steps")).to_have_value("1")
    assert form_recipe(page)[1:3] == ("Euler trailing", "0")


def test_a_few_step_lora_brings_its_recipe(page, live_server, lora_dir):
    server = live_server(LORA_DIR=str(lora_dir))
    open_ready(page, server)
    page.click("summary")
    page.select_option("#lora", "lcm-lora-tiny")
    page.click("#lora-add")
    assert form_recipe(page)[:3] == ("4", "LCM", "1")
    expect(page.locator("#negative-hint")).to_be_visible()
