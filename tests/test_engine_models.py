"""The model catalogue and single-file checkpoints, offline, on the tiny random model: a
diffusers folder and an original-LDM-layout .safetensors made from it (with its config
folder beside it, since the tiny model is not SD 1.x shaped)."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from catalog import checkpoints, models
from catalog.models import CKPT_PROBLEM, find_model, list_models, model_sha256, with_hash
from engine import single_file
from engine.single_file import prepare_single_file
from errors import ModelUnavailable, UnknownModel


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model as one LDM-layout .safetensors plus its `<stem>.config/` folder."""
    folder = tmp_path_factory.mktemp("checkpoint")
    path = single_file.save_single_file(tiny_model_dir, folder / "tinyck.safetensors")
    shutil.copytree(tiny_model_dir, folder / "tinyck.config",
                    ignore=shutil.ignore_patterns("*.safetensors"))
    return path


@pytest.fixture
def models_dir(tmp_path, tiny_checkpoint) -> Path:
    """A MODELS_DIR holding the tiny checkpoint and its config folder."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy2(tiny_checkpoint, root / "tinyck.safetensors")
    shutil.copytree(tiny_checkpoint.with_name("tinyck.config"), root / "tinyck.config")
    return root


@pytest.fixture
def settings(make_settings, models_dir):
    """Settings on the tiny model with MODELS_DIR = models_dir (LORA_DIR inside it)."""
    return make_settings(MODELS_DIR=str(models_dir), LORA_DIR=str(models_dir / "lora"))


@pytest.fixture
def offline(monkeypatch):
    """No Hub and no network at all: HF_HUB_OFFLINE=1, and any outgoing connection fails."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"test is offline: connection to {address} refused")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"the code tried to reach the network: {attempts}"


def _state_dicts_equal(a, b) -> None:
    import torch

    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name} weights differ"


def _image(pipe):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the engine does here: on a busy 2-core box, 1 is 20x faster
    try:
        return pipe("a red fox", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(7)).images[0]
    finally:
        torch.set_num_threads(threads)


def test_single_file_converts_once_to_the_same_model_offline(settings, tiny_model_dir,
                                                             offline, monkeypatch):
    import numpy as np
    from diffusers import StableDiffusionPipeline

    phases = []
    entry = find_model(settings, "tinyck")
    folder = prepare_single_file(entry, settings, lambda *p: phases.append(p))
    assert folder.parent == settings.path(settings.models_dir) / ".converted"
    assert (folder / "model_index.json").is_file() and phases[-1][0] == "converting checkpoint"
    assert not list(folder.parent.glob("*.partial-*"))
    converted = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    original = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    for pipe in (converted, original):
        pipe.set_progress_bar_config(disable=True)
    _state_dicts_equal(original, converted)
    assert np.array_equal(_image(original), _image(converted))

    calls = []
    real = single_file.convert_checkpoint
    monkeypatch.setattr(single_file, "convert_checkpoint", lambda *a: calls.append(a) or real(*a))
    assert prepare_single_file(find_model(settings, "tinyck"), settings) == folder
    assert calls == [], "the second load converted again instead of using the cache"
    os.utime(entry.source, ns=(1, 1))  # a replaced file is converted again, the old copy goes
    again = prepare_single_file(find_model(settings, "tinyck"), settings)
    assert again != folder and len(calls) == 1 and not folder.exists()


def test_catalogue_lists_models_dir_and_skips_caches(settings, models_dir, tiny_model_dir):
    shutil.copytree(tiny_model_dir, models_dir / "Folder-model")
    (models_dir / "old.ckpt").write_bytes(b"\x80\x02 a pickle")
    (models_dir / "notes.txt").write_text("not a model")
    for skipped in ("lora", ".converted", "half.partial-12", "unrelated"):
        (models_dir / skipped).mkdir()
    (models_dir / "lora" / "model_index.json").write_text("{}")  # LORA_DIR is never a model
    (models_dir / "half.partial-12" / "model_index.json").write_text("{}")

    entries = list_models(settings)
    assert [e.name for e in entries] == [tiny_model_dir.name, "Folder-model", "old", "tinyck"]
    first, folder, ckpt, single = entries
    assert (first.kind, first.source) == ("diffusers", str(tiny_model_dir))
    assert (folder.kind, folder.sha256, folder.problem) == ("diffusers", None, "")
    assert (single.kind, single.problem, single.title) == ("single_file", "", "tinyck.safetensors")
    assert (ckpt.kind, ckpt.problem) == ("ckpt", CKPT_PROBLEM)
    with pytest.raises(ModelUnavailable, match="pickles that can run code"):
        find_model(settings, "old.ckpt")
    with pytest.raises(UnknownModel) as err:
        find_model(settings, "dreamshaper")
    assert "'dreamshaper'" in str(err.value) and "Folder-model, old, tinyck" in str(err.value)


