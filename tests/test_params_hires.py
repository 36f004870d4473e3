"""The hires fix's request side: sizes and step counts as A1111 computes them, the native
`hires` object's validation, the record round trip and the infotext written and read back."""
import json

import pytest

from config import Settings
from errors import ValidationError
from params import GenerationRequest, parse_generation_request
from params.hires import HiresFix, hires_sizes, second_pass_schedule
from params.infotext import parse_parameters, request_from_infotext, write_infotext

from tests.conftest import BASE_ENV


@pytest.fixture
def settings():
    return Settings.from_env({**BASE_ENV, "MAX_HIRES_SIZE": "512"})


@pytest.mark.parametrize("hires, upscale, output", [
    (HiresFix(scale=2), (1024, 768), (1024, 768)),
    (HiresFix(scale=1.5), (768, 576), (768, 576)),
    (HiresFix(width=1024), (1024, 768), (1024, 768)),
    (HiresFix(height=600), (800, 600), (800, 600)),
    (HiresFix(width=1000, height=1000), (1328, 1000), (1000, 1000)),  # cover, then crop
    (HiresFix(width=1024, height=512), (1024, 768), (1024, 512)),
])
def test_sizes_follow_a1111(hires, upscale, output):
    assert hires_sizes(512, 384, hires) == (upscale, output)


@pytest.mark.parametrize("steps, strength, expected", [
    (10, 0.5, (20, 10)), (10, 0.7, (15, 10)), (4, 1.0, (4, 4)), (3, 0.3, (10, 3)),
    (20, 0.01, (1000, 10)),  # capped at the scheduler's 1000 training steps
])
def test_second_pass_runs_the_asked_steps(steps, strength, expected):
    hires = HiresFix(steps=steps, denoising_strength=strength)
    assert second_pass_schedule(99, hires) == expected
    assert second_pass_schedule(steps, HiresFix(denoising_strength=strength)) == expected


def test_native_hires_object_is_validated_and_counted(settings):
    request = parse_generation_request({"prompt": "a cat", "steps": 3, "hires": {
        "scale": 2, "upscaler": "Lanczos", "steps": 2, "denoising_strength": 0.5,
        "prompt": "", "scheduler": "Euler a"}}, settings)
    assert request.hires == HiresFix(scale=2.0, upscaler="Lanczos", steps=2,
                                     denoising_strength=0.5, scheduler="Euler a")
    assert request.denoising_steps == 3 + 2  # both passes
    # as the job journal (JSON in SQLite) and the Redis backend keep it
    assert GenerationRequest.from_record(json.loads(json.dumps(request.to_record()))) == request
    assert request.to_dict()["hires"]["upscaler"] == "Lanczos"
    assert parse_generation_request({"prompt": "a cat", "hires": None}, settings).hires is None
    assert parse_generation_request({"prompt": "a", "hires": True}, settings).hires == HiresFix()


@pytest.mark.parametrize("hires, field, words", [
    ({"upscaler": "ESRGAN_9x"}, "hires.upscaler", "'Latent'"),
    ({"scale": 5}, "hires.scale", "1..4"),
    ({"scale": 0.5}, "hires.scale", "1..4"),
    ({"scale": 3}, "hires.scale", "MAX_HIRES_SIZE"),  # 192 x 3 = 576 > 512
    ({"width": 1024}, "hires.width", "0..512"),
    ({"denoising_strength": 0}, "hires.denoising_strength", "greater than 0"),
    ({"steps": 51}, "hires.steps", "MAX_STEPS"),
    ({"colour": 1}, "hires.colour", "allowed"),
    ("yes", "hires", "object"),
])
def test_bad_hires_objects_name_the_field(settings, hires, field, words):
    with pytest.raises(ValidationError) as caught:
        parse_generation_request({"prompt": "a cat", "width": 192, "height": 64,
                                  "hires": hires}, settings)
    assert caught.value.field == field and words in caught.value.message


def test_hires_is_refused_with_an_input_image(settings):
    from tests.test_api_img2img import b64, two_colours

    with pytest.raises(ValidationError) as caught:
        parse_generation_request({"prompt": "a", "init_image": b64(two_colours()),
                                  "hires": {"scale": 2}}, settings)
    assert caught.value.field == "hires"


def test_infotext_has_a1111s_hires_keys_and_reads_back():
    request = GenerationRequest(prompt="a cat", negative_prompt="ugly", steps=3, width=64,
                                height=64, scheduler="Euler a", hires=HiresFix(
                                    scale=2, steps=2, denoising_strength=0.5,
                                    prompt='a dog, "big"', scheduler="DDIM"))
    text = write_infotext(request, 5, "tiny")
    values = parse_parameters(text)
    assert values["Hires upscale"] == "2" and values["Hires steps"] == "2"
    assert values["Hires upscaler"] == "Latent" and values["Denoising strength"] == "0.5"
    assert values["Hires prompt"] == 'a dog, "big"' and values["Hires sampler"] == "DDIM"
    back, seed = request_from_infotext(text)
    assert seed == 5 and back.hires == request.hires and back.strength == 0.75
    resized = GenerationRequest(prompt="a", hires=HiresFix(width=1000, height=800))
    values = parse_parameters(write_infotext(resized, 1, "tiny"))
    assert (values["Hires resize-1"], values["Hires resize-2"]) == ("1000", "800")
    assert "Hires upscale" not in values and "Hires steps" not in values
    assert request_from_infotext(write_infotext(resized, 1, "tiny"))[0].hires == resized.hires
