"""The hires fix through every door: webuiapi's `txt2img(enable_hr=True)` and SillyTavern's
txt2img body against a live server, the native `hires` object on /generate and /jobs,
progress across both passes, the infotext read back by png-info, and 4xx naming the field."""
import base64
import io
import json
import threading

import pytest
import requests
import webuiapi
from PIL import Image

from tests.test_clients_a1111 import webui

TIMEOUT = 60
URL = "/sdapi/v1"


def png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_webuiapi_hires_fix_makes_the_larger_image_and_counts_both_passes(live_server, gate):
    server = live_server()
    api = webui(server, sampler="Euler a", steps=2)
    result = {}

    def run():
        result["r"] = api.txt2img(prompt="a lighthouse", seed=11, width=64, height=64,
                                  enable_hr=True, hr_scale=2,
                                  hr_upscaler=webuiapi.HiResUpscaler.Latent,
                                  hr_second_pass_steps=3, denoising_strength=0.5)

    worker = threading.Thread(target=run)
    worker.start()
    seen = []
    for _ in range(5):  # 2 first-pass steps + 3 second-pass steps
        gate.wait_reached()
        state = requests.get(f"{server.url}{URL}/progress", timeout=TIMEOUT).json()["state"]
        seen.append((state["sampling_step"], state["sampling_steps"]))
        gate.release()
    worker.join(TIMEOUT)
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    r = result["r"]
    assert r.image.size == (128, 128)
    info = r.info
    assert info["denoising_strength"] == 0.5 and "enable_hr" not in info["ignored_fields"]
    assert info["extra_generation_params"] == {"Hires upscale": 2, "Hires steps": 3,
                                               "Hires upscaler": "Latent"}
    text = info["infotexts"][0]
    assert "Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 3, " \
           "Hires upscaler: Latent" in text
    # png-info reads the image's own text back: the keys, as A1111's parser splits them
    params = api.png_info(r.image).parameters
    assert (params["Hires upscale"], params["Hires steps"]) == ("2", "3")
    assert params["Hires upscaler"] == "Latent" and params["Denoising strength"] == "0.5"
    gate.open()
    same = api.txt2img(prompt="a lighthouse", seed=11, width=64, height=64, enable_hr=True,
                       hr_scale=2, hr_second_pass_steps=3, denoising_strength=0.5)
    assert same.image.tobytes() == r.image.tobytes()


def sillytavern_body(enable_hr: bool) -> dict:
    """SillyTavern's txt2img body (src/endpoints/stable-diffusion.js, /generate): the hires
    fields go with every request, enable_hr says whether they apply."""
    return {"prompt": "a dog", "negative_prompt": "", "sampler_name": "Euler a",
            "scheduler": "Automatic", "steps": 2, "cfg_scale": 7, "width": 64, "height": 64,
            "restore_faces": False, "enable_hr": enable_hr, "hr_upscaler": "Latent",
            "hr_scale": 2, "hr_additional_modules": [], "denoising_strength": 0.7,
            "hr_second_pass_steps": 0, "seed": 5,
            "override_settings": {"CLIP_stop_at_last_layers": 1},
            "override_settings_restore_afterwards": True, "clip_skip": 1,
            "save_images": True, "send_images": True, "do_not_save_grid": False,
            "do_not_save_samples": False}


