"""The hires fix on the tiny real pipeline: output size, progress across both passes, both
kinds of upscaler, the second pass on the loaded modules, the infotext, determinism."""
import io

import pytest
from PIL import Image

from engine import Engine
from params import GenerationRequest
from params.hires import HiresFix
from params.infotext import parse_parameters, request_from_infotext


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine


def hires_request(**hires) -> GenerationRequest:
    return GenerationRequest(prompt="a red cube", steps=3, width=64, height=64,
                             scheduler="Euler", hires=HiresFix(**{
                                 "scale": 2, "steps": 2, "denoising_strength": 0.5, **hires}))


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)",
                                      "Latent (nearest-exact)", "Lanczos", "None"])
def test_output_is_the_hires_size_and_progress_counts_both_passes(engine, upscaler):
    steps = []
    result = engine.generate(hires_request(upscaler=upscaler), seed=7,
                             on_step=lambda step, total, latents: steps.append(
                                 (step, total, tuple(latents.shape[2:]))))
    image = Image.open(io.BytesIO(result.png))
    assert image.size == (128, 128) and (result.width, result.height) == (128, 128)
    # 3 first-pass steps at 64 px (8x8 latents), then 2 at 128 px (16x16), of 5 in all
    assert steps == [(1, 5, (8, 8)), (2, 5, (8, 8)), (3, 5, (8, 8)),
                     (4, 5, (16, 16)), (5, 5, (16, 16))]
    values = parse_parameters(image.info["parameters"])
    assert values["Hires upscaler"] == upscaler and values["Hires upscale"] == "2"
    assert values["Hires steps"] == "2" and values["Denoising strength"] == "0.5"
    assert (values["Size-1"], values["Size-2"]) == ("64", "64")  # the first pass, as A1111
    assert request_from_infotext(image.info["parameters"])[0].hires == hires_request(
        upscaler=upscaler).hires


def test_second_pass_is_deterministic_and_changes_the_picture(engine):
    a = engine.generate(hires_request(), seed=3)
    assert engine.generate(hires_request(), seed=3).png == a.png
    stronger = engine.generate(hires_request(denoising_strength=1.0), seed=3)
    assert stronger.png != a.png
    lanczos = engine.generate(hires_request(upscaler="Lanczos"), seed=3)
    assert lanczos.png != a.png


def test_resize_to_another_aspect_crops_and_hires_steps_default_to_steps(engine):
    steps = []
    result = engine.generate(hires_request(width=128, height=96, steps=0), seed=1,
                             on_step=lambda step, total, _latents: steps.append((step, total)))
    assert Image.open(io.BytesIO(result.png)).size == (128, 96)
    assert steps[-1] == (6, 6)  # 3 + 3: the second pass runs as many as the first


def test_second_pass_runs_on_the_loaded_modules(engine, monkeypatch):
    """No weight copy: the second pass's pipeline holds the loaded UNet, VAE and encoder."""
    from engine.generation import Generation

    views = []
    original = Generation.pipeline_for

    def spy(self, mode, scheduler):
        view = original(self, mode, scheduler)
        views.append((mode, view))
        return view

    monkeypatch.setattr(Generation, "pipeline_for", spy)
    engine.generate(hires_request(scheduler="DDIM"), seed=2)
    assert [mode for mode, _ in views] == ["txt2img", "img2img"]
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(views[1][1], name) is getattr(engine.pipe, name)
    assert type(views[1][1].scheduler).__name__ == "DDIMScheduler"


def test_a_cancel_in_the_second_pass_stops_the_job(engine):
    class Stop(Exception):
        pass

    def on_step(step, total, _latents):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        engine.generate(hires_request(), seed=1, on_step=on_step)
    assert engine.generate(GenerationRequest(prompt="x", steps=1, width=64, height=64),
                           seed=1).width == 64  # the engine goes on


@pytest.fixture(scope="module")
def resuming_engine(tiny_model_dir):
    from config import Settings
    from tests.conftest import BASE_ENV

    e = Engine(Settings.from_env({**BASE_ENV, "MODEL_ID": str(tiny_model_dir),
                                  "CHECKPOINT_STEPS": "2", "CHECKPOINT_MAX_COST": "1"}))
    e.load()
    assert e.status.state == "ready", e.status.error
    return e


