"""params.recipes and catalog.loras' few-step recognition: few-step LoRAs (Hyper-SD, TCD, PCM,
LCM) known by their file name, their card (`<name>.json`) or their metadata, and their authors'
recipes applied to the fields a request leaves out; what a LoRA was made for, read from its
header. The LoRAs are copies of the session's random peft LoRA under the real files' names."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from catalog.loras import FewStep, find_lora, list_loras
from errors import ValidationError
from params import parse_generation_request
from params.recipes import few_step_recipe

# Their files' names on the Hub (ByteDance/Hyper-SD, h1t/TCD-SD15-LoRA saved under a name,
# wangfuyun/PCM_Weights sd15/) and what their model cards say to run them with.
RECIPES = {
    "Hyper-SD15-1step-lora": {"scheduler": "TCD", "steps": 1, "guidance_scale": 0.0,
                              "eta": 1.0},
    "Hyper-SD15-2steps-lora": {"scheduler": "DDIM trailing", "steps": 2,
                               "guidance_scale": 0.0, "eta": None},
    "Hyper-SD15-8steps-CFG-lora": {"scheduler": "DDIM trailing", "steps": 8,
                                   "guidance_scale": 5.0, "eta": None},
    "TCD-SD15-LoRA": {"scheduler": "TCD", "steps": 4, "guidance_scale": 0.0, "eta": 0.3},
    "pcm_sd15_smallcfg_2step_converted": {"scheduler": "TCD", "steps": 2,
                                          "guidance_scale": 0.0, "eta": None},
    "pcm_sd15_normalcfg_8step_converted": {"scheduler": "TCD", "steps": 8,
                                           "guidance_scale": 7.5, "eta": None},
    "pcm_sd15_lcmlike_lora_converted": {"scheduler": "LCM", "steps": 4,
                                        "guidance_scale": 0.0, "eta": None},
    "lcm-lora-sdv1-5": {"scheduler": "LCM", "steps": 4, "guidance_scale": 1.0, "eta": None},
}


@pytest.fixture(scope="module")
def few_step_dir(tmp_path_factory, lora_dir):
    """LORA_DIR with the random peft LoRA under each real few-step LoRA's name, one marked
    by its card, one by its metadata, and an ordinary one whose card says 'not few-step'."""
    folder = tmp_path_factory.mktemp("few-step")
    source = lora_dir / "style-peft.safetensors"
    for name in (*RECIPES, "plain", "marked-tcd", "lcm-but-not"):
        shutil.copy(source, folder / f"{name}.safetensors")
    (folder / "marked-tcd.json").write_text(json.dumps({"few_step": "tcd", "steps": 6}))
    (folder / "lcm-but-not.json").write_text(json.dumps({"lcm": False}))
    save_file(load_file(str(source)), str(folder / "from-metadata.safetensors"),
              metadata={"modelspec.title": "Hyper-SD 4steps"})
    return folder


@pytest.fixture
def settings(make_settings, few_step_dir):
    return make_settings(LORA_DIR=str(few_step_dir))


def parse(settings, **body):
    return parse_generation_request({"prompt": "a cat", **body}, settings)


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_few_step_lora_gets_its_authors_recipe(settings, name):
    request = parse(settings, prompt=f"a cat <lora:{name}:1>")
    got = {k: getattr(request, k) for k in ("scheduler", "steps", "guidance_scale", "eta")}
    assert got == RECIPES[name]


def test_recognised_by_card_and_metadata_and_a_card_can_say_no(settings):
    assert find_lora(settings, "marked-tcd").few_step == FewStep("tcd")
    request = parse(settings, loras=[{"name": "marked-tcd"}])
    assert (request.scheduler, request.steps, request.eta) == ("TCD", 6, 0.3)  # card wins
    assert find_lora(settings, "from-metadata").few_step == FewStep("hyper-sd", steps=4)
    assert find_lora(settings, "lcm-but-not").few_step is None
    assert find_lora(settings, "plain").few_step is None
    assert parse(settings, prompt="a cat <lora:plain>").steps == settings.default_steps


def test_the_client_still_wins_and_steps_are_clamped(make_settings, few_step_dir):
    settings = make_settings(LORA_DIR=str(few_step_dir), MAX_STEPS="4")
    request = parse(settings, prompt="a <lora:Hyper-SD15-8steps-CFG-lora>", guidance_scale=2)
    assert (request.steps, request.guidance_scale) == (4, 2.0)  # 8 clamped to MAX_STEPS
    request = parse(settings, prompt="a <lora:TCD-SD15-LoRA>", eta=0.9, scheduler="DDIM")
    assert (request.eta, request.scheduler) == (0.9, "DDIM")


def test_what_a_lora_was_made_for_is_read_from_its_header(settings, lora_dir, make_settings):
    both = {e.name: e for e in list_loras(make_settings(LORA_DIR=str(lora_dir)))}
    for name in ("style-peft", "detail-kohya"):  # diffusers/peft and kohya key names
        assert (both[name].cross_attention_dim, both[name].mid_block) == (32, True), name


def test_eta_is_checked_and_written_to_the_infotext(settings):
    with pytest.raises(ValidationError, match="'eta' must be a number 0..1"):
        parse(settings, eta=2)
    from params.infotext import request_from_infotext, write_infotext

    request = parse(settings, scheduler="TCD", eta=0.3, seed=5)
    text = write_infotext(request, 5, "m")
    assert "Sampler: TCD" in text and "Eta: 0.3" in text
    assert request_from_infotext(text)[0].eta == 0.3


def test_recipes_of_unknown_step_counts_fall_back_to_four():
    assert few_step_recipe(FewStep("pcm"))["steps"] == 4
    assert few_step_recipe(FewStep("hyper-sd"))["scheduler"] == "DDIM trailing"
