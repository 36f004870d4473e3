"""The engine on tiny random models of every family (SD 2.x 768-v, SD-Turbo, SDXS-512 and
SDXS-DreamShaper shapes, built by engine.random_model and loaded through from_pretrained as a
user's folder is): each loads and makes the image plain diffusers makes with the same seed;
/health lists only what was applied; guidance at or below 1 runs the UNet at batch 1 with
every sampler; what a family cannot run is refused with the reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine
from errors import LoraError, UnsupportedRequest
from params import SCHEDULERS, GenerationRequest


@pytest.fixture
def engine_for(make_settings, family_model, tiny_model_dir):
    """`engine_for(arch)`: a loaded Engine serving that architecture's tiny model."""
    def make(arch: str, **env: str) -> Engine:
        folder = tiny_model_dir if arch == "tiny" else family_model(arch)
        engine = Engine(make_settings(MODEL_ID=str(folder), **env))
        engine.load()
        assert engine.status.state == "ready", engine.status.error
        return engine

    return make


def pixels(png: bytes) -> np.ndarray:
    """The image's RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def plain_pipeline(folder, scheduler=None):
    """diffusers' own StableDiffusionPipeline on the folder, with `scheduler(config)` if given."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = scheduler(pipe.scheduler.config)
    return pipe


def _euler_trailing(config):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")


def _euler(config):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config)


def _ddim_trailing(config):
    """As ByteDance/Hyper-SD's model card builds it from SD 1.5's scheduler config, which
    says clip_sample false (the tiny model's PNDM config does not carry that key)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False)


def _tcd(config):  # as h1t/TCD-SD15-LoRA's model card builds it
    from diffusers import TCDScheduler

    return TCDScheduler.from_config(config)


@pytest.mark.parametrize("arch,sampler,reference,steps,guidance,eta", [
    ("tiny-sd2-v", "default", None, 2, 7.5, None),         # DDIM, v-prediction, its own
    ("tiny-sd2-v", "Euler", _euler, 2, 7.5, None),         # another sampler stays v
    ("tiny-sd-turbo", "default", None, 1, 0.0, None),      # Euler trailing, its own
    ("tiny-sdxs", "Euler trailing", _euler_trailing, 1, 0.0, None),
    ("tiny-sdxs-dreamshaper", "Euler trailing", _euler_trailing, 1, 0.0, None),
    ("tiny", "DDIM trailing", _ddim_trailing, 2, 0.0, None),
    ("tiny", "TCD", _tcd, 2, 0.0, 0.3),
])
def test_every_family_makes_plain_diffusers_image(engine_for, family_model, tiny_model_dir,
                                                  arch, sampler, reference, steps, guidance,
                                                  eta):
    engine = engine_for(arch)
    request = GenerationRequest(prompt="a red fox", negative_prompt="", steps=steps,
                                guidance_scale=guidance, width=64, height=64,
                                scheduler=sampler, eta=eta)
    ours = pixels(engine.generate(request, seed=11).png)
    folder = tiny_model_dir if arch == "tiny" else family_model(arch)
    plain = plain_pipeline(folder, reference)
    extra = {} if eta is None else {"eta": eta}
    ref = plain("a red fox", num_inference_steps=steps, guidance_scale=guidance, width=64,
                height=64, generator=torch.Generator("cpu").manual_seed(11), **extra).images[0]
    assert np.array_equal(ours, np.asarray(ref.convert("RGB")))


def test_v_prediction_is_read_from_the_scheduler_config(engine_for):
    engine = engine_for("tiny-sd2-v")
    for sampler in ("default", "Euler", "DPM++ 2M", "TCD"):
        view = engine._pipeline_for("txt2img", sampler)
        assert view.scheduler.config.prediction_type == "v_prediction", sampler
    family = engine.info()["family"]
    assert (family["id"], family["prediction_type"], family["native_size"]) == (
        "sd2", "v_prediction", 96)
    assert family["label"] == "SD 2.x (v-prediction)"


def test_sdxs_loads_with_its_tiny_vae_and_health_lists_only_what_applies(engine_for):
    """The banded decode and the in-place SiLUs are the full VAE's; SDXS's own vae/ is an
    AutoencoderTiny, which keeps diffusers' decode (and vae_large/ stays on disk)."""
    for arch in ("tiny-sdxs", "tiny-sdxs-dreamshaper"):
        engine = engine_for(arch)
        assert type(engine.pipe.vae).__name__ == "AutoencoderTiny"
        assert engine.pipe.unet.mid_block is None
        optimizations = engine.info()["optimizations"]
        assert "vae-decode-in-row-bands" not in optimizations
        assert "low-memory-vae-decode" not in optimizations
        family = engine.info()["family"]
        assert (family["id"], family["mid_block"], family["tiny_vae"]) == ("sdxs", False, True)
        assert family["openclip"] is (arch == "tiny-sdxs")
    full = engine_for("tiny-sd-turbo").info()["optimizations"]
    assert "vae-decode-in-row-bands" in full and "low-memory-vae-decode" in full


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_guidance_at_or_below_one_runs_the_unet_at_batch_one_for_every_sampler(engine_for,
                                                                               guidance):
    """diffusers skips classifier-free guidance when guidance_scale <= 1
    (`do_classifier_free_guidance`): one UNet pass of batch 1 per step, whatever the sampler."""
    engine = engine_for("tiny")
    batches = []
    hook = engine.pipe.unet.register_forward_pre_hook(
        lambda _module, args, kwargs: batches.append((args[0] if args else kwargs["sample"])
                                                     .shape[0]), with_kwargs=True)
    try:
        for sampler in ("default", *SCHEDULERS):
            batches.clear()
            engine.generate(GenerationRequest(prompt="a cat", steps=2, width=64, height=64,
                                              guidance_scale=guidance, scheduler=sampler), 1)
            assert batches and set(batches) == {1}, sampler
        batches.clear()
        engine.generate(GenerationRequest(prompt="a cat", steps=2, width=64, height=64,
                                          guidance_scale=7.5), 1)
        assert set(batches) == {2}  # with CFG: [negative, positive]
    finally:
        hook.remove()


