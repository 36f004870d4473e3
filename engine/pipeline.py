"""The Stable Diffusion pipeline: load it once, turn one validated request into a PNG.

Threading contract: `Engine.load` and `Engine.generate` run on the job worker only (the
pipeline is not thread-safe). Request threads may read `Engine.status` (an immutable
snapshot, replaced whole, so a reader never sees a half-updated one), call `info()` (built
from that snapshot) and `preview_png()` (a pure function of the latents it is given).
"""
from __future__ import annotations

import ctypes
import logging
import math
import statistics
import time
from dataclasses import replace
from typing import Any

from catalog.loras import find_lora
from catalog.models import ModelEntry, find_model, list_models, with_hash
from config import Settings
from engine.cpu import (PrecisionProbe, adaptive_threads, idle_cores, probe_precision,
                        usable_cores)
from engine.decoders import decode_image, load_tiny_decoder
from engine.images import encode_png
from engine.img2img import TENSOR_INPUTS, mode_arguments, paste_over_input, pipeline_view
from engine.load_errors import explain_load_error
from engine.loading import load_pipeline
from engine.loras import LoraAdapters
from engine.preview import latent_preview_png
from engine.speedups import DeepCache, cfg_cutoff_step, cut_guidance
from engine.status import EngineStatus, GenerationResult, StepCallback
from engine.unet_backend import unet_backend
from errors import ModelUnavailable, UnknownModel, UnsupportedRequest
from params import SAMPLER_OF_CLASS, GenerationRequest
from params.infotext import write_infotext

log = logging.getLogger(__name__)

class ModelSwitchFailed(UnsupportedRequest):
    """The model asked for could not be loaded; the previous one is served again."""


def precision_hint(settings: Settings, probe: PrecisionProbe) -> str:
    """One line telling a DTYPE=float32 user that this CPU runs bf16 faster, else ''."""
    if settings.dtype != "float32" or not probe.bf16_faster:
        return ""
    return (f"this CPU runs bfloat16 about {probe.bf16_speedup:.1f}x faster: set DTYPE=auto; "
            "pixels change slightly")


def user_step(pipeline_step: int, pipeline_steps: int, asked: int) -> int:
    """The step a user counts, from the pipeline's own count (PNDM runs `asked + 1` UNet
    calls; users asked for `asked` steps and must never see "step 5 of 9")."""
    if pipeline_steps <= asked:
        return pipeline_step
    return min(asked, math.ceil(pipeline_step * asked / pipeline_steps))


