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
    assert result.model_extra["model"] == "tiny"  # MODEL_ID's folder name, not its path


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
    assert ids == ["tiny"]  # MODEL_ID is the tiny model's folder: its name, not its path


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


# images.edit: multipart image + mask (transparent = repaint), as the SDK sends it.

def picture(width: int = 64, height: int = 64, mode: str = "RGB") -> bytes:
    """A PNG with some structure (a gradient and a block), so edits have something to keep."""
    image = Image.new(mode, (width, height), (200, 40, 40, 255)[:len(mode)])
    for x in range(width):
        for y in range(0, height, 4):
            image.putpixel((x, y), (x * 4 % 256, y * 4 % 256, 90, 255)[:len(mode)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def openai_mask(width: int = 64, height: int = 64, hole=(16, 16, 48, 48)) -> bytes:
    """OpenAI's mask: opaque everywhere but a fully transparent hole (the part to repaint)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def job_of(server, item) -> dict:
    """The job JSON behind a url-format answer."""
    job_url = item.url.rsplit("/image", 1)[0]
    return requests.get(job_url, timeout=10).json()


def test_sdk_edit_with_mask_is_inpainting_of_the_asked_size(live_server):
    server = live_server()
    result = sdk(server).images.edit(
        image=("photo.png", picture(), "image/png"), mask=("mask.png", openai_mask(),
                                                            "image/png"),
        prompt="a blue square", n=2, size="64x64", response_format="b64_json",
        model="dall-e-2", user="me", extra_body={"steps": 2, "mask_blur": 0})
    images = [png(base64.b64decode(item.b64_json)) for item in result.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    seeds = [item.model_extra["seed"] for item in result.data]
    assert seeds[1] == seeds[0] + 1 and images[0].tobytes() != images[1].tobytes()
    # A mask repaints its area from noise (strength 1); the infotext says it was inpainting.
    assert "Denoising strength: 1," in images[0].info["parameters"]
    assert "Mask blur: 0" in images[0].info["parameters"]
    # Only the transparent hole changes: the rest is the input, pixel for pixel.
    original = Image.open(io.BytesIO(picture())).convert("RGB")
    outside, inside = (0, 0, 64, 16), (16, 16, 48, 48)
    for image in images:
        image = image.convert("RGB")
        assert image.crop(outside).tobytes() == original.crop(outside).tobytes()
        assert image.crop(inside).tobytes() != original.crop(inside).tobytes()


def test_sdk_edit_is_the_native_request_it_translates_to(live_server):
    """The SDK's edit and the native /generate with the image and our mask (white = the
    transparent hole) make the same bytes: the translation loses nothing."""
    server = live_server()
    result = sdk(server).images.edit(
        image=("photo.png", picture(), "image/png"), mask=("m.png", openai_mask(), "image/png"),
        prompt="a boat", size="64x64", extra_body={"seed": 7, "steps": 2, "mask_blur": 0})
    ours = Image.new("L", (64, 64), 0)
    ours.paste(255, (16, 16, 48, 48))
    buf = io.BytesIO()
    ours.save(buf, format="PNG")
    native = requests.post(server.url + "/generate", json={
        "prompt": "a boat", "seed": 7, "steps": 2, "width": 64, "height": 64, "mask_blur": 0,
        "strength": 1.0, "init_image": base64.b64encode(picture()).decode(),
        "mask_image": base64.b64encode(buf.getvalue()).decode()}, timeout=60)
    assert native.status_code == 200
    assert native.content == base64.b64decode(result.data[0].b64_json)


def test_sdk_edit_without_mask_is_img2img_at_the_images_aspect(live_server):
    server = live_server()
    first, second = (("a.png", picture(128, 64), "image/png"),
                     ("b.png", picture(64, 64), "image/png"))
    result = sdk(server).images.edit(image=[first, second], prompt="a cat",
                                     response_format="url", extra_body={"steps": 4})
    job = job_of(server, result.data[0])
    assert job["request"]["init_image"] == {"width": 128, "height": 64}  # the first image
    assert job["request"]["mask_image"] is None and job["request"]["strength"] == 0.75
    r = requests.get(result.data[0].url, timeout=10)
    assert png(r.content).size == (128, 64)
    assert "Denoising strength: 0.75" in png(r.content).info["parameters"]


def test_edit_uses_the_images_own_transparency_when_no_mask_is_sent(live_server):
    """DALL-E 2's rule: without a mask, the image's transparent pixels are the mask."""
    server = live_server()
    image = Image.open(io.BytesIO(picture(mode="RGBA")))
    image.paste((0, 0, 0, 0), (0, 0, 32, 64))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    result = sdk(server).images.edit(image=("t.png", buf.getvalue(), "image/png"),
                                     prompt="a tree", size="64x64", response_format="url",
                                     extra_body={"strength": 0.5, "steps": 4})
    job = job_of(server, result.data[0])
    assert job["request"]["mask_image"] == {"width": 64, "height": 64}
    assert job["request"]["strength"] == 0.5  # a form field typed like JSON


@pytest.mark.parametrize("files, fields, param, words", [
    ({"image": ("x.png", b"not an image", "image/png")}, {}, "image", "not an image"),
    ({"image": ("x.png", picture(), "image/png"),
      "mask": ("m.png", openai_mask(32, 32, (0, 0, 8, 8)), "image/png")}, {}, "mask",
     "'mask' is 32x32 but 'image' is 64x64"),
    ({"image": ("x.png", picture(), "image/png"),
      "mask": ("m.png", picture(), "image/png")}, {}, "mask", "no alpha channel"),
    ({"image": ("x.png", picture(), "image/png")}, {"prompt": None}, "prompt", "required"),
    ({}, {}, "image", "'image' is required"),
    ({"image": ("x.png", picture(), "image/png")}, {"n": "two"}, "n", "'n' must be"),
    ({"image": ("x.png", picture(), "image/png")}, {"size": "65x64"}, "size", "multiples"),
    ({"image": ("x.png", picture(), "image/png")}, {"strength": "0"}, "strength",
     "'strength' must be"),
    ({"image": ("x.png", picture(), "image/png")}, {"colour": "red"}, "colour",
     "Unrecognized request argument supplied: colour"),
])
def test_edit_errors_name_the_openai_field(client, files, fields, param, words):
    data = {"prompt": "a cat", **fields}
    data = {k: v for k, v in data.items() if v is not None}
    data.update({name: (io.BytesIO(content), filename, kind)
                 for name, (filename, content, kind) in files.items()})
    r = client.post("/v1/images/edits", data=data, content_type="multipart/form-data")
    assert r.status_code == 400, r.json
    error = r.json["error"]
    assert error["param"] == param and words in error["message"]
    assert error["type"] == "invalid_request_error"


def test_sdk_edit_raises_bad_request_for_a_mismatched_mask(live_server):
    server = live_server()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).images.edit(image=("x.png", picture(), "image/png"),
                                mask=("m.png", openai_mask(128, 64), "image/png"),
                                prompt="a cat")
    assert caught.value.param == "mask" and "same size" in caught.value.message


def test_edit_body_limits_and_media_type(client):
    r = client.post("/v1/images/edits", json={"prompt": "a cat"})
    assert r.status_code == 415 and "multipart/form-data" in r.json["error"]["message"]
    # Bigger than MAX_REQUEST_BYTES (64 KiB) with no image: refused like any image-less body.
    r = client.post("/v1/images/edits", data={"prompt": "a cat", "user": "x" * 70_000},
                    content_type="multipart/form-data")
    assert r.status_code == 413 and r.json["error"]["code"] == "request_entity_too_large"
    # Bigger than MAX_IMAGE_REQUEST_BYTES, even with an image: 413 before it is decoded.
    r = client.post("/v1/images/edits", data={
        "prompt": "a cat", "image": (io.BytesIO(b"\0" * (21 * 1024 * 1024)), "x.png")},
        content_type="multipart/form-data")
    assert r.status_code == 413 and r.json["error"]["type"] == "invalid_request_error"
