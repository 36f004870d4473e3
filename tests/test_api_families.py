"""Model families through the HTTP API, on tiny random models of each family in MODELS_DIR
(engine.random_model's architectures, loaded through from_pretrained): every model list names
each model's family and recipe; a request that sets none of steps, sampler, guidance and size
gets the model's recipe in every dialect (native, jobs, A1111, OpenAI) and the infotext says
so; a model card beside a model (`<name>.json`) is its recipe; what a family cannot run is
a 400 naming the reason, never a 500."""
from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from PIL import Image

BODY = {"prompt": "a cat", "seed": 3}
ONE_STEP = {"scheduler": "Euler trailing", "steps": 1, "guidance_scale": 0.0}


@pytest.fixture(scope="session")
def family_shelf(tmp_path_factory, family_model, tiny_model_dir):
    """A MODELS_DIR with one model of each family, and `onestep`: the tiny SD 1.x model with a
    card saying it is distilled to one step (as a DMD2-style model's would)."""
    root = tmp_path_factory.mktemp("family-shelf")
    for name, arch in (("turbo", "tiny-sd-turbo"), ("sdxs", "tiny-sdxs"),
                       ("dreamshaper", "tiny-sdxs-dreamshaper"), ("sd2v", "tiny-sd2-v")):
        shutil.copytree(family_model(arch), root / name)
    shutil.copytree(tiny_model_dir, root / "onestep")
    (root / "onestep.json").write_text(json.dumps({
        "sampler": "LCM", "steps": 1, "cfg_scale": 0, "size": "64x64"}))
    return root


@pytest.fixture
def client(make_app, family_shelf, lora_dir):
    """A ready app serving the tiny SD 1.x model, the family shelf as MODELS_DIR."""
    return make_app(MODELS_DIR=str(family_shelf), LORA_DIR=str(lora_dir)).test_client()


def job_request(client, **fields) -> dict:
    """Submit a job and answer the request it was queued with."""
    r = client.post("/jobs", json={**BODY, **fields})
    assert r.status_code == 202, r.get_json()
    return r.json["request"]


def recipe_of(request: dict) -> dict:
    return {k: request[k] for k in ("scheduler", "steps", "guidance_scale")}


def test_every_model_list_names_the_family_and_recipe(client):
    models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json}
    assert {name: m["family"] for name, m in models.items()} == {
        "tiny": "sd1", "dreamshaper": "sdxs", "onestep": "sd1", "sd2v": "sd2", "sdxs": "sdxs",
        "turbo": "sd-turbo"}
    assert models["sd2v"]["family_label"] == "SD 2.x (v-prediction)"
    assert models["dreamshaper"]["family_label"] == "SDXS (SD 1.5 text encoder)"
    assert models["turbo"]["defaults"] == {**ONE_STEP, "width": 64, "height": 64,
                                           "negative_prompt": False}
    assert models["sd2v"]["defaults"] == {"width": 96, "height": 96, "negative_prompt": True}
    assert models["tiny"]["defaults"] == {"negative_prompt": True}
    openai = {m["id"]: m for m in client.get("/v1/models").json["data"]}
    assert openai["sdxs"]["family"] == "sdxs" and openai["sdxs"]["defaults"]["steps"] == 1
    page = client.get("/").get_data(as_text=True)
    assert "turbo · SD-Turbo" in page and "sd2v · SD 2.x (v-prediction)" in page
    health = client.get("/health").json
    assert health["family"]["id"] == "sd1" and health["defaults"] == {"negative_prompt": True}


def test_a_request_that_sets_nothing_gets_the_models_recipe_in_every_dialect(client):
    native = job_request(client, model="turbo")
    assert recipe_of(native) == ONE_STEP and (native["width"], native["height"]) == (64, 64)
    r = client.post("/generate", json={**BODY, "model": "turbo"})
    assert r.status_code == 200 and client.get("/health").json["model"] == "turbo"
    text = Image.open(io.BytesIO(r.data)).info["parameters"]
    assert "Steps: 1, Sampler: Euler trailing, CFG scale: 0, Seed: 3, Size: 64x64" in text
    # The served model is now SD-Turbo: the other dialects get its recipe without naming it.
    assert recipe_of(job_request(client)) == ONE_STEP
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
    assert r.status_code == 200
    info = json.loads(r.json["info"])
    assert (info["steps"], info["cfg_scale"], info["sampler_name"]) == (1, 0.0,
                                                                        "Euler trailing")
    r = client.post("/v1/images/generations", json={"prompt": "a cat"})
    assert r.status_code == 200 and r.json["size"] == "64x64"
    png = base64.b64decode(r.json["data"][0]["b64_json"])
    assert "Steps: 1, Sampler: Euler trailing" in Image.open(io.BytesIO(png)).info["parameters"]
    assert client.get("/health").json["defaults"]["steps"] == 1


