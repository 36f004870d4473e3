"""LoRAs through the HTTP API, on the real tiny model with random peft-made LoRAs (the
`lora_dir` fixture): <lora:name:weight> in every dialect, the native `loras` field, the
A1111 list, LCM defaults, bad names and bad files, and no adapter leaking between jobs."""
from __future__ import annotations

import base64
import hashlib
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

BODY = {"prompt": "a cat", "seed": 5, "steps": 2, "width": 64, "height": 64}


@pytest.fixture
def lora_client(make_app, lora_dir):
    """A ready app whose LORA_DIR holds the test LoRAs."""
    return make_app(LORA_DIR=str(lora_dir)).test_client()


def pixels(png: bytes) -> np.ndarray:
    """The image's RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def generate(client, **fields) -> bytes:
    r = client.post("/generate", json={**BODY, **fields})
    assert r.status_code == 200, r.get_json()
    return r.data


def test_weight_zero_is_the_plain_image_weight_one_differs_and_nothing_leaks(lora_client):
    plain = pixels(generate(lora_client))
    assert np.array_equal(pixels(generate(lora_client, prompt="a cat <lora:style-peft:0>")),
                          plain)
    styled = pixels(generate(lora_client, prompt="a cat <lora:style-peft:1>"))
    assert np.abs(styled - plain).mean() > 0.5
    assert np.array_equal(pixels(generate(lora_client)), plain)  # the next job: no adapter


def test_the_loras_field_does_what_the_tag_does(lora_client):
    by_tag = pixels(generate(lora_client, prompt="a cat <lora:detail-kohya:0.8>"))
    by_field = pixels(generate(lora_client, loras=[{"name": "detail-kohya", "weight": 0.8}]))
    assert np.array_equal(by_tag, by_field)


def test_infotext_keeps_the_tags_and_adds_lora_hashes(lora_client, lora_dir):
    png = generate(lora_client, prompt="a cat <lora:style-peft:0.5>",
                   loras=[{"name": "detail-kohya", "weight": 1}])
    text = Image.open(io.BytesIO(png)).info["parameters"]
    digest = {name: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for name, path in (
        ("style-peft", lora_dir / "style-peft.safetensors"),
        ("detail-kohya", lora_dir / "sub" / "detail-kohya.safetensors"))}
    assert text.startswith("a cat <lora:style-peft:0.5> <lora:detail-kohya:1>\n")
    assert (f'Lora hashes: "style-peft: {digest["style-peft"]}, detail-kohya: '
            f'{digest["detail-kohya"]}"') in text


def test_unknown_lora_is_4xx_naming_the_available_ones_in_every_dialect(lora_client):
    r = lora_client.post("/generate", json={**BODY, "prompt": "a <lora:nope:1>"})
    assert r.status_code == 400 and r.json["error"] == "invalid_field"
    assert "nope" in r.json["message"] and "style-peft" in r.json["message"]
    r = lora_client.post("/sdapi/v1/txt2img", json={**BODY, "prompt": "a <lora:nope>"})
    assert r.status_code == 422 and "style-peft" in r.json["detail"]
    r = lora_client.post("/v1/images/generations", json={"prompt": "a <lora:nope>",
                                                          "size": "64x64"})
    assert r.status_code == 400 and "style-peft" in r.json["error"]["message"]
    r = lora_client.post("/v1/images/generations", json={"prompt": "a", "size": "64x64",
                                                          "loras": [{"name": "nope"}]})
    assert r.status_code == 400 and r.json["error"]["param"] == "loras"


def test_a1111_and_openai_prompts_take_lora_tags(lora_client):
    plain = pixels(generate(lora_client))
    r = lora_client.post("/sdapi/v1/txt2img", json={**BODY, "prompt": "a cat <lora:Style:1>"})
    assert r.status_code == 200
    styled = pixels(base64.b64decode(r.json["images"][0]))
    assert np.array_equal(styled, pixels(generate(lora_client,
                                                  prompt="a cat <lora:style-peft:1>")))
    assert not np.array_equal(styled, plain)


def test_a1111_lists_the_loras(lora_client):
    r = lora_client.get("/sdapi/v1/loras")
    assert r.status_code == 200
    by_name = {item["name"]: item for item in r.json}
    assert set(by_name) == {"style-peft", "detail-kohya", "lcm-lora-tiny", "marked"}
    assert by_name["style-peft"]["alias"] == "Style"
    assert by_name["style-peft"]["metadata"] == {"ss_output_name": "Style"}
    assert by_name["detail-kohya"]["path"].endswith("sub/detail-kohya.safetensors")
    assert by_name["lcm-lora-tiny"]["lcm"] is True
    assert by_name["lcm-lora-tiny"]["few_step"]["kind"] == "lcm"
    assert by_name["lcm-lora-tiny"]["recipe"] == {"scheduler": "LCM", "steps": 4,
                                                  "guidance_scale": 1.0}
    assert by_name["style-peft"]["few_step"] is None and by_name["style-peft"]["recipe"] == {}
    assert lora_client.post("/sdapi/v1/refresh-loras").status_code == 200


def test_an_lcm_lora_defaults_to_lcm_four_steps_and_no_cfg(lora_client):
    job = lora_client.post("/jobs", json={"prompt": "a cat <lora:lcm-lora-tiny:1>",
                                          "width": 64, "height": 64}).json
    assert (job["request"]["scheduler"], job["request"]["steps"],
            job["request"]["guidance_scale"]) == ("LCM", 4, 1.0)
    mine = lora_client.post("/jobs", json={"prompt": "a <lora:marked>", "steps": 6,
                                           "guidance_scale": 2, "width": 64,
                                           "height": 64}).json
    assert (mine["request"]["steps"], mine["request"]["guidance_scale"]) == (6, 2.0)
    assert mine["request"]["scheduler"] == "LCM"


def test_a_lora_of_the_wrong_shape_is_4xx_with_the_reason_and_the_server_goes_on(
        make_app, lora_dir, tmp_path):
    shutil.copy(lora_dir / "style-peft.safetensors", tmp_path / "good.safetensors")
    tensors = load_file(str(lora_dir / "style-peft.safetensors"))
    save_file({k: (torch.zeros(v.shape[0], v.shape[1] + 3) if ".lora_A." in k and "to_q" in k
                   else v) for k, v in tensors.items()}, str(tmp_path / "wrong.safetensors"))
    client = make_app(LORA_DIR=str(tmp_path)).test_client()
    plain = pixels(generate(client))
    r = client.post("/generate", json={**BODY, "prompt": "a cat <lora:wrong:1>"})
    assert r.status_code == 400 and r.json["error"] == "unsupported_request"
    assert "does not fit this model" in r.json["message"]
    assert np.array_equal(pixels(generate(client)), plain)
    assert not np.array_equal(pixels(generate(client, prompt="a cat <lora:good>")), plain)


def test_lycoris_files_show_their_format_apply_and_one_we_cannot_apply_is_400(
        make_app, tiny_model_dir, tmp_path):
    from tests.random_lora import LCM_TARGETS, build_random_lora, build_random_lycoris

    build_random_lycoris(tiny_model_dir, tmp_path / "hada.safetensors", "loha", scale=0.5)
    build_random_lycoris(tiny_model_dir, tmp_path / "kron.safetensors", "lokr")
    build_random_lycoris(tiny_model_dir, tmp_path / "tucker.safetensors", "loha", tucker=True)
    build_random_lora(tiny_model_dir, tmp_path / "locon.safetensors", "kohya",
                      targets=LCM_TARGETS, scale=5)
    client = make_app(LORA_DIR=str(tmp_path)).test_client()
    formats = {item["name"]: item["format"] for item in client.get("/sdapi/v1/loras").json}
    assert formats == {"hada": "loha", "kron": "lokr", "tucker": "loha", "locon": "locon"}
    plain = pixels(generate(client))
    for name in ("hada", "kron", "locon"):
        assert not np.array_equal(pixels(generate(client, prompt=f"a cat <lora:{name}>")),
                                  plain)
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "prompt": "a cat <lora:tucker>"})
    assert r.status_code == 400 and "loha format" in r.json["detail"]
    assert np.array_equal(pixels(generate(client)), plain)  # nothing left switched on
