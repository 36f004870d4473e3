"""The model slot: the one pipeline in memory, loaded at start, switched on request, and the
status /health reads about it.

Threading contract: `load`, `switch` and `unload` run on the job worker only. Request threads
may read `status` (an immutable EngineStatus, replaced whole by `publish`, so a reader never
sees a half-updated one) and `model_name`.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import time
from dataclasses import replace
from typing import Any

from catalog.models import ModelEntry, find_model, list_models, model_id_name, with_hash
from config import Settings
from engine.bake import bake_all
from engine.cpu import PrecisionProbe, probe_precision, threads_for_next_job
from engine.decoders import load_tiny_decoder
from engine.load_errors import explain_load_error
from engine.loading import (apply_card_prediction, attention_slicing_enabled, load_pipeline,
                            pipeline_family)
from engine.embeddings import TextualInversions
from engine.loras import LoraAdapters
from engine.status import EngineStatus
from engine.unet_backend import UNetBackend
from errors import ModelUnavailable, UnknownModel, UnsupportedRequest
from params.recipes import model_card
from params.samplers import sampler_of_config

log = logging.getLogger(__name__)


class ModelSwitchFailed(UnsupportedRequest):
    """The model asked for could not be loaded; the previous one is served again."""


def precision_hint(settings: Settings, probe: PrecisionProbe) -> str:
    """One line telling a DTYPE=float32 user that this CPU runs bf16 faster, else ''."""
    if settings.dtype != "float32" or not probe.bf16_faster:
        return ""
    return (f"this CPU runs bfloat16 about {probe.bf16_speedup:.1f}x faster: set DTYPE=auto; "
            "pixels change slightly")


def choose_bf16(settings: Settings, probe: PrecisionProbe) -> bool:
    """DTYPE=bfloat16 always, auto where the probe measured bf16 fast enough."""
    return settings.dtype == "bfloat16" or (settings.dtype == "auto" and probe.bf16_faster)


def release_freed_memory() -> None:
    """Give heap memory that glibc keeps after the UNet steps back to the OS (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelSlot:
    """Holds the served pipeline and what goes with it: its catalogue entry, its LoRA
    adapters, TAESD, the precision chosen at start, and the status snapshot."""

    def __init__(self, settings: Settings, backend: UNetBackend):
        self.settings = settings
        self.backend = backend
        self.status = EngineStatus()
        self.pipe = None
        self.taesd = None  # TAESD, when its weights could be had: previews, VAE_DECODER=tiny
        self.loras = LoraAdapters()  # peft adapters loaded into self.pipe, never fused
        self.embeddings = TextualInversions()  # textual inversions in self.pipe's tokenizer
        self.model: ModelEntry | None = None  # the catalogue entry being served
        self.default_scheduler_config: dict | None = None  # the served model's own scheduler
        self._bf16 = False  # the precision chosen at the first load, kept across switches
        self._tokenizer = None  # kept for single-file SD 1.x checkpoints, which ship none
        self._startup_source: str | None = None  # the catalogue source of MODEL_ID's model
        self._phase_started: float | None = None  # when the phase in progress began

    def publish(self, **changes: Any) -> None:
        """Publish a new status snapshot (one reference assignment: atomic for readers)."""
        self.status = replace(self.status, **changes)

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        """Load the startup model; on failure set status 'failed' with advice, never raise."""
        started = time.perf_counter()
        try:
            self._load_startup()
        except Exception as exc:  # any failure must leave the server up and explain itself
            error = explain_load_error(self.settings, exc)
            self.publish(state="failed", phase="failed", error=error, progress=None)
            log.exception("model load failed: %s", error)
            return
        self.publish(state="ready", phase="ready", progress=None,
                     load_seconds=round(time.perf_counter() - started, 2))
        log.info("model %s loaded in %.1f s (dtype %s; %s)", self.model_name,
                 self.status.load_seconds, self.status.dtype,
                 ", ".join(self.status.optimizations))

    def _load_startup(self) -> None:
        """Choose threads and precision (once, for every later switch too), load TAESD, then
        MODEL_ID's model."""
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # server logs, not terminal progress bars
        threads = threads_for_next_job(self.settings.torch_threads)
        torch.set_num_threads(threads)
        self.publish(torch_threads=threads, phase="probing precision")
        self._bf16 = self._choose_precision(threads)
        self.taesd = load_tiny_decoder(self.settings.taesd_model,
                                       required=self.settings.vae_decoder == "tiny")
        bake_all(self.settings, self.report_progress)  # first: MODEL_ID may name a bake
        self.publish(phase="loading", progress=None)
        release_freed_memory()  # what merging the layers took goes back before the load
        startup = list_models(self.settings)[0]
        self._startup_source = startup.source  # MODEL_ID's model, named as MODEL_ID says
        self.load_model(startup)

    def _choose_precision(self, threads: int) -> bool:
        """Probe this CPU, publish the figures and the choice; True for bf16."""
        probe = probe_precision(threads)
        bf16 = choose_bf16(self.settings, probe)
        chosen = "bfloat16" if bf16 else "float32"
        self.publish(precision=probe.as_dict() | {"chosen": chosen},
                     hint=precision_hint(self.settings, probe))
        log.info("precision probe (%d threads, %.2f s): bf16 runs %.2fx fp32 on this CPU; "
                 "using %s", threads, probe.seconds, probe.bf16_speedup, chosen)
        if self.status.hint:
            log.info(self.status.hint)
        return bf16

    def load_model(self, entry: ModelEntry) -> None:
        """Load `entry` as the served pipeline (the catalogue's MODEL_ID entry at start, any
        entry on a switch), in the precision chosen at start."""
        s = self.settings
        self.publish(phase="loading")
        # The startup model loads with MODEL_ID as given (tiny-random is built on first use).
        startup = entry.source == self._startup_source
        pipe, optimizations = load_pipeline(
            s if startup else s.with_overrides(model_id=entry.source),
            self.backend.weights_bf16(self._bf16), self.report_progress,
            attention_slicing_enabled(s.attention_slicing), tokenizer=self._tokenizer)
        card = entry.card
        if apply_card_prediction(pipe, card):
            log.info("model %s: prediction_type %s, as its card says", entry.name,
                     card["prediction_type"])
        # The model's defaults as its family and card give them (OpenVINO compiles them now).
        defaults = model_card(replace(entry, family=pipeline_family(pipe, card)))
        optimizations += self.backend.attach(pipe, self._bf16, self.status.torch_threads,
                                             self.report_progress, taesd=self.taesd,
                                             defaults=defaults)
        if self.taesd is not None:
            optimizations.append("taesd-previews")
        optimizations.append(f"torch-threads={s.torch_threads}" if s.torch_threads else
                             "torch-threads=adaptive (one per free core, chosen per image)")
        self.pipe = pipe
        self._tokenizer = pipe.tokenizer
        self.default_scheduler_config = dict(pipe.scheduler.config)
        # the file's sha256 (hashed once and cached); the family as loaded (a Hub model's too)
        self.model = replace(with_hash(entry, s), family=pipeline_family(pipe, card))
        self.publish(dtype="bfloat16" if self._bf16 else "float32",
                     optimizations=tuple(optimizations))

    def report_progress(self, phase: str, done: int, total: int, **extra: Any) -> None:
        """Publish a long loading phase's progress (download, checkpoint or bf16 conversion)
        for /health; `extra` figures (files_done, a better eta_seconds...) are added as given."""
        now = time.monotonic()
        if phase != self.status.phase:
            self._phase_started = now
        elapsed = now - (now if self._phase_started is None else self._phase_started)
        eta = round(elapsed / done * (total - done), 1) if done and total else None
        self.publish(phase=phase, progress={"bytes_done": done, "bytes_total": total,
                                            "eta_seconds": eta, **extra} if total else None)

    # --------------------------------------------------------------- switching
    @property
    def model_name(self) -> str:
        """The served model as clients name it: its catalogue name (a folder's name, a file's
        stem, a Hub id), never a filesystem path; MODEL_ID so named until it has loaded."""
        # Read on every /health and image: the loaded entry is kept, never re-scanned.
        if self.model is None:
            return model_id_name(self.settings.model_id)
        return self.model.name

    def switch(self, wanted: str) -> bool:
        """Serve the catalogue model `wanted` instead (worker thread only); False when it is
        already served. Only one model is in memory: the old one is released first, and if
        the new one fails to load the old one is loaded again and ModelSwitchFailed says why."""
        try:
            entry = find_model(self.settings, wanted)
        except (UnknownModel, ModelUnavailable) as exc:  # gone since the request was checked
            raise ModelSwitchFailed(str(exc)) from None
        if self.model is not None and entry.source == self.model.source:
            return False
        previous = self.model
        started = time.perf_counter()
        self.publish(switching={"from": self.model_name, "to": entry.name},
                     phase=f"switching to {entry.name}")
        log.info("switching model %s -> %s", self.model_name, entry.name)
        self.unload()
        try:
            self.load_model(entry)
        except Exception as exc:  # the old model must come back whatever went wrong
            self._restore(previous, entry, exc)
        finally:
            if self.status.state != "failed":
                self.publish(switching=None, phase="ready", progress=None)
        log.info("model %s loaded in %.1f s", entry.name, time.perf_counter() - started)
        return True

    def _restore(self, previous: ModelEntry, failed: ModelEntry, exc: Exception) -> None:
        """Load `previous` again after the switch to `failed` raised `exc`, then raise
        ModelSwitchFailed; if even that fails, status 'failed' says both and it raises."""
        error = explain_load_error(self.settings.with_overrides(model_id=failed.source), exc)
        log.exception("switch to %s failed: %s", failed.name, error)
        self.unload()
        try:
            self.load_model(previous)
        except Exception as again:
            message = explain_load_error(self.settings, again)
            self.publish(state="failed", phase="failed", switching=None,
                         error=f"switch to {failed.name} failed ({error}) and "
                               f"reloading {previous.name} failed too: {message}")
            raise
        raise ModelSwitchFailed(f"model {failed.name!r} could not be loaded: {error}; "
                                f"still serving {self.model_name!r}") from exc

    def unload(self) -> None:
        """Drop the pipeline (and its adapters) so its memory comes back before the next load."""
        if self.pipe is not None:
            self.loras.clear(self.pipe)
            self.embeddings.clear(self.pipe)
        self.pipe = None
        gc.collect()
        release_freed_memory()

    # --------------------------------------------------------------- reporting
    @property
    def default_sampler(self) -> str:
        """A1111's name for the scheduler the model ships with."""
        return sampler_of_config(self.default_scheduler_config)

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs, from one status snapshot."""
        st = self.status
        family = self.model.family if self.model is not None else None
        # A1111 shows a one-file model's short hash beside its name; a folder has none.
        short_hash = self.model.short_hash if self.model is not None else None
        return {"model": self.model_name, "model_hash": short_hash, "device": "cpu",
                "dtype": st.dtype,
                "family": family.as_dict() if family is not None else None,
                "defaults": model_card(self.model),
                "optimizations": list(st.optimizations), "torch_threads": st.torch_threads,
                "load_seconds": st.load_seconds, "precision": st.precision,
                "hint": st.hint or None, "engine": self.engine_info()}

    def engine_info(self) -> dict[str, Any]:
        """What runs the UNet: torch, or OpenVINO with its precision, compile times, memory."""
        return self.backend.info(self.pipe)
