"""Real clients' A1111 flows against a live waitress server, step by step as their code
does them (SillyTavern src/endpoints/stable-diffusion.js, Open WebUI
backend/open_webui/routers/images.py), with `requests` in place of their HTTP clients."""
import base64
import io
import threading
import time

import requests
from PIL import Image

TIMEOUT = 60


def sillytavern_set_model(url: str, model: str) -> None:
    """SillyTavern's /set-model, first half: POST the model as an option (must be ok)."""
    r = requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": model},
                      timeout=TIMEOUT)
    assert r.ok, r.text


def sillytavern_wait_idle(url: str, attempts: int = 100, interval: float = 0.1) -> int:
    """Its second half: poll /progress until progress == 0 and job_count == 0 (its
    10 x 2 s, shortened). Returns how many polls it took."""
    for attempt in range(1, attempts + 1):
        state = requests.get(f"{url}/sdapi/v1/progress", timeout=TIMEOUT).json()
        if state["progress"] == 0.0 and state["state"]["job_count"] == 0:
            return attempt
        time.sleep(interval)  # SillyTavern's own fixed delay between polls
    raise AssertionError("the server never reported idle")


def test_sillytavern_lists_sets_the_model_waits_and_generates(live_server, gate):
    server = live_server()
    url = server.url
    # Its connect step: ping (GET options), model list, current model, upscalers + latent
    # modes (merged into one menu), VAEs, samplers.
    assert requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).ok
    title = requests.get(f"{url}/sdapi/v1/sd-models", timeout=TIMEOUT).json()[0]["title"]
    current = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()
    assert current["sd_model_checkpoint"] == title
    upscalers = [u["name"] for u in requests.get(f"{url}/sdapi/v1/upscalers",
                                                 timeout=TIMEOUT).json()]
    latent = [m["name"] for m in requests.get(f"{url}/sdapi/v1/latent-upscale-modes",
                                              timeout=TIMEOUT).json()]
    assert upscalers[0] == "None" and latent[0] == "Latent" and len(latent) == 6
    assert requests.get(f"{url}/sdapi/v1/sd-vae", timeout=TIMEOUT).json() == []
    # A generation is running when the user picks the model: setting it answers at once,
    # and the poll reports the running job until it ends.
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=requests.post(
        f"{url}/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                         "height": 64}, timeout=TIMEOUT)))
    worker.start()
    gate.wait_reached()
    sillytavern_set_model(url, title)
    busy = requests.get(f"{url}/sdapi/v1/progress", timeout=TIMEOUT).json()
    assert busy["state"]["job_count"] == 1 and busy["progress"] > 0
    gate.open()
    worker.join(TIMEOUT)
    assert result["r"].status_code == 200
    assert sillytavern_wait_idle(url) == 1
    # Idle: the next set-model is ready at the first poll, then it generates.
    sillytavern_set_model(url, title)
    assert sillytavern_wait_idle(url) == 1
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={
        "prompt": "a dog", "negative_prompt": "", "sampler_name": "Euler a", "steps": 2,
        "cfg_scale": 7, "width": 64, "height": 64, "seed": 5, "restore_faces": False,
        "enable_hr": False, "override_settings": {"CLIP_stop_at_last_layers": 1}},
        timeout=TIMEOUT)
    assert r.status_code == 200
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert image.size == (64, 64)
    # Picking a model this server does not have fails clearly (SillyTavern shows an error).
    r = requests.post(f"{url}/sdapi/v1/options",
                      json={"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"},
                      timeout=TIMEOUT)
    assert r.status_code == 422 and title in r.json()["detail"]


def test_open_webui_gets_the_options_sets_the_model_and_posts_them_back(live_server):
    url = live_server().url
    # get_image_model: GET options -> sd_model_checkpoint.
    options = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()
    models = requests.get(f"{url}/sdapi/v1/sd-models", timeout=TIMEOUT).json()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    # set_image_model with the model id the admin typed (the name without the hash): it
    # differs from the title, so Open WebUI sets it and POSTs the whole dict back.
    model = models[0]["model_name"]
    assert model != options["sd_model_checkpoint"]
    options["sd_model_checkpoint"] = model
    r = requests.post(f"{url}/sdapi/v1/options", json=options, timeout=TIMEOUT)
    r.raise_for_status()
    after = requests.get(f"{url}/sdapi/v1/options", timeout=TIMEOUT).json()
    assert after["sd_model_checkpoint"] == models[0]["title"]  # the served model, unchanged
    assert {k: v for k, v in after.items() if k != "sd_model_checkpoint"} == {
        k: v for k, v in options.items() if k != "sd_model_checkpoint"}
    # image_generations: txt2img with its fields, images read from "images".
    r = requests.post(f"{url}/sdapi/v1/txt2img", json={
        "prompt": "a lighthouse", "batch_size": 1, "width": 64, "height": 64, "steps": 2,
        "cfg_scale": 7, "negative_prompt": ""}, timeout=TIMEOUT)
    assert r.status_code == 200 and len(r.json()["images"]) == 1
