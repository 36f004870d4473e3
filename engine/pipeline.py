"""The Stable Diffusion engine as the job worker and the routes see it: load the pipeline
once, turn one validated request into a PNG, report on both.

`Engine` is a facade over three parts, one concern each:

    engine.slot          ModelSlot: the one pipeline in memory (load, switch, unload), its
                         status snapshot, the precision chosen at start
    engine.generation    Generation: one image as numbered steps, and its step hooks
    engine.unet_backend  what runs the UNet (torch or OpenVINO), chosen once from ENGINE

Threading contract: `Engine.load`, `Engine.switch_model` and `Engine.generate` run on the job
worker only (the pipeline is not thread-safe). Request threads may read `Engine.status` (an
immutable snapshot, replaced whole, so a reader never sees a half-updated one), call `info()`
(built from that snapshot) and `preview_png()` (a pure function of the latents it is given).
"""
from __future__ import annotations

from typing import Any

from catalog.models import ModelEntry, list_models
from config import Settings
from engine.cpu import PrecisionProbe, threads_for_next_job
from engine.generation import Generation
from engine.loading import attention_slicing_enabled
from engine.loras import LoraAdapters
from engine.preview import latent_preview_png
from engine.slot import ModelSlot, choose_bf16
from engine.status import CheckpointSink, EngineStatus, GenerationResult, StepCallback
from engine.unet_backend import unet_backend
from engine import upscalers
from params import GenerationRequest


class Engine:
    """Owns the diffusers pipeline; see the module docstring for who may call what."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.slot = ModelSlot(settings, unet_backend(settings))
        self._generation = Generation(settings, self.slot)
        upscalers.configure(settings)  # engine.upscalers.upscale_image finds MODELS_DIR's files

    # ---------------------------------------------------- worker thread only
    def load(self) -> None:
        """Load the pipeline; on failure set status 'failed' with advice, never raise."""
        self.slot.load()

    def switch_model(self, wanted: str) -> bool:
        """Serve the catalogue model `wanted` instead; False when it is already served
        (ModelSwitchFailed, the old model served again, when the new one cannot load)."""
        return self.slot.switch(wanted)

    def generate(self, request: GenerationRequest, seed: int,
                 on_step: StepCallback | None = None, resume_from: bytes | None = None,
                 on_checkpoint: CheckpointSink | None = None) -> GenerationResult:
        """Make one image; `on_step(step, total, latents)` runs after every step and may raise;
        `on_checkpoint` keeps checkpoints, `resume_from` one of them (see Generation.generate)."""
        return self._generation.generate(request, seed, on_step, resume_from, on_checkpoint)

    def upscale(self, image, name: str, size: tuple[int, int]):
        """`image` (PIL) upscaled by upscaler `name` to exactly `size` (engine.upscalers);
        callers run one at a time with generation (jobs' engine turn)."""
        return upscalers.upscale_image(image, name, size, self.settings)

    def _pipeline_for(self, mode: str, scheduler_name: str):
        """The pipeline view a job of this mode and scheduler runs (tests, benchmarks)."""
        return self._generation.pipeline_for(mode, scheduler_name)

    # ------------------------------------------------------- any thread
    @property
    def status(self) -> EngineStatus:
        """The latest status snapshot (immutable)."""
        return self.slot.status

    @property
    def pipe(self):
        """The loaded diffusers pipeline, None before the load or while switching."""
        return self.slot.pipe

    @property
    def taesd(self):
        """TAESD, when its weights could be had (previews, VAE_DECODER=tiny), else None."""
        return self.slot.taesd

    @property
    def loras(self) -> LoraAdapters:
        """The LoRA adapters loaded into the pipeline."""
        return self.slot.loras

    @property
    def model(self) -> ModelEntry | None:
        """The catalogue entry being served."""
        return self.slot.model

    @property
    def model_name(self) -> str:
        """The served model as clients name it: MODEL_ID for the startup model, else its
        catalogue name."""
        return self.slot.model_name

    @property
    def default_sampler(self) -> str:
        """A1111's name for the scheduler the model ships with."""
        return self.slot.default_sampler

    @property
    def has_tiny_decoder(self) -> bool:
        """Whether TAESD is loaded (else a request's vae_decoder 'tiny' runs the full VAE)."""
        return self.slot.taesd is not None

    def available_models(self) -> list[ModelEntry]:
        """The models a request may name: every loadable catalogue entry (one is loaded at
        a time; a request for another switches to it)."""
        return [entry for entry in list_models(self.settings) if not entry.problem]

    def preview_png(self, latents) -> bytes:
        """A small PNG of the given latents (safe from any thread: TAESD, when loaded, is
        only read, never changed, after the load)."""
        return latent_preview_png(latents, self.slot.taesd)

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs."""
        return self.slot.info()

    def engine_info(self) -> dict[str, Any]:
        """What runs the UNet: torch, or OpenVINO with its precision, compile times, memory."""
        return self.slot.engine_info()

    # ----------------------------------------------- the policies it follows
    def threads_for_next_job(self) -> int:
        """TORCH_THREADS when set; with 0, one per usable core that other programs leave free."""
        return threads_for_next_job(self.settings.torch_threads)

    def choose_bf16(self, probe: PrecisionProbe) -> bool:
        """DTYPE=bfloat16 always, auto where the probe measured bf16 fast enough."""
        return choose_bf16(self.settings, probe)

    def attention_slicing_enabled(self) -> bool:
        """Slicing only when asked, or on auto where SDPA is missing (it is slower on CPU)."""
        return attention_slicing_enabled(self.settings.attention_slicing)
