"""Baking: LoRAs merged into a model's weights once, written to disk as a model of its own
(catalog.bakes says where and how it is keyed and listed).

A LoRA applied per job costs its extra matrix products at every step (bench/lora-overhead.md);
merged, W' = W + sum(weight x scale x B @ A) per layer, it costs nothing per step, and any
engine that runs a diffusers folder (OpenVINO's too) runs it. The merge reuses the exact
path a job takes: the base is loaded memory-mapped and the LoRAs are activated by
engine.loras (peft adapters, LyCORIS hooks), so every file format a prompt can use can be
baked and the baked model computes what the unbaked LoRA does. Then each changed component
is written tensor by tensor into one safetensors file (engine.safetensors_stream): a changed
layer is merged in float32 and written, an unchanged one written from its mapped pages, so no
anonymous copy of the UNet is ever held. Every other component is a link to the base's own
folder. The folder is staged beside and renamed when complete, so a killed bake leaves
nothing a load could take. Worker thread only (it loads its own pipeline).
"""
from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from catalog.bakes import (MANIFEST, MERGED_COMPONENTS, baked_root, bake_key, read_manifest,
                           write_manifest)
from catalog.cards import card_path, read_card
from catalog.files import remove_abandoned_partials, staged
from catalog.hashes import file_sha256
from catalog.loras import LoraEntry, find_lora
from catalog.models import find_model, list_models
from config import Settings
from engine.load_errors import explain_load_error
from engine.loading import model_source
from engine.loras import LoraAdapters
from engine.safetensors_stream import write_streamed
from errors import LoraError, ModelLoadError, ModelUnavailable, UnknownModel
from knobs import Bake
from params.recipes import lora_problem, lora_recipe

log = logging.getLogger(__name__)

# (bytes written, bytes in all, layers_done=..., layers_total=...) as the bake goes
BakeProgress = Callable[..., None]
# peft's own parameters in a wrapped module's state dict: the LoRA factors, never written
_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.",
                  ".lora_magnitude_vector.")
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors"}


def bake_all(settings: Settings, report: Callable[..., None]) -> None:
    """Write the models BAKE asks for that are not on disk yet (reusing those that are),
    each reported as `report("baking <name>", bytes done, bytes total, layers_done=...,
    layers_total=...)` for /health; ModelLoadError naming the bake that cannot be done."""
    for bake in settings.bake:
        name = bake[0]
        try:
            bake_model(settings, bake, lambda done, total, **extra: (
                report(f"baking {name}", done, total, **extra)))
        except Exception as exc:  # a download or load of the base too: explained as such
            reason = str(exc) if isinstance(exc, (LoraError, UnknownModel, ModelLoadError)) \
                else explain_load_error(settings.with_overrides(model_id=bake[1]), exc)
            raise ModelLoadError(f"BAKE {name!r}: {reason}") from exc
    if settings.bake:
        gc.collect()


