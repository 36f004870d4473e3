"""Baked models on disk: a model with LoRAs merged into its weights, written once by the
engine (engine/bake.py) into MODELS_DIR/.baked/<key>/ and listed here as an ordinary model.

    .baked/<key>/model_index.json     a diffusers folder: the merged unet/ (and text_encoder/
    .baked/<key>/unet/ ...            when a LoRA changes it) written there, every other
    .baked/<key>/vae -> <base>/vae    component a link to the base model's own folder
    .baked/<key>/bake.json            the manifest: its name, base model and LoRAs with weights
    .baked/<key>.json                 its card (catalog.cards): the base's, with a few-step
                                      LoRA's recipe over it

The key names exactly what was merged: the base's weight files (real path, size, mtime), each
LoRA file's sha256 and its weight, in order; asking for the same again reuses the folder. A
folder without its manifest is half-written and never listed. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from catalog.families import read_json
from catalog.files import PARTIAL
from config import Settings

BAKED = ".baked"
MANIFEST = "bake.json"
# The components a LoRA may change; every other one is linked, never copied.
MERGED_COMPONENTS = ("unet", "text_encoder")
BAKE_FORMAT = 1  # bumped when the written layout changes, so old bakes are not reused


def baked_root(settings: Settings) -> Path:
    """Where baked models are written: MODELS_DIR/.baked."""
    return settings.path(settings.models_dir) / BAKED


def bake_key(base_folder: Path, loras: list[tuple[str, float]]) -> str:
    """The key of a bake: the base's mergeable weight files (real path, size, mtime) and each
    LoRA's (sha256, weight), in order."""
    parts = [f"format:{BAKE_FORMAT}"]
    for component in MERGED_COMPONENTS:
        for path in sorted((Path(base_folder) / component).glob("*.safetensors")):
            real = path.resolve()  # the Hub cache links to content-addressed blobs
            stat = real.stat()
            parts.append(f"{component}:{real}:{stat.st_size}:{stat.st_mtime_ns}")
    parts += [f"lora:{sha256}:{float(weight)!r}" for sha256, weight in loras]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def read_manifest(folder: Path) -> dict:
    """A baked folder's manifest ({} when it has none: half-written or not a bake)."""
    return read_json(Path(folder) / MANIFEST)


def list_baked(settings: Settings) -> list[tuple[str, Path]]:
    """(name, folder) of every complete baked model; of two with one name (baked again with
    other weights or LoRA files) the newer."""
    root = baked_root(settings)
    if not root.is_dir():
        return []
    found: dict[str, tuple[float, Path]] = {}
    for folder in root.iterdir():
        if PARTIAL in folder.name or not folder.is_dir():
            continue
        name = read_manifest(folder).get("name")
        if not isinstance(name, str) or not name:
            continue
        written = (folder / MANIFEST).stat().st_mtime
        if name not in found or written > found[name][0]:
            found[name] = (written, folder)
    return sorted(((name, folder) for name, (_t, folder) in found.items()),
                  key=lambda pair: pair[0].lower())


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest (inside a staged folder, or over an old one's name)."""
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
