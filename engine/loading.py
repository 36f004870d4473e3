"""Load the Stable Diffusion pipeline for the CPU, in the precision chosen, and say what
was applied (for /health)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from config import TINY_MODEL_ID, Settings
from catalog.download import download_snapshot
from catalog.families import ModelFamily, family_from_configs, with_card
from catalog.models import list_models
from engine.hub_files import download_patterns
from engine.random_model import build_random_pipeline
from engine.single_file import prepare_single_file
from engine.vae_bands import low_memory_vae_decode, vae_decode_in_row_bands
from engine.weights_cache import CacheSpaceError, load_converted
from errors import ModelLoadError, ModelUnavailable

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)


def model_source(settings: Settings, progress: Progress | None = None, tokenizer=None) -> str:
    """Where from_pretrained reads the model: a Hub id or a checked local folder (a
    single-file checkpoint's converted copy, converted on first use)."""
    s = settings
    if s.model_id == TINY_MODEL_ID:
        folder = s.path(s.tiny_model_dir)
        if not (folder / "model_index.json").exists():
            log.info("building the tiny random-weight model in %s", folder)
            build_random_pipeline(folder, "tiny")
    entry = list_models(s)[0]
    if entry.problem:
        raise ModelUnavailable(f"MODEL_ID={s.model_id!r}: {entry.problem}")
    if entry.kind == "single_file":
        return str(prepare_single_file(entry, s, progress, tokenizer=tokenizer))
    if entry.kind == "hub":  # fetched first, with progress, disk check and resume
        folder = download_snapshot(s.model_id, s.hf_token, s.safety_checker == "off",
                                   download_patterns, progress)
        if progress is not None:
            progress("loading", 0, 0)  # downloaded: now into memory
        return folder
    source = entry.source if entry.kind == "diffusers" else s.model_source
    if source.startswith(("/", ".", "~")) or os.path.isdir(source):
        folder = Path(source).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"MODEL_ID={s.model_id!r}: {folder} is not a diffusers model folder (no "
                "model_index.json); point MODEL_ID at one, use a Hub id such as "
                "CompVis/stable-diffusion-v1-4, or MODEL_ID=tiny-random to try the server")
    return source


def attention_slicing_enabled(mode: str) -> bool:
    """ATTENTION_SLICING `mode`: on, off, or auto (only where SDPA is missing: slicing is
    slower on the CPU)."""
    import torch

    if mode == "auto":
        return not hasattr(torch.nn.functional, "scaled_dot_product_attention")
    return mode == "on"


def load_pipeline(settings: Settings, bf16: bool, progress: Progress,
                  slicing: bool, tokenizer=None) -> tuple[Any, list[str]]:
    """The pipeline on the CPU and the optimizations really applied, in reading order.

    float32 weights stay memory-mapped from the model's safetensors. With `bf16`, the UNet
    and text encoder are swapped for bf16 copies written once under BF16_CACHE_DIR and
    memory-mapped (no anonymous copy); the VAE stays float32, where the banded decode is
    exact and keeps its memory peak low, and which is one call against 25+ UNet steps.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    s = settings
    source = model_source(settings, progress, tokenizer)
    kwargs: dict[str, Any] = dict(dtype=torch.float32, use_safetensors=True,
                                  low_cpu_mem_usage=True)
    if s.hf_token:
        kwargs["token"] = s.hf_token
    if s.safety_checker == "off":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
    if s.safety_checker == "on" and getattr(pipe, "safety_checker", None) is None:
        raise ModelLoadError(f"SAFETY_CHECKER=on but model {s.model_id!r} ships no safety "
                             "checker; set SAFETY_CHECKER=off or use a model that has one")
    pipe = pipe.to("cpu")
    pipe.set_progress_bar_config(disable=True)
    optimizations = []
    if bf16:
        cache = s.path(s.bf16_cache_dir)
        for module in (pipe.unet, pipe.text_encoder):
            name = type(module).__name__
            try:
                load_converted(module, cache, torch.bfloat16,
                               lambda done, total, name=name: progress(f"converting {name}",
                                                                       done, total))
            except CacheSpaceError as exc:
                raise ModelLoadError(str(exc)) from exc
        progress("loading", 0, 0)
        optimizations += ["bfloat16 (unet, text encoder; vae float32)",
                          "mmap-bf16-weights-cache"]
    if slicing:
        pipe.enable_attention_slicing()
        optimizations.append("attention-slicing")
    else:
        optimizations.append("sdpa-attention")
    optimizations += ["mmap-safetensors", "inference-mode"]
    if low_memory_vae_decode(pipe.vae):
        optimizations.append("low-memory-vae-decode")
    if vae_decode_in_row_bands(pipe.vae):
        optimizations.append("vae-decode-in-row-bands")
    return pipe, optimizations


def pipeline_family(pipe, card: dict[str, Any]) -> ModelFamily:
    """The loaded pipeline's family, by the catalogue's rules (catalog.families) applied to
    its components' configs, with what its card says (family, prediction type) over them."""
    vae = getattr(pipe, "vae", None)
    family = family_from_configs(dict(pipe.unet.config), pipe.text_encoder.config.to_dict(),
                                 dict(pipe.scheduler.config), type(vae).__name__,
                                 dict(vae.config) if vae is not None else {})
    return with_card(family, card)


def apply_card_prediction(pipe, card: dict[str, Any]) -> bool:
    """Make the scheduler predict what the model's card says (`prediction_type`), when its
    config says otherwise (a 768-v model shipped with an epsilon scheduler config); True if
    it changed. Every sampler is built from this config, so all of them follow."""
    wanted = card.get("prediction_type")
    if wanted not in ("epsilon", "v_prediction") or \
            pipe.scheduler.config.get("prediction_type") == wanted:
        return False
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                      prediction_type=wanted)
    return True
