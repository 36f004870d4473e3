"""The AUTOMATIC1111 dialect: the real `webuiapi` client against a live waitress server on
the tiny pipeline, plus validation, batching, progress and interrupt."""
import base64
import io
import json
import logging
import socket
import threading
import time

import pytest
import requests
import webuiapi
from PIL import Image


def webui(server, **kwargs) -> webuiapi.WebUIApi:
    """A webuiapi client of a live server."""
    port = int(server.url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, **kwargs)


def test_webuiapi_txt2img_uses_and_reports_the_seed(live_server):
    server = live_server()
    api = webui(server, sampler="Euler a", steps=2)
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=1234, width=64,
                         height=64, cfg_scale=6, restore_faces=True, tiling=True)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["seed"] == 1234 and result.info["all_seeds"] == [1234]
    assert result.info["sampler_name"] == "Euler a" and result.info["interrupted"] is False
    assert result.parameters["cfg_scale"] == 6 and result.parameters["restore_faces"] is True
    text = result.image.info["parameters"]
    assert text == result.info["infotexts"][0]
    assert text.startswith("a lighthouse\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, ")
    assert "CFG scale: 6, Seed: 1234, Size: 64x64" in text
    # The reported seed is the one used: the native API makes the same pixels from it.
    native = requests.post(server.url + "/generate", json={
        "prompt": "a lighthouse", "negative_prompt": "fog", "seed": 1234, "steps": 2,
        "guidance_scale": 6, "width": 64, "height": 64, "scheduler": "Euler a"}, timeout=60)
    assert Image.open(io.BytesIO(native.content)).tobytes() == result.image.tobytes()


def test_webuiapi_batch_has_consecutive_seeds_each_in_its_png(live_server):
    api = webui(live_server(), sampler="Euler a", steps=2)
    result = api.txt2img(prompt="a cat", seed=-1, batch_size=2, width=64, height=64)
    seeds = result.info["all_seeds"]
    assert len(result.images) == 2 and len(seeds) == 2
    assert seeds[1] == seeds[0] + 1 and result.info["seed"] == seeds[0]
    for image, seed, text in zip(result.images, seeds, result.info["infotexts"]):
        assert image.size == (64, 64)
        assert image.info["parameters"] == text and f"Seed: {seed}," in text
    assert result.images[0].tobytes() != result.images[1].tobytes()


def test_webuiapi_lists_samplers_models_and_options(live_server):
    api = webui(live_server())
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert {"Euler a", "Euler", "DDIM", "LMS", "DPM++ 2M", "DPM++ 2M Karras"} <= set(samplers)
    assert "k_euler_a" in samplers["Euler a"]["aliases"]
    assert samplers["DPM++ 2M Karras"]["options"] == {"scheduler": "karras"}
    models = api.get_sd_models()
    assert len(models) == 1 and models[0]["sha256"].startswith(models[0]["hash"])
    assert api.util_get_current_model() == models[0]["title"]
    assert api.get_options()["sd_checkpoint_hash"] == models[0]["sha256"]
    api.util_wait_for_ready(check_interval=0.1)  # idle: progress 0 and no jobs


def test_sampler_aliases_legacy_index_and_karras_schedule(client):
    def info(**fields):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 3, "steps": 2,
                                                   **fields})
        assert r.status_code == 200, r.json
        return r.json["images"][0], json.loads(r.json["info"])

    image, body = info(sampler_name="Euler a")
    assert info(sampler_name="k_euler_a")[0] == image  # an alias is the same sampler
    assert info(sampler_index="Euler a")[0] == image  # the legacy field still works
    assert info(sampler_name="DPM++ 2M", scheduler="Karras")[1]["sampler_name"] == \
        "DPM++ 2M Karras"
    _, default = info()
    assert default["sampler_name"] == "PNDM"  # the tiny model's own scheduler
    assert "Sampler: PNDM," in default["infotexts"][0]


@pytest.mark.parametrize("fields, named", [
    ({"cfg_scale": 99}, "cfg_scale"), ({"steps": 0}, "steps"), ({"steps": "many"}, "steps"),
    ({"width": 65}, "width"), ({"height": 4096}, "height"), ({"seed": -5}, "seed"),
    ({"prompt": ""}, "prompt"), ({"prompt": "x" * 5000}, "prompt"),
    ({"sampler_name": "Restart"}, "Restart"), ({"sampler_name": 3}, "sampler_name"),
    ({"scheduler": "Exponential"}, "Exponential"),
    ({"sampler_name": "Euler", "scheduler": "Karras"}, "Karras"),
    ({"batch_size": 0}, "batch_size"), ({"n_iter": "two"}, "n_iter"),
    ({"batch_size": 3, "n_iter": 2}, "MAX_BATCH"), ({"batch_size": True}, "batch_size"),
])
def test_bad_values_are_422_naming_the_field(client, fields, named):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", **fields})
    assert r.status_code == 422, r.json
    assert named in r.json["message"] and r.json["detail"] == r.json["message"]


def test_bad_bodies_are_4xx_never_500(client):
    assert client.post("/sdapi/v1/txt2img", json=["a cat"]).status_code == 422
    assert client.post("/sdapi/v1/txt2img", json={}).json["message"] == "'prompt' is required"
    r = client.post("/sdapi/v1/txt2img", data="{nope", content_type="application/json")
    assert r.status_code == 400 and r.json["error"] == "invalid_json"
    assert client.post("/sdapi/v1/txt2img", data="a cat").status_code == 415