def bake_model(settings: Settings, bake: Bake, progress: BakeProgress | None = None) -> Path:
    """The folder of `bake` (name, base model, ((LoRA, weight), ...)): reused when this base,
    these LoRA files and these weights were baked before, else written now. LoraError or
    UnknownModel naming what is wrong."""
    name, base_name, wanted = bake
    # The base is named as MODEL_ID may name a model: a catalogue name, a path, tiny-random
    # or a Hub id (so MODEL_ID may name the baked model while its base is none of MODELS_DIR).
    base_settings = settings.with_overrides(model_id=base_name)
    entry = list_models(base_settings)[0]
    if entry.kind == "hub" and "/" not in base_name:  # not a Hub id: MODEL_ID's own name,
        entry = find_model(settings, base_name)  # or UnknownModel listing the models
        base_settings = settings.with_overrides(model_id=entry.source)
    if entry.problem:
        raise ModelUnavailable(f"model {entry.name!r}: {entry.problem}")
    loras = [(find_lora(settings, lora), weight) for lora, weight in wanted]
    for lora, _weight in loras:
        problem = lora_problem(lora, entry.family, entry.name)
        if problem:
            raise LoraError(problem)
    base = Path(model_source(base_settings))
    hashes = [(file_sha256(lora.path), weight) for lora, weight in loras]
    folder = baked_root(settings) / bake_key(base, hashes)
    manifest = {"name": name, "base": entry.name, "base_folder": str(base),
                "loras": [{"name": lora.name, "weight": weight, "sha256": sha256}
                          for (lora, weight), (sha256, _w) in zip(loras, hashes)]}
    if (folder / MANIFEST).is_file():
        _rename(folder, name)
        log.info("baked model %s: reusing %s (same model, LoRA files and weights)", name, folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(folder.parent)
    started = time.perf_counter()
    with staged(folder, directory=True) as tmp:
        written = _write(base, loras, tmp, progress)
        write_manifest(tmp, {**manifest, "components": written,
                             "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "seconds": round(time.perf_counter() - started, 1)})
    _write_card(folder, entry.source if entry.kind != "hub" else None, loras)
    log.info("baked %s into %s in %.1f s (%s merged)", name, folder,
             time.perf_counter() - started, ", ".join(written))
    return folder


def _rename(folder: Path, name: str) -> None:
    """Give a reused bake the name asked for now (its weights are the same)."""
    manifest = read_manifest(folder)
    if manifest.get("name") == name:
        return
    with staged(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps({**manifest, "name": name}, indent=1, sort_keys=True))


def _write(base: Path, loras: list[tuple[LoraEntry, float]], out: Path,
           progress: BakeProgress | None) -> list[str]:
    """Merge the LoRAs into the base's components and write the model folder `out`; the
    components written (the rest are links)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(base), dtype=torch.float32, use_safetensors=True, low_cpu_mem_usage=True,
        safety_checker=None, requires_safety_checker=False)
    try:
        adapters = LoraAdapters(capacity=len(loras))
        adapters.activate(pipe, loras)
        weights = {LoraAdapters.adapter_name(lora): weight for lora, weight in loras}
        changes = {c: _changes(getattr(pipe, c), c, adapters, weights)
                   for c in MERGED_COMPONENTS}
        changes = {c: found for c, found in changes.items() if found}
        if not changes:
            raise LoraError("the LoRAs change no layer of this model: nothing to bake")
        with torch.inference_mode():
            _write_components(pipe, base, changes, out, progress)
    finally:
        del pipe
        gc.collect()
    for item in base.iterdir():
        if item.name in changes:
            continue
        if item.name == "model_index.json":
            shutil.copyfile(item, out / item.name)  # small; a real file like every folder's
        else:
            (out / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    return sorted(changes)


def _changes(module, component: str, adapters: LoraAdapters,
             weights: dict[str, float]) -> dict[str, list[Callable]]:
    """{state-dict key of a weight the active LoRAs change: [builders of each change]}."""
    from peft.tuners.lora import LoraLayer

    found: dict[str, list[Callable]] = {}
    names = {id(m): n for n, m in module.named_modules()}
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLayer) or layer.disable_adapters:
            continue
        for adapter in layer.active_adapters:
            if adapter not in layer.lora_A and adapter not in layer.lora_embedding_A:
                continue  # this LoRA does not touch this layer
            if layer.use_dora.get(adapter):
                raise LoraError(f"a DoRA layer ({name}) cannot be baked")
            found.setdefault(f"{name}.base_layer.weight", []).append(
                lambda layer=layer, adapter=adapter: layer.get_delta_weight(adapter))
    for adapter, hooks in adapters.lycoris.items():
        scale = weights[adapter]
        if isinstance(scale, dict):
            scale = scale.get(component, 1.0)
        for layer, factors, build in hooks.deltas.get(component, []):
            found.setdefault(f"{names[id(layer)]}.weight", []).append(
                lambda layer=layer, factors=factors, build=build, scale=scale:
                build(factors, "").reshape(layer.weight.shape) * scale)
    return found


def _write_components(pipe, base: Path, changes: dict, out: Path,
                      progress: BakeProgress | None) -> None:
    """Write each changed component's folder: its configs, and its weights merged."""
    plans = []
    for component, changed in changes.items():
        state = getattr(pipe, component).state_dict()  # the mapped tensors themselves
        keys = [k for k in state if not any(part in k for part in _ADAPTER_PARTS)]
        plans.append((component, changed, state, keys))
    total = sum(state[k].numel() * state[k].element_size()
                for _c, _ch, state, keys in plans for k in keys)
    layers = sum(len(keys) for *_rest, keys in plans)
    free = shutil.disk_usage(out).free
    if free < total * 1.05:
        raise ModelLoadError(f"baking needs {total / 1e9:.1f} GB in {out.parent}, "
                             f"{free / 1e9:.1f} GB free: free some space")
    done = [0, 0]  # bytes, layers

    def merged(changed: dict, state: dict, keys: list[str]):
        for key in keys:
            tensor = state[key]
            if key in changed:
                delta = sum(build().float() for build in changed[key])
                tensor = (tensor.float() + delta).to(tensor.dtype)
            yield tensor
            done[0] += tensor.numel() * tensor.element_size()
            done[1] += 1
            if progress is not None:
                progress(done[0], total, layers_done=done[1], layers_total=layers)

    for component, changed, state, keys in plans:
        folder = out / component
        folder.mkdir()
        for config in (base / component).glob("*.json"):
            if not config.name.endswith(".index.json"):  # the base's shard index, if sharded
                shutil.copyfile(config, folder / config.name)
        names = _as_the_base_names_them([k.replace(".base_layer.", ".") for k in keys],
                                        base / component)
        layout = [(name, state[key].dtype, tuple(state[key].shape))
                  for name, key in zip(names, keys)]
        write_streamed(folder / WEIGHT_FILES.get(component, "model.safetensors"), layout,
                       merged(changed, state, keys), metadata={"format": "pt"})


def _as_the_base_names_them(keys: list[str], folder: Path) -> list[str]:
    """The tensor names the base's own files use for these state-dict keys: a text encoder
    saved by transformers 4 (as SD 1.x's is) says `text_model.encoder...` where transformers
    5's module says `encoder...`; the baked file keeps the base's names, so whatever reads
    the base reads it."""
    from catalog.loras import read_header

    on_disk: set[str] = set()
    for path in folder.glob("*.safetensors"):
        on_disk.update(read_header(path)[0])
    if not on_disk or all(key in on_disk for key in keys):
        return keys
    prefixes = {name[: -len(key)] for key in keys if key not in on_disk
                for name in on_disk if name.endswith("." + key)}
    if len(prefixes) != 1:  # not one plain prefix: keep the module's own names
        return keys
    prefix = prefixes.pop()
    return [key if key in on_disk or prefix + key not in on_disk else prefix + key
            for key in keys]


def _write_card(folder: Path, base_source: str | None, loras: list[tuple[LoraEntry, float]]):
    """The baked model's card: the base's, with the first few-step LoRA's recipe over it
    (a request's own LoRA recipe would win the same way)."""
    card = dict(read_card(base_source))
    for lora, _weight in reversed(loras):
        card.update(lora_recipe(lora))
    path = card_path(folder)
    if not card:
        path.unlink(missing_ok=True)
        return
    with staged(path) as tmp:
        tmp.write_text(json.dumps(card, indent=1, sort_keys=True))
