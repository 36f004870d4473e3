"""The AUTOMATIC1111 dialect: the real `webuiapi` client against a live waitress server on
the tiny pipeline, plus validation, batching, progress and interrupt."""
import base64
import io
import json
import logging
import os
import socket
import threading

import pytest
import requests
import webuiapi
from PIL import Image

from tests.helpers import poll_until


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
        "prompt": "a cat", "steps": 2, "restore_faces": True, "hr_checkpoint_name": "x",
        "override_settings": {"CLIP_stop_at_last_layers": 2}, "script_name": "x/y/z plot",
        "alwayson_scripts": {"ControlNet": {"args": []}}, "subseed": 5, "send_images": True})
    assert r.status_code == 200 and len(r.json["images"]) == 1
    ignored = ["alwayson_scripts", "hr_checkpoint_name",
               "override_settings.CLIP_stop_at_last_layers",
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
    assert p["progress"] == pytest.approx(1 / 6, abs=0.01)  # 1/3 of the first of 2 images
    assert state["job_count"] == 2 and state["job_no"] == 0  # the batch's images
    assert state["interrupted"] is False and state["skipped"] is False
    preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
    assert preview.format == "PNG" and preview.width > 0
    assert p["textinfo"] == "Image 1/2, step 1/3"
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
    sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                 b"application/json\r\n" + f"Content-Length: {len(data)}\r\n\r\n".encode()
                 + data)
    gate.wait_reached()
    first = queue.current()
    second = next(job for job in queue.recent() if job is not first)
    sock.close()
    # waitress notices the hang-up on its next poll
    poll_until(lambda: first.cancel_requested, 20, "the hang-up to cancel the running job")
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


def png_b64(width: int, height: int, color=(200, 40, 40), noise: bool = False) -> str:
    """A base64 PNG input image (noise makes it big: a body over MAX_REQUEST_BYTES)."""
    image = (Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
             if noise else Image.new("RGB", (width, height), color))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run_in_thread(url: str, body: dict) -> tuple[threading.Thread, dict]:
    """POST `body` in a thread (the gate holds the worker); the answer lands in the dict."""
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(
        r=requests.post(url, json=body, timeout=120)))
    thread.start()
    return thread, answer


def test_progress_counts_the_batch_and_hides_pndms_extra_step(live_server, gate):
    server = live_server()
    url = server.url + "/sdapi/v1"
    # No sampler: the tiny model's own PNDM, which runs steps + 1 UNet calls.
    thread, answer = run_in_thread(url + "/txt2img", {"prompt": "a cat", "seed": 20,
                                                      "steps": 3, "batch_size": 2})
    seen = []
    while thread.is_alive():
        if not gate.reached.wait(0.2):
            continue
        gate.reached.clear()
        p = requests.get(url + "/progress?skip_current_image=true", timeout=10).json()
        seen.append((p["state"]["job_no"], p["state"]["sampling_step"], p["progress"],
                     p["state"]["job_count"], p["state"]["sampling_steps"]))
        gate.release()
    assert answer["r"].status_code == 200 and len(answer["r"].json()["images"]) == 2
    assert {(count, steps) for _, _, _, count, steps in seen} == {(2, 3)}
    assert [no for no, *_ in seen] == sorted(no for no, *_ in seen)  # job_no counts up
    for image in (0, 1):
        steps = [step for no, step, *_ in seen if no == image]
        assert steps == sorted(steps) and max(steps) == 3  # never "step 4 of 3"
    for no, step, progress, _, _ in seen:
        assert progress == pytest.approx((no + step / 3) / 2, abs=0.001)
    assert [p for _, _, p, _, _ in seen] == sorted(p for _, _, p, _, _ in seen)
    idle = requests.get(url + "/progress", timeout=10).json()
    assert idle["state"]["job_count"] == 0 and idle["progress"] == 0


def test_skip_drops_the_running_image_and_the_batch_goes_on(live_server, gate):
    server = live_server()
    url = server.url + "/sdapi/v1"
    thread, answer = run_in_thread(url + "/txt2img", {
        "prompt": "a cat", "seed": 30, "steps": 2, "batch_size": 3,
        "sampler_name": "Euler a"})
    gate.wait_reached()  # image 1, step 1
    gate.release()
    gate.wait_reached()  # image 1, step 2
    gate.release()
    gate.wait_reached()  # image 2, step 1
    state = requests.get(url + "/progress", timeout=10).json()["state"]
    assert state["job_no"] == 1 and state["job_count"] == 3
    assert requests.post(url + "/skip", timeout=10).json() == {}
    state = requests.get(url + "/progress", timeout=10).json()["state"]
    assert state["skipped"] is True and state["interrupted"] is False
    gate.open()
    thread.join(60)
    r = answer["r"]
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 2 and info["all_seeds"] == [30, 31, 32]
    assert info["skipped_seeds"] == [31] and info["interrupted"] is False
    assert ["Seed: 30," in info["infotexts"][0], "Seed: 32," in info["infotexts"][1]] == \
        [True, True]
    states = [requests.get(f"{server.url}/jobs/{job_id}", timeout=10).json()["state"]
              for job_id in info["job_ids"]]
    assert states == ["succeeded", "cancelled", "succeeded"]