def test_what_the_client_sends_wins_over_the_recipe(client):
    mine = job_request(client, model="sdxs", steps=3, guidance_scale=2, scheduler="DDIM",
                       width=128)
    assert recipe_of(mine) == {"scheduler": "DDIM", "steps": 3, "guidance_scale": 2.0}
    assert (mine["width"], mine["height"]) == (128, 64)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2,
                                               "sampler_name": "Euler",
                                               "scheduler": "SGM Uniform",
                                               "override_settings": {
                                                   "sd_model_checkpoint": "sdxs"}})
    assert r.status_code == 200
    info = json.loads(r.json["info"])
    assert (info["steps"], info["sampler_name"], info["cfg_scale"]) == (2, "Euler trailing",
                                                                        0.0)


def test_v_prediction_model_gets_its_native_size(client):
    request = job_request(client, model="sd2v")
    assert (request["width"], request["height"], request["steps"]) == (96, 96, 2)
    assert request["scheduler"] == "default"


def test_a_model_card_beside_an_sd1_model_is_its_recipe(client, family_shelf):
    request = job_request(client, model="onestep")
    assert recipe_of(request) == {"scheduler": "LCM", "steps": 1, "guidance_scale": 0.0}
    (family_shelf / "onestep.json").write_text(json.dumps({"steps": "one"}))
    try:  # read on every request: a wrong value names the card and the field
        r = client.post("/jobs", json={**BODY, "model": "onestep"})
        assert r.status_code == 400 and r.json["error"] == "invalid_field"
        assert "model 'onestep''s card sets 'steps' must be an integer" in r.json["message"]
        assert job_request(client, model="onestep", steps=2)["steps"] == 2
    finally:
        (family_shelf / "onestep.json").write_text(json.dumps({
            "sampler": "LCM", "steps": 1, "cfg_scale": 0, "size": "64x64"}))


def test_deep_cache_on_sdxs_is_refused_when_asked_and_left_off_when_a_default(client):
    r = client.post("/jobs", json={**BODY, "model": "sdxs", "deep_cache": 2})
    assert r.status_code == 400 and r.json["error"] == "invalid_field"
    assert "deep_cache" in r.json["message"] and "no mid block" in r.json["message"]
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "deep_cache": 3, "override_settings": {
        "sd_model_checkpoint": "sdxs"}})
    assert r.status_code == 422 and "no mid block" in r.json["detail"]
    fast = job_request(client, model="sdxs", speed_preset="fast")  # the preset's DeepCache
    assert (fast["deep_cache"], fast["steps"], fast["cfg_cutoff"]) == (1, 1, 0.5)
    r = client.post("/generate", json={**BODY, "model": "sdxs", "speed_preset": "balanced"})
    assert r.status_code == 200


def test_an_sd1_lora_on_other_families_is_a_400_naming_the_reason(client):
    r = client.post("/generate", json={**BODY, "model": "turbo",
                                       "prompt": "a cat <lora:style-peft:1>"})
    assert r.status_code == 400 and r.json["error"] == "invalid_field"
    assert "LoRA 'style-peft' was made for 32-wide text embeddings" in r.json["message"]
    assert "SD-Turbo" in r.json["message"]
    r = client.post("/v1/images/generations", json={"prompt": "a cat <lora:detail-kohya>"})
    assert r.status_code == 200  # on the served SD 1.x model it fits
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat <lora:style-peft>", "override_settings": {
            "sd_model_checkpoint": "dreamshaper"}})
    assert r.status_code == 422 and "mid block" in r.json["detail"]


def test_few_step_lora_recipe_wins_over_the_model_card(client):
    request = job_request(client, model="onestep", prompt="a cat <lora:lcm-lora-tiny:1>")
    assert recipe_of(request) == {"scheduler": "LCM", "steps": 4, "guidance_scale": 1.0}


def test_img2img_on_a_one_step_model_takes_the_fewest_steps_that_run(client):
    """SD-Turbo's card: steps x strength must reach 1 (2 steps at strength 0.5)."""
    image = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(image, format="PNG")
    init = base64.b64encode(image.getvalue()).decode()
    request = job_request(client, model="turbo", init_image=init, strength=0.5)
    assert (request["steps"], request["strength"], request["guidance_scale"]) == (2, 0.5, 0.0)
    r = client.post("/jobs", json={**BODY, "model": "turbo", "init_image": init,
                                   "strength": 0.5, "steps": 1})
    assert r.status_code == 400 and "runs no step" in r.json["message"]  # the client's own
