"""ESRGAN-family upscalers through A1111's API: GET /sdapi/v1/upscalers lists the files,
extra-single-image / extra-batch-images run them on the engine (through the queue backend,
between jobs), a file we cannot read is a 400 naming it; under QUEUE_BACKEND=redis a model
upscaler is a 400 (Pillow ones still work)."""
import base64
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine import upscalers
from tests.random_upscaler import old_esrgan_state, real_esrgan_state
from tests.redis_fixtures import RedisServer

URL = "/sdapi/v1"


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def picture(width=20, height=16, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def upscaler_models(tmp_path_factory):
    """A MODELS_DIR with an old-layout x4 .pth, a Real-ESRGAN x2 .safetensors (params_ema
    unwrapped) and a broken file."""
    root = tmp_path_factory.mktemp("models")
    (root / "ESRGAN").mkdir()
    (root / "RealESRGAN").mkdir()
    torch.save(old_esrgan_state(4, seed=11), root / "ESRGAN" / "4x-Test.pth")
    save_file(real_esrgan_state(2, seed=12), str(root / "RealESRGAN" / "RealESRGAN_x2plus"
                                                                       ".safetensors"))
    (root / "ESRGAN" / "broken.pth").write_bytes(b"\x80\x02}q\x00.")  # a bare pickle
    # names an RRDBNet's first conv, so it is listed (a .pth's shapes are read on use) ...
    torch.save({"model.0.weight": torch.zeros(4, 3, 3, 3)}, root / "ESRGAN" / "2x-Half.pth")
    return root


@pytest.fixture
def up_client(make_app, upscaler_models):
    upscalers.unload_upscaler()
    yield make_app(MODELS_DIR=str(upscaler_models)).test_client()
    upscalers.unload_upscaler()


def test_the_files_are_listed_beside_the_pillow_upscalers(up_client):
    items = up_client.get(f"{URL}/upscalers").json
    assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", "Bicubic", "Bilinear",
                                          "2x-Half", "4x-Test", "R-ESRGAN 2x+"]
    items.pop(5)
    assert items[5] == {"name": "4x-Test", "model_name": "4x-Test",
                        "model_path": "ESRGAN/4x-Test.pth", "model_url": None, "scale": 4}
    assert items[6]["scale"] == 2 and items[6]["model_path"].startswith("RealESRGAN/")
    assert up_client.get(f"{URL}/realesrgan-models").json == [
        {"name": "R-ESRGAN 2x+", "path": "RealESRGAN/RealESRGAN_x2plus.safetensors", "scale": 2}]


def test_a_file_we_cannot_use_is_listed_as_skipped_with_the_reason(up_client):
    skipped = up_client.get("/health").json["upscalers_skipped"]
    assert [item["file"] for item in skipped] == ["ESRGAN/broken.pth"]
    assert "not a PyTorch" in skipped[0]["reason"]
    assert "broken" not in [i["name"] for i in up_client.get(f"{URL}/upscalers").json]


def test_extra_single_image_runs_the_model(up_client, make_settings, upscaler_models):
    source = picture()
    r = up_client.post(f"{URL}/extra-single-image", json={
        "image": b64(source), "upscaler_1": "4x-Test", "upscaling_resize": 4})
    assert r.status_code == 200, r.json
    out = decoded(r.json["image"])
    assert out.size == (80, 64) and "Postprocess upscaler: 4x-Test" in r.json["html_info"]
    direct = upscalers.upscale_image(source, "4x-Test", (80, 64),
                                     make_settings(MODELS_DIR=str(upscaler_models)))
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(direct))
    lanczos = up_client.post(f"{URL}/extra-single-image", json={
        "image": b64(source), "upscaler_1": "Lanczos", "upscaling_resize": 4}).json["image"]
    assert not np.array_equal(np.asarray(decoded(lanczos).convert("RGB")), np.asarray(direct))


