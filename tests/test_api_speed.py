"""The speed options (speed_preset, cfg_cutoff, deep_cache, vae_decoder) in every dialect:
validated with a 4xx naming the field, applied to the image (its PNG infotext says how it was
made), and off by default."""
import base64
import io

import openai
import pytest
from PIL import Image

BASE = {"prompt": "a red cube", "seed": 7}


def infotext(png: bytes) -> str:
    return Image.open(io.BytesIO(png)).info["parameters"]


@pytest.mark.parametrize("field,value", [
    ("cfg_cutoff", 0), ("cfg_cutoff", 1.5), ("cfg_cutoff", "half"), ("deep_cache", 0),
    ("deep_cache", 6), ("deep_cache", 2.5), ("vae_decoder", "huge"), ("speed_preset", "ludicrous"),
])
def test_bad_speed_options_are_400_naming_the_field(client, field, value):
    for path in ("/generate", "/jobs"):
        r = client.post(path, json={**BASE, field: value})
        assert r.status_code == 400, (path, r.json)
        assert field in r.json["message"]
    r = client.post("/sdapi/v1/txt2img", json={**BASE, field: value})
    assert r.status_code == 422 and field in r.json["detail"]
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {field: value}})
    assert r.status_code == 422 and field in r.json["detail"]
    r = client.post("/v1/images/generations", json={**BASE, "size": "64x64", field: value})
    assert r.status_code == 400 and r.json["error"]["param"] == field


def test_native_options_apply_and_default_is_untouched(client):
    plain = client.post("/generate", json={**BASE, "steps": 3})
    off = client.post("/generate", json={**BASE, "steps": 3, "cfg_cutoff": 1, "deep_cache": 1})
    assert plain.status_code == off.status_code == 200
    assert plain.data == off.data  # the off values are exactly the default image
    fast = client.post("/generate", json={**BASE, "steps": 3, "cfg_cutoff": 0.5,
                                          "deep_cache": 2})
    assert fast.status_code == 200 and fast.data != plain.data
    assert "CFG cutoff: 0.5, DeepCache: 2" in infotext(fast.data)
    assert "CFG cutoff" not in infotext(plain.data)


def test_preset_fills_only_what_the_request_leaves_out(client):
    r = client.post("/jobs", json={**BASE, "speed_preset": "fast", "steps": 3})
    assert r.status_code == 202
    job = r.json
    assert job["request"]["steps"] == 3  # the client's own value wins
    assert job["request"]["scheduler"] == "DPM++ 2M Karras"
    assert job["request"]["cfg_cutoff"] == 0.5 and job["request"]["deep_cache"] == 3
    quality = client.post("/jobs", json=BASE).json["request"]
    assert (quality["speed_preset"], quality["cfg_cutoff"], quality["deep_cache"],
            quality["vae_decoder"]) == ("quality", 1.0, 1, "full")


def test_server_default_preset_is_a_knob(make_app):
    client = make_app(SPEED_PRESET="balanced").test_client()
    request = client.post("/jobs", json=BASE).json["request"]
    assert request["speed_preset"] == "balanced" and request["deep_cache"] == 2


def test_a1111_takes_options_in_the_body_and_in_override_settings(client):
    body = {**BASE, "steps": 3, "override_settings": {"cfg_cutoff": 0.5, "deep_cache": 2,
                                                      "sd_vae": "Automatic"}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200
    text = infotext(base64.b64decode(r.json["images"][0]))
    assert "CFG cutoff: 0.5, DeepCache: 2" in text
    import json

    assert json.loads(r.json["info"])["ignored_fields"] == ["override_settings.sd_vae"]
    r = client.post("/sdapi/v1/txt2img", json={**body, "deep_cache": 3})  # the body wins
    assert "DeepCache: 3" in infotext(base64.b64decode(r.json["images"][0]))


def test_openai_sdk_extra_body_carries_the_options(live_server):
    server = live_server()
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    result = sdk.images.generate(prompt="a red cube", size="64x64", response_format="b64_json",
                                 extra_body={"speed_preset": "fast", "steps": 2, "seed": 3})
    text = infotext(base64.b64decode(result.data[0].b64_json))
    assert "Sampler: DPM++ 2M Karras" in text and "DeepCache: 3" in text
    assert "Steps: 2," in text


def test_a1111_preset_brings_its_sampler_unless_the_client_names_one(client):
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "steps": 2, "speed_preset": "fast"})
    assert r.status_code == 200
    assert "Sampler: DPM++ 2M Karras" in infotext(base64.b64decode(r.json["images"][0]))
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "steps": 2, "speed_preset": "fast",
                                               "sampler_name": "Euler"})
    assert "Sampler: Euler," in infotext(base64.b64decode(r.json["images"][0]))


def test_without_taesd_the_job_says_the_full_vae_ran(client):
    """TAESD is not loaded in tests (TAESD_MODEL is empty): the fast preset's tiny decoder
    falls back, and the job JSON says so before the job even runs."""
    job = client.post("/jobs", json={**BASE, "speed_preset": "fast", "steps": 2}).json
    assert job["request"]["vae_decoder"] == "full"
    explicit = client.post("/jobs", json={**BASE, "vae_decoder": "tiny", "steps": 2}).json
    assert explicit["request"]["vae_decoder"] == "full"


def test_with_taesd_the_fast_preset_decodes_with_it(make_app, taesd_dir):
    client = make_app(TAESD_MODEL=str(taesd_dir)).test_client()
    r = client.post("/generate", json={**BASE, "speed_preset": "fast", "steps": 2})
    assert r.status_code == 200 and "VAE: TAESD" in infotext(r.data)
