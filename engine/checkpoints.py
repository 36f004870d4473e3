"""Single-file Stable Diffusion checkpoints (the original LDM layout A1111 and civitai use):
what a file holds, read from its header without loading it; converting one to a diffusers
folder offline; and the inverse, writing a diffusers folder as one LDM-layout file (for tests
and benchmarks).

Converting uses diffusers' own `from_single_file` with a LOCAL config folder, so no Hub call is
made: the SD 1.x configs ship in engine/configs/sd-v1; a checkpoint of another shape brings
its own `<stem>.config/` folder (see `sidecar_config`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SD1_CONFIG = Path(__file__).resolve().parent / "configs" / "sd-v1"
SD1_VOCAB_SIZE = 49408  # the CLIP ViT-L/14 tokenizer every SD 1.x model uses
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


def convert_checkpoint(path: Path, config: Path, target: Path, tokenizer=None) -> None:
    """Convert the checkpoint at `path` into the diffusers folder `target`, offline, float32.

    Written beside `target` and renamed, so a half-written folder never loads. safetensors
    memory-maps the checkpoint and writes from the tensors' memory, so a float32 checkpoint
    is converted without an anonymous copy of its weights (measured on the full-size SD v1-4
    architecture, a 4.3 GB file: 46 s, peak RssAnon 0.32 GiB, the same as after importing
    torch); an fp16 checkpoint is cast to float32, one anonymous copy while converting."""
    import torch
    from diffusers import StableDiffusionPipeline

    kwargs: dict[str, Any] = dict(config=str(config), local_files_only=True,
                                  torch_dtype=torch.float32, safety_checker=None,
                                  requires_safety_checker=False)
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "source.json").write_text(json.dumps({"checkpoint": str(Path(path).resolve())}))
        tmp.replace(target)
    except BaseException:  # a full disk or a stopped server: leave no half-copy behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model_index.json").is_file():
            raise
    finally:
        del pipe


# ---- diffusers -> original LDM layout (the inverse of diffusers' convert_ldm_* functions) ----

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection"}
_UNET_LAYERS = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(key: str, config: dict) -> str:
    """The LDM name of one diffusers UNet parameter."""
    per = config["layers_per_block"] + 1  # LDM counts each block's downsampler as a layer
    up_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    for name, ldm in _UNET_LAYERS.items():
        if key.startswith(name + "."):
            return ldm + key[len(name):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(\w+)(.*)", key):
        b, kind, j, first, rest = int(m[1]), m[2], int(m[3]), m[4], m[5]
        if kind == "resnets":
            return f"input_blocks.{1 + b * per + j}.0.{_RESNET.get(first, first)}{rest}"
        return f"input_blocks.{1 + b * per + j}.1.{first}{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(\w+)(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_RESNET.get(m[2], m[2])}{m[3]}"
    if key.startswith("mid_block.attentions.0."):
        return "middle_block.1." + key[len("mid_block.attentions.0."):]
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(\w+)(.*)", key):
        b, kind, j, first, rest = int(m[1]), m[2], int(m[3]), m[4], m[5]
        if kind == "resnets":
            return f"output_blocks.{b * per + j}.0.{_RESNET.get(first, first)}{rest}"
        return f"output_blocks.{b * per + j}.1.{first}{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        b = int(m[1])
        return f"output_blocks.{b * per + per - 1}.{2 if up_attention[b] else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet parameter {key}")


def _vae_key(key: str, config: dict) -> str:
    """The LDM name of one diffusers VAE parameter."""
    n = len(config["up_block_types"])
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        rest = m[3].replace("conv_shortcut", "nin_shortcut")
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{rest}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def diffusers_to_ldm(folder: Path) -> dict:
    """The UNet, VAE and text encoder of a diffusers folder as one LDM-layout state dict
    (tensors memory-mapped from the folder's safetensors, renamed, not copied)."""
    from safetensors.torch import load_file

    folder = Path(folder)

    def weights(sub: str) -> dict:
        state: dict = {}
        for file in sorted((folder / sub).glob("*.safetensors")):
            state.update(load_file(file))
        return state

    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    out = {UNET + _unet_key(k, unet_config): v for k, v in weights("unet").items()}
    for key, tensor in weights("vae").items():
        ldm = _vae_key(key, vae_config)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out[VAE + ldm] = tensor
    for key, tensor in weights("text_encoder").items():
        # transformers >= 5.6 saves CLIPTextModel without its `text_model.` level
        out[CLIP + (key if key.startswith("text_model.") else "text_model." + key)] = tensor
    return out


def save_single_file(pipeline_folder: Path, path: Path) -> Path:
    """Write a diffusers SD folder as one original-LDM-layout .safetensors checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    state = {k: v.contiguous() for k, v in diffusers_to_ldm(pipeline_folder).items()}
    save_file(state, tmp, metadata={"format": "pt"})
    tmp.replace(path)
    return path
