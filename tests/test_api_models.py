"""Models through the HTTP API: MODELS_DIR listed in every dialect, switching from the native
`model` field, A1111's options and override_settings, one model in memory, a failed load
leaving the previous model serving. Real tiny models: MODEL_ID is the session's tiny model,
MODELS_DIR holds a second one (other random weights) and the tiny model as a single-file
checkpoint with its `<stem>.config/` folder."""
from __future__ import annotations

import io
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from engine import single_file
from engine.random_model import build_random_pipeline

from tests.helpers import poll_until

BODY = {"prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="session")
def model_shelf(tiny_model_dir, tmp_path_factory):
    """A MODELS_DIR: `second` (a diffusers folder, other weights), `tinyck.safetensors` (the
    startup model as one file, with its config folder), `broken` (loads no weights) and a
    refused `.ckpt`."""
    root = tmp_path_factory.mktemp("shelf")
    build_random_pipeline(root / "second", "tiny", seed=1)
    single_file.save_single_file(tiny_model_dir, root / "tinyck.safetensors")
    shutil.copytree(tiny_model_dir, root / "tinyck.config",
                    ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(tiny_model_dir, root / "broken")
    (root / "broken" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    (root / "old.ckpt").write_bytes(b"pickle")
    return root


@pytest.fixture
def client(make_app, model_shelf):
    """A ready app on the tiny model whose MODELS_DIR is the shelf."""
    return make_app(MODELS_DIR=str(model_shelf)).test_client()


def pixels(png: bytes) -> np.ndarray:
    """The image's RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def generate(client, **fields) -> np.ndarray:
    r = client.post("/generate", json={**BODY, **fields})
    assert r.status_code == 200, r.get_json()
    return pixels(r.data)


def test_every_dialect_lists_the_models(client, tiny_model_dir):
    ids = [m["id"] for m in client.get("/v1/models").json["data"]]
    assert ids == ["tiny", "broken", "second", "tinyck"]  # names, never MODEL_ID's path
    models = client.get("/sdapi/v1/sd-models").json
    assert [m["model_name"] for m in models] == ["tiny", "broken", "second", "tinyck"]
    assert all(m["title"] and m["hash"] and m["filename"] for m in models)  # .ckpt left out


def test_the_model_field_switches_and_switching_back_gives_the_same_image(client,
                                                                         tiny_model_dir):
    first = generate(client)
    other = generate(client, model="second")
    assert client.get("/health").json["model"] == "second"
    assert not np.array_equal(first, other)
    assert np.array_equal(generate(client), other)  # the switched model stays loaded
    # MODEL_ID as spelled (a path) still names the startup model, which shows as its name.
    assert np.array_equal(generate(client, model=str(tiny_model_dir)), first)
    assert client.get("/health").json["model"] == "tiny"


def test_a_single_file_checkpoint_loads_and_makes_the_startup_models_image(client,
                                                                          tiny_model_dir):
    first = generate(client)
    assert np.array_equal(generate(client, model="tinyck.safetensors"), first)
    sd_models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json}
    assert len(sd_models["tinyck"]["sha256"]) == 64  # hashed when it was loaded
    assert sd_models["tinyck"]["title"] == f"tinyck.safetensors [{sd_models['tinyck']['hash']}]"
    options = client.get("/sdapi/v1/options").json
    assert options["sd_model_checkpoint"] == sd_models["tinyck"]["title"]


def test_a1111_options_switch_like_sillytavern_does(client):
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "second"})
    assert r.status_code == 200
    assert client.get("/sdapi/v1/options").json["sd_model_checkpoint"].startswith("second")
    assert client.get("/sdapi/v1/progress").json["state"]["job_count"] == 0
    r = client.post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 200
    assert "Model: second" in r.json["info"]
    assert client.get("/jobs").json["jobs"][0]["kind"] == "generate"  # no switch jobs listed


def test_override_settings_switch_for_the_request(client):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {
        "sd_model_checkpoint": "second"}})
    assert r.status_code == 200
    assert "override_settings.sd_model_checkpoint" not in r.json["info"]
    assert client.get("/health").json["model"] == "second"


def test_unknown_models_are_4xx_listing_the_models_in_every_dialect(client):
    r = client.post("/generate", json={**BODY, "model": "nope"})
    assert r.status_code == 400 and "second" in r.json["message"] and "nope" in r.json["message"]
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert r.status_code == 422 and "second" in r.json["detail"]
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {
        "sd_model_checkpoint": "nope"}})
    assert r.status_code == 422 and "second" in r.json["detail"]
    r = client.post("/generate", json={**BODY, "model": "old"})
    assert r.status_code == 400 and ".ckpt" in r.json["message"]


def test_a_model_that_fails_to_load_leaves_the_previous_one_serving(client, tiny_model_dir):
    first = generate(client)
    r = client.post("/generate", json={**BODY, "model": "broken"})
    assert r.status_code == 400 and r.json["error"] == "unsupported_request"
    assert "broken" in r.json["message"] and "still serving" in r.json["message"]
    health = client.get("/health")
    assert health.status_code == 200 and health.json["model"] == "tiny"
    assert np.array_equal(generate(client), first)


def test_a_switch_waits_its_turn_behind_the_running_job(client, gate):
    job = client.post("/jobs", json=BODY).json
    gate.wait_reached()
    answers = []
    switch = threading.Thread(target=lambda: answers.append(client.post(
        "/sdapi/v1/options", json={"sd_model_checkpoint": "second"})))
    switch.start()
    # The switch is queued behind the running image.
    poll_until(lambda: client.get("/health").json["queue"]["waiting"] == 1, 30,
               "the switch to be queued")
    assert client.get("/sdapi/v1/progress").json["state"]["job_count"] >= 1
    assert client.get("/health").json["model"] != "second"
    gate.open()
    switch.join(60)
    assert answers and answers[0].status_code == 200
    assert client.get(f"/jobs/{job['id']}").json["state"] == "succeeded"
    assert client.get("/health").json["model"] == "second"


def test_health_and_progress_show_the_switch_while_it_runs(client, monkeypatch):
    """The real load runs; it only waits at its start until the test has looked."""
    from engine.slot import ModelSlot

    reached, release = threading.Event(), threading.Event()
    real_load = ModelSlot.load_model

    def paused(self, entry):
        reached.set()
        assert release.wait(60), "the test never let the load go on"
        return real_load(self, entry)

    monkeypatch.setattr(ModelSlot, "load_model", paused)
    answers = []
    switch = threading.Thread(target=lambda: answers.append(client.post(
        "/sdapi/v1/options", json={"sd_model_checkpoint": "second"})))
    switch.start()
    assert reached.wait(30)
    health = client.get("/health")
    assert health.status_code == 200 and health.json["switching"]["to"] == "second"
    progress = client.get("/sdapi/v1/progress").json
    assert progress["state"]["job_count"] == 1 and progress["textinfo"] == "Loading model second"
    release.set()
    switch.join(60)
    assert answers[0].status_code == 200
    assert "switching" not in client.get("/health").json
    assert client.get("/sdapi/v1/progress").json["state"]["job_count"] == 0


def infotext_of(client, png: bytes) -> dict:
    """The PNG's infotext as /sdapi/v1/png-info parses it."""
    import base64

    r = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png).decode()})
    assert r.status_code == 200
    return r.json["parameters"]


