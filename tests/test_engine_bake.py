"""engine.bake and catalog.bakes: LoRAs merged into the tiny model, written once, listed as a
model, loaded memory-mapped, and equal to the unbaked LoRAs' image.

The LoRAs are random ones made with peft for the tiny model (tests.random_lora, in the
diffusers/peft and kohya formats) and a LyCORIS LoHa; the pipelines are the real ones.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog.bakes import MANIFEST, list_baked
from catalog.loras import find_lora
from catalog.models import find_model, list_models
from config import Settings
from engine.bake import bake_model
from engine.loras import LoraAdapters
from errors import LoraError, UnknownModel
from tests.conftest import BASE_ENV
from tests.random_lora import build_random_lycoris

BAKE = ("tiny+style-peft:0.8+detail-kohya:0.5", "tiny",
        (("style-peft", 0.8), ("detail-kohya", 0.5)))


@pytest.fixture(scope="module")
def loras(lora_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """The session's LoRAs, with a LyCORIS LoHa beside them."""
    folder = tmp_path_factory.mktemp("bake-loras")
    shutil.copytree(lora_dir, folder, dirs_exist_ok=True)
    build_random_lycoris(tiny_model_dir, folder / "hada.safetensors", "loha", scale=0.3)
    return folder


@pytest.fixture(scope="module")
def settings(tiny_model_dir, loras, tmp_path_factory) -> Settings:
    """The tiny model, its LoRAs, and a MODELS_DIR of this module's own for the bakes."""
    return Settings.from_env({**BASE_ENV, "MODEL_ID": str(tiny_model_dir),
                              "LORA_DIR": str(loras),
                              "MODELS_DIR": str(tmp_path_factory.mktemp("models"))})


@pytest.fixture(scope="module")
def baked(settings) -> Path:
    """BAKE's folder, written once for the module."""
    return bake_model(settings, BAKE)


def image(folder, settings=None, loras=()) -> np.ndarray:
    """One 64 px image, 2 steps, fixed seed, from the model in `folder` with `loras` active."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    adapters = LoraAdapters()
    adapters.activate(pipe, [(find_lora(settings, name), w) for name, w in loras])
    return pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                generator=torch.Generator().manual_seed(7)).images[0]


def test_the_baked_model_makes_the_unbaked_loras_image(baked, settings, tiny_model_dir):
    unbaked = image(tiny_model_dir, settings, BAKE[2])
    assert np.abs(unbaked - image(tiny_model_dir)).max() > 0.05  # the LoRAs do show
    assert np.abs(image(baked) - unbaked).max() < 1e-4


def test_a_lycoris_file_bakes_to_its_image(settings, tiny_model_dir):
    folder = bake_model(settings, ("tiny+hada", "tiny", (("hada", 0.7),)))
    unbaked = image(tiny_model_dir, settings, (("hada", 0.7),))
    assert np.abs(unbaked - image(tiny_model_dir)).max() > 0.01
    assert np.abs(image(folder) - unbaked).max() < 1e-4


def test_only_what_the_loras_change_is_written_the_rest_is_linked(baked, tiny_model_dir):
    assert sorted(p.name for p in baked.iterdir() if not p.is_symlink()) == \
        [MANIFEST, "model_index.json", "text_encoder", "unet"]
    assert (baked / "vae").resolve() == (tiny_model_dir / "vae").resolve()
    assert (baked / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_catalogue_lists_it_by_its_name(baked, settings):
    entry = find_model(settings, BAKE[0])
    assert Path(entry.source) == baked and entry.kind == "diffusers"
    assert entry.family.id == "sd1"
    assert BAKE[0] in [e.name for e in list_models(settings)]


def test_a_few_step_loras_recipe_becomes_the_baked_models_card(settings):
    from params.recipes import model_card

    bake_model(settings, ("tiny-lcm", "tiny", (("lcm-lora-tiny", 1.0),)))
    card = model_card(find_model(settings, "tiny-lcm"))
    assert (card["scheduler"], card["steps"], card["guidance_scale"]) == ("LCM", 4, 1.0)
    assert card["negative_prompt"] is False  # guidance 1: no classifier-free guidance
    assert "scheduler" not in model_card(find_model(settings, BAKE[0]))  # ordinary LoRAs


def test_the_same_bake_again_reuses_the_folder_and_a_new_name_renames_it(baked, settings,
                                                                       monkeypatch):
    import engine.bake

    weights = baked / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns

    def never(*args):
        raise AssertionError("rewrote a bake already on disk")

    monkeypatch.setattr(engine.bake, "_write", never)
    assert bake_model(settings, BAKE) == baked
    assert bake_model(settings, ("renamed", *BAKE[1:])) == baked
    assert weights.stat().st_mtime_ns == before
    assert ("renamed", baked) in list_baked(settings)
    bake_model(settings, BAKE)  # and back, for the other tests


def test_other_weights_are_another_bake(baked, settings):
    other = bake_model(settings, ("tiny+style-peft", "tiny", (("style-peft", 1.0),)))
    assert other != baked and (other / MANIFEST).is_file()


def test_the_baked_unet_is_memory_mapped_from_its_file(baked):
    """Every UNet weight lies in a mapping of the baked file (an anonymous copy would not)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(baked / "unet", low_cpu_mem_usage=True)
    weights = str((baked / "unet" / "diffusion_pytorch_model.safetensors").resolve())
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == weights:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            spans.append((lo, hi))
    assert spans, "the baked weights file is not mapped"
    params = list(unet.parameters())
    mapped = [p for p in params
              if any(lo <= p.data_ptr() < hi for lo, hi in spans)]
    assert len(mapped) == len(params)