def test_sillytavern_body_with_and_without_the_hires_switch(live_server):
    url = live_server().url
    r = requests.post(f"{url}{URL}/txt2img", json=sillytavern_body(True), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert png_size(r.json()["images"][0]) == (128, 128)
    info = json.loads(r.json()["info"])
    assert info["denoising_strength"] == 0.7
    assert "Hires upscale: 2, Hires upscaler: Latent" in info["infotexts"][0]
    assert "Hires steps" not in info["infotexts"][0]  # 0 = the first pass's count
    r = requests.post(f"{url}{URL}/txt2img", json=sillytavern_body(False), timeout=TIMEOUT)
    assert png_size(r.json()["images"][0]) == (64, 64)
    info = json.loads(r.json()["info"])
    assert "Hires" not in info["infotexts"][0] and info["denoising_strength"] is None
    assert not {"enable_hr", "hr_scale", "denoising_strength"} & set(info["ignored_fields"])


def test_resize_image_upscaler_and_second_sampler(client):
    r = client.post(f"{URL}/txt2img", json={
        "prompt": "a cat", "steps": 2, "width": 64, "height": 64, "enable_hr": True,
        "hr_resize_x": 128, "hr_resize_y": 96, "hr_upscaler": "Lanczos",
        "hr_second_pass_steps": 1, "hr_sampler_name": "DDIM", "hr_prompt": "a tiger"})
    assert r.status_code == 200, r.json
    assert png_size(r.json["images"][0]) == (128, 96)
    text = json.loads(r.json["info"])["infotexts"][0]
    assert "Hires resize: 128x96" in text and "Hires upscaler: Lanczos" in text
    assert 'Hires prompt: "a tiger"' in text and "Hires sampler: DDIM" in text


def test_every_listed_upscaler_and_latent_mode_is_accepted(client):
    names = [u["name"] for u in client.get(f"{URL}/upscalers").json]
    names += [m["name"] for m in client.get(f"{URL}/latent-upscale-modes").json]
    assert "Latent (nearest-exact)" in names and "Lanczos" in names
    for name in names:
        r = client.post(f"{URL}/txt2img", json={
            "prompt": "a cat", "steps": 1, "width": 64, "height": 64, "enable_hr": True,
            "hr_scale": 1.5, "hr_upscaler": name, "hr_second_pass_steps": 1})
        assert r.status_code == 200, (name, r.json)
        assert png_size(r.json["images"][0]) == (96, 96)


@pytest.mark.parametrize("extra, field, words", [
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler", "'Latent'"),
    ({"hr_scale": 8}, "hr_scale", "1..4"),
    ({"hr_scale": 0.5}, "hr_scale", "1..4"),
    ({"width": 192, "hr_scale": 3}, "hr_scale", "MAX_HIRES_SIZE"),  # 576 > 512
    ({"hr_resize_x": 4096}, "hr_resize_x", "MAX_HIRES_SIZE"),
    ({"denoising_strength": 0}, "denoising_strength", "greater than 0"),
    ({"hr_second_pass_steps": -1}, "hr_second_pass_steps", "0..50"),
    ({"hr_sampler_name": "Nope"}, "hr_sampler_name", "not available"),
])
def test_bad_hires_fields_are_422_naming_the_a1111_field(make_app, extra, field, words):
    client = make_app(MAX_HIRES_SIZE="512").test_client()
    r = client.post(f"{URL}/txt2img", json={"prompt": "a cat", "steps": 1, "width": 64,
                                            "height": 64, "enable_hr": True, **extra})
    assert r.status_code == 422, r.json
    assert f"'{field}'" in r.json["message"] and words in r.json["message"], r.json


def test_native_hires_object_on_generate_and_jobs(client):
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
            "hires": {"scale": 2, "upscaler": "Latent (bicubic)", "steps": 1,
                      "denoising_strength": 0.6}}
    r = client.post("/generate", json=body)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size == (128, 128)
    job = client.post("/jobs", json=body).json
    assert job["request"]["hires"]["upscaler"] == "Latent (bicubic)"
    assert job["total_steps"] == 3
    r = client.post("/generate", json={**body, "hires": {"upscaler": "ESRGAN"}})
    assert r.status_code == 400 and "'hires.upscaler'" in r.json["message"]
    r = client.post("/generate", json={**body, "hires": {"scale": 9}})
    assert r.status_code == 400 and "'hires.scale'" in r.json["message"]


def test_an_esrgan_file_upscales_between_the_passes(make_app, tmp_path):
    """A model upscaler of MODELS_DIR/RealESRGAN is offered to the hires fix (A1111 field,
    native object, the page's menu) and runs: its image differs from Lanczos' at one seed."""
    from safetensors.torch import save_file

    from engine import upscalers
    from tests.random_upscaler import real_esrgan_state

    (tmp_path / "RealESRGAN").mkdir()
    save_file(real_esrgan_state(2, seed=12),
              str(tmp_path / "RealESRGAN" / "RealESRGAN_x2plus.safetensors"))
    upscalers.unload_upscaler()
    client = make_app(MODELS_DIR=str(tmp_path)).test_client()
    assert "R-ESRGAN 2x+" in client.get("/").get_data(as_text=True)  # the page's menu
    body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 3,
            "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 1,
            "denoising_strength": 0.3}
    images = {}
    for name in ("R-ESRGAN 2x+", "Lanczos"):
        r = client.post(f"{URL}/txt2img", json={**body, "hr_upscaler": name})
        assert r.status_code == 200, r.json
        assert f"Hires upscaler: {name}" in json.loads(r.json["info"])["infotexts"][0]
        images[name] = Image.open(io.BytesIO(base64.b64decode(r.json["images"][0])))
    assert images["R-ESRGAN 2x+"].size == (128, 128)
    assert images["R-ESRGAN 2x+"].tobytes() != images["Lanczos"].tobytes()
    r = client.post("/generate", json={"prompt": "a lighthouse", "steps": 2, "width": 64,
                                       "height": 64, "hires": {"upscaler": "R-ESRGAN 2x+",
                                                               "steps": 1}})
    assert r.status_code == 200, r.json
    upscalers.unload_upscaler()