class Engine:
    """Owns the diffusers pipeline; see the module docstring for who may call what."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.backend = unet_backend(settings)  # torch or OpenVINO, chosen once
        self.status = EngineStatus()
        self.pipe = None
        self.taesd = None  # TAESD, when its weights could be had: previews, VAE_DECODER=tiny
        self.loras = LoraAdapters()  # peft adapters loaded into self.pipe, never fused
        self.model: ModelEntry | None = None  # the catalogue entry being served
        self._bf16 = False  # the precision chosen at the first load, kept across switches
        self._tokenizer = None
        self._startup_source: str | None = None  # the catalogue source of MODEL_ID's model
        self._default_scheduler_config = None

    def _set_status(self, **changes: Any) -> None:
        """Publish a new status snapshot (one reference assignment: atomic for readers)."""
        self.status = replace(self.status, **changes)

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        """Load the pipeline; on failure set status 'failed' with advice, never raise."""
        started = time.perf_counter()
        try:
            self._load()
        except Exception as exc:  # any failure must leave the server up and explain itself
            error = explain_load_error(self.settings, exc)
            self._set_status(state="failed", phase="failed", error=error, progress=None)
            log.exception("model load failed: %s", error)
            return
        self._set_status(state="ready", phase="ready", progress=None,
                         load_seconds=round(time.perf_counter() - started, 2))
        log.info("model %s loaded in %.1f s (dtype %s; %s)", self.model_name,
                 self.status.load_seconds, self.status.dtype,
                 ", ".join(self.status.optimizations))

    def _load(self) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # server logs, not terminal progress bars
        s = self.settings
        threads = self.threads_for_next_job()
        torch.set_num_threads(threads)
        self._set_status(torch_threads=threads, phase="probing precision")
        probe = probe_precision(threads)
        bf16 = self.choose_bf16(probe)
        self._set_status(precision=probe.as_dict() | {"chosen": "bfloat16" if bf16 else
                                                     "float32"}, hint=precision_hint(s, probe))
        log.info("precision probe (%d threads, %.2f s): bf16 runs %.2fx fp32 on this CPU; "
                 "using %s", threads, probe.seconds, probe.bf16_speedup,
                 "bfloat16" if bf16 else "float32")
        if self.status.hint:
            log.info(self.status.hint)
        self._bf16 = bf16
        self.taesd = load_tiny_decoder(s.taesd_model, required=s.vae_decoder == "tiny")
        startup = list_models(s)[0]
        self._startup_source = startup.source  # MODEL_ID's model, named as MODEL_ID says
        self._load_model(startup)

    def _load_model(self, entry: ModelEntry) -> None:
        """Load `entry` as the served pipeline (the catalogue's MODEL_ID entry at start, any
        entry on a switch), in the precision chosen at start."""
        s = self.settings
        self._set_status(phase="loading")
        # The startup model loads with MODEL_ID as given (tiny-random is built on first use).
        startup = entry.source == self._startup_source
        pipe, optimizations = load_pipeline(s if startup else s.with_overrides(
            model_id=entry.source), self.backend.weights_bf16(self._bf16),
            self._report_progress, self.attention_slicing_enabled(), tokenizer=self._tokenizer)
        optimizations += self.backend.attach(pipe, self._bf16, self.status.torch_threads,
                                             self._report_progress)
        if self.taesd is not None:
            optimizations.append("taesd-previews")
        optimizations.append(f"torch-threads={s.torch_threads}" if s.torch_threads else
                             "torch-threads=adaptive (one per free core, chosen per image)")
        self.pipe = pipe
        self._tokenizer = pipe.tokenizer  # kept for single-file SD 1.x checkpoints, which ship none
        self._default_scheduler_config = dict(pipe.scheduler.config)
        self.model = with_hash(entry, s)  # the file's sha256, hashed once and cached
        self._set_status(dtype="bfloat16" if self._bf16 else "float32",
                         optimizations=tuple(optimizations))

    @property
    def model_name(self) -> str:
        """The served model as clients name it: MODEL_ID for the startup model, else its
        catalogue name."""
        # Read on every /health and image: the startup source is kept, never re-scanned.
        if self.model is None or self.model.source == self._startup_source:
            return self.settings.model_id
        return self.model.name

    def switch_model(self, wanted: str) -> bool:
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
        self._set_status(switching={"from": self.model_name, "to": entry.name},
                         phase=f"switching to {entry.name}")
        log.info("switching model %s -> %s", self.model_name, entry.name)
        self._unload()
        try:
            self._load_model(entry)
        except Exception as exc:  # the old model must come back whatever went wrong
            error = explain_load_error(self.settings.with_overrides(model_id=entry.source), exc)
            log.exception("switch to %s failed: %s", entry.name, error)
            self._unload()
            try:
                self._load_model(previous)
            except Exception as again:
                message = explain_load_error(self.settings, again)
                self._set_status(state="failed", phase="failed", switching=None,
                                 error=f"switch to {entry.name} failed ({error}) and "
                                       f"reloading {previous.name} failed too: {message}")
                raise
            raise ModelSwitchFailed(f"model {entry.name!r} could not be loaded: {error}; "
                                    f"still serving {self.model_name!r}") from exc
        finally:
            if self.status.state != "failed":
                self._set_status(switching=None, phase="ready", progress=None)
        log.info("model %s loaded in %.1f s", entry.name, time.perf_counter() - started)
        return True

    def _unload(self) -> None:
        """Drop the pipeline (and its adapters) so its memory comes back before the next load."""
        import gc

        if self.pipe is not None:
            self.loras.clear(self.pipe)
        self.pipe = None
        gc.collect()
        release_freed_memory()

    def _report_progress(self, phase: str, done: int, total: int, **extra: Any) -> None:
        """Publish a long loading phase's progress (download, checkpoint or bf16 conversion)
        for /health; `extra` figures (files_done, a better eta_seconds...) are added as given."""
        now = time.monotonic()
        if phase != self.status.phase:
            self._phase_started = now
        elapsed = now - getattr(self, "_phase_started", now)
        eta = round(elapsed / done * (total - done), 1) if done and total else None
        self._set_status(phase=phase, progress={"bytes_done": done, "bytes_total": total,
                                                "eta_seconds": eta, **extra} if total else None)

    def threads_for_next_job(self) -> int:
        """TORCH_THREADS when set; with 0, one per usable core that other programs leave free."""
        if self.settings.torch_threads:
            return self.settings.torch_threads
        return adaptive_threads(usable_cores(), idle_cores())

    def choose_bf16(self, probe: PrecisionProbe) -> bool:
        """DTYPE=bfloat16 always, auto where the probe measured bf16 fast enough."""
        choice = self.settings.dtype
        return choice == "bfloat16" or (choice == "auto" and probe.bf16_faster)

    def attention_slicing_enabled(self) -> bool:
        """Slicing only when asked, or on auto where SDPA is missing (it is slower on CPU)."""
        import torch

        mode = self.settings.attention_slicing
        if mode == "auto":
            return not hasattr(torch.nn.functional, "scaled_dot_product_attention")
        return mode == "on"

    # -------------------------------------------------------------- generation
    def generate(self, request: GenerationRequest, seed: int,
                 on_step: StepCallback | None = None) -> GenerationResult:
        """Make one image; `on_step(step, total, latents)` runs after every step and may raise
        (`latents` is the receiver's own copy, to keep for a preview).

        The mode follows the request: txt2img, img2img (`init_image`) or inpainting (and
        `mask_image`). `step`/`total` count the denoising steps the user asked for (steps x
        strength for img2img), whatever the scheduler does inside. The request's speed
        options (cfg_cutoff, deep_cache, vae_decoder) apply to this image only.
        """
        import torch

        if self.pipe is None:
            raise RuntimeError("the model is not loaded")
        if request.model is not None:
            self.switch_model(request.model)  # the job waited its turn: switch, then draw
        effective = request.as_run(tiny_decoder=self.has_tiny_decoder)
        if effective is not request:
            # Falling back beats failing a job after minutes of steps; the PNG says so.
            log.warning("vae_decoder 'tiny' asked for but TAESD is not loaded (TAESD_MODEL): "
                        "decoding with the full VAE")
            request = effective
        self.backend.check_request(request)
        started = time.perf_counter()  # the thread check below is part of this image's time
        pipe = self._pipeline_for(request.mode, request.scheduler)
        threads = self.threads_for_next_job()
        if threads != torch.get_num_threads():
            log.info("torch threads %d -> %d (cores free now)", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)
        self._set_status(torch_threads=threads)
        generator = torch.Generator("cpu").manual_seed(seed)
        step_times: list[float] = []
        asked = request.denoising_steps

        def callback(pipeline, step_index, _timestep, callback_kwargs):
            step_times.append(time.perf_counter())
            # Heun/DPM2 run ~2 UNet calls per step and PNDM one extra: count in the
            # pipeline's own calls here, in the user's steps outside.
            pipeline_steps = getattr(pipeline, "num_timesteps", None) or asked
            if step_index == cfg_cutoff_step(request.cfg_cutoff, pipeline_steps):
                if pipeline.do_classifier_free_guidance:
                    cut_guidance(pipeline, callback_kwargs)
            if step_index + 1 == pipeline_steps:
                release_freed_memory()  # before the VAE decode, the peak of anonymous RAM
            if on_step is not None:  # a copy: the pipeline reuses its tensor
                on_step(user_step(step_index + 1, pipeline_steps, asked), asked,
                        callback_kwargs["latents"].detach().clone())
            return callback_kwargs

        lora_hashes = self._activate_loras(request)
        try:
            with torch.inference_mode(), DeepCache(pipe.unet, request.deep_cache):
                latents = pipe(prompt=request.clip_prompt,
                               negative_prompt=request.negative_prompt or None,
                               num_inference_steps=request.steps,
                               guidance_scale=request.guidance_scale, generator=generator,
                               output_type="latent", callback_on_step_end=callback,
                               callback_on_step_end_tensor_inputs=TENSOR_INPUTS[request.mode],
                               **mode_arguments(request)).images
        finally:
            self.loras.deactivate(self.pipe)  # the next job starts from the bare model
        decode_started = time.perf_counter()
        with torch.inference_mode():
            image, nsfw = decode_image(pipe, latents, self.taesd if request.vae_decoder == "tiny"
                                       else None, generator)
        if not nsfw:  # a flagged image stays black, input pixels included
            image = paste_over_input(image, request)
        decode_seconds = time.perf_counter() - decode_started
        seconds = time.perf_counter() - started
        parameters = write_infotext(request, seed, self.model_name, self.default_sampler,
                                    lora_hashes)
        return GenerationResult(png=encode_png(image, parameters), seed=seed, width=image.width,
                                height=image.height, steps=request.steps,
                                seconds=round(seconds, 3),
                                seconds_per_step=round(seconds_per_step(started, step_times), 3),
                                nsfw=nsfw, parameters=parameters,
                                decode_seconds=round(decode_seconds, 3))

    def _activate_loras(self, request: GenerationRequest) -> dict[str, str]:
        """Make the request's LoRAs (and only those) active on the shared modules, and return
        their file hashes for the infotext; LoraError when one does not fit this model."""
        entries = [(find_lora(self.settings, name), te, unet)
                   for name, te, unet in request.loras]
        self.loras.activate(self.pipe, [
            (entry, te if te == unet else {"unet": unet, "text_encoder": te})
            for entry, te, unet in entries])
        return {entry.name: self.loras.sha256(entry) for entry, _te, _unet in entries}

    def _pipeline_for(self, mode: str, scheduler_name: str):
        """The shared pipeline, or a view of it for this job's mode and scheduler (the same
        modules, so no weight is copied, and the shared pipeline is never changed)."""
        return pipeline_view(self.pipe, mode, scheduler_name, self._default_scheduler_config)

    @property
    def default_sampler(self) -> str:
        """A1111's name for the scheduler the model ships with."""
        name = (self._default_scheduler_config or {}).get("_class_name", "")
        return SAMPLER_OF_CLASS.get(name, name or "default")

    @property
    def has_tiny_decoder(self) -> bool:
        """Whether TAESD is loaded (else a request's vae_decoder 'tiny' runs the full VAE)."""
        return self.taesd is not None

    def preview_png(self, latents) -> bytes:
        """A small PNG of the given latents (safe from any thread: TAESD, when loaded, is
        only read, never changed, after the load)."""
        return latent_preview_png(latents, self.taesd)

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs."""
        st = self.status
        return {"model": self.model_name, "device": "cpu", "dtype": st.dtype,
                "optimizations": list(st.optimizations), "torch_threads": st.torch_threads,
                "load_seconds": st.load_seconds, "precision": st.precision,
                "hint": st.hint or None, "engine": self.engine_info()}

    def engine_info(self) -> dict[str, Any]:
        """What runs the UNet: torch, or OpenVINO with its precision, compile times, memory."""
        return self.backend.info(self.pipe)


def release_freed_memory() -> None:
    """Give heap memory that glibc keeps after the UNet steps back to the OS (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def seconds_per_step(started: float, step_times: list[float]) -> float:
    """Median step duration; the first step also pays for text encoding, so skip it if we can."""
    if not step_times:
        return 0.0
    marks = [started, *step_times]
    durations = [b - a for a, b in zip(marks, marks[1:])]
    return statistics.median(durations[1:] if len(durations) > 1 else durations)
