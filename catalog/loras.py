"""LoRAs on disk: the files in LORA_DIR, found by the name a prompt uses.

Listing reads only each file's safetensors header (no tensors, no torch), so request
threads may call `list_loras`/`find_lora`. From the header it also learns what the LoRA was
made for (the width of the text embeddings it attends to, whether it patches a UNet mid block)
and whether it is a few-step LoRA (LCM, Hyper-SD, TCD, PCM: from its card `<name>.json`, its
name or its metadata), whose recipe params.recipes holds. Applying them to the loaded pipeline
is the engine's work (engine/loras.py).
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

from catalog.cards import read_card
from config import Settings
from errors import LoraError

log = logging.getLogger(__name__)

# The biggest safetensors header we read to list a LoRA (real ones are well under 1 MB).
MAX_HEADER_BYTES = 16 * 1024 * 1024
_LCM_NAME = re.compile(r"(^|[^a-z])lcm([^a-z]|$)", re.IGNORECASE)
# Few-step LoRAs by name, first match wins (PCM's "lcmlike" one is PCM's, not LCM's):
# ByteDance/Hyper-SD's Hyper-SD15-<N>step(s)[-CFG]-lora, h1t/TCD-SD15-LoRA, wangfuyun's
# pcm_sd15_<smallcfg|normalcfg|lcmlike>_<N>step_converted, latent-consistency's lcm-lora-sdv1-5.
FEW_STEP_NAMES = (("hyper-sd", re.compile(r"hyper[-_ ]?sd", re.IGNORECASE)),
                  ("pcm", re.compile(r"(^|[^a-z])pcm([^a-z]|$)", re.IGNORECASE)),
                  ("tcd", re.compile(r"(^|[^a-z])tcd([^a-z]|$)", re.IGNORECASE)),
                  ("lcm", _LCM_NAME))
FEW_STEP_KINDS = tuple(kind for kind, _ in FEW_STEP_NAMES)
_STEPS = re.compile(r"(\d+)[-_ ]?steps?(?![a-z])", re.IGNORECASE)
# A kohya layer that is a convolution (LoCon adapts the ResNet and sampler convolutions).
_CONV = re.compile(r"^lora_unet_.*_(conv1|conv2|conv_shortcut|conv|conv_in|conv_out)\.")
_CFG = re.compile(r"(^|[^a-z])(cfg|normalcfg)([^a-z]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class FewStep:
    """A few-step LoRA: its kind (one of FEW_STEP_KINDS), the steps it was distilled for (from
    its name, if it says), whether it keeps classifier-free guidance (Hyper-SD's -CFG, PCM's
    normalcfg) and PCM's variant (smallcfg, normalcfg, lcmlike)."""

    kind: str
    steps: int | None = None
    cfg: bool = False
    variant: str = ""


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file: the name prompts use, its file, format and metadata, what it was made
    for, and its few-step kind (None for an ordinary LoRA)."""

    name: str
    path: Path
    format: str  # "kohya" (A1111's lora_unet_/lora_te_ keys), "locon", "loha", "lokr", "peft"
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    few_step: FewStep | None = None
    size: int = 0
    mtime_ns: int = 0
    cross_attention_dim: int | None = None  # the text embeddings' width it was made for
    mid_block: bool = False  # it patches the UNet's mid block (absent in SDXS's pruned UNet)
    card: dict[str, Any] = field(default_factory=dict, compare=False)  # its <name>.json

    @property
    def lcm(self) -> bool:
        """A latent-consistency LoRA: few steps, guidance ~1, no CFG."""
        return self.few_step is not None and self.few_step.kind == "lcm"

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
    """The LoRA's format from its tensor names: 'kohya' (A1111's), 'locon' (kohya with conv
    layers), LyCORIS' 'loha' (`hada_w1_a`...) or 'lokr' (`lokr_w1`...), or 'peft'
    (diffusers'); LoraError for anything else."""
    if any(".hada_w1_a" in k or ".hada_w2_a" in k for k in keys):
        return "loha"
    if any(".lokr_w1" in k or ".lokr_w2" in k for k in keys):
        return "lokr"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in keys):
        return "locon" if any(_CONV.search(k) and ".lora_down." in k for k in keys) \
            else "kohya"
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "_lora.down." in k
           or ".lora_linear_layer." in k for k in keys):
        return "peft"
    raise LoraError("no LoRA weights found (expected kohya/A1111 keys such as "
                    "'lora_unet_...lora_down.weight' or diffusers/peft 'lora_A'/'lora_B')")


def few_step(name: str, metadata: dict[str, str], card: dict[str, Any]) -> FewStep | None:
    """The LoRA's few-step kind: as its card says (`{"few_step": "tcd"}`, `{"lcm": true}`, or
    false for none), else as its file name or its metadata's title says."""
    marked = card.get("few_step", card.get("lcm"))
    if marked is False:
        return None
    text = " ".join([name, metadata.get("ss_output_name", ""),
                     metadata.get("modelspec.title", ""), metadata.get("ss_training_comment", "")])
    kind = marked if marked in FEW_STEP_KINDS else "lcm" if marked is True else next(
        (k for k, pattern in FEW_STEP_NAMES if pattern.search(text)), None)
    if kind is None and "latent consistency" in text.lower():
        kind = "lcm"
    if kind is None:
        return None
    steps = _STEPS.search(name) or _STEPS.search(text)
    lowered = text.lower()
    variant = next((v for v in ("smallcfg", "normalcfg", "lcmlike") if v in lowered), "")
    return FewStep(kind=kind, steps=int(steps[1]) if steps else None,
                   cfg=bool(_CFG.search(name) or _CFG.search(text)), variant=variant)


def made_for(header: dict[str, Any]) -> tuple[int | None, bool]:
    """(the width of the text embeddings a LoRA's cross-attention was made for, whether it
    patches a UNet mid block), from its tensor names and shapes: a cross-attention key
    projection's down/A matrix takes that width in, as a text-encoder layer's does."""
    width = None
    for key, info in header.items():
        down = any(part in key for part in ("lora_A", "lora_down", "lora.down",
                                            "lora_linear_layer.down", "hada_w1_b"))
        if down and "attn2" in key and "to_k" in key:
            width = (info.get("shape") or [None])[-1]
            break
    if width is None:
        width = next(((info.get("shape") or [None])[-1] for key, info in header.items()
                      if ("lora_te_" in key or "text_encoder." in key or "lora_te1_" in key)
                      and "q_proj" in key and any(p in key for p in ("lora_A", "lora_down",
                                                                     "lora.down"))), None)
    mid = any("mid_block" in key or "middle_block" in key for key in header)
    return (width if isinstance(width, int) else None), mid


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
        card = read_card(path)
        width, mid = made_for(header)
        entries.append(LoraEntry(name=path.stem, path=path, format=fmt, metadata=metadata,
                                 few_step=few_step(path.stem, metadata, card),
                                 size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                 cross_attention_dim=width, mid_block=mid, card=card))
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
