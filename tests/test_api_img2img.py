"""img2img and inpainting through the native API (/generate, /jobs) on the tiny real model:
modes, strength, mask, output size, EXIF, bad images, body limits, samplers, progress."""
import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from params import SCHEDULERS

from tests.helpers import FINISHED, wait_state


def two_colours(width=64, height=64, flip=False) -> Image.Image:
    """Red left half, green right half (mirrored with `flip`)."""
    array = np.zeros((height, width, 3), np.uint8)
    left, right = (200, 30, 30), (20, 200, 40)
    array[:, :width // 2], array[:, width // 2:] = (right, left) if flip else (left, right)
    return Image.fromarray(array)


def b64(image: Image.Image, fmt: str = "PNG", **save) -> str:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return base64.b64encode(out.getvalue()).decode()


def centre_mask(size=64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return mask


def png_pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB")).astype(float)


BASE = {"prompt": "a red cube", "steps": 4, "seed": 5}


def assert_400_naming(response, field: str) -> None:
    assert response.status_code == 400, response.data[:200]
    assert response.json["error"] == "invalid_field"
    assert f"'{field}'" in response.json["message"]


def test_img2img_differs_from_txt2img_with_the_same_seed(client):
    txt = client.post("/generate", json=BASE)
    img = client.post("/generate", json={**BASE, "init_image": b64(two_colours())})
    again = client.post("/generate", json={**BASE, "init_image": b64(two_colours())})
    assert png_pixels(txt).shape == png_pixels(img).shape == (64, 64, 3)
    assert img.data != txt.data and img.data == again.data
    assert img.headers["X-Seed"] == "5"
    info = Image.open(io.BytesIO(img.data)).info["parameters"]
    assert "Denoising strength: 0.75" in info


def test_low_strength_keeps_the_input_high_strength_does_not(client):
    """The tiny model's VAE is random, so no output looks like its input; what strength
    controls is measured instead: how much the output moves when the input changes."""
    def input_effect(strength: float) -> float:
        a, b = (png_pixels(client.post("/generate", json={
            **BASE, "steps": 20, "strength": strength,
            "init_image": b64(two_colours(flip=flip))})) for flip in (False, True))
        return float(np.abs(a - b).mean())

    low, high = input_effect(0.05), input_effect(1.0)
    assert low > 5 * high and low > 2.0


def test_inpainting_repaints_inside_the_mask_only(client):
    source = two_colours()
    body = {**BASE, "init_image": b64(source), "mask_image": b64(centre_mask()),
            "mask_blur": 0, "strength": 1.0}
    out = png_pixels(client.post("/generate", json=body))
    diff = np.abs(out - np.asarray(source).astype(float))
    inside = np.asarray(centre_mask()) > 127
    assert diff[~inside].mean() < 1 and diff[inside].mean() > 20
    inverted = png_pixels(client.post("/generate", json={**body, "mask_invert": 1}))
    diff = np.abs(inverted - np.asarray(source).astype(float))
    assert diff[inside].mean() < 1 and diff[~inside].mean() > 20


@pytest.mark.parametrize("size,extra,expected", [
    ((100, 60), {}, (104, 64)),  # shorter side raised to MIN_SIZE, multiples of 8
    ((300, 200), {}, (256, 168)),  # longer side fitted to MAX_SIZE
    ((64, 64), {"width": 128, "height": 64}, (128, 64)),  # explicit size wins
])
def test_output_size_follows_the_input_image_or_width_height(client, size, extra, expected):
    body = {**BASE, "steps": 2, "init_image": b64(two_colours(*size)), **extra}
    out = png_pixels(client.post("/generate", json=body))
    assert (out.shape[1], out.shape[0]) == expected


def test_exif_rotation_is_honoured(client):
    """A camera JPEG stored 96 wide x 64 high with orientation 6 (rotate 90 clockwise) is a
    64 x 96 portrait; a data: URL is accepted as well as bare base64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data_url = "data:image/jpeg;base64," + b64(two_colours(96, 64), "JPEG", exif=exif)
    out = png_pixels(client.post("/generate", json={**BASE, "steps": 2,
                                                    "init_image": data_url}))
    assert (out.shape[1], out.shape[0]) == (64, 96)
    plain = png_pixels(client.post("/generate", json={**BASE, "steps": 2, "init_image": b64(
        two_colours(96, 64), "JPEG")}))
    assert (plain.shape[1], plain.shape[0]) == (96, 64)


def bomb_png(width: int = 100_000, height: int = 100_000) -> str:
    """A PNG that declares width x height but holds no real pixels (a few dozen bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("value", [base64.b64encode(b"not an image at all").decode(),
                                   "%%% not base64 %%%", "", 42, bomb_png()],
                         ids=["not-an-image", "not-base64", "empty", "number", "bomb"])
def test_bad_init_images_are_400_naming_the_field(client, value):
    assert_400_naming(client.post("/generate", json={**BASE, "init_image": value}),
                      "init_image")
    assert_400_naming(client.post("/jobs", json={**BASE, "init_image": value}), "init_image")


def test_too_many_pixels_is_400_naming_the_limit(make_app):
    client = make_app(MAX_INPUT_PIXELS="4096").test_client()
    ok = client.post("/generate", json={**BASE, "steps": 2, "init_image": b64(two_colours())})
    assert ok.status_code == 200
    r = client.post("/generate", json={**BASE, "init_image": b64(two_colours(80, 64))})
    assert_400_naming(r, "init_image")
    assert "MAX_INPUT_PIXELS" in r.json["message"] and "5120" in r.json["message"]
    r = client.post("/generate", json={**BASE, "init_image": b64(two_colours()),
                                       "mask_image": b64(centre_mask(72))})
    assert_400_naming(r, "mask_image")


def test_mask_problems_are_400_naming_mask_image(client):
    r = client.post("/generate", json={**BASE, "init_image": b64(two_colours()),
                                       "mask_image": b64(centre_mask(32))})
    assert_400_naming(r, "mask_image")
    assert "32x32" in r.json["message"] and "64x64" in r.json["message"]
    assert_400_naming(client.post("/generate", json={**BASE, "mask_image": b64(
        centre_mask())}), "mask_image")
    assert_400_naming(client.post("/generate", json={
        **BASE, "init_image": b64(two_colours()), "mask_image": "bm90IGEgcG5n"}),
        "mask_image")


def noise_png_b64(size: int) -> str:
    """A PNG of random pixels (it does not compress): about 3 x size^2 bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return b64(Image.fromarray(pixels))


def test_only_bodies_with_images_may_exceed_the_json_limit(client):
    """MAX_REQUEST_BYTES (64 KiB) bounds JSON without images; with an image the bound is
    MAX_IMAGE_REQUEST_BYTES."""
    big_text = client.post("/generate", json={**BASE, "negative_prompt": "x" * 100_000})
    assert big_text.status_code == 413
    assert "MAX_IMAGE_REQUEST_BYTES" in big_text.json["message"]
    image = noise_png_b64(192)
    assert 100_000 < len(image) < 200_000
    r = client.post("/generate", json={**BASE, "steps": 2, "init_image": image})
    assert png_pixels(r).shape == (192, 192, 3)


def test_image_bodies_have_their_own_bound(make_app):
    client = make_app(MAX_REQUEST_BYTES="1024", MAX_IMAGE_REQUEST_BYTES="65536").test_client()
    small = noise_png_b64(64)  # over 1 KiB, well under 64 KiB
    assert 1024 < len(small) < 65536 / 2
    assert client.post("/generate", json={**BASE, "steps": 2,
                                          "init_image": small}).status_code == 200
    assert client.post("/generate", json={**BASE, "negative_prompt": "x" * 2000}
                       ).status_code == 413
    r = client.post("/generate", json={**BASE, "init_image": noise_png_b64(192)})
    assert r.status_code == 413 and r.json["error"]
    assert client.post("/jobs", json={**BASE, "init_image": noise_png_b64(192)}
                       ).status_code == 413


def test_job_shows_images_as_sizes_and_counts_denoising_steps(client):
    r = client.post("/jobs", json={**BASE, "steps": 10, "strength": 0.5,
                                   "init_image": b64(two_colours(128, 64)),
                                   "mask_image": b64(centre_mask().resize((128, 64)))})
    assert r.status_code == 202
    job = r.json
    assert job["request"]["init_image"] == {"width": 128, "height": 64}
    assert job["request"]["mask_image"] == {"width": 128, "height": 64}
    assert job["total_steps"] == 5 and job["request"]["steps"] == 10
    done = wait_state(client, job["id"], FINISHED, 60)
    assert done["state"] == "succeeded"
    assert done["step"] == done["total_steps"] == 5 and done["progress"] == 1.0
    listed = client.get("/jobs").json["jobs"]
    mine = next(j for j in listed if j["id"] == job["id"])
    assert mine["request"]["init_image"] == {"width": 128, "height": 64}
    assert "iVBOR" not in client.get("/jobs").get_data(as_text=True)  # no pixels echoed


def test_progress_never_goes_beyond_the_steps_asked(app, gate):
    """Heun calls the UNet ~2x a step: the job still shows step n of steps x strength."""
    client = app.test_client()
    job = client.post("/jobs", json={**BASE, "steps": 4, "strength": 0.75, "scheduler": "Heun",
                                     "init_image": b64(two_colours())}).json
    seen = set()
    for _ in range(10):  # Heun: 2 x 3 - 1 = 5 pipeline calls for 3 steps
        gate.wait_reached()
        body = client.get(f"/jobs/{job['id']}").json
        seen.add((body["step"], body["total_steps"]))
        gate.release()
        if body["step"] == 3 and len(seen) >= 3:
            break
    gate.open()
    assert wait_state(client, job["id"], FINISHED, 60)["state"] == "succeeded"
    assert {total for _, total in seen} == {3}
    assert {step for step, _ in seen} == {1, 2, 3}


@pytest.mark.parametrize("scheduler", ["default", *SCHEDULERS])
def test_every_sampler_runs_and_reports_the_steps_asked(client, scheduler):
    for extra, asked in (({}, 3), ({"init_image": b64(two_colours()), "strength": 0.7}, 2)):
        r = client.post("/generate", json={**BASE, "steps": 3, "scheduler": scheduler, **extra})
        assert png_pixels(r).shape == (64, 64, 3)
        job = client.get(f"/jobs/{r.headers['X-Job-Id']}").json
        assert job["total_steps"] == job["step"] == asked
        sampler = "PNDM" if scheduler == "default" else scheduler
        assert f"Sampler: {sampler}," in Image.open(io.BytesIO(r.data)).info["parameters"]
