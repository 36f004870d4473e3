"""Request validation: every field, its range, and messages that name the field."""
import pytest

from config import Settings
from errors import ValidationError
from params import MAX_SEED, GenerationRequest, parse_generation_request
from params.infotext import parse_parameters, request_from_infotext, write_infotext
from params.prompt import lora_tags

SETTINGS = Settings.from_env({"MIN_SIZE": "64", "MAX_SIZE": "256", "DEFAULT_SIZE": "128",
                              "MAX_STEPS": "50", "DEFAULT_STEPS": "20"})


def parse(**body):
    return parse_generation_request(body, SETTINGS)


def test_defaults_fill_missing_fields():
    req = parse(prompt="  a cat  ")
    assert req == GenerationRequest(prompt="a cat", steps=20, guidance_scale=7.5,
                                    width=128, height=128)


def test_all_fields_accepted():
    req = parse(prompt="p", negative_prompt="n", seed=MAX_SEED, steps=50, guidance_scale=0,
                width=64, height=256, scheduler="Euler a")
    assert (req.seed, req.steps, req.guidance_scale, req.width, req.height) == (
        MAX_SEED, 50, 0.0, 64, 256)


@pytest.mark.parametrize("field,value,needle", [
    ("prompt", "", "must not be empty"), ("prompt", "   ", "must not be empty"),
    ("prompt", "x" * 201, "limit is 200"), ("prompt", 5, "string"),
    ("negative_prompt", "x" * 201, "limit is 200"),
    ("seed", -1, f"0..{MAX_SEED}"), ("seed", MAX_SEED + 1, f"0..{MAX_SEED}"),
    ("seed", "7", "integer"), ("steps", 0, "1..50"), ("steps", 51, "1..50"),
    ("steps", 2.5, "integer"), ("steps", True, "integer"),
    ("guidance_scale", 20.5, "0..20"), ("guidance_scale", -1, "0..20"),
    ("guidance_scale", float("nan"), "0..20"),
    ("width", 100, "multiple of 8"), ("width", 56, "64..256"), ("height", 264, "64..256"),
    ("scheduler", "Restart", "one of"),
    # JSON's "\ud800": half a UTF-16 pair, which the tokenizer and the PNG text chunk reject.
    ("prompt", "a \ud800 cat", "unpaired surrogate"),
    ("negative_prompt", "\udfff", "unpaired surrogate"),
])
def test_bad_field_names_field_and_range(field, value, needle):
    body = {"prompt": "ok", field: value}
    with pytest.raises(ValidationError) as err:
        parse_generation_request(body, SETTINGS)
    assert err.value.field == field
    assert f"'{field}'" in err.value.message and needle in err.value.message


def test_missing_prompt_and_unknown_field_and_non_object():
    with pytest.raises(ValidationError, match="'prompt' is required"):
        parse_generation_request({}, SETTINGS)
    with pytest.raises(ValidationError, match="unknown field 'sampler'") as err:
        parse_generation_request({"prompt": "x", "sampler": "DDIM"}, SETTINGS)
    assert err.value.field == "sampler"
    with pytest.raises(ValidationError, match="JSON object"):
        parse_generation_request(["a cat"], SETTINGS)


def test_null_seed_means_random_and_integral_float_is_accepted():
    assert parse(prompt="x", seed=None).seed is None
    assert parse(prompt="x", steps=3.0).steps == 3


def test_infotext_is_a1111_format():
    req = GenerationRequest(prompt="a cat", negative_prompt="dog", steps=3, guidance_scale=7.5,
                            width=64, height=128)
    assert write_infotext(req, 42, "m") == ("a cat\nNegative prompt: dog\nSteps: 3, Sampler: PNDM, "
                                     "CFG scale: 7.5, Seed: 42, Size: 64x128, Model: m")


def test_request_from_infotext_inverts_the_writer():
    for req in (GenerationRequest(prompt="a cat, on a mat", negative_prompt="dog, blur",
                                  steps=3, guidance_scale=6.5, width=64, height=128,
                                  scheduler="DPM++ 2M Karras"),
                GenerationRequest(prompt="line one\nline two", steps=20)):
        parsed, seed = request_from_infotext(write_infotext(req, 77, "some/model"))
        expected = GenerationRequest(**{**req.to_dict(), "seed": 77,
                                        "scheduler": req.scheduler if req.scheduler != "default"
                                        else "PNDM"})
        assert seed == 77 and parsed == expected
    with pytest.raises(ValueError):
        request_from_infotext("just a prompt")


