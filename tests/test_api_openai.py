"""The OpenAI Images dialect: the real `openai` SDK against a live waitress server on the
tiny pipeline, plus OpenAI-shaped errors."""
import base64
import io

import openai
import pytest
import requests
from PIL import Image


def sdk(server) -> openai.OpenAI:
    """An OpenAI client of a live server (no retries, so errors surface at once)."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def png(data: bytes) -> Image.Image:
    """A decoded PNG."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_sdk_generates_n_pngs_of_the_asked_size(live_server):
    server = live_server()
    result = sdk(server).images.generate(model="sd-v1-4", prompt="a red bicycle",
                                         size="64x64", n=2, response_format="b64_json",
                                         quality="hd", style="vivid", user="me")
    assert result.created > 0 and len(result.data) == 2
    images = [png(base64.b64decode(item.b64_json)) for item in result.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert all(item.revised_prompt == "a red bicycle" for item in result.data)
    assert images[0].tobytes() != images[1].tobytes()  # consecutive seeds, not one twice
    seeds = [item.model_extra["seed"] for item in result.data]
    assert seeds[1] == seeds[0] + 1 and f"Seed: {seeds[0]}," in images[0].info["parameters"]
    assert result.model_extra["model"] == server.app.extensions["sd_server"].settings.model_id


def test_native_extras_pass_through_and_seed_is_the_one_used(live_server):
    server = live_server()
    result = sdk(server).images.generate(prompt="a boat", size="128x64", extra_body={
        "seed": 7, "steps": 2, "negative_prompt": "rain", "scheduler": "DDIM"})
    image = png(base64.b64decode(result.data[0].b64_json))
    assert image.size == (128, 64)
    native = requests.post(server.url + "/generate", json={
        "prompt": "a boat", "seed": 7, "steps": 2, "negative_prompt": "rain",
        "scheduler": "DDIM", "width": 128, "height": 64}, timeout=60)
    assert native.content == base64.b64decode(result.data[0].b64_json)


def test_url_format_points_at_the_job_image(live_server):
    server = live_server()
    result = sdk(server).images.generate(prompt="a cat", size="64x64", response_format="url")
    url = result.data[0].url
    assert url.startswith(server.url + "/jobs/") and url.endswith("/image")
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and png(r.content).size == (64, 64)


def test_models_lists_the_served_model(live_server):
    server = live_server()
    ids = [model.id for model in sdk(server).models.list()]
    assert ids == [server.app.extensions["sd_server"].settings.model_id]


@pytest.mark.parametrize("kwargs, param, words", [
    ({"size": "100x100"}, "size", "multiples of 8 in 64..256"),
    ({"size": "1024x1024"}, "size", "64..256"),
    ({"size": "big"}, "size", "'WxH'"),
    ({"n": 5}, "n", "MAX_BATCH"),
    ({"response_format": "jpeg"}, "response_format", "'b64_json' or 'url'"),
    ({"extra_body": {"steps": 0}}, "steps", "'steps' must be"),
    ({"extra_body": {"foo": 1}}, "foo", "Unrecognized request argument supplied: foo"),
    ({"prompt": ""}, "prompt", "'prompt' must not be empty"),
])
def test_sdk_raises_bad_request_with_our_message(live_server, kwargs, param, words):
    server = live_server()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).images.generate(**{"prompt": "a cat", **kwargs})
    error = caught.value
    assert words in error.message and error.param == param
    assert error.type == "invalid_request_error"


def test_every_error_has_openai_shape(make_app):
    app = make_app(wait=False, start_worker=False, RATE_LIMIT="2/minute")
    client = app.test_client()
    r = client.post("/v1/images/generations", json={"prompt": "a cat"})
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.json["error"]["type"] == "server_error" and "loading" in r.json["error"]["message"]
    r = client.post("/v1/images/generations", data="a cat")
    assert r.status_code == 415 and set(r.json["error"]) == {"message", "type", "param", "code"}
    r = client.post("/v1/images/generations", json={"prompt": "a cat"})
    assert r.status_code == 429 and r.json["error"]["type"] == "rate_limit_error"
    assert int(r.headers["Retry-After"]) > 0
