"""engine.resume on the tiny real pipeline: a run stopped after a checkpoint and resumed from
it gives the very bytes of an uninterrupted run with the same seed, for every sampler
(multistep, ancestral and SDE ones included), with DeepCache, a CFG cutoff, img2img and
inpainting; a damaged checkpoint starts the job over instead of failing it."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from engine import Engine
from engine.resume import Checkpoint
from params import SCHEDULERS, GenerationRequest

STEPS = 6
REQ = GenerationRequest(prompt="a red cube on a table", negative_prompt="blurry",
                        steps=STEPS, guidance_scale=7.5, width=64, height=64)


class Crash(Exception):
    """Stands in for the worker dying (kill -9) right after a step."""


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from config import Settings
    from tests.conftest import BASE_ENV

    settings = Settings.from_env({**BASE_ENV, "MODEL_ID": str(tiny_model_dir),
                                  "CHECKPOINT_STEPS": "2", "CHECKPOINT_MAX_COST": "1"})
    e = Engine(settings)
    e.load()
    assert e.status.state == "ready", e.status.error
    return e


def with_(**changes) -> GenerationRequest:
    return GenerationRequest(**{**REQ.to_dict(), **changes})


def interrupted(engine, request, seed: int, crash_after: int) -> list[tuple[int, bytes]]:
    """The checkpoints a run keeps before it 'crashes' after step `crash_after`."""
    kept: list[tuple[int, bytes]] = []

    def on_step(step, total, latents):
        if step == crash_after:
            raise Crash

    with pytest.raises(Crash):
        engine.generate(request, seed, on_step,
                        on_checkpoint=lambda data, step: kept.append((step, data)))
    return kept


def resumed(engine, request, seed: int, checkpoint: bytes) -> tuple[bytes, list[int]]:
    """The PNG of a run resumed from `checkpoint`, and the steps it reported."""
    steps: list[int] = []
    result = engine.generate(request, seed, lambda step, total, latents: steps.append(step),
                             resume_from=checkpoint)
    return result.png, steps


@pytest.mark.parametrize("sampler", ["default", *SCHEDULERS])
def test_a_resumed_run_gives_the_uninterrupted_bytes(engine, sampler):
    request = with_(scheduler=sampler)
    whole = engine.generate(request, 5).png
    kept = interrupted(engine, request, 5, crash_after=5)
    assert [step for step, _ in kept] == [2, 4]
    png, steps = resumed(engine, request, 5, kept[-1][1])
    assert png == whole
    assert steps[0] == 4 and steps[-1] == STEPS  # it goes on from the checkpoint


@pytest.mark.parametrize("changes", [
    {"deep_cache": 2}, {"deep_cache": 3}, {"cfg_cutoff": 0.5}, {"guidance_scale": 1.0},
    {"deep_cache": 2, "cfg_cutoff": 0.5, "scheduler": "DPM++ 2M SDE Karras"}],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_resuming_keeps_the_speed_options_bytes(engine, changes):
    request = with_(**changes)
    whole = engine.generate(request, 7).png
    kept = interrupted(engine, request, 7, crash_after=5)
    assert kept, "no checkpoint was kept"
    for _step, data in kept:  # from any of them
        assert resumed(engine, request, 7, data)[0] == whole


def test_deep_cache_checkpoints_only_where_no_cached_features_are_needed(engine):
    kept = interrupted(engine, with_(deep_cache=3), 7, crash_after=5)
    # Every 2 steps is asked for; with interval 3 only a step after which the next UNet call
    # is a full one qualifies, so the one due at step 2 waits for step 3.
    assert [step for step, _ in kept] == [3]
    assert Checkpoint.from_bytes(kept[0][1]).deep_cache_calls == 3


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_img2img_and_inpainting_resume_to_the_same_bytes(engine, mode):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    ImageDraw.Draw(init).rectangle((10, 10, 40, 40), fill=(20, 20, 220))
    changes = {"init_image": init, "strength": 1.0, "steps": 8}
    if mode == "inpaint":
        mask = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
        changes["mask_image"] = mask
    request = with_(**changes)
    whole = engine.generate(request, 3).png
    kept = interrupted(engine, request, 3, crash_after=5)
    assert resumed(engine, request, 3, kept[-1][1])[0] == whole


def test_a_damaged_checkpoint_starts_the_job_over(engine, caplog):
    whole = engine.generate(REQ, 9).png
    kept = interrupted(engine, REQ, 9, crash_after=5)
    damaged = kept[-1][1][: len(kept[-1][1]) // 2]
    with caplog.at_level("WARNING"):
        png, steps = resumed(engine, REQ, 9, damaged)
    assert png == whole and steps[0] == 1
    assert "starting over" in caplog.text


def test_checkpoints_respect_their_cost_bound(engine):
    """With a tiny cost bound only the first checkpoint is taken (it measures the cost;
    after it, checkpoints would cost more than the bound of the steps' time)."""
    settings = engine._generation.settings
    engine._generation.settings = settings.with_overrides(checkpoint_max_cost=1e-9)
    try:
        kept: list = []
        engine.generate(REQ, 1, on_checkpoint=lambda data, step: kept.append(step))
    finally:
        engine._generation.settings = settings
    assert kept == [2]  # the first is free (nothing spent yet); after it, over budget