def test_find_model_takes_every_name_a1111_clients_send(settings, models_dir):
    entry = with_hash(find_model(settings, "tinyck"), settings)
    short = entry.sha256[:10]
    assert entry.title == f"tinyck.safetensors [{short}]" and entry.short_hash == short
    path = str(models_dir / "tinyck.safetensors")
    for name in ("tinyck", "tinyck.safetensors", f"tinyck.safetensors [{short}]", path,
                 "tinyck.safetensors [0123456789]", f" {short} "):
        assert find_model(settings, name).source == path, name
    assert list_models(settings)[1].title == f"tinyck.safetensors [{short}]"
    with pytest.raises(UnknownModel):
        find_model(settings, "tinyck.ckpt")


def test_sha256_is_the_files_and_computed_once(settings, models_dir, monkeypatch):
    calls = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda p: calls.append(p) or real(p))
    path = models_dir / "tinyck.safetensors"
    entry = find_model(settings, "tinyck")
    assert model_sha256(entry, settings) is None and calls == []  # listing never hashes
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_sha256(entry, settings, compute=True) == expected and len(calls) == 1
    assert model_sha256(entry, settings, compute=True) == expected and len(calls) == 1
    assert find_model(settings, "tinyck").sha256 == expected  # read back from .sha256.json
    assert (models_dir / ".sha256.json").is_file()
    os.utime(path, ns=(5, 5))  # a changed file is hashed again
    assert model_sha256(entry, settings) is None
    folder_entry = list_models(settings)[0]
    assert model_sha256(folder_entry, settings, compute=True) is None


def _fake_checkpoint(path: Path, keys: dict) -> Path:
    """A header-faithful checkpoint: the real key names and tiny tensors of the given shapes."""
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, path)
    return path


SD1_KEYS = {checkpoints.SD1_KEY: (1,), checkpoints.SD1_CLIP_KEY: (77, 768),
            checkpoints.UNET + "input_blocks.0.0.weight": (1, 4, 1, 1),
            checkpoints.VAE + "encoder.conv_in.weight": (1,)}
SD2_KEYS = {**{k: v for k, v in SD1_KEYS.items() if k != checkpoints.SD1_CLIP_KEY},
            checkpoints.SD2_CLIP_KEY: (10, 1024)}


@pytest.mark.parametrize("keys,reason", [
    ({**SD1_KEYS, "conditioner.embedders.1.model.positional_embedding": (1,)}, "an SDXL checkpoint"),
    ({**SD2_KEYS, checkpoints.SD2_CLIP_KEY: (10, 512)}, "not SD 1.x or 2.x shaped"),
    ({"lora_unet_down_blocks_0.alpha": (1,)}, "not a full SD 1.x or 2.x checkpoint"),
    ({**SD1_KEYS, checkpoints.UNET + "input_blocks.0.0.weight": (1, 9, 1, 1)}, "inpainting"),
    ({**SD1_KEYS, checkpoints.SD1_CLIP_KEY: (77, 1024)}, "not SD 1.x or 2.x shaped"),
])
def test_other_families_are_refused_by_their_keys(settings, models_dir, keys, reason):
    _fake_checkpoint(models_dir / "other.safetensors", keys)
    entry = next(e for e in list_models(settings) if e.name == "other")
    assert reason in entry.problem and "SD 1.x" in entry.problem
    with pytest.raises(ModelUnavailable, match="other"):
        find_model(settings, "other")
    with pytest.raises(ModelUnavailable):
        prepare_single_file(entry, settings)


def test_sd1_checkpoint_without_a_tokenizer_says_what_to_download(settings, models_dir,
                                                                  offline, monkeypatch):
    """The HF cache of this machine is not under test: its lookup list is emptied."""
    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr(single_file, "SD1_TOKENIZER_SOURCES", ())
    _fake_checkpoint(models_dir / "sd15.safetensors", SD1_KEYS)
    entry = find_model(settings, "sd15.safetensors")
    assert entry.problem == ""
    tiny_tokenizer = StableDiffusionPipeline.from_pretrained(
        settings.model_source, safety_checker=None).tokenizer  # 1000 words: not CLIP ViT-L/14
    with pytest.raises(ModelUnavailable, match="hf download openai/clip-vit-large-patch14"):
        prepare_single_file(entry, settings, tokenizer=tiny_tokenizer)