def test_a_job_stopped_in_the_second_pass_resumes_from_a_first_pass_checkpoint(
        resuming_engine):
    """Checkpoints are kept in the first pass only; resumed from one, the job replays the
    first pass to it, runs the second whole, and makes the uninterrupted run's bytes."""
    from tests.test_engine_resume import interrupted, resumed

    request = GenerationRequest(prompt="a red cube", steps=6, width=64, height=64,
                                hires=HiresFix(scale=2, steps=2, denoising_strength=0.5))
    whole = resuming_engine.generate(request, 5)
    kept = interrupted(resuming_engine, request, 5, crash_after=7)
    assert [step for step, _ in kept][:2] == [2, 4] and kept[-1][0] <= 6  # first pass only
    for step, checkpoint in kept:
        png, steps = resumed(resuming_engine, request, 5, checkpoint)
        assert steps[0] == step and steps[-1] == 8 and png == whole.png  # 6 + 2 steps


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_vae_tiles_at_the_hires_size_only_for_that_job(engine, monkeypatch, upscaler):
    """HIRES_VAE_TILES=on decodes (and encodes) the large image in the VAE's own tiles: same
    size, pixels blended at the seams (so not the untiled bytes); the shared VAE is left
    untiled after the job, and off is the one exact pass."""
    from dataclasses import replace

    tiled = engine.generate(hires_request(upscaler=upscaler), seed=4)
    assert engine.pipe.vae.use_tiling is False
    monkeypatch.setattr(engine._generation, "settings",
                        replace(engine._generation.settings, hires_vae_tiles="off"))
    exact = engine.generate(hires_request(upscaler=upscaler), seed=4)
    assert (exact.width, exact.height) == (tiled.width, tiled.height) == (128, 128)
    assert exact.png != tiled.png


@pytest.mark.parametrize("arch", ["tiny-sdxs", "tiny-sd2-v"])
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_other_families_run_the_hires_fix(make_settings, family_model, arch, upscaler):
    """SDXS's own VAE is a tiny one (its encode gives latents, not a distribution); SD 2.x is
    v-prediction: both run both kinds of upscaler."""
    e = Engine(make_settings(MODEL_ID=str(family_model(arch))))
    e.load()
    assert e.status.state == "ready", e.status.error
    request = GenerationRequest(prompt="a cat", steps=1, width=64, height=64, hires=HiresFix(
        scale=1.5, upscaler=upscaler, steps=1, denoising_strength=0.6))
    result = e.generate(request, seed=1)
    assert (result.width, result.height) == (96, 96)


def test_the_second_pass_runs_the_guidance_halves_in_turn(engine, monkeypatch):
    """At the hires size the UNet sees the unconditional and conditional latents one at a
    time (its activations set the image's peak memory there), to the batch's picture."""
    import numpy as np

    from engine import hires

    batches = []
    # conv_in is the UNet's first layer: it sees every real call's latents
    hook = engine.pipe.unet.conv_in.register_forward_pre_hook(
        lambda _module, args: batches.append((args[0].shape[0], tuple(args[0].shape[2:]))))
    try:
        halves = engine.generate(hires_request(), seed=5)
        assert set(batches[:3]) == {(2, (8, 8))}  # the first pass: one CFG batch per step
        assert set(batches[3:]) == {(1, (16, 16))} and len(batches[3:]) == 4  # 2 steps x 2
        assert "forward" not in engine.pipe.unet.__dict__  # the class's forward again
        real = hires.guidance_halves_in_turn
        monkeypatch.setattr(hires, "guidance_halves_in_turn",
                            lambda unet, split=True: real(unet, split=False))
        monkeypatch.setattr("engine.generation.guidance_halves_in_turn",
                            hires.guidance_halves_in_turn)
        batches.clear()
        whole = engine.generate(hires_request(), seed=5)
        assert set(batches[3:]) == {(2, (16, 16))}
    finally:
        hook.remove()
    a, b = (np.asarray(Image.open(io.BytesIO(r.png)), dtype=np.int16) for r in (halves, whole))
    assert np.abs(a - b).max() <= 2