def test_extra_batch_images_with_a_real_esrgan_x2_and_a_blend(up_client):
    r = up_client.post(f"{URL}/extra-batch-images", json={
        "imageList": [{"data": b64(picture()), "name": "a"},
                      {"data": b64(picture(9, 7, seed=1)), "name": "b"}],
        "upscaler_1": "realesrgan_x2plus", "upscaling_resize": 3,  # two passes, then Lanczos
        "upscaler_2": "Bicubic", "extras_upscaler_2_visibility": 0.3})
    assert r.status_code == 200, r.json
    assert [decoded(i).size for i in r.json["images"]] == [(60, 48), (27, 21)]


def test_a_file_we_cannot_read_is_a_400_naming_it(up_client):
    r = up_client.post(f"{URL}/extra-single-image", json={
        "image": b64(picture()), "upscaler_1": "broken", "upscaling_resize": 2})
    assert r.status_code == 400
    assert "ESRGAN/broken.pth" in r.json["detail"] and "not a PyTorch" in r.json["detail"]
    # ... and refused with the reason when its tensors are loaded
    r = up_client.post(f"{URL}/extra-single-image", json={
        "image": b64(picture()), "upscaler_1": "Nearest", "upscaler_2": "2x-Half",
        "extras_upscaler_2_visibility": 0.5, "upscaling_resize": 2})
    assert r.status_code == 400
    assert r.json["detail"].startswith("'upscaler_2': upscaler '2x-Half'")
    assert "are not an ESRGAN / Real-ESRGAN RRDBNet" in r.json["detail"]
    r = up_client.post(f"{URL}/extra-single-image", json={
        "image": b64(picture()), "upscaler_2": "missing", "upscaling_resize": 2})
    assert r.status_code == 422 and "4x-Test" in r.json["detail"]


def test_an_upscale_waits_for_the_running_job_and_goes_before_the_next(
        make_app, upscaler_models, gate, monkeypatch):
    from engine import Engine

    ran: list[tuple[float, float]] = []
    real = Engine.upscale

    def timed(self, image, name, size):
        started = time.time()
        out = real(self, image, name, size)
        ran.append((started, time.time()))
        return out

    monkeypatch.setattr(Engine, "upscale", timed)
    app = make_app(MODELS_DIR=str(upscaler_models))
    client, queue = app.test_client(), app.extensions["sd_server"].queue
    from params import GenerationRequest

    first = queue.submit(GenerationRequest(prompt="a", steps=2, width=64, height=64))
    second = queue.submit(GenerationRequest(prompt="b", steps=2, width=64, height=64))
    gate.wait_reached()  # the first job is paused at its first step
    done: list = []
    thread = threading.Thread(target=lambda: done.append(client.post(
        f"{URL}/extra-single-image", json={"image": b64(picture()), "upscaler_1": "4x-Test",
                                           "upscaling_resize": 2})))
    thread.start()
    time.sleep(0.5)
    assert not done  # never beside a generation
    gate.open()
    thread.join(60)
    assert done and done[0].status_code == 200
    assert queue.wait(second, 60) and queue.snapshot(second)["state"] == "succeeded"
    # between the two jobs: after the first ended, before the second's first step (the
    # worker has taken the second job off the queue while the upscale finishes)
    assert first.finished_at <= ran[0][0] and ran[0][1] <= second.step_marks[0]


def test_under_redis_a_model_upscaler_is_a_400_and_pillow_works(
        make_app, upscaler_models, tmp_path):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = make_app(wait=False, MODELS_DIR=str(upscaler_models), QUEUE_BACKEND="redis",
                       REDIS_URL=server.url)
        client = app.test_client()
        r = client.post(f"{URL}/extra-single-image", json={
            "image": b64(picture()), "upscaler_1": "4x-Test", "upscaling_resize": 2})
        assert r.status_code == 400 and "QUEUE_BACKEND=memory" in r.json["detail"]
        r = client.post(f"{URL}/extra-single-image", json={
            "image": b64(picture()), "upscaler_1": "Nearest", "upscaling_resize": 2})
        assert r.status_code == 200 and decoded(r.json["image"]).size == (40, 32)
    finally:
        server.stop()
