"""Single-file Stable Diffusion checkpoints (the original LDM layout A1111 and civitai use):
what a file holds, sniffed from its safetensors header without loading a tensor (no torch).

SD 1.x (CLIP text encoder) and SD 2.x (OpenCLIP) checkpoints load with the configs the server
ships; whether an SD 2.x one predicts v (768-v) is told by its card (`<stem>.json`
{"prediction_type": "v_prediction"}) or A1111's `<stem>.yaml` (`parameterization: "v"`), else
found when it is converted, as A1111 finds it. Converting is the engine's work
(engine/single_file.py); a checkpoint of another shape brings its own `<stem>.config/` folder
(see `sidecar_config`).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from catalog.cards import read_card
from catalog.families import ModelFamily

UNET, VAE, CLIP = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
OPENCLIP = "cond_stage_model.model."  # SD 2.x's OpenCLIP text encoder
# Keys that tell the families apart (the same ones diffusers' single_file_utils checks).
SD1_KEY = UNET + "output_blocks.11.0.skip_connection.weight"
SD1_CLIP_KEY = CLIP + "text_model.embeddings.position_embedding.weight"
SD2_CLIP_KEY = OPENCLIP + "token_embedding.weight"
CROSS_ATTENTION_KEY = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
WIDTH = {"sd1": 768, "sd2": 1024}  # the text encoder's width in the real families
# A1111's model config beside a checkpoint; v-prediction models say `parameterization: "v"`.
V_PARAMETERIZATION = re.compile(r"""^\s*parameterization\s*:\s*["']?v["']?\s*$""", re.MULTILINE)
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
    """Why this .safetensors file cannot be served as an SD 1.x or 2.x model, or "" if it can."""
    try:
        keys = read_header(path)
    except (OSError, ValueError) as exc:
        return f"refused: not a readable .safetensors file: {exc}"
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "refused: an SDXL checkpoint; this server runs SD 1.x and 2.x checkpoints"
    text_key = SD2_CLIP_KEY if SD2_CLIP_KEY in keys else SD1_CLIP_KEY
    if not any(k.startswith(UNET) for k in keys) or not any(k.startswith(VAE) for k in keys) \
            or text_key not in keys:
        return ("refused: not a full SD 1.x or 2.x checkpoint (no UNet, VAE or CLIP text "
                "encoder: a LoRA, VAE or embedding?); LoRAs go in LORA_DIR")
    first_conv = keys.get(UNET + "input_blocks.0.0.weight", {}).get("shape", [])
    if len(first_conv) == 4 and first_conv[1] != 4:
        return (f"refused: an inpainting, depth or instruct checkpoint ({first_conv[1]} UNet "
                "input channels); this server runs ordinary SD 1.x and 2.x checkpoints")
    family = "sd2" if text_key == SD2_CLIP_KEY else "sd1"
    if sidecar_config(path) is None and (
            SD1_KEY not in keys or keys[text_key].get("shape", [0, 0])[-1] != WIDTH[family]):
        return ("refused: not SD 1.x or 2.x shaped; this server runs those checkpoints (a "
                "smaller custom model needs its diffusers config folder beside it: "
                f"{Path(path).stem}.config/)")
    return ""


def checkpoint_family(path: Path) -> ModelFamily:
    """What a checkpoint's tensor names say of its family (sd1 or sd2; SD 2.x's prediction type
    only as far as its card or .yaml tells it: otherwise it is found at conversion)."""
    keys = read_header(path)
    sd2 = SD2_CLIP_KEY in keys
    cross = keys.get(CROSS_ATTENTION_KEY, {}).get("shape", [None, None])[-1]
    told = told_prediction_type(path)
    return ModelFamily(id="sd2" if sd2 else "sd1", openclip=sd2, cross_attention_dim=cross,
                       prediction_type=told or "epsilon",
                       native_size=768 if told == "v_prediction" else (None if sd2 else 512))


def told_prediction_type(path: Path) -> str:
    """The prediction type the user states beside a checkpoint: its card's `prediction_type`,
    else A1111's `<stem>.yaml` (v if it says `parameterization: "v"`, else epsilon); "" when
    nothing says."""
    told = read_card(path).get("prediction_type")
    if told in ("epsilon", "v_prediction"):
        return told
    try:
        yaml = Path(path).with_suffix(".yaml").read_text(errors="replace")
    except OSError:
        return ""
    return "v_prediction" if V_PARAMETERIZATION.search(yaml) else "epsilon"


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
