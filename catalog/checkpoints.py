"""Single-file Stable Diffusion checkpoints (the original LDM layout A1111 and civitai use):
what a file holds, sniffed from its safetensors header without loading a tensor (no torch).

Converting one to a diffusers folder is the engine's work (engine/single_file.py); a
checkpoint not SD 1.x shaped brings its own `<stem>.config/` folder (see `sidecar_config`).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

UNET, VAE, CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
# Keys that tell the families apart (the same ones diffusers' single_file_utils checks).
SD1_KEY = UNET + "output_blocks.11.0.skip_connection.weight"
SD1_CLIP_KEY = CLIP + "text_model.embeddings.position_embedding.weight"
MAX_HEADER_BYTES = 100 * 2**20
FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def read_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensors a .safetensors file holds ({name: {dtype, shape, data_offsets}}), read from
    its JSON header only (a few hundred KB even for a 4 GB file); ValueError if unreadable."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("the file is too short to be a .safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if not 2 <= size <= MAX_HEADER_BYTES:
            raise ValueError("the file does not start with a safetensors header")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"its safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("its safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def sidecar_config(path: Path) -> Path | None:
    """`<stem>.config/` beside a checkpoint: a diffusers config folder (model_index.json and
    each component's config, optionally tokenizer/) for checkpoints that are not SD 1.x shaped."""
    folder = Path(path).with_name(Path(path).stem + ".config")
    return folder if (folder / "model_index.json").is_file() else None


def checkpoint_problem(path: Path) -> str:
    """Why this .safetensors file cannot be served as an SD 1.x model, or "" if it can."""
    try:
        keys = read_header(path)
    except (OSError, ValueError) as exc:
        return f"refused: not a readable .safetensors file: {exc}"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "refused: an SDXL checkpoint; this server runs SD 1.x checkpoints"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "refused: an SD 2.x checkpoint (OpenCLIP text encoder); this server runs SD 1.x checkpoints"
    if not any(k.startswith(UNET) for k in keys) or not any(k.startswith(VAE) for k in keys) \
            or SD1_CLIP_KEY not in keys:
        return ("refused: not a full SD 1.x checkpoint (no UNet, VAE or CLIP text encoder: a "
                "LoRA, VAE or embedding?); LoRAs go in LORA_DIR")
    first_conv = keys.get(UNET + "input_blocks.0.0.weight", {}).get("shape", [])
    if len(first_conv) == 4 and first_conv[1] != 4:
        return (f"refused: an inpainting or instruct checkpoint ({first_conv[1]} UNet input "
                "channels); this server runs ordinary SD 1.x checkpoints")
    if sidecar_config(path) is None and (
            SD1_KEY not in keys or keys[SD1_CLIP_KEY].get("shape", [0, 0])[-1] != 768):
        return ("refused: not SD 1.x shaped; this server runs SD 1.x checkpoints (a smaller "
                f"custom model needs its diffusers config folder beside it: {Path(path).stem}.config/)")
    return ""


def converted_bytes(path: Path) -> int:
    """Bytes the float32 diffusers copy of this checkpoint takes (EMA duplicates skipped)."""
    total = 0
    for name, info in read_header(path).items():
        if name.startswith("model_ema.") or info.get("dtype") not in FLOAT_BYTES:
            continue
        numel = 1
        for dim in info.get("shape", []):
            numel *= dim
        total += numel * 4
    return total
