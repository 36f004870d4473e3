"""ENGINE=openvino on the tiny models: the one-off export of text encoder, UNet and decoders,
every family (SD 1.x, SD 2.x v-prediction, SD-Turbo, SDXS-0.9 and SDXS-DreamShaper, each
with its VAE and with TAESD) close to torch's image, generation with progress and cancel, a
scheduler change, an A1111 request, shapes (one shared compiled UNet, or static ones within
their bound), what the engine refuses (400 naming it), the same seed giving the same bytes,
and the one-line error when openvino is not installed.

Everything really runs in OpenVINO here (exported from the tiny random models); nothing is
faked.
"""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import poll_until, wait_state

BODY = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="session")
def ov_cache_dir(tmp_path_factory):
    """OPENVINO_CACHE_DIR shared by this file's apps (the tiny UNet is exported once).

    Every test that runs OpenVINO asks for it, so without the package they fail, never
    skip: a broken install must not pass unseen (scripts/setup.sh test installs
    requirements-openvino.txt, as CI does)."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"openvino is not installed ({exc}): pip install -r "
                    "requirements-openvino.txt (these tests need it; they never skip)")
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture
def ov_app(make_app, ov_cache_dir):
    """A ready app whose UNet runs in OpenVINO."""
    return make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(ov_cache_dir))


def pixels(png: bytes) -> np.ndarray:
    """The PNG's RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_first_start_exports_shows_it_and_later_starts_reuse_the_export(make_app, tmp_path,
                                                                       ov_cache_dir):
    app = make_app(wait=False, ENGINE="openvino", OPENVINO_CACHE_DIR=str(tmp_path))
    client = app.test_client()
    phases = set()

    def loaded():
        body = client.get("/health").json
        if body["status"] == "loading":
            phases.add(body["phase"])
            return None
        return body

    body = poll_until(loaded, 120, "the openvino engine to leave 'loading'")
    assert body["status"] == "healthy", body
    assert "exporting" in phases  # the tiny export takes seconds: polling sees it
    engine = body["engine"]
    assert engine["name"] == "openvino" and engine["precision"] == "f32"
    parts = engine["parts"]
    for name in ("unet", "text_encoder", "vae"):
        assert parts[name]["device"] == "openvino CPU" and parts[name]["precision"] == "f32"
    assert parts["vae_encoder"] == {"device": "torch CPU", "precision": "float32"}
    assert set(engine["export_seconds"]) == {"unet", "text-encoder", "vae-decoder"}
    # One compiled UNet for every size (OPENVINO_SHAPES=shared), run once at the default.
    assert list(engine["compile_seconds"]) == ["dynamic"]
    assert parts["unet"]["shapes_run"] == ["2x64x64"]
    assert engine["memory"]["vmrss_gib"] > 0
    assert any(o.startswith("openvino (text encoder, unet, vae decoder; f32")
               for o in body["optimizations"])
    exported = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name.split("-")[0] for p in exported] == ["text", "unet", "vae"]
    assert all((p / "model.xml").is_file() for p in exported)
    again = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(tmp_path)).test_client()
    engine = again.get("/health").json["engine"]
    assert engine["export_seconds"] == {} and engine["compile_seconds"]["dynamic"] > 0
    assert sorted(p for p in tmp_path.iterdir() if p.is_dir()) == exported


def test_same_seed_same_bytes_and_close_to_torch(ov_app, make_app):
    client = ov_app.test_client()
    first = client.post("/generate", json=BODY)
    assert first.status_code == 200, first.json
    assert client.post("/generate", json=BODY).data == first.data
    other = client.post("/generate", json={**BODY, "seed": 6})
    assert other.status_code == 200 and other.data != first.data
    torch_png = make_app().test_client().post("/generate", json=BODY).data
    # Not byte-identical to torch (another kernel library), but the same picture.
    difference = np.abs(pixels(first.data).astype(int) - pixels(torch_png).astype(int))
    assert difference.max() <= 8, difference.max()


def test_other_sizes_run_on_the_one_shared_compiled_unet(ov_app):
    client = ov_app.test_client()
    for width in (64, 128, 96, 72):
        r = client.post("/generate", json={**BODY, "width": width, "steps": 2})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).width == width
    unet = client.get("/health").json["engine"]["parts"]["unet"]
    assert list(unet["compile_seconds"]) == ["dynamic"]
    assert unet["shapes_run"] == ["2x64x64", "2x64x128", "2x64x96", "2x64x72"]


def test_a_hires_fix_past_max_size_runs_on_the_shared_unet(make_app, ov_cache_dir):
    """The second pass runs at up to MAX_HIRES_SIZE, over MAX_SIZE: inside the one compiled
    UNet's bounds too."""
    client = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(ov_cache_dir),
                      MAX_SIZE="128", MAX_HIRES_SIZE="256").test_client()
    r = client.post("/generate", json={**BODY, "width": 128, "height": 128, "steps": 2,
                                       "hires": {"scale": 2, "steps": 1}})
    assert r.status_code == 200, r.json
    assert Image.open(io.BytesIO(r.data)).size == (256, 256)


def test_static_shapes_compile_on_first_use_within_the_bound(make_app, ov_cache_dir):
    from engine.openvino_engine import COMPILED_SHAPES

    client = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(ov_cache_dir),
                      OPENVINO_SHAPES="static").test_client()
    for width in (64, 128, 96, 72):
        r = client.post("/generate", json={**BODY, "width": width, "steps": 2})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).width == width
    compiled = client.get("/health").json["engine"]["compile_seconds"]
    assert len(compiled) == COMPILED_SHAPES
    assert "2x64x72" in compiled and "2x64x64" not in compiled  # least recently used went