def test_skip_when_idle_is_harmless(client):
    assert client.post("/sdapi/v1/skip").json == {}
    assert client.get("/sdapi/v1/progress").json["state"]["job_count"] == 0


SQUARE = png_b64(64, 64)


@pytest.mark.parametrize("fields, named", [
    ({"init_images": None}, "init_images"), ({"init_images": SQUARE}, "init_images"),
    ({"init_images": []}, "init_images"), ({"init_images": ["bm90IGFuIGltYWdl"]},
                                           "init_images"),
    ({"init_images": [3]}, "init_images"),
    ({"denoising_strength": 0}, "denoising_strength"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"steps": 2, "denoising_strength": 0.1}, "denoising_strength"),  # runs no step
    ({"mask": png_b64(32, 32)}, "mask"), ({"mask": "####"}, "mask"),
    ({"inpainting_mask_invert": 2}, "inpainting_mask_invert"),
    ({"mask_blur": -1}, "mask_blur"), ({"mask_blur_x": "wide"}, "mask_blur"),
    ({"resize_mode": 7}, "resize_mode"), ({"cfg_scale": 99}, "cfg_scale"),
    ({"width": 65}, "width"), ({"prompt": 7}, "prompt"),
])
def test_img2img_bad_values_are_422_naming_the_a1111_field(client, fields, named):
    body = {"prompt": "a barn", "init_images": [SQUARE], **fields}
    r = client.post("/sdapi/v1/img2img", json={k: v for k, v in body.items()
                                               if not (k == "init_images" and v is None)})
    assert r.status_code == 422, r.json
    assert f"'{named}'" in r.json["message"] and r.json["detail"] == r.json["message"]


def test_img2img_answers_like_txt2img_without_echoing_images(client, caplog):
    caplog.set_level(logging.INFO, logger="api.batches")
    init = png_b64(96, 64)
    r = client.post("/sdapi/v1/img2img", json={
        "prompt": "a barn", "init_images": [init, png_b64(64, 64)], "seed": 5, "steps": 4,
        "denoising_strength": 0.5, "batch_size": 2, "inpainting_fill": 1,
        "inpaint_full_res": True, "initial_noise_multiplier": 1, "image_cfg_scale": 1.5})
    assert r.status_code == 200, r.json
    images = [Image.open(io.BytesIO(base64.b64decode(i))) for i in r.json["images"]]
    assert [image.size for image in images] == [(96, 64), (96, 64)]  # the input's own size
    info = json.loads(r.json["info"])
    assert info["all_seeds"] == [5, 6] and (info["width"], info["height"]) == (96, 64)
    assert info["denoising_strength"] == 0.5
    assert info["is_using_inpainting_conditioning"] is False
    assert info["extra_generation_params"] == {}
    assert all("Denoising strength: 0.5" in text for text in info["infotexts"])
    ignored = ["image_cfg_scale", "init_images[1:]", "initial_noise_multiplier",
               "inpaint_full_res", "inpainting_fill"]
    assert info["ignored_fields"] == ignored
    assert any(", ".join(ignored) in rec.getMessage() for rec in caplog.records)
    params = r.json["parameters"]
    assert params["init_images"] is None and params["mask"] is None
    assert params["denoising_strength"] == 0.5 and init not in r.get_data(as_text=True)


def test_img2img_mask_include_init_images_and_a_big_body(client):
    init, mask = png_b64(160, 160, noise=True), png_b64(160, 160, (255, 255, 255))
    assert len(init) > 64 * 1024  # over MAX_REQUEST_BYTES: allowed with an image
    r = client.post("/sdapi/v1/img2img", json={
        "prompt": "a barn", "init_images": [init], "mask": mask, "mask_blur_x": 2,
        "mask_blur_y": 6, "inpainting_mask_invert": False, "seed": 9, "steps": 2,
        "denoising_strength": 1, "include_init_images": True, "width": 64, "height": 64})
    assert r.status_code == 200, r.json
    info = json.loads(r.json["info"])
    assert info["extra_generation_params"] == {"Mask blur": 6}  # the larger of x and y
    assert "Mask blur: 6" in info["infotexts"][0] and info["seed"] == 9
    assert r.json["parameters"]["init_images"] == [init]
    assert r.json["parameters"]["mask"] == mask


def test_img2img_progress_counts_the_steps_that_run(live_server, gate):
    server = live_server()
    url = server.url + "/sdapi/v1"
    thread, answer = run_in_thread(url + "/img2img", {
        "prompt": "a barn", "init_images": [SQUARE], "steps": 6, "denoising_strength": 0.5,
        "sampler_name": "Euler"})
    gate.wait_reached()
    state = requests.get(url + "/progress", timeout=10).json()["state"]
    assert state["sampling_steps"] == 3 and state["sampling_step"] == 1  # 6 x 0.5
    gate.open()
    thread.join(60)
    assert answer["r"].status_code == 200


def test_img2img_may_go_without_a_prompt_as_webuiapi_sends_it(client):
    """webuiapi's img2img() sends prompt "" by default; A1111 runs it, and so do we."""
    r = client.post("/sdapi/v1/img2img", json={"prompt": "", "init_images": [png_b64(64, 64)],
                                               "denoising_strength": 0.5, "steps": 2})
    assert r.status_code == 200 and len(r.json["images"]) == 1
