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
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from config import TINY_MODEL_ID, Settings
from engine.images import encode_png
from engine.cpu import adaptive_threads, cpu_has_amx_bf16, idle_cores, usable_cores
from engine.load_errors import ModelLoadError, explain_load_error
from engine.preview import latent_preview_png
from engine.random_model import build_random_pipeline
from engine.vae_bands import low_memory_vae_decode, vae_decode_in_row_bands
from params import SAMPLER_OF_CLASS, SCHEDULERS, GenerationRequest

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, Any], None]  # (step, total, latents tensor)


@dataclass
class GenerationResult:
    """One finished image and how it was made."""

    png: bytes
    seed: int
    width: int
    height: int
    steps: int
    seconds: float
    seconds_per_step: float
    nsfw: bool = False
    parameters: str = ""


@dataclass(frozen=True)
class EngineStatus:
    """What /health reports about the model (immutable: the engine replaces it whole)."""

    state: str = "loading"  # loading | ready | failed
    error: str = ""
    load_seconds: float | None = None
    dtype: str = ""
    optimizations: tuple[str, ...] = ()
    torch_threads: int = 0


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
        self.status = EngineStatus()
        self.pipe = None
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
            self._set_status(state="failed", error=error)
            log.exception("model load failed: %s", error)
            return
        self._set_status(state="ready", load_seconds=round(time.perf_counter() - started, 2))
        log.info("model %s loaded in %.1f s (dtype %s; %s)", self.settings.model_id,
                 self.status.load_seconds, self.status.dtype,
                 ", ".join(self.status.optimizations))

    def _load(self) -> None:
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # server logs, not terminal progress bars
        s = self.settings
        threads = self.threads_for_next_job()
        torch.set_num_threads(threads)
        self._set_status(torch_threads=threads)
        if s.model_id == TINY_MODEL_ID:
            folder = s.path(s.tiny_model_dir)
            if not (folder / "model_index.json").exists():
                log.info("building the tiny random-weight model in %s", folder)
                build_random_pipeline(folder, "tiny")
        source = s.model_source
        if source.startswith(("/", ".", "~")) or os.path.isdir(source):
            folder = Path(source).expanduser()
            if not (folder / "model_index.json").is_file():
                raise ModelLoadError(
                    f"MODEL_ID={s.model_id!r}: {folder} is not a diffusers model folder (no "
                    "model_index.json); point MODEL_ID at one, use a Hub id such as "
                    "CompVis/stable-diffusion-v1-4, or MODEL_ID=tiny-random to try the server")
        dtype = self.resolve_dtype()
        kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, low_cpu_mem_usage=True)
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
        # /health lists what the code really applied, in the order it matters to a reader.
        optimizations = []
        if dtype == torch.bfloat16:
            optimizations.append("bfloat16")
        if self.attention_slicing_enabled():
            pipe.enable_attention_slicing()
            optimizations.append("attention-slicing")
        else:
            optimizations.append("sdpa-attention")
        optimizations += ["mmap-safetensors" if dtype == torch.float32 else
                          "safetensors (cast to bf16 on load)", "inference-mode"]
        if low_memory_vae_decode(pipe.vae):
            optimizations.append("low-memory-vae-decode")
        if vae_decode_in_row_bands(pipe.vae):
            optimizations.append("vae-decode-in-row-bands")
        optimizations.append(f"torch-threads={threads}" if s.torch_threads else
                             "torch-threads=adaptive (one per free core, chosen per image)")
        self.pipe = pipe
        self._default_scheduler_config = dict(pipe.scheduler.config)
        self._set_status(dtype=str(dtype).replace("torch.", ""),
                         optimizations=tuple(optimizations))

    def threads_for_next_job(self) -> int:
        """TORCH_THREADS when set; with 0, one per usable core that other programs leave free."""
        if self.settings.torch_threads:
            return self.settings.torch_threads
        return adaptive_threads(usable_cores(), idle_cores())

    def resolve_dtype(self) -> "torch.dtype":
        """The dtype DTYPE asks for on this CPU."""
        import torch

        choice = self.settings.dtype
        if choice == "auto":
            choice = "bfloat16" if cpu_has_amx_bf16() else "float32"
        return torch.bfloat16 if choice == "bfloat16" else torch.float32

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
        """Make one image; `on_step(step, total, latents)` runs after every step and may raise.

        `step`/`total` count the steps the user asked for, whatever the scheduler does inside.
        """
        import torch

        if self.pipe is None:
            raise RuntimeError("the model is not loaded")
        started = time.perf_counter()  # the thread check below is part of this image's time
        pipe = self._pipeline_for(request.scheduler)
        threads = self.threads_for_next_job()
        if threads != torch.get_num_threads():
            log.info("torch threads %d -> %d (cores free now)", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)
        self._set_status(torch_threads=threads)
        generator = torch.Generator("cpu").manual_seed(seed)
        step_times: list[float] = []

        def callback(pipeline, step_index, _timestep, callback_kwargs):
            step_times.append(time.perf_counter())
            pipeline_steps = getattr(pipeline, "num_timesteps", None) or request.steps
            if step_index + 1 == pipeline_steps:
                release_freed_memory()  # before the VAE decode, the peak of anonymous RAM
            if on_step is not None:
                on_step(user_step(step_index + 1, pipeline_steps, request.steps), request.steps,
                        callback_kwargs["latents"])
            return callback_kwargs

        with torch.inference_mode():
            out = pipe(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                       num_inference_steps=request.steps,
                       guidance_scale=request.guidance_scale, width=request.width,
                       height=request.height, generator=generator,
                       callback_on_step_end=callback,
                       callback_on_step_end_tensor_inputs=["latents"])
        seconds = time.perf_counter() - started
        image = out.images[0]
        nsfw = bool(out.nsfw_content_detected and out.nsfw_content_detected[0])
        if nsfw:  # the checker already blacked the pixels; make that unmistakable
            image = Image.new("RGB", image.size, (0, 0, 0))
        parameters = request.infotext(seed, self.settings.model_id, self.default_sampler)
        return GenerationResult(png=encode_png(image, parameters), seed=seed, width=image.width,
                                height=image.height, steps=request.steps,
                                seconds=round(seconds, 3),
                                seconds_per_step=round(seconds_per_step(started, step_times), 3),
                                nsfw=nsfw, parameters=parameters)

    def _pipeline_for(self, scheduler_name: str):
        """The shared pipeline, or a view of it with another scheduler for this job only."""
        if scheduler_name in ("", "default"):
            return self.pipe
        import diffusers

        class_name, extra = SCHEDULERS[scheduler_name]
        scheduler = getattr(diffusers, class_name).from_config(self._default_scheduler_config,
                                                              **extra)
        # A new pipeline object over the same modules: the weights are shared (no copy) and
        # the shared pipeline's scheduler is never touched, so other jobs are unaffected.
        components = {**self.pipe.components, "scheduler": scheduler}
        view = type(self.pipe)(**components, requires_safety_checker=False)
        view.set_progress_bar_config(disable=True)
        return view

    @property
    def default_sampler(self) -> str:
        """A1111's name for the scheduler the model ships with."""
        name = (self._default_scheduler_config or {}).get("_class_name", "")
        return SAMPLER_OF_CLASS.get(name, name or "default")

    def preview_png(self, latents) -> bytes:
        """A small PNG of the given latents (safe from any thread: reads no engine state)."""
        return latent_preview_png(latents)

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs."""
        st = self.status
        return {"model": self.settings.model_id, "device": "cpu", "dtype": st.dtype,
                "optimizations": list(st.optimizations), "torch_threads": st.torch_threads,
                "load_seconds": st.load_seconds}


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
