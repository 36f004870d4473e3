"""Single-file SD checkpoints made loadable: each converted once, offline, to a diffusers
folder that `from_pretrained` memory-maps (MODELS_DIR/.converted/<stem>-<key>/, see
catalog.models.converted_folder); and the inverse, a diffusers folder written as one
LDM-layout file (for tests and benchmarks).

Converting uses diffusers' own `from_single_file` with a LOCAL config folder, so no Hub call
is made: the SD 1.x and SD 2.x configs ship in engine/configs/sd-v1 and sd-v2; a checkpoint
of another shape brings its own `<stem>.config/` folder (catalog.checkpoints.sidecar_config).
An SD 2.x checkpoint's prediction type is what its card or A1111 .yaml tells
(catalog.checkpoints.told_prediction_type), else what its sidecar config's scheduler says,
else found as A1111 finds it (`predicts_v`); the converted folder's scheduler config keeps it,
so every sampler built from it follows.
"""
from __future__ import annotations

import copy
import glob
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from catalog import checkpoints
from catalog.checkpoints import CLIP, OPENCLIP, UNET, VAE
from catalog.files import PARTIAL, remove_abandoned_partials, staged
from catalog.models import ModelEntry, converted_folder, list_models, read_json
from config import Settings
from errors import ModelUnavailable

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)
SD1_CONFIG = Path(__file__).resolve().parent / "configs" / "sd-v1"
SD2_CONFIG = Path(__file__).resolve().parent / "configs" / "sd-v2"
SD1_VOCAB_SIZE = 49408  # the CLIP ViT-L/14 tokenizer every SD 1.x model uses
# SD 2.x's OpenCLIP tokenizer is the same BPE, padding with "!" instead of the end token
# (stabilityai/stable-diffusion-2-1's tokenizer/special_tokens_map.json).
PAD_TOKEN = {"sd1": "<|endoftext|>", "sd2": "!"}
V_NATIVE_SAMPLE_SIZE = 96  # SD 2.x 768-v: 768 px
SD1_TOKENIZER_SOURCES = (  # where an SD 1.x tokenizer may already sit in the local HF cache
    ("openai/clip-vit-large-patch14", ""),
    ("CompVis/stable-diffusion-v1-4", "tokenizer"),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer"),
)


def prepare_single_file(entry: ModelEntry, settings: Settings, progress: Progress | None = None,
                        tokenizer=None) -> Path:
    """The diffusers folder that loads this single-file checkpoint, converting it once (offline,
    float32) into MODELS_DIR/.converted/<stem>-<key>/; later calls return the cached folder.

    The config is `<stem>.config/` beside the file when present, else the shipped SD 1.x or
    2.x one; the tokenizer is the sidecar's, else the CLIP ViT-L/14 one (`tokenizer`, e.g.
    the loaded pipeline's, or one found locally: see sd1_tokenizer) with the family's pad
    token. Raises ModelUnavailable with what to do."""
    if entry.problem:
        raise ModelUnavailable(f"model {entry.name!r}: {entry.problem}")
    if entry.kind != "single_file":
        raise ValueError(f"{entry.name!r} is a {entry.kind} model, not a single file")
    path = Path(entry.source).resolve()
    target = converted_folder(path, settings)
    if (target / "model_index.json").is_file():
        return target
    family = checkpoints.checkpoint_family(path).id
    sidecar = checkpoints.sidecar_config(path)
    config = sidecar or (SD2_CONFIG if family == "sd2" else SD1_CONFIG)
    if (config / "tokenizer").is_dir():
        tokenizer = None
    else:
        tokenizer = sd1_tokenizer(settings, tokenizer)
        if tokenizer.pad_token != PAD_TOKEN[family]:  # a copy: it may be the served one's
            tokenizer = copy.deepcopy(tokenizer)
            tokenizer.pad_token = PAD_TOKEN[family]
    target.parent.mkdir(parents=True, exist_ok=True)
    needed, free = checkpoints.converted_bytes(path), shutil.disk_usage(target.parent).free
    if free < needed * 1.05 + 2**20:
        raise ModelUnavailable(
            f"converting {path.name} needs {needed / 1e9:.1f} GB in {target.parent}, "
            f"{free / 1e9:.1f} GB free: free some space or convert it to a diffusers folder "
            "elsewhere and put that in MODELS_DIR")
    _remove_stale(target, path)
    if progress:
        progress("converting checkpoint", 0, needed)
    log.info("converting %s once to a diffusers folder in %s", path, target)
    convert_checkpoint(path, config, target, tokenizer, _prediction_rule(path, family, sidecar))
    if progress:
        progress("converting checkpoint", needed, needed)
    return target


def _prediction_rule(path: Path, family: str, sidecar: Path | None) -> str:
    """What decides the converted model's prediction type: "epsilon" or "v_prediction" when
    told (card, .yaml, the sidecar config's scheduler), "detect" for an SD 2.x checkpoint
    nothing tells about, "" to keep the config's."""
    told = checkpoints.told_prediction_type(path)
    if told:
        return told
    scheduler = read_json(sidecar / "scheduler" / "scheduler_config.json") if sidecar else {}
    if "prediction_type" in scheduler:
        return ""
    return "detect" if family == "sd2" else ""


def predicts_v(unet) -> bool:
    """Whether an SD 2.x UNet predicts v, found as A1111 finds it
    (`is_using_v_parameterization_for_sd2`): at t=999 on a constant input an epsilon model
    answers about its input (nearly all noise), a v model far below it."""
    import torch

    with torch.inference_mode():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=unet.dtype)
        context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=unet.dtype)
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - x).mean().item() < -1