def test_history_and_png_info_read_one_png_alike():
    """One parser: png-info's fields and the request history rebuilds agree, also where a
    quoted value holds commas (A1111's `Lora hashes`)."""
    req = GenerationRequest(prompt="a cat <lora:style:0.5>", negative_prompt="dog, blur",
                            steps=7, width=64, height=128, scheduler="Euler a",
                            loras=(("style", 0.5, 0.5), ("ink", 1.0, 1.0)))
    text = write_infotext(req, 9, "m", lora_hashes={"style": "a" * 64, "ink": "b" * 64})
    fields = parse_parameters(text)
    parsed, seed = request_from_infotext(text)
    assert fields["Lora hashes"] == f"style: {'a' * 12}, ink: {'b' * 12}"
    assert (fields["Prompt"], fields["Negative prompt"]) == (parsed.prompt,
                                                              parsed.negative_prompt)
    assert (int(fields["Size-1"]), int(fields["Size-2"]), int(fields["Steps"]),
            fields["Sampler"], int(fields["Seed"])) == (parsed.width, parsed.height,
                                                       parsed.steps, parsed.scheduler, seed)


def test_infotext_has_a1111s_ti_hashes_after_the_lora_hashes():
    req = GenerationRequest(prompt="a cat, easyneg", negative_prompt="badhands", steps=3,
                            width=64, height=64)
    text = write_infotext(req, 5, "m", lora_hashes={"style": "a" * 64},
                          ti_hashes={"easyneg": "c" * 64, "badhands": "d" * 64})
    assert (f'Lora hashes: "style: {"a" * 12}", TI hashes: "easyneg: {"c" * 12}, '
            f'badhands: {"d" * 12}", Model: m') in text
    assert parse_parameters(text)["TI hashes"] == f"easyneg: {'c' * 12}, badhands: {'d' * 12}"
    assert request_from_infotext(text)[0].prompt == "a cat, easyneg"


def test_image_counts_are_1_to_max_batch_naming_the_setting():
    from params import field_value, image_count_field

    spec = image_count_field("n", SETTINGS)
    assert [field_value(spec, body) for body in ({}, {"n": None}, {"n": 2.0})] == [1, 1, 2]
    for bad in (0, SETTINGS.max_batch + 1, 1.5, True, "2"):
        with pytest.raises(ValidationError, match=r"'n' must be an integer 1\.\.4 \(MAX_BATCH\)"):
            field_value(spec, {"n": bad})


@pytest.mark.parametrize("prompt,clean,loras", [
    ("a cat <lora:style:0.5>, best", "a cat, best", [("style", 0.5, 0.5)]),
    ("<lora:style>", "", [("style", 1.0, 1.0)]),  # a missing weight is 1, as in A1111
    ("<lora:style:>", "", [("style", 1.0, 1.0)]),
    ("x <lora:a:0.5:0.2>", "x", [("a", 0.5, 0.2)]),  # text-encoder and UNet weights
    ("<lora:a:-1> <lora:b:4>", "", [("a", -1.0, -1.0), ("b", 4.0, 4.0)]),
    ("no tags (here) [x:y]", "no tags (here) [x:y]", []),
])
def test_lora_tags_are_read_and_stripped(prompt, clean, loras):
    assert lora_tags(prompt) == (clean, loras)


@pytest.mark.parametrize("prompt,needle", [
    ("x <lora:a:<lora:b:1>>", "nested or not closed"),
    ("x <lora:a:1", "nested or not closed"),
    ("<lora::1>", "names no LoRA"),
    ("<lora:a:9>", "-4..4"),
    ("<lora:a:-4.5>", "-4..4"),
    ("<lora:a:heavy>", "not a number"),
    ("<lora:a:1:1:1>", "too many parts"),
    ("<lora:a:1> <lora:a:0.5>", "named twice"),
])
def test_bad_lora_tags_name_the_field_and_the_problem(prompt, needle):
    with pytest.raises(ValidationError) as err:
        lora_tags(prompt, "prompt")
    assert err.value.field == "prompt" and needle in err.value.message
