"""Settings: defaults, parsing, and one-line errors naming variable, value and range."""
import re

import pytest

from config import KNOBS, ConfigError, Settings, TINY_MODEL_ID, env_example, knob_table


def test_every_setting_is_one_knob_and_its_default_is_the_knobs():
    from dataclasses import fields

    assert [knob.name.lower() for knob in KNOBS] == [f.name for f in fields(Settings)]
    defaults = Settings.from_env({})
    for knob in KNOBS:
        assert getattr(defaults, knob.name.lower()) == knob.parse(knob.default, knob)


def test_each_field_has_the_type_its_knob_parses_to():
    from dataclasses import fields
    from typing import get_origin

    types = {f.name: f.type for f in fields(Settings)}
    for knob in KNOBS:
        assert types[knob.name.lower()] == knob.type, knob.name
        value = knob.parse(knob.default, knob)
        assert isinstance(value, get_origin(knob.type) or knob.type), knob.name


def test_a_new_knob_is_a_new_settings_field():
    from dataclasses import fields

    from config import Knob, settings_class

    def parse(raw: str, knob: Knob) -> int:
        return int(raw)

    extra = Knob("EXTRA_KNOB", "3", "a knob only this test declares", parse, "an integer")
    generated = {f.name: f.type for f in fields(settings_class((*KNOBS, extra)))}
    assert generated == {**{f.name: f.type for f in fields(Settings)}, "extra_knob": int}


def test_with_overrides_validates_and_names_unknown_fields():
    s = Settings.from_env({})
    assert s.with_overrides(port=8080).port == 8080 and s.port == 5000
    with pytest.raises(ConfigError, match="unknown setting"):
        s.with_overrides(no_such_setting=1)
    with pytest.raises(ConfigError, match="MAX_BATCH"):
        s.with_overrides(max_batch=9, queue_size=8)


def test_defaults_match_the_documented_ones():
    s = Settings.from_env({})
    assert s.model_id == "CompVis/stable-diffusion-v1-4"
    assert (s.host, s.port) == ("127.0.0.1", 5000)
    assert (s.default_steps, s.default_guidance, s.max_prompt_length) == (25, 7.5, 200)
    assert (s.default_size, s.min_size, s.max_size) == (512, 256, 768)
    assert s.attention_slicing == "auto" and s.safety_checker == "off"
    assert s.dtype == "float32" and s.cors_origins == () and s.api_key == ""


@pytest.mark.parametrize("name,value,allowed", [
    ("PORT", "abc", "1..65535"), ("PORT", "70000", "1..65535"),
    ("DEFAULT_STEPS", "0", "1..500"), ("MAX_SIZE", "770", "multiple of 8"),
    ("ATTENTION_SLICING", "maybe", "auto, on or off"), ("DTYPE", "fp16", "float32"),
    ("DEFAULT_GUIDANCE", "25", "0..20"), ("QUEUE_SIZE", "-1", "1..250"),
    ("RATE_LIMIT", "lots", "10/minute"), ("LOG_LEVEL", "loud", "DEBUG"),
])
def test_bad_value_names_variable_value_and_range(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and allowed in message
    assert "\n" not in message


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="MIN_SIZE"):
        Settings.from_env({"MIN_SIZE": "512", "MAX_SIZE": "256", "DEFAULT_SIZE": "256"})
    with pytest.raises(ConfigError, match="DEFAULT_SIZE"):
        Settings.from_env({"DEFAULT_SIZE": "1024"})
    with pytest.raises(ConfigError, match="DEFAULT_STEPS"):
        Settings.from_env({"DEFAULT_STEPS": "60", "MAX_STEPS": "50"})
    with pytest.raises(ConfigError, match="MAX_BATCH"):
        Settings.from_env({"MAX_BATCH": "9", "QUEUE_SIZE": "8"})
    with pytest.raises(ConfigError, match="THREADS"):
        Settings.from_env({"THREADS": "4", "QUEUE_SIZE": "8"})
    # Each open event stream holds a waitress thread too.
    with pytest.raises(ConfigError, match=r"THREADS=16 .* QUEUE_SIZE \+ EVENT_STREAMS \+ 2 \(17\)"):
        Settings.from_env({"THREADS": "16", "QUEUE_SIZE": "8", "EVENT_STREAMS": "7"})
    assert Settings.from_env({"THREADS": "16", "QUEUE_SIZE": "8",
                              "EVENT_STREAMS": "6"}).event_streams == 6


@pytest.mark.parametrize("raw,public", [("1", True), ("true", True), ("On", True),
                                        ("0", False), ("no", False), ("", False)])
def test_metrics_public_is_a_flag(raw, public):
    assert Settings.from_env({"METRICS_PUBLIC": raw}).metrics_public is public
    with pytest.raises(ConfigError, match="METRICS_PUBLIC='maybe'"):
        Settings.from_env({"METRICS_PUBLIC": "maybe"})


def test_hf_auth_token_is_read_as_the_token():
    assert Settings.from_env({"HF_AUTH_TOKEN": "hf_x"}).hf_token == "hf_x"
    assert Settings.from_env({"HF_AUTH_TOKEN": "a", "HF_TOKEN": "b"}).hf_token == "b"


def test_empty_values_turn_optional_features_off():
    s = Settings.from_env({"RATE_LIMIT": "", "OUTPUT_DIR": "", "PORT": ""})
    assert s.rate_limit == "" and s.output_dir == "" and s.port == 5000


def test_cors_origins_are_split():
    s = Settings.from_env({"CORS_ORIGINS": "http://a.example, http://b.example"})
    assert s.cors_origins == ("http://a.example", "http://b.example")


def test_tiny_model_resolves_to_its_folder():
    s = Settings.from_env({"MODEL_ID": TINY_MODEL_ID, "TINY_MODEL_DIR": "/tmp/x"})
    assert s.model_source == "/tmp/x"
    assert Settings.from_env({"MODEL_ID": "/models/sd"}).model_source == "/models/sd"


def test_every_knob_is_documented_in_env_example_and_readme():
    from config import PROJECT_DIR

    example = (PROJECT_DIR / ".env.example").read_text()
    readme = (PROJECT_DIR / "README.md").read_text()
    for knob in KNOBS:
        assert f"{knob.name}=" in example, knob.name
        assert f"`{knob.name}`" in readme, knob.name
    assert knob_table().count("\n") == len(KNOBS) + 1
    # Both are generated from KNOBS; a hand edit or a new knob must not let them drift.
    assert example == env_example()
    assert knob_table() in readme


def test_env_example_is_a_valid_configuration(tmp_path):
    from config import PROJECT_DIR

    env = {}
    for line in (PROJECT_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    Settings.from_env(env)  # must not raise


def test_bake_lists_name_model_and_weighted_loras():
    s = Settings.from_env({"BAKE": "sd+fast:0.8+detail, mine=sd+style"})
    assert s.bake == (("sd+fast:0.8+detail", "sd", (("fast", 0.8), ("detail", 1.0))),
                      ("mine", "sd", (("style", 1.0),)))
    for bad, says in (("sd", "BAKE: 'sd'"), ("sd+a:x", "not a number"), ("sd+a:11", "-10..10"),
                      ("=sd+a", "BAKE: '=sd+a'")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            Settings.from_env({"BAKE": bad})