def _set_prediction(pipe, rule: str) -> None:
    """Apply `rule` (see _prediction_rule) to a freshly converted pipeline: a v model gets
    v_prediction in its scheduler config and 768-v's native size, when the shipped config
    (512, epsilon) was used."""
    if not rule:
        return
    prediction = rule if rule != "detect" else (
        "v_prediction" if predicts_v(pipe.unet) else "epsilon")
    log.info("checkpoint prediction type: %s (%s)", prediction,
             "found as A1111 does" if rule == "detect" else "as told")
    if pipe.scheduler.config.get("prediction_type") != prediction:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                          prediction_type=prediction)
    if prediction == "v_prediction" and pipe.unet.config.sample_size == 64:
        pipe.unet.register_to_config(sample_size=V_NATIVE_SAMPLE_SIZE)


def sd1_tokenizer(settings: Settings, tokenizer=None):
    """The CLIP ViT-L/14 tokenizer SD 1.x checkpoints need, found without the network: the one
    given (e.g. the loaded pipeline's), a local diffusers model's, or the HF cache's."""
    if _is_sd1_tokenizer(tokenizer):
        return tokenizer
    from transformers import CLIPTokenizer

    folders = [Path(e.source) / "tokenizer" for e in list_models(settings)
               if e.kind == "diffusers" and (Path(e.source) / "tokenizer").is_dir()]
    for folder in folders:
        candidate = _try_tokenizer(lambda: CLIPTokenizer.from_pretrained(folder))
        if _is_sd1_tokenizer(candidate):
            return candidate
    for repo, sub in SD1_TOKENIZER_SOURCES:
        candidate = _try_tokenizer(lambda: CLIPTokenizer.from_pretrained(
            repo, subfolder=sub, local_files_only=True))
        if _is_sd1_tokenizer(candidate):
            return candidate
    raise ModelUnavailable(
        "SD 1.x checkpoints need the CLIP ViT-L/14 tokenizer and none is on this machine: "
        "download it once with network access (`hf download openai/clip-vit-large-patch14 "
        "vocab.json merges.txt tokenizer_config.json special_tokens_map.json`), or put any "
        "SD 1.x diffusers folder (it has tokenizer/) in MODELS_DIR")


def _try_tokenizer(load):
    try:
        return load()
    except Exception:  # absent or unreadable: try the next place
        return None


def _is_sd1_tokenizer(tokenizer) -> bool:
    return tokenizer is not None and len(tokenizer) == SD1_VOCAB_SIZE


def _remove_stale(target: Path, checkpoint: Path) -> None:
    """Delete older conversions of the same checkpoint (it was edited or replaced) and
    half-written ones whose writer was killed."""
    family = glob.escape(target.name.rsplit("-", 1)[0]) + "-*"
    remove_abandoned_partials(target.parent, family)
    for old in target.parent.glob(family):
        if PARTIAL in old.name or old == target:
            continue  # a living writer's, or the one wanted
        if read_json(old / "source.json").get("checkpoint") == str(checkpoint):
            log.info("removing an outdated conversion: %s", old)
            shutil.rmtree(old, ignore_errors=True)


def convert_checkpoint(path: Path, config: Path, target: Path, tokenizer=None,
                       prediction: str = "") -> None:
    """Convert the checkpoint at `path` into the diffusers folder `target`, offline, float32,
    with the prediction type `prediction` says (see _prediction_rule).

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
    _set_prediction(pipe, prediction)
    try:
        with staged(target) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / "source.json").write_text(json.dumps({"checkpoint": str(Path(path).resolve())}))
    except BaseException:
        if not (target / "model_index.json").is_file():  # else another process finished it
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
    text = {k.removeprefix("text_model."): v for k, v in weights("text_encoder").items()}
    # transformers >= 5.6 saves CLIPTextModel without its `text_model.` level
    text_config = json.loads((folder / "text_encoder" / "config.json").read_text())
    if text_config.get("hidden_act") == "gelu":  # SD 2.x: OpenCLIP's own layout
        out.update(_openclip_keys(text))
    else:
        out.update({CLIP + "text_model." + key: tensor for key, tensor in text.items()})
    return out


_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
                   "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _openclip_keys(text: dict) -> dict:
    """A CLIPTextModel's weights in SD 2.x's OpenCLIP layout (the inverse of diffusers'
    convert_open_clip_checkpoint: q, k and v joined into one in_proj)."""
    import torch

    out = {OPENCLIP + "token_embedding.weight": text["embeddings.token_embedding.weight"],
           OPENCLIP + "positional_embedding": text["embeddings.position_embedding.weight"],
           OPENCLIP + "ln_final.weight": text["final_layer_norm.weight"],
           OPENCLIP + "ln_final.bias": text["final_layer_norm.bias"]}
    for key, tensor in text.items():
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            continue
        block, name, kind = OPENCLIP + f"transformer.resblocks.{m[1]}.", m[2], m[3]
        if name == "self_attn.q_proj":
            parts = [text[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(parts)
        elif name in _OPENCLIP_LAYER:
            out[f"{block}{_OPENCLIP_LAYER[name]}.{kind}"] = tensor
    return out


def save_single_file(pipeline_folder: Path, path: Path) -> Path:
    """Write a diffusers SD folder as one original-LDM-layout .safetensors checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in diffusers_to_ldm(pipeline_folder).items()}
    with staged(path) as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    return path