def test_unknown_lora_or_model_is_named(settings):
    with pytest.raises(LoraError, match="unknown LoRA 'nope'"):
        bake_model(settings, ("x", "tiny", (("nope", 1.0),)))
    with pytest.raises(UnknownModel, match="no-such-model"):
        bake_model(settings, ("x", "no-such-model", (("style-peft", 1.0),)))


def test_a_bad_bake_stops_the_load_naming_it(make_app, loras, settings):
    app = make_app(LORA_DIR=str(loras), MODELS_DIR=str(settings.models_dir),
                   BAKE="tiny+nope:0.5")
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy"
    assert "BAKE 'tiny+nope:0.5'" in body["error"] and "unknown LoRA 'nope'" in body["error"]


def test_health_shows_the_bakes_progress_then_serves_the_baked_model(
        make_app, loras, tiny_model_dir, tmp_path, monkeypatch):
    """A gate in the bake's progress holds it at its 5th layer while /health is read."""
    import engine.slot

    reached, go = threading.Event(), threading.Event()
    real = engine.slot.bake_all

    def gated(settings, report):
        def gate(phase, done, total, **extra):
            report(phase, done, total, **extra)
            if extra["layers_done"] == 5:
                reached.set()
                assert go.wait(60), "the test never let the bake go on"
        return real(settings, gate)

    monkeypatch.setattr(engine.slot, "bake_all", gated)
    # the base named by its path (as MODEL_ID may name one): MODEL_ID names the bake
    app = make_app(wait=False, LORA_DIR=str(loras), MODELS_DIR=str(tmp_path),
                   BAKE=f"quick={tiny_model_dir}+style-peft", MODEL_ID="quick")
    try:
        assert reached.wait(120), "the bake never reported 5 layers"
        body = app.test_client().get("/health").get_json()
        assert body["status"] == "loading" and body["phase"] == "baking quick"
        progress = body["progress"]
        assert progress["layers_done"] == 5 and progress["layers_total"] > 5
        assert 0 < progress["bytes_done"] < progress["bytes_total"]
    finally:
        go.set()
    assert app.extensions["sd_server"].queue.wait_until_loaded(120)
    body = app.test_client().get("/health").get_json()
    assert body["status"] == "healthy" and body["model"] == "quick"
    client = app.test_client()
    assert "quick" in [m["model_name"] for m in client.get("/sdapi/v1/sd-models").get_json()]
    assert "quick" in [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    assert os.path.islink(Path(find_model(app.extensions["sd_server"].settings,
                                          "quick").source) / "vae")


def test_openvino_runs_the_baked_model_to_the_unbaked_loras_picture(make_app, loras,
                                                                   tiny_model_dir, tmp_path):
    """ENGINE=openvino exports the baked UNet like any model's (its LoRAs are in its weights).
    Needs openvino installed (as tests/test_engine_openvino.py: a missing one fails)."""
    import io

    from PIL import Image

    (tmp_path / "tiny").symlink_to(tiny_model_dir)
    env = {"LORA_DIR": str(loras), "MODELS_DIR": str(tmp_path),
           "BAKE": "styled=tiny+style-peft:0.8"}
    body = {"prompt": "a lighthouse", "seed": 5, "steps": 3, "width": 64, "height": 64}
    ov = make_app(ENGINE="openvino", OPENVINO_CACHE_DIR=str(tmp_path / "ov"), MODEL_ID="styled",
                  **env).test_client()
    baked = ov.post("/generate", json=body)
    assert baked.status_code == 200, baked.json
    torch_app = make_app(**env).test_client()
    unbaked = torch_app.post("/generate", json={**body, "prompt": "a lighthouse "
                                                "<lora:style-peft:0.8>"})
    plain = torch_app.post("/generate", json=body)

    def pixels(response) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB")).astype(int)

    assert np.abs(pixels(unbaked) - pixels(plain)).max() > 40  # the LoRA shows
    assert np.abs(pixels(baked) - pixels(unbaked)).max() <= 8  # another kernel library


def test_a_text_encoder_saved_by_transformers_4_keeps_its_tensor_names(settings, tiny_model_dir,
                                                                       tmp_path):
    """SD 1.x's text encoder file says `text_model.encoder...` (transformers 4's names); the
    baked one says so too, and computes what the unbaked LoRA does."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    base = tmp_path / "old-te"
    base.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name != "text_encoder":
            (base / item.name).symlink_to(item.resolve())
    (base / "text_encoder").mkdir()
    shutil.copy(tiny_model_dir / "text_encoder" / "config.json", base / "text_encoder")
    state = load_file(tiny_model_dir / "text_encoder" / "model.safetensors")
    save_file({f"text_model.{k}": v for k, v in state.items()},
              base / "text_encoder" / "model.safetensors", metadata={"format": "pt"})
    folder = bake_model(settings, ("old-te+style", str(base), (("style-peft", 0.8),)))
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert names == {f"text_model.{k}" for k in state}
    unbaked = image(base, settings, (("style-peft", 0.8),))
    assert np.abs(image(folder) - unbaked).max() < 1e-4
