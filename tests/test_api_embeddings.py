"""Textual-inversion embeddings through the HTTP API on the real tiny model, with random
embeddings of every format (tests.random_embedding): the A1111 list, the name written in a
prompt or negative prompt in every dialect, and A1111's `TI hashes` in the infotext."""
from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from tests.random_embedding import FORMATS, build_random_embedding

BODY = {"seed": 5, "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory):
    """Every format, a 48-wide one (not the tiny model's 32) and an unreadable file."""
    folder = tmp_path_factory.mktemp("embeddings")
    for seed, (name, layout) in enumerate(FORMATS):
        build_random_embedding(folder / name, layout, vectors=1 + seed % 2, seed=seed)
    build_random_embedding(folder / "wide.safetensors", "diffusers", width=48)
    (folder / "broken.bin").write_bytes(b"junk")
    return folder


@pytest.fixture
def clients(make_app, embeddings_dir, tmp_path):
    """(a client of an app with the embeddings, one of an app with none)."""
    return (make_app(EMBEDDINGS_DIR=str(embeddings_dir)).test_client(),
            make_app(EMBEDDINGS_DIR=str(tmp_path / "none")).test_client())


def infotext(png: bytes) -> str:
    return Image.open(io.BytesIO(png)).info["parameters"]


def native(client, **fields) -> bytes:
    r = client.post("/generate", json={**BODY, **fields})
    assert r.status_code == 200, r.get_json()
    return r.data


def a1111(client, **fields) -> bytes:
    r = client.post("/sdapi/v1/txt2img", json={**BODY, **fields})
    assert r.status_code == 200, r.get_json()
    return base64.b64decode(r.json["images"][0])


def openai(client, **fields) -> bytes:
    r = client.post("/v1/images/generations", json={"size": "64x64", "seed": 5, "steps": 2,
                                                   "response_format": "b64_json", **fields})
    assert r.status_code == 200, r.get_json()
    return base64.b64decode(r.json["data"][0]["b64_json"])


def test_the_list_has_a1111s_shape_with_the_misfits_skipped(clients):
    listed = clients[0].get("/sdapi/v1/embeddings").json
    assert set(listed["loaded"]) == {"ti-a1111-pt", "ti-a1111-st", "ti-diffusers-bin",
                                     "ti-diffusers-st"}
    assert listed["loaded"]["ti-a1111-pt"] == {
        "step": 1500, "sd_checkpoint": "7460a6fa",
        "sd_checkpoint_name": "v1-5-pruned-emaonly", "shape": 32, "vectors": 1}
    assert listed["loaded"]["ti-a1111-st"]["vectors"] == 2
    assert set(listed["skipped"]) == {"wide", "broken"}
    assert "48 wide" in listed["skipped"]["wide"]["reason"]
    assert listed["skipped"]["wide"]["shape"] == 48
    assert clients[1].get("/sdapi/v1/embeddings").json == {"loaded": {}, "skipped": {}}


@pytest.mark.parametrize("dialect", [native, a1111, openai])
def test_the_name_in_a_prompt_uses_it_in_every_dialect(clients, embeddings_dir, dialect):
    with_ti, plain = clients
    used = dialect(with_ti, prompt="a ti-diffusers-st cat")
    assert used != dialect(plain, prompt="a ti-diffusers-st cat")
    digest = hashlib.sha256((embeddings_dir / "ti-diffusers-st.safetensors")
                            .read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "ti-diffusers-st: {digest}"' in infotext(used)
    assert infotext(used).startswith("a ti-diffusers-st cat\n")


def test_negative_prompt_uses_it_and_a_skipped_one_stays_a_word(clients):
    with_ti, plain = clients
    used = a1111(with_ti, prompt="a cat", negative_prompt="Ti-A1111-Pt, wide")
    assert used != a1111(plain, prompt="a cat", negative_prompt="Ti-A1111-Pt, wide")
    text = infotext(used)
    assert 'TI hashes: "ti-a1111-pt: ' in text and "wide:" not in text
    # the wide one alone is plain text: the same image as a server without embeddings
    assert native(with_ti, prompt="a wide cat") == native(plain, prompt="a wide cat")


def test_infotext_reads_back_with_ti_hashes(clients):
    from params.infotext import parse_parameters

    png = native(clients[0], prompt="ti-a1111-st, a cat", negative_prompt="ti-diffusers-bin")
    values = parse_parameters(infotext(png))
    assert values["Negative prompt"] == "ti-diffusers-bin"
    names = [part.split(":")[0] for part in values["TI hashes"].split(", ")]
    assert names == ["ti-a1111-st", "ti-diffusers-bin"]


def test_cmd_flags_names_the_folder(clients, embeddings_dir):
    assert clients[0].get("/sdapi/v1/cmd-flags").json["embeddings_dir"] == str(embeddings_dir)
