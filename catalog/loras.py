"""LoRAs on disk: the files in LORA_DIR, found by the name a prompt uses.

Listing reads only each file's safetensors header (no tensors, no torch), so request
threads may call `list_loras`/`find_lora`. Applying them to the loaded pipeline is the
engine's work (engine/loras.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from errors import LoraError

log = logging.getLogger(__name__)

# The biggest safetensors header we read to list a LoRA (real ones are well under 1 MB).
MAX_HEADER_BYTES = 16 * 1024 * 1024
_LCM_NAME = re.compile(r"(^|[^a-z])lcm([^a-z]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file: the name prompts use, its file, format and metadata."""

    name: str
    path: Path
    format: str  # "kohya" (A1111's lora_unet_/lora_te_ keys) or "peft" (diffusers)
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    lcm: bool = False  # a latent-consistency LoRA: few steps, guidance ~1, no CFG
    size: int = 0
    mtime_ns: int = 0

    @property
    def alias(self) -> str:
        """A1111's alias: the training run's output name when the metadata has one."""
        return self.metadata.get("ss_output_name") or self.name

    @property
    def short_hash(self) -> str:
        """A cheap stable id of this version of the file (path, size, mtime), for adapter
        names; A1111's `Lora hashes` use `file_sha256` instead."""
        key = f"{self.path.resolve()}:{self.size}:{self.mtime_ns}".encode()
        return hashlib.sha256(key).hexdigest()[:10]


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A safetensors file's tensor table and `__metadata__`, reading only its header."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise LoraError(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise LoraError(f"{path.name} is not a safetensors LoRA (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise LoraError(f"{path.name} is not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise LoraError(f"{path.name} is not a safetensors file (bad header)")
    metadata = header.pop("__metadata__", None) or {}
    return header, {str(k): str(v) for k, v in metadata.items()}


def lora_format(keys: list[str]) -> str:
    """'kohya' or 'peft' from a LoRA's tensor names, or LoraError for anything else."""
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "_lora.down." in k
           or ".lora_linear_layer." in k for k in keys):
        return "peft"
    raise LoraError("no LoRA weights found (expected kohya/A1111 keys such as "
                    "'lora_unet_...lora_down.weight' or diffusers/peft 'lora_A'/'lora_B')")


def _user_marks(path: Path) -> dict[str, Any]:
    """A1111-style user metadata beside the file (`<name>.json`), e.g. {"lcm": true}."""
    sidecar = path.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_lcm(name: str, metadata: dict[str, str], marks: dict[str, Any]) -> bool:
    """An LCM-LoRA: marked so by the user (`<name>.json` {"lcm": true}), by its metadata, or
    named so (latent-consistency/lcm-lora-sdv1-5 ships as pytorch_lora_weights; users name
    it lcm-lora-sdv1-5)."""
    if "lcm" in marks:
        return bool(marks["lcm"])
    text = " ".join([metadata.get("ss_output_name", ""), metadata.get("modelspec.title", ""),
                     metadata.get("ss_training_comment", "")])
    return bool(_LCM_NAME.search(name) or _LCM_NAME.search(text)
                or "latent consistency" in text.lower())


def list_loras(settings: Settings) -> list[LoraEntry]:
    """Every usable .safetensors LoRA under LORA_DIR (subfolders too), sorted by name; files
    that are not LoRAs are logged and left out."""
    folder = settings.path(settings.lora_dir)
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            header, metadata = read_header(path)
            fmt = lora_format(list(header))
        except (OSError, LoraError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        stat = path.stat()
        entries.append(LoraEntry(name=path.stem, path=path, format=fmt, metadata=metadata,
                                 lcm=is_lcm(path.stem, metadata, _user_marks(path)),
                                 size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    return sorted(entries, key=lambda e: e.name.lower())


def find_lora(settings: Settings, name: str) -> LoraEntry:
    """The LoRA a prompt names (its file name without extension, or its alias), or LoraError
    listing the available ones."""
    entries = list_loras(settings)
    for entry in entries:
        if name in (entry.name, entry.alias):
            return entry
    for entry in entries:  # A1111 matches case-insensitively on its own names too
        if name.lower() in (entry.name.lower(), entry.alias.lower()):
            return entry
    available = ", ".join(e.name for e in entries) or f"none: put .safetensors LoRAs in " \
                                                      f"{settings.path(settings.lora_dir)}"
    raise LoraError(f"unknown LoRA '{name}'; available: {available}")
