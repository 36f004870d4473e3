"""Expected time before generating: jobs.pace's arithmetic, and POST /estimate on the real
tiny pipeline (not measured yet, then within 25 % of the image just made)."""
from __future__ import annotations

from dataclasses import replace

from engine.status import GenerationResult
from jobs.pace import SLOW_SECONDS, estimate, expected_seconds, measured_pace, merged, pace_kind
from params import GenerationRequest

REQ = GenerationRequest(prompt="a cat", steps=20, width=64, height=64)
BODY = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 1}


def result(seconds: float, per_step: float) -> GenerationResult:
    """An engine's figures for one image (only the timings matter here)."""
    return GenerationResult(png=b"", seed=1, width=64, height=64, steps=20, seconds=seconds,
                            seconds_per_step=per_step)


def test_one_image_tells_any_step_count_of_its_kind():
    figures = measured_pace(REQ, result(12.0, 0.5))  # 20 steps x 0.5 s + 2 s around them
    assert figures["fixed_seconds"] == 2.0
    assert expected_seconds(figures, 20) == 12.0 and expected_seconds(figures, 40) == 22.0
    assert expected_seconds(None, 20) is None
    assert merged(figures, measured_pace(REQ, result(16.0, 0.7)))["seconds_per_step"] == 0.6


def test_kinds_differ_by_what_changes_a_steps_cost_not_by_steps():
    assert pace_kind(REQ, "m") == pace_kind(replace(REQ, steps=5, prompt="x"), "m")
    for other in (replace(REQ, width=128), replace(REQ, scheduler="Euler"),
                  replace(REQ, deep_cache=2), replace(REQ, guidance_scale=1.0),
                  replace(REQ, vae_decoder="tiny"), replace(REQ, init_image="img2img")):
        assert pace_kind(other, "m") != pace_kind(REQ, "m")
    assert pace_kind(REQ, "m") != pace_kind(REQ, "n")


def test_a_slow_kind_names_the_faster_presets_and_a_one_step_model():
    slow = measured_pace(REQ, result(SLOW_SECONDS * 2, SLOW_SECONDS * 2 / 21))
    answer = estimate(REQ, "m", {pace_kind(REQ, "m"): slow}, ["turbo"])
    assert answer["seconds"] > SLOW_SECONDS
    presets = {f["preset"]: f["seconds"] for f in answer["faster"] if "preset" in f}
    assert set(presets) == {"balanced", "fast"} and presets["fast"] < presets["balanced"]
    assert {"model": "turbo", "steps": 1, "seconds": None} in answer["faster"]
    fast = estimate(REQ, "m", {pace_kind(REQ, "m"): measured_pace(REQ, result(3.0, 0.1))})
    assert fast["seconds"] == 3.0 and fast["faster"] == []


def test_estimate_is_not_measured_until_an_image_of_that_kind_then_close_to_it(client):
    r = client.post("/estimate", json=BODY)
    assert r.status_code == 200
    assert r.json["seconds"] is None and not r.json["measured"] and r.json["model"] == "tiny"
    made = client.post("/generate", json=BODY)
    took = float(made.headers["X-Generation-Seconds"])
    r = client.post("/estimate", json={**BODY, "seed": 5, "prompt": "a dog"})
    assert r.json["measured"] and abs(r.json["seconds"] - took) <= 0.25 * took, (r.json, took)
    other = client.post("/estimate", json={**BODY, "width": 128})
    assert other.json["seconds"] is None  # another size: another kind
    assert client.post("/estimate", json={**BODY}, query_string={"mode": "img2img"}
                       ).json["seconds"] is None
    assert client.post("/estimate", json={**BODY, "steps": 0}).status_code == 400
