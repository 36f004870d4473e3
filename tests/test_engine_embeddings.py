"""catalog.embeddings and engine.embeddings: the EMBEDDINGS_DIR listing (torch-free) and
textual inversions loaded into the real tiny pipeline, in each format users bring (random
ones made by tests.random_embedding), compared with diffusers' own load_textual_inversion."""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest

from catalog.embeddings import list_embeddings, used_embeddings
from engine.embeddings import TextualInversions
from tests.helpers import image_64, plain_pipeline
from tests.random_embedding import FORMATS, build_random_embedding


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory):
    """Every format, a 48-wide one (SD 2.x-like, not the tiny model's 32), and bad files."""
    folder = tmp_path_factory.mktemp("embeddings")
    for seed, (name, layout) in enumerate(FORMATS):
        build_random_embedding(folder / name, layout, vectors=1 + seed % 2, seed=seed)
    build_random_embedding(folder / "sub" / "wide.safetensors", "diffusers", width=48)
    build_random_embedding(folder / "sub" / "TI-A1111-PT.safetensors", "diffusers", seed=9)
    (folder / "broken.pt").write_bytes(b"not a zip")
    with zipfile.ZipFile(folder / "evil.pt", "w") as archive:  # runs os.system if unpickled
        archive.writestr("evil/data.pkl", pickle.dumps(_Evil()))
    return folder


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/evil-embedding-ran",))


@pytest.fixture(scope="module")
def settings(embeddings_dir, tiny_model_dir):
    from config import Settings

    return Settings.from_env({"MODEL_ID": str(tiny_model_dir),
                              "EMBEDDINGS_DIR": str(embeddings_dir)})




@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return plain_pipeline(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """A second pipeline, for diffusers' own loader."""
    return plain_pipeline(tiny_model_dir)




def test_lists_every_format_with_its_shape_torch_free_and_bad_files_with_why(settings):
    listed = list_embeddings(settings)
    entries = {e.name: e for e in listed}
    assert set(entries) == {"ti-a1111-pt", "ti-a1111-st", "ti-diffusers-bin",
                            "ti-diffusers-st", "wide", "broken", "evil", "TI-A1111-PT"}
    assert "has the same name" in entries["TI-A1111-PT"].problem  # the shallowest wins
    assert used_embeddings(listed, "a Ti-A1111-pt") == [entries["ti-a1111-pt"]]
    pt = entries["ti-a1111-pt"]
    assert (pt.layout, pt.vectors, pt.width, pt.step, pt.sd_checkpoint_name) == (
        "a1111", 1, 32, 1500, "v1-5-pruned-emaonly")
    assert (entries["ti-a1111-st"].layout, entries["ti-a1111-st"].vectors) == ("a1111", 2)
    assert entries["ti-diffusers-bin"].layout == "diffusers"
    assert entries["wide"].width == 48
    assert "zip" in entries["broken"].problem
    assert "posix.system is not allowed" in entries["evil"].problem \
        or "os.system is not allowed" in entries["evil"].problem
    assert not os.path.exists("/tmp/evil-embedding-ran")


def test_a_name_is_used_as_a_word_in_any_case():
    from pathlib import Path

    from catalog.embeddings import EmbeddingEntry

    entry = EmbeddingEntry(name="EasyNeg", path=Path("EasyNeg.pt"))
    assert used_embeddings([entry], "a cat", "(easyneg:1.2), blurry") == [entry]
    assert used_embeddings([entry], "easynegative, a cat") == []


def test_sd1_and_sd2_embeddings_fit_their_own_family_only(tmp_path):
    from catalog.embeddings import embedding_problem, read_embedding
    from catalog.families import ModelFamily

    sd1, sd2 = ModelFamily("sd1", cross_attention_dim=768), ModelFamily(
        "sd2", openclip=True, cross_attention_dim=1024)
    for width in (768, 1024):
        build_random_embedding(tmp_path / f"w{width}.pt", "a1111", width=width)
    v1, v2 = read_embedding(tmp_path / "w768.pt"), read_embedding(tmp_path / "w1024.pt")
    assert embedding_problem(v1, sd1) == embedding_problem(v2, sd2) == ""
    assert embedding_problem(v2, sd1) == (
        "its vectors are 1024 wide (OpenCLIP ViT-H/14 (SD 2.x)); the model's text encoder "
        "(SD 1.x) takes 768-wide ones")
    assert "768 wide (CLIP ViT-L/14 (SD 1.x))" in embedding_problem(v1, sd2)


@pytest.mark.parametrize("name,layout", FORMATS)
def test_each_format_changes_the_image_and_equals_diffusers_own_loader(
        pipe, reference, settings, embeddings_dir, name, layout):
    stem = name.rsplit(".", 1)[0]
    entry = next(e for e in list_embeddings(settings) if e.name == stem)
    prompt = f"a {stem} cat"
    plain = image_64(pipe, prompt)
    inversions = TextualInversions()
    assert inversions.activate(pipe, [entry], None) == {}
    ours = image_64(pipe, inversions.rewrite(prompt, [entry]))
    assert np.abs(ours - plain).mean() > 1e-3

    # A1111's .safetensors keeps its vectors under "emb_params": name the token, as A1111 does
    reference.load_textual_inversion(str(embeddings_dir / name), weight_name=name, token=stem)
    try:
        assert np.array_equal(ours, image_64(reference, prompt))
    finally:
        reference.unload_textual_inversion()

    inversions.clear(pipe)
    assert np.array_equal(image_64(pipe, prompt), plain)  # unloaded: the word is plain text


def test_negative_prompt_uses_it_and_a_loaded_one_leaves_other_prompts_alone(pipe, settings):
    entries = {e.name: e for e in list_embeddings(settings)}
    entry = entries["ti-a1111-st"]
    plain_negative = image_64(pipe, "a cat", "ti-a1111-st")
    other = image_64(pipe, "a ti-a1111-stx cat")
    inversions = TextualInversions()
    inversions.activate(pipe, [entry], None)
    try:
        assert not np.array_equal(
            image_64(pipe, "a cat", inversions.rewrite("ti-a1111-st", [entry])), plain_negative)
        assert np.array_equal(image_64(pipe, "a ti-a1111-stx cat"), other)
    finally:
        inversions.clear(pipe)


def test_wrong_width_and_unreadable_ones_are_skipped_with_the_reason(pipe, settings):
    entries = {e.name: e for e in list_embeddings(settings)}
    inversions = TextualInversions()
    skipped = inversions.activate(pipe, [entries["wide"], entries["evil"]], None)
    assert "48 wide" in skipped["wide"] and "32-wide" in skipped["wide"]
    assert "not allowed" in skipped["evil"]
    assert inversions.loaded == {}
    assert inversions.rewrite("a wide cat", [entries["wide"]]) == "a wide cat"


def test_loading_is_bounded_and_evicts_the_least_recently_used(pipe, settings):
    entries = {e.name: e for e in list_embeddings(settings)}
    vocabulary = len(pipe.tokenizer)
    inversions = TextualInversions(capacity=1)
    inversions.activate(pipe, [entries["ti-a1111-pt"]], None)
    inversions.activate(pipe, [entries["ti-diffusers-st"]], None)
    assert list(inversions.loaded) == ["ti-diffusers-st"]
    assert len(pipe.tokenizer) == vocabulary + 2  # its two vectors; the other one's gone
    inversions.clear(pipe)
    assert len(pipe.tokenizer) == vocabulary