@pytest.mark.parametrize("arch", ["tiny-sd2-v", "tiny-sd-turbo", "tiny-sdxs",
                                  "tiny-sdxs-dreamshaper"])
def test_every_family_runs_on_openvino_close_to_torch(make_app, ov_cache_dir, family_model,
                                                      taesd_dir, arch):
    env = {"MODEL_ID": str(family_model(arch)), "TAESD_MODEL": str(taesd_dir)}
    torch_client = make_app(**env).test_client()
    ov_client = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(ov_cache_dir),
                         **env).test_client()
    engine = ov_client.get("/health").json["engine"]
    assert {p["device"] for n, p in engine["parts"].items() if n != "vae_encoder"} == \
        {"openvino CPU"} and set(engine["parts"]) >= {"unet", "text_encoder", "vae", "taesd"}
    # The family's own defaults (1 step, no CFG for SD-Turbo and SDXS: the UNet at batch 1).
    one_step = arch != "tiny-sd2-v"
    assert engine["parts"]["unet"]["shapes_run"][0].startswith("1x" if one_step else "2x")
    for decoder in ("full", "tiny"):
        body = {"prompt": "a lighthouse", "seed": 5, "vae_decoder": decoder}
        ours = ov_client.post("/generate", json=body)
        theirs = torch_client.post("/generate", json=body)
        assert ours.status_code == theirs.status_code == 200, ours.json
        difference = np.abs(pixels(ours.data).astype(int) - pixels(theirs.data).astype(int))
        assert difference.max() <= 8, (decoder, difference.max())


def test_progress_and_cancel_through_the_step_callback(ov_app, gate):
    client = ov_app.test_client()
    running = client.post("/jobs", json={**BODY, "steps": 20}).json
    gate.wait_reached()
    gate.release(1)
    gate.wait_reached()
    body = client.get(f"/jobs/{running['id']}").json
    assert body["state"] == "running" and body["step"] == 2 and body["total_steps"] == 20
    assert client.post(f"/jobs/{running['id']}/cancel").status_code == 200
    gate.release(1)
    body = wait_state(client, running["id"], {"cancelled"})
    assert "cancelled at step" in body["error"]


def test_a_scheduler_change_changes_the_image(ov_app):
    client = ov_app.test_client()
    default = client.post("/generate", json=BODY)
    euler = client.post("/generate", json={**BODY, "scheduler": "Euler a"})
    assert default.status_code == euler.status_code == 200
    assert euler.data != default.data
    assert "Sampler: Euler a" in Image.open(io.BytesIO(euler.data)).text["parameters"]


def test_a1111_txt2img_batch_runs_on_openvino(ov_app):
    client = ov_app.test_client()
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 3, "steps": 2,
                                                "width": 64, "height": 64, "batch_size": 2})
    assert r.status_code == 200, r.json
    assert len(r.json["images"]) == 2 and r.json["images"][0] != r.json["images"][1]


def test_deep_cache_and_loras_are_refused_naming_the_engine(ov_app):
    client = ov_app.test_client()
    r = client.post("/generate", json={**BODY, "deep_cache": 3})
    assert r.status_code == 400 and r.json["error"] == "unsupported_request"
    assert "ENGINE=openvino" in r.json["message"] and "deep_cache" in r.json["message"]
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "speed_preset": "fast"})
    assert r.status_code in (400, 422) and "ENGINE=openvino" in str(r.json)
    assert client.post("/generate", json=BODY).status_code == 200  # the server goes on


def test_loras_are_refused_naming_the_engine(make_app, ov_cache_dir, lora_dir):
    client = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(ov_cache_dir),
                      LORA_DIR=str(lora_dir)).test_client()
    r = client.post("/generate", json={**BODY, "prompt": "a cat <lora:style-peft:1>"})
    assert r.status_code == 400 and "LoRAs are not available with ENGINE=openvino" in \
        r.json["message"]


def test_embeddings_are_refused_naming_the_engine(make_app, ov_cache_dir, tmp_path):
    from tests.random_embedding import build_random_embedding

    build_random_embedding(tmp_path / "shiny.safetensors", "diffusers")
    client = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(ov_cache_dir),
                      EMBEDDINGS_DIR=str(tmp_path)).test_client()
    r = client.post("/generate", json={**BODY, "prompt": "a shiny cat"})
    assert r.status_code == 400 and "ENGINE=openvino" in r.json["message"]
    assert "embeddings" in r.json["message"]
    assert client.post("/generate", json=BODY).status_code == 200  # the server goes on


def test_without_openvino_the_start_fails_with_one_line_saying_what_to_install(
        make_app, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    client = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(tmp_path)).test_client()
    r = client.get("/health")
    assert r.status_code == 503 and r.json["status"] == "unhealthy"
    assert "pip install -r requirements-openvino.txt" in r.json["error"]
    assert "\n" not in r.json["error"] and "ENGINE=openvino" in r.json["error"]
    assert not list(tmp_path.iterdir())


def test_img2img_and_inpainting_run_on_openvino(ov_app):
    from tests.test_api_img2img import b64, centre_mask, two_colours

    client = ov_app.test_client()
    txt2img = client.post("/generate", json=BODY)
    img2img = client.post("/generate", json={**BODY, "init_image": b64(two_colours())})
    assert img2img.status_code == 200 and img2img.data != txt2img.data
    inpaint = client.post("/generate", json={**BODY, "init_image": b64(two_colours()),
                                             "mask_image": b64(centre_mask())})
    assert inpaint.status_code == 200
    corner = pixels(inpaint.data)[:8, :8]  # outside the mask: the input's own pixels
    assert np.array_equal(corner, np.asarray(two_colours().convert("RGB"))[:8, :8])