def test_deep_cache_on_a_unet_without_a_mid_block_is_refused_by_name(engine_for):
    engine = engine_for("tiny-sdxs")
    request = GenerationRequest(prompt="a cat", steps=2, guidance_scale=0, width=64,
                                height=64, deep_cache=2)
    with pytest.raises(UnsupportedRequest, match="no mid block"):
        engine.generate(request, 1)
    assert engine.generate(GenerationRequest(prompt="a cat", steps=1, guidance_scale=0,
                                             width=64, height=64), 1).png  # goes on


def test_an_sd1_lora_on_another_family_is_refused_by_name(engine_for, make_settings,
                                                          lora_dir):
    engine = engine_for("tiny-sd-turbo", LORA_DIR=str(lora_dir))
    request = GenerationRequest(prompt="a cat", steps=1, guidance_scale=0, width=64,
                                height=64, loras=(("style-peft", 1.0, 1.0),))
    with pytest.raises(LoraError, match="32-wide text embeddings.*has 48-wide"):
        engine.generate(request, 1)
    engine = engine_for("tiny-sdxs-dreamshaper", LORA_DIR=str(lora_dir))
    with pytest.raises(LoraError, match="mid block"):
        engine.generate(request, 1)


def test_the_tiny_decoder_runs_on_sdxs_too(engine_for, taesd_dir):
    engine = engine_for("tiny-sdxs", TAESD_MODEL=str(taesd_dir))
    request = GenerationRequest(prompt="a cat", steps=1, guidance_scale=0, width=64,
                                height=64, scheduler="Euler trailing", vae_decoder="tiny")
    result = engine.generate(request, 3)
    assert "VAE: TAESD" in result.parameters and result.width == 64
