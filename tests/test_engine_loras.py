"""engine.loras: the LoRA folder, and peft adapters applied to the real tiny pipeline per job.

LoRAs are random ones made with peft for the tiny model (tests.random_lora), in both file
formats users bring: diffusers/peft and kohya/A1111.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from catalog.loras import find_lora, list_loras
from engine.loras import LoraAdapters
from errors import LoraError


@pytest.fixture(scope="module")
def settings(lora_dir, tiny_model_dir):
    from config import Settings

    return Settings.from_env({"MODEL_ID": str(tiny_model_dir), "LORA_DIR": str(lora_dir)})


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe) -> np.ndarray:
    """One 64 px image, 2 steps, fixed seed."""
    return pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                generator=torch.Generator().manual_seed(7)).images[0]


def test_lists_both_formats_with_metadata_and_skips_junk(settings, caplog):
    with caplog.at_level(logging.WARNING):
        entries = {e.name: e for e in list_loras(settings)}
    assert set(entries) == {"style-peft", "detail-kohya", "lcm-lora-tiny", "marked"}
    assert entries["style-peft"].format == "peft"
    assert entries["detail-kohya"].format == "kohya"
    assert entries["style-peft"].alias == "Style"  # from ss_output_name, as A1111 shows it
    assert "not-a-lora" in caplog.text and "broken" in caplog.text


def test_lcm_loras_are_recognised_by_name_or_the_users_mark(settings):
    lcm = {e.name: e.lcm for e in list_loras(settings)}
    assert lcm == {"style-peft": False, "detail-kohya": False, "lcm-lora-tiny": True,
                   "marked": True}


def test_find_by_name_alias_or_case_and_unknown_lists_the_available(settings):
    assert find_lora(settings, "Style").name == "style-peft"
    assert find_lora(settings, "DETAIL-KOHYA").name == "detail-kohya"
    with pytest.raises(LoraError) as err:
        find_lora(settings, "nope")
    assert "nope" in str(err.value) and "detail-kohya" in str(err.value)


def test_empty_folder_says_where_to_put_loras(tmp_path, tiny_model_dir):
    from config import Settings

    settings = Settings.from_env({"LORA_DIR": str(tmp_path / "missing")})
    with pytest.raises(LoraError, match="put .safetensors LoRAs in"):
        find_lora(settings, "x")


@pytest.mark.parametrize("name", ["style-peft", "detail-kohya"])
def test_weight_zero_is_the_base_image_weight_one_differs_and_nothing_leaks(pipe, settings,
                                                                             name):
    adapters = LoraAdapters()
    base = image(pipe)
    entry = find_lora(settings, name)
    adapters.activate(pipe, [(entry, 0.0)])
    assert np.array_equal(image(pipe), base)
    adapters.activate(pipe, [(entry, 1.0)])
    changed = image(pipe)
    assert np.abs(changed - base).mean() > 1e-3
    adapters.deactivate(pipe)
    assert np.array_equal(image(pipe), base)  # the next job is unaffected
    adapters.clear(pipe)


def test_two_loras_at_once_differ_from_either_alone(pipe, settings):
    adapters = LoraAdapters()
    a, b = find_lora(settings, "style-peft"), find_lora(settings, "detail-kohya")
    results = []
    for loras in ([(a, 1.0)], [(b, 1.0)], [(a, 1.0), (b, 1.0)]):
        adapters.activate(pipe, loras)
        results.append(image(pipe))
    adapters.clear(pipe)
    assert not np.array_equal(results[2], results[0])
    assert not np.array_equal(results[2], results[1])


def test_the_adapter_cache_is_bounded(pipe, settings):
    adapters = LoraAdapters(capacity=2)
    names = ["style-peft", "detail-kohya", "lcm-lora-tiny"]
    for name in names:
        adapters.activate(pipe, [(find_lora(settings, name), 1.0)])
    assert [e.name for e in adapters.loaded.values()] == names[1:]
    loaded_in_pipe = {n for ns in pipe.get_list_adapters().values() for n in ns}
    assert loaded_in_pipe == set(adapters.loaded)
    adapters.clear(pipe)
    assert not {n for ns in pipe.get_list_adapters().values() for n in ns}


def test_a_lora_of_the_wrong_shape_is_refused_and_the_pipeline_goes_on(pipe, settings,
                                                                      lora_dir, tmp_path):
    tensors = load_file(str(lora_dir / "style-peft.safetensors"))
    bad = {k: (torch.zeros(v.shape[0], v.shape[1] + 3) if ".lora_A." in k and "to_k" in k
               else v) for k, v in tensors.items()}
    save_file(bad, str(tmp_path / "wrong.safetensors"))
    from config import Settings

    wrong = find_lora(Settings.from_env({"LORA_DIR": str(tmp_path)}), "wrong")
    adapters = LoraAdapters()
    base = image(pipe)
    with pytest.raises(LoraError, match="does not fit this model"):
        adapters.activate(pipe, [(wrong, 1.0)])
    assert not adapters.loaded
    assert not {n for ns in pipe.get_list_adapters().values() for n in ns}
    assert np.array_equal(image(pipe), base)
