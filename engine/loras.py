"""LoRAs applied to the loaded pipeline for one job (the files are catalog.loras').

A LoRA is loaded with diffusers' `load_lora_weights` as a peft adapter and never fused:
peft wraps the affected layers and keeps the base weights as they are, so they stay
memory-mapped from the model's safetensors and no anonymous copy of the UNet is made. A
small bounded set of adapters stays loaded between jobs (`LoraAdapters`); each job activates
the ones it names with its weights, and they are disabled again when it ends, so the next
job is unaffected. LyCORIS LoHa and LoKr files, which diffusers does not read, are applied
the same way by engine.lycoris' forward hooks (LoCon is a kohya LoRA with conv layers and
loads as one). `LoraAdapters` runs on the job worker only.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict


from catalog.hashes import file_sha256
from catalog.loras import LoraEntry
from engine.lycoris import LYCORIS_FORMATS, LycorisLayers
from errors import LoraError

log = logging.getLogger(__name__)

# Adapters kept loaded between jobs (each is a few MB to ~150 MB of anonymous RAM).
ADAPTER_CACHE_SIZE = 4


class LoraAdapters:
    """The peft adapters loaded into one pipeline: at most `capacity` stay loaded between
    jobs (least recently used ones are deleted first). Worker thread only."""

    def __init__(self, capacity: int = ADAPTER_CACHE_SIZE):
        self.capacity = capacity
        self.loaded: OrderedDict[str, LoraEntry] = OrderedDict()  # adapter name -> entry
        self.active = False
        self._hashes: dict[str, str] = {}  # adapter name (one file version) -> sha256
        self.lycoris: dict[str, LycorisLayers] = {}  # adapter name -> LoHa/LoKr hooks

    def sha256(self, entry: LoraEntry) -> str:
        """The file's sha256, computed once per version of the file (for `Lora hashes`)."""
        key = self.adapter_name(entry)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(entry.path)
        return self._hashes[key]

    @staticmethod
    def adapter_name(entry: LoraEntry) -> str:
        """A peft adapter name for this version of the file (a changed file loads anew)."""
        return re.sub(r"[^A-Za-z0-9_]", "_", entry.name) + "_" + entry.short_hash

    def activate(self, pipe, loras: list[tuple[LoraEntry, float | dict[str, float]]]) -> None:
        """Load what is missing and make exactly these adapters active with these weights (a
        number, or {"unet": w, "text_encoder": w}); LoraError (and nothing left half-loaded)
        when a file does not fit the model."""
        if not loras:
            self.deactivate(pipe)
            return
        names = []
        for entry, _weight in loras:
            name = self.adapter_name(entry)
            if name not in self.loaded:
                self._load(pipe, entry, name)
            self.loaded.move_to_end(name)
            names.append(name)
        self._evict(pipe, keep=set(names))
        self.deactivate(pipe)
        peft = [(name, weight) for name, (_entry, weight) in zip(names, loras)
                if name not in self.lycoris]
        if peft:
            pipe.enable_lora()
            pipe.set_adapters([n for n, _w in peft], adapter_weights=[w for _n, w in peft])
        for name, (_entry, weight) in zip(names, loras):
            if name in self.lycoris:
                self.lycoris[name].activate(weight)
        self.active = True

    def deactivate(self, pipe) -> None:
        """Turn every adapter off (they stay loaded for later jobs)."""
        if self.active and any(name not in self.lycoris for name in self.loaded):
            pipe.disable_lora()
        for layers in self.lycoris.values():
            layers.deactivate()
        self.active = False

    def clear(self, pipe) -> None:
        """Delete every adapter (before the pipeline is replaced by another model)."""
        self.deactivate(pipe)
        peft = [name for name in self.loaded if name not in self.lycoris]
        if peft:
            pipe.delete_adapters(peft)
        self.loaded.clear()
        self.lycoris.clear()
        self.active = False

    def _load(self, pipe, entry: LoraEntry, name: str) -> None:
        if entry.format in LYCORIS_FORMATS:
            try:
                self.lycoris[name] = LycorisLayers.load(pipe, entry.path, entry.format, name)
            except LoraError as exc:
                raise LoraError(f"LoRA '{entry.name}' ({entry.format} format) cannot be "
                                f"applied: {exc}") from exc
            self.loaded[name] = entry
            log.info("LoRA %s loaded as %s hooks", entry.name, entry.format)
            return
        try:
            pipe.load_lora_weights(str(entry.path), adapter_name=name)
        except Exception as exc:  # diffusers/peft raise ValueError, RuntimeError, KeyError...
            self._forget_partial(pipe, name)
            raise LoraError(f"LoRA '{entry.name}' ({entry.format} format) does not fit "
                            f"this model: {_reason(exc)}") from exc
        self.loaded[name] = entry
        log.info("LoRA %s loaded as adapter %s (%s format)", entry.name, name, entry.format)

    def _evict(self, pipe, keep: set[str]) -> None:
        while len(self.loaded) > self.capacity:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                return
            if victim in self.lycoris:
                self.lycoris.pop(victim).deactivate()
            else:
                pipe.delete_adapters([victim])
            del self.loaded[victim]

    @staticmethod
    def _forget_partial(pipe, name: str) -> None:
        """Remove whatever a failed load left behind (peft may have wrapped some layers)."""
        try:
            if name in {n for names in pipe.get_list_adapters().values() for n in names}:
                pipe.delete_adapters([name])
        except Exception:  # nothing was registered: nothing to undo
            log.debug("nothing to undo for adapter %s", name, exc_info=True)


def _reason(exc: Exception) -> str:
    """The first line of a loader's error, shortened (size mismatches are long)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