def test_unsupported_a1111_fields_are_ignored_and_logged(client, caplog):
    caplog.set_level(logging.INFO, logger="api.batches")
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat", "steps": 2, "enable_hr": True, "restore_faces": True,
        "override_settings": {"sd_model_checkpoint": "other"}, "script_name": "x/y/z plot",
        "alwayson_scripts": {"ControlNet": {"args": []}}, "subseed": 5, "send_images": True})
    assert r.status_code == 200 and len(r.json["images"]) == 1
    ignored = ["alwayson_scripts", "enable_hr", "override_settings.sd_model_checkpoint",
               "restore_faces",
               "script_name", "subseed"]
    assert json.loads(r.json["info"])["ignored_fields"] == ignored
    assert any(", ".join(ignored) in rec.getMessage() for rec in caplog.records)


def test_send_images_false_returns_info_only(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 8,
                                               "send_images": False})
    assert r.status_code == 200 and r.json["images"] == []
    assert json.loads(r.json["info"])["all_seeds"] == [8]


def test_batch_larger_than_free_queue_is_refused_whole(make_app, gate):
    from params import GenerationRequest

    app = make_app(QUEUE_SIZE="3", MAX_BATCH="3")
    queue = app.extensions["sd_server"].queue
    small = GenerationRequest(prompt="busy", steps=2, width=64, height=64)
    queue.submit(small)
    gate.wait_reached()  # one running, held
    queue.submit(small)  # one waiting: room for 2 more
    r = app.test_client().post("/sdapi/v1/txt2img", json={"prompt": "a cat", "batch_size": 3})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "3 more job" in r.json["message"]
    assert queue.stats()["waiting"] == 1  # all or nothing
    gate.open()


def test_progress_and_interrupt_mid_generation(live_server, gate):
    server = live_server()
    url = server.url + "/sdapi/v1"
    answer = {}

    def run():
        answer["r"] = requests.post(url + "/txt2img", json={
            "prompt": "a cat", "seed": 10, "steps": 3, "batch_size": 2, "width": 64,
            "height": 64, "sampler_name": "Euler a"}, timeout=120)

    thread = threading.Thread(target=run)
    thread.start()
    gate.wait_reached()  # the first image is paused after its first step
    p = requests.get(url + "/progress", timeout=10).json()
    state = p["state"]
    assert state["sampling_step"] == 1 and state["sampling_steps"] == 3
    assert p["progress"] == pytest.approx(1 / 3, abs=0.01)
    assert state["job_count"] == 2 and state["interrupted"] is False  # running + waiting
    preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
    assert preview.format == "PNG" and preview.width > 0
    assert p["textinfo"] == "Step 1/3"
    skipped = requests.get(url + "/progress?skip_current_image=true", timeout=10).json()
    assert skipped["current_image"] is None

    assert requests.post(url + "/interrupt", timeout=10).json() == {}
    assert requests.get(url + "/progress", timeout=10).json()["state"]["interrupted"] is True
    gate.open()
    thread.join(60)
    r = answer["r"]
    assert r.status_code == 200  # as A1111: the images finished before the interrupt
    info = json.loads(r.json()["info"])
    assert r.json()["images"] == [] and info["interrupted"] is True
    assert info["all_seeds"] == [10, 11]
    first = requests.get(f"{server.url}/jobs/{info['job_ids'][0]}", timeout=10).json()
    assert first["state"] == "cancelled" and first["step"] <= 2  # stopped within one step
    second = requests.get(f"{server.url}/jobs/{info['job_ids'][1]}", timeout=10).json()
    assert second["state"] == "cancelled"  # the rest of the batch never finished
    assert requests.get(url + "/progress", timeout=10).json()["state"]["job_count"] == 0

    after = webui(server, sampler="Euler a", steps=2).txt2img(prompt="a dog", seed=4,
                                                                width=64, height=64)
    assert after.image.size == (64, 64) and after.info["seed"] == 4


def test_interrupt_when_idle_is_harmless(client):
    assert client.post("/sdapi/v1/interrupt").json == {}
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"}).status_code == 200


def test_client_leaving_cancels_the_whole_batch(live_server, gate):
    server = live_server()
    queue = server.app.extensions["sd_server"].queue
    port = int(server.url.rsplit(":", 1)[1])
    data = json.dumps({"prompt": "left early", "steps": 3, "batch_size": 2}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: t\r\nContent-Type: "
                 b"application/json\r\n" + f"Content-Length: {len(data)}\r\n\r\n".encode()
                 + data)
    gate.wait_reached()
    first = queue.current()
    second = next(job for job in queue.recent() if job is not first)
    sock.close()
    deadline = time.monotonic() + 20
    while not first.cancel_requested and time.monotonic() < deadline:
        time.sleep(0.02)  # waitress notices the hang-up on its next poll
    gate.open()
    assert queue.wait(first, 30) and queue.wait(second, 30)
    assert first.state.value == "cancelled" and second.state.value == "cancelled"
    assert second.started_at is None  # the rest of the batch never ran


def test_webuiapi_with_api_key_sends_it_as_bearer(live_server):
    server = live_server(API_KEY="sekrit")
    api = webui(server, steps=2)
    with pytest.raises(RuntimeError) as caught:  # webuiapi raises (status, text)
        api.txt2img(prompt="a cat", width=64, height=64)
    assert caught.value.args[0] == 401
    api.session.headers["Authorization"] = "Bearer sekrit"
    assert api.txt2img(prompt="a cat", seed=2, width=64, height=64).info["seed"] == 2
