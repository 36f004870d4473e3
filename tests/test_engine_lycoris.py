"""engine.lycoris (through engine.loras.LoraAdapters): LyCORIS LoHa and LoKr files and kohya
LoCon, random ones made for the tiny model (tests.random_lora), recognised by the catalogue
and applied to the real tiny pipeline per job, never fused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from catalog.loras import list_loras
from engine.loras import LoraAdapters
from errors import LoraError
from tests.helpers import image_64, plain_pipeline
from tests.random_lora import LCM_TARGETS, build_random_lora, build_random_lycoris


@pytest.fixture(scope="module")
def lycoris_dir(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("lycoris")
    build_random_lycoris(tiny_model_dir, folder / "hada.safetensors", "loha", scale=0.5)
    build_random_lycoris(tiny_model_dir, folder / "kron.safetensors", "lokr", seed=1)
    build_random_lycoris(tiny_model_dir, folder / "tucker.safetensors", "loha", tucker=True)
    build_random_lora(tiny_model_dir, folder / "locon.safetensors", "kohya",
                      targets=LCM_TARGETS, scale=5, seed=2)
    return folder


@pytest.fixture(scope="module")
def entries(lycoris_dir, tiny_model_dir):
    from config import Settings

    settings = Settings.from_env({"MODEL_ID": str(tiny_model_dir),
                                  "LORA_DIR": str(lycoris_dir)})
    return {e.name: e for e in list_loras(settings)}




@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return plain_pipeline(tiny_model_dir)




def test_the_catalogue_knows_each_format(entries):
    assert {name: e.format for name, e in entries.items()} == {
        "hada": "loha", "kron": "lokr", "tucker": "loha", "locon": "locon"}
    assert entries["hada"].cross_attention_dim == 32


@pytest.mark.parametrize("name", ["hada", "kron", "locon"])
def test_applied_changes_the_image_weight_zero_does_not_and_nothing_leaks(pipe, entries,
                                                                          name):
    adapters = LoraAdapters()
    base = image_64(pipe)
    weights = pipe.unet.down_blocks[0].resnets[0].conv1.weight.detach().clone()
    try:
        adapters.activate(pipe, [(entries[name], 0.0)])
        assert np.allclose(image_64(pipe), base, atol=1e-6)
        adapters.activate(pipe, [(entries[name], 1.0)])
        assert np.abs(image_64(pipe) - base).mean() > 1e-3
        assert torch.equal(pipe.unet.down_blocks[0].resnets[0].conv1.weight, weights)
        adapters.deactivate(pipe)
        assert np.array_equal(image_64(pipe), base)  # the next job: the bare model
    finally:
        adapters.clear(pipe)


def _fused_delta(tensors: dict, layer: str, shape) -> torch.Tensor:
    """The weight change LyCORIS defines, written out plainly."""
    t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(layer + ".")}
    rank = t["alpha"].item()
    if "hada_w1_a" in t:
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        delta = delta * t["alpha"] / t["hada_w1_b"].shape[0]
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        delta = torch.kron(t["lokr_w1"], w2) * t["alpha"] / t["lokr_w2_b"].shape[0]
    assert rank
    return delta.reshape(shape)


@pytest.mark.parametrize("name", ["hada", "kron"])
def test_hooks_give_what_the_weights_with_the_change_added_give(pipe, entries, tiny_model_dir,
                                                                name):
    adapters = LoraAdapters()
    try:
        adapters.activate(pipe, [(entries[name], 0.7)])
        hooked = image_64(pipe)
    finally:
        adapters.clear(pipe)
    fused = plain_pipeline(tiny_model_dir)
    tensors = load_file(str(entries[name].path))
    modules = {"lora_unet_" + n.replace(".", "_"): m for n, m in fused.unet.named_modules()}
    modules.update({"lora_te_text_model_" + n.replace(".", "_"): m
                    for n, m in fused.text_encoder.named_modules()})
    with torch.no_grad():
        for layer in {k.split(".", 1)[0] for k in tensors}:
            weight = modules[layer].weight
            weight += 0.7 * _fused_delta(tensors, layer, weight.shape)
    assert np.allclose(hooked, image_64(fused), atol=1e-4)


def test_a_tucker_core_is_refused_naming_the_format_and_nothing_stays(pipe, entries):
    adapters = LoraAdapters()
    with pytest.raises(LoraError, match=r"'tucker' \(loha format\).*Tucker core"):
        adapters.activate(pipe, [(entries["tucker"], 1.0)])
    assert not adapters.loaded and not adapters.lycoris


def test_lycoris_and_peft_adapters_together_and_evicted_when_over_capacity(pipe, entries):
    base = image_64(pipe)
    adapters = LoraAdapters(capacity=1)
    try:
        adapters.activate(pipe, [(entries["hada"], 1.0), (entries["locon"], 1.0)])
        both = image_64(pipe)
        assert np.abs(both - base).mean() > 1e-3
        adapters.activate(pipe, [(entries["kron"], 1.0)])
        assert list(adapters.loaded) == [adapters.adapter_name(entries["kron"])]
        assert not adapters.lycoris.get(adapters.adapter_name(entries["hada"]))
        adapters.deactivate(pipe)
        assert np.array_equal(image_64(pipe), base)
    finally:
        adapters.clear(pipe)