def test_conversion_refuses_when_the_disk_is_too_small(settings, monkeypatch):
    monkeypatch.setattr(single_file.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    with pytest.raises(ModelUnavailable, match=r"needs .* GB free"):
        prepare_single_file(find_model(settings, "tinyck"), settings)
    assert not (settings.path(settings.models_dir) / ".converted").exists() or not any(
        (settings.path(settings.models_dir) / ".converted").iterdir())


def test_model_id_may_name_a_catalogue_entry_a_file_or_the_hub(make_settings, models_dir):
    def first(model_id: str):
        s = make_settings(MODEL_ID=model_id, MODELS_DIR=str(models_dir))
        entries = list_models(s)
        assert len({e.source for e in entries}) == len(entries), "an entry is listed twice"
        return entries[0]

    assert (first("tinyck.safetensors").name, first("tinyck").kind) == ("tinyck", "single_file")
    assert first(str(models_dir / "tinyck.safetensors")).name == "tinyck"
    hub = first("CompVis/stable-diffusion-v1-4")
    assert (hub.kind, hub.source, hub.sha256) == ("hub", "CompVis/stable-diffusion-v1-4", None)
    assert first("tiny-random").name == "tiny-random"


# ---- SD 2.x single files: OpenCLIP text encoder, v-prediction told or found ----

def _sd2_checkpoint(folder: Path, model: Path, stem: str, conv_out_bias: float | None = None,
                    keep_prediction: bool = True) -> Path:
    """`model` (a tiny SD 2.x folder) as `<stem>.safetensors` in OpenCLIP's layout, with its
    `<stem>.config/` folder; with `conv_out_bias`, its UNet answers that constant (zeroed
    conv_out), which A1111's v test reads; without `keep_prediction` the config folder does
    not say the prediction type."""
    import json

    from diffusers import UNet2DConditionModel

    source = model
    if conv_out_bias is not None:
        source = folder / f"{stem}-weights"
        shutil.copytree(model, source)
        unet = UNet2DConditionModel.from_pretrained(source / "unet")
        unet.conv_out.weight.data.zero_()
        unet.conv_out.bias.data.fill_(conv_out_bias)
        unet.save_pretrained(source / "unet")
    path = single_file.save_single_file(source, folder / f"{stem}.safetensors")
    config = folder / f"{stem}.config"
    shutil.copytree(model, config, ignore=shutil.ignore_patterns("*.safetensors"))
    if not keep_prediction:
        scheduler = config / "scheduler" / "scheduler_config.json"
        data = json.loads(scheduler.read_text())
        del data["prediction_type"]
        scheduler.write_text(json.dumps(data))
    return path


def test_an_sd2_checkpoint_converts_to_the_same_v_prediction_model(settings, models_dir,
                                                                   family_model, offline):
    import numpy as np
    from diffusers import StableDiffusionPipeline

    model = family_model("tiny-sd2-v")
    _sd2_checkpoint(models_dir, model, "sd21v")
    keys = checkpoints.read_header(models_dir / "sd21v.safetensors")
    assert checkpoints.SD2_CLIP_KEY in keys and checkpoints.SD1_CLIP_KEY not in keys
    entry = find_model(settings, "sd21v")
    assert (entry.problem, entry.family.id, entry.family.openclip) == ("", "sd2", True)
    folder = prepare_single_file(entry, settings)
    converted = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    original = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    for pipe in (converted, original):
        pipe.set_progress_bar_config(disable=True)
    _state_dicts_equal(original, converted)
    assert converted.scheduler.config.prediction_type == "v_prediction"
    assert converted.tokenizer.pad_token == "!"
    assert np.array_equal(_image(original), _image(converted))
    assert find_model(settings, "sd21v").family.label == "SD 2.x (v-prediction)"


@pytest.mark.parametrize("bias,card,yaml,expected", [
    (-2.0, None, None, "v_prediction"),   # found: the UNet answers far below its input
    (0.5, None, None, "epsilon"),         # found: it answers its input
    (0.5, {"prediction_type": "v_prediction"}, None, "v_prediction"),  # its card says
    (-2.0, None, "model:\n  params:\n    linear_start: 0.00085\n", "epsilon"),  # A1111 .yaml
    (0.5, None, "model:\n  params:\n    parameterization: \"v\"\n", "v_prediction"),
])
def test_sd2_prediction_is_told_by_card_or_yaml_else_found_as_a1111_does(
        settings, models_dir, family_model, bias, card, yaml, expected):
    import json

    from diffusers import StableDiffusionPipeline

    path = _sd2_checkpoint(models_dir, family_model("tiny-sd2-v"), "sd2x", bias,
                           keep_prediction=False)
    if card is not None:
        (models_dir / "sd2x.json").write_text(json.dumps(card))
    if yaml is not None:
        path.with_suffix(".yaml").write_text(yaml)
    folder = prepare_single_file(find_model(settings, "sd2x"), settings)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert pipe.scheduler.config.prediction_type == expected
    assert find_model(settings, "sd2x").family.prediction_type == expected


def test_sd2_shaped_checkpoints_are_listed_with_their_family(settings, models_dir):
    _fake_checkpoint(models_dir / "sd21.safetensors", {
        **SD2_KEYS, checkpoints.SD2_CLIP_KEY: (10, 1024),
        checkpoints.CROSS_ATTENTION_KEY: (320, 1024)})
    entry = find_model(settings, "sd21")
    assert entry.problem == ""
    assert (entry.family.id, entry.family.cross_attention_dim, entry.family.label) == (
        "sd2", 1024, "SD 2.x")
    (models_dir / "sd21.json").write_text('{"prediction_type": "v_prediction"}')
    assert find_model(settings, "sd21").family.native_size == 768


def test_the_shipped_configs_are_the_families_they_convert():
    from catalog.families import folder_family

    sd1, sd2 = folder_family(single_file.SD1_CONFIG), folder_family(single_file.SD2_CONFIG)
    assert (sd1.id, sd1.cross_attention_dim, sd1.openclip, sd1.native_size) == (
        "sd1", 768, False, 512)
    assert (sd2.id, sd2.cross_attention_dim, sd2.openclip, sd2.native_size) == (
        "sd2", 1024, True, 512)
