"""catalog.bakes: which baked folders are listed (complete ones, the newest of a name) and how
a bake is keyed. Torch-free: the folders here are written by hand, as engine.bake leaves them."""
from __future__ import annotations

import os

from catalog.bakes import bake_key, baked_root, list_baked, write_manifest
from catalog.files import partial_path
from config import Settings


def settings_in(tmp_path) -> Settings:
    return Settings.from_env({"MODELS_DIR": str(tmp_path)})


def baked(settings, key: str, name: str, mtime: int | None = None):
    folder = baked_root(settings) / key
    folder.mkdir(parents=True)
    write_manifest(folder, {"name": name})
    if mtime is not None:
        os.utime(folder / "bake.json", (mtime, mtime))
    return folder


def test_complete_bakes_are_listed_by_name_the_newest_of_a_name_wins(tmp_path):
    s = settings_in(tmp_path)
    baked(s, "aaa", "sd+style", mtime=1000)
    newer = baked(s, "bbb", "sd+style", mtime=2000)
    other = baked(s, "ccc", "Alpha")
    (baked_root(s) / "ddd").mkdir()  # no manifest: half-written by an older layout, or junk
    staged = partial_path(baked_root(s) / "eee")
    staged.mkdir()
    write_manifest(staged, {"name": "half"})  # a bake still being written
    assert list_baked(s) == [("Alpha", other), ("sd+style", newer)]


def test_the_key_changes_with_the_base_files_the_lora_hashes_and_weights(tmp_path):
    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x")
    key = bake_key(base, [("abc", 0.8)])
    assert key == bake_key(base, [("abc", 0.8)])
    assert len({key, bake_key(base, [("abc", 0.5)]), bake_key(base, [("abd", 0.8)]),
                bake_key(base, [("abc", 0.8), ("abd", 1.0)])}) == 4
    weights.write_bytes(b"xy")  # the base changed
    assert bake_key(base, [("abc", 0.8)]) != key
