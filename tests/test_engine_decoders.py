"""engine.decoders and previews: TAESD (a random-weight AutoencoderTiny here: the real one
is on the Hub, which this machine cannot reach) decodes final images on request and draws
the live previews whenever it is loaded; without it previews use the linear map."""
import io

import pytest
import torch
from PIL import Image

from engine import Engine
from params import GenerationRequest

REQ = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64)


@pytest.fixture
def with_taesd(make_settings, taesd_dir):
    e = Engine(make_settings(TAESD_MODEL=str(taesd_dir)))
    e.load()
    assert e.status.state == "ready", e.status.error
    return e


def test_tiny_decoder_is_per_request_and_deterministic(with_taesd):
    full = with_taesd.generate(REQ, 5)
    tiny = with_taesd.generate(GenerationRequest(**{**REQ.to_dict(), "vae_decoder": "tiny"}), 5)
    assert tiny.png != full.png
    assert Image.open(io.BytesIO(tiny.png)).size == (64, 64)
    assert "VAE: TAESD" in Image.open(io.BytesIO(tiny.png)).info["parameters"]
    again = with_taesd.generate(GenerationRequest(**{**REQ.to_dict(), "vae_decoder": "tiny"}), 5)
    assert again.png == tiny.png
    assert with_taesd.generate(REQ, 5).png == full.png  # the full VAE is untouched


def test_previews_use_taesd_when_it_is_loaded(with_taesd, make_settings):
    assert "taesd-previews" in with_taesd.info()["optimizations"]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    taesd_preview = Image.open(io.BytesIO(with_taesd.preview_png(latents)))
    plain = Engine(make_settings())  # TAESD_MODEL empty: the linear map
    linear_preview = Image.open(io.BytesIO(plain.preview_png(latents)))
    assert taesd_preview.size == linear_preview.size == (32, 32)
    assert taesd_preview.tobytes() != linear_preview.tobytes()


def test_tiny_decoder_without_taesd_fails_the_load_with_advice(make_settings, tmp_path):
    e = Engine(make_settings(VAE_DECODER="tiny", TAESD_MODEL=str(tmp_path / "missing")))
    e.load()
    assert e.status.state == "failed"
    assert "VAE_DECODER=tiny" in e.status.error and "TAESD_MODEL" in e.status.error
    assert "VAE_DECODER=full" in e.status.error


def test_missing_taesd_only_downgrades_previews(make_settings, tmp_path):
    e = Engine(make_settings(TAESD_MODEL=str(tmp_path / "missing")))
    e.load()
    assert e.status.state == "ready" and e.taesd is None
    assert "taesd-previews" not in e.info()["optimizations"]
    # A request for the tiny decoder then falls back to the full VAE (the job is not lost).
    tiny = e.generate(GenerationRequest(**{**REQ.to_dict(), "vae_decoder": "tiny"}), 5)
    full = e.generate(REQ, 5)
    assert tiny.png == full.png  # same pixels, and the PNG does not claim TAESD