def test_a_model_given_as_a_folder_path_shows_as_its_name(client, tiny_model_dir):
    health = client.get("/health").json
    assert (health["model"], health["model_hash"]) == ("tiny", None)  # a folder: no one hash
    r = client.post("/generate", json=BODY)
    assert infotext_of(client, r.data)["Model"] == "tiny"
    assert "Model hash" not in infotext_of(client, r.data)
    assert client.get("/sdapi/v1/options").json["sd_model_checkpoint"].startswith("tiny [")
    page = client.get("/").get_data(as_text=True)
    assert str(tiny_model_dir) not in page and '<option value="tiny">' in page
    assert client.get("/v1/models").json["data"][0]["id"] == "tiny"
    first = client.get("/sdapi/v1/sd-models").json[0]  # (its `filename` is a path, as A1111's)
    assert first["model_name"] == "tiny" and first["title"].startswith("tiny [")
    # A1111 clients that send the old spellings still mean the served model: no switch.
    for old in (str(tiny_model_dir), "tiny"):
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": old})
        assert r.status_code == 200
        assert client.get("/health").json["model"] == "tiny"
    assert [j["kind"] for j in client.get("/jobs").json["jobs"]] == ["generate"]


def test_a_checkpoint_given_by_path_shows_its_stem_and_short_hash(make_app, model_shelf):
    path = str(model_shelf / "tinyck.safetensors")
    client = make_app(MODEL_ID=path, MODELS_DIR=str(model_shelf)).test_client()
    health = client.get("/health").json
    sd_models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json}
    assert health["model"] == "tinyck" and health["model_hash"] == sd_models["tinyck"]["hash"]
    assert list(sd_models).count("tinyck") == 1  # MODEL_ID and MODELS_DIR's file: one entry
    info = infotext_of(client, client.post("/generate", json=BODY).data)
    assert (info["Model"], info["Model hash"]) == ("tinyck", health["model_hash"])
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": path})
    assert r.status_code == 200 and client.get("/health").json["model"] == "tinyck"
