"""One image from one validated request, on the model slot's pipeline, as numbered steps
(read `Generation.generate` as diffusers' `StableDiffusionPipeline.__call__` reads).

Worker thread only: the pipeline is not thread-safe.
"""
from __future__ import annotations

import inspect
import logging
import math
import statistics
import time
from dataclasses import replace

from catalog.embeddings import list_embeddings, used_embeddings
from catalog.loras import find_lora
from config import Settings
from engine.cpu import threads_for_next_job
from engine.decoders import decode_image
from engine.hires import (counting_both_passes, guidance_halves_in_turn, second_pass_prompts,
                          second_pass_request, upscaled_latents, vae_in_tiles)
from engine.images import encode_png
from engine.img2img import TENSOR_INPUTS, mode_arguments, paste_over_input, pipeline_view
from engine.slot import ModelSlot, release_freed_memory
from engine.resume import Checkpoint, FastForward, aligned_with_deep_cache, capture
from engine.speedups import DeepCache, cfg_cutoff_step, cut_guidance
from engine.status import CheckpointSink, GenerationResult, StepCallback
from errors import LoraError, UnsupportedRequest
from params import GenerationRequest
from params.infotext import write_infotext
from params.recipes import deep_cache_problem, lora_problem

log = logging.getLogger(__name__)


def user_step(pipeline_step: int, pipeline_steps: int, asked: int) -> int:
    """The step a user counts, from the pipeline's own count (PNDM runs `asked + 1` UNet
    calls; users asked for `asked` steps and must never see "step 5 of 9")."""
    if pipeline_steps <= asked:
        return pipeline_step
    return min(asked, math.ceil(pipeline_step * asked / pipeline_steps))


def seconds_per_step(started: float, step_times: list[float]) -> float:
    """Median step duration; the first step also pays for text encoding, so skip it if we can."""
    if not step_times:
        return 0.0
    marks = [started, *step_times]
    durations = [b - a for a, b in zip(marks, marks[1:])]
    return statistics.median(durations[1:] if len(durations) > 1 else durations)


class CheckpointPolicy:
    """When to keep a checkpoint: `every` of the user's steps after the last one (never after
    the last step), only while checkpoints have cost at most `max_cost` of the steps' own
    time, and only where DeepCache needs no cached features (else at the next step where it
    needs none); `sink` keeps the bytes."""

    def __init__(self, every: int, max_cost: float, sink: CheckpointSink, generator,
                 deep_cache: DeepCache):
        self.every, self.max_cost, self.sink = every, max_cost, sink
        self.generator, self.deep_cache = generator, deep_cache
        self.started = time.perf_counter()
        self.spent = 0.0  # seconds spent taking and keeping checkpoints
        self.last_step = 0

    def due(self, step_index: int, pipeline_steps: int, step: int) -> bool:
        """Whether the step just finished should be kept."""
        steps_seconds = time.perf_counter() - self.started - self.spent
        return (self.every > 0 and step - self.last_step >= self.every
                and step_index + 1 < pipeline_steps
                and self.spent <= self.max_cost * steps_seconds
                and aligned_with_deep_cache(self.deep_cache))

    def keep(self, pipeline, step_index: int, step: int, latents) -> None:
        """Take the checkpoint and hand it to the sink, counting what it cost."""
        began = time.perf_counter()
        checkpoint = capture(pipeline, step_index, step, latents, self.generator,
                             self.deep_cache)
        self.sink(checkpoint.to_bytes(), step)
        self.last_step = step
        self.spent += time.perf_counter() - began


def without_unused_eta(pipe, request: GenerationRequest) -> GenerationRequest:
    """The request without `eta` when its sampler's step takes none (Euler a, PNDM...), so the
    PNG does not claim one: diffusers passes eta only to a step that accepts it
    (`prepare_extra_step_kwargs`), A1111 clients send one with every request."""
    if request.eta is None or "eta" in inspect.signature(pipe.scheduler.step).parameters:
        return request
    return replace(request, eta=None)


class StepHooks:
    """diffusers' `callback_on_step_end` for one image; each method does one job.

    Heun/DPM2 run ~2 UNet calls per step and PNDM one extra: the hooks count in the
    pipeline's own calls, and tell `on_step` the user's steps. While a resumed run replays
    the steps before its checkpoint (`fast_forward`), only the CFG cutoff runs.
    """

    def __init__(self, request: GenerationRequest, on_step: StepCallback | None,
                 checkpoints: CheckpointPolicy | None = None,
                 fast_forward: FastForward | None = None):
        self.asked = request.denoising_steps
        self.cfg_cutoff = request.cfg_cutoff
        self.on_step = on_step
        self.checkpoints = checkpoints
        self.fast_forward = fast_forward
        self.step_times: list[float] = []  # when each step ended, for seconds_per_step

    def __call__(self, pipeline, step_index: int, _timestep, callback_kwargs: dict) -> dict:
        """Run after every pipeline step; returns the (maybe cut) tensors to go on with."""
        pipeline_steps = getattr(pipeline, "num_timesteps", None) or self.asked
        replaying = self.fast_forward is not None and not self.fast_forward.done
        if replaying and not self.fast_forward.restore_at(pipeline, step_index,
                                                          callback_kwargs):
            self.cut_guidance_at_cutoff(pipeline, step_index, pipeline_steps, callback_kwargs)
            return callback_kwargs  # a replayed step: its work is the checkpoint's
        if not replaying:
            self.record_time()
        self.cut_guidance_at_cutoff(pipeline, step_index, pipeline_steps, callback_kwargs)
        self.release_memory_after_last(step_index, pipeline_steps)
        if not replaying:
            self.keep_checkpoint(pipeline, step_index, pipeline_steps, callback_kwargs)
        self.report(step_index, pipeline_steps, callback_kwargs["latents"])
        return callback_kwargs

    def keep_checkpoint(self, pipeline, step_index: int, pipeline_steps: int,
                        callback_kwargs: dict) -> None:
        """Hand a checkpoint of this step to the job's keeper, when one is due."""
        if self.checkpoints is None:
            return
        step = user_step(step_index + 1, pipeline_steps, self.asked)
        if self.checkpoints.due(step_index, pipeline_steps, step):
            self.checkpoints.keep(pipeline, step_index, step, callback_kwargs["latents"])

    def record_time(self) -> None:
        """Note when this step ended."""
        self.step_times.append(time.perf_counter())

    def cut_guidance_at_cutoff(self, pipeline, step_index: int, pipeline_steps: int,
                               callback_kwargs: dict) -> None:
        """Stop classifier-free guidance once the request's CFG cutoff is reached."""
        if step_index == cfg_cutoff_step(self.cfg_cutoff, pipeline_steps):
            if pipeline.do_classifier_free_guidance:
                cut_guidance(pipeline, callback_kwargs)

    @staticmethod
    def release_memory_after_last(step_index: int, pipeline_steps: int) -> None:
        """After the last step, before the VAE decode (the peak of anonymous RAM), hand the
        steps' freed heap back to the OS."""
        if step_index + 1 == pipeline_steps:
            release_freed_memory()

    def report(self, step_index: int, pipeline_steps: int, latents) -> None:
        """Tell `on_step` the user's step, with its own copy of the latents (the pipeline
        reuses its tensor); `on_step` may raise to cancel."""
        if self.on_step is not None:
            self.on_step(user_step(step_index + 1, pipeline_steps, self.asked), self.asked,
                         latents.detach().clone())


class Generation:
    """Makes images on the slot's pipeline (worker thread only)."""

    def __init__(self, settings: Settings, slot: ModelSlot):
        self.settings = settings
        self.slot = slot

    def generate(self, request: GenerationRequest, seed: int,
                 on_step: StepCallback | None = None, resume_from: bytes | None = None,
                 on_checkpoint: CheckpointSink | None = None) -> GenerationResult:
        """Make one image; `on_step(step, total, latents)` runs after every step and may raise
        (`latents` is the receiver's own copy, to keep for a preview). `on_checkpoint(bytes,
        step)` receives checkpoints (CHECKPOINT_STEPS); `resume_from` one of them: the run then
        goes on from its step, and its image is byte-identical to an uninterrupted one.

        The mode follows the request: txt2img, img2img (`init_image`) or inpainting (and
        `mask_image`). `step`/`total` count the denoising steps the user asked for (steps x
        strength for img2img), whatever the scheduler does inside. The request's speed
        options (cfg_cutoff, deep_cache, vae_decoder) apply to this image only.
        """
        import torch

        # 1. resolve the request (switch model, as_run, what the UNet backend refuses)
        request = self.resolve(request)
        started = time.perf_counter()  # the thread check below is part of this image's time
        # 2. pick the pipeline view and threads
        pipe = self.pipeline_for(request.mode, request.scheduler)
        request = without_unused_eta(pipe, request)
        self.use_free_cores()
        generator = torch.Generator("cpu").manual_seed(seed)
        # 3. activate LoRAs and the embeddings the prompts write
        lora_hashes = self.activate_loras(request)
        prompts, ti_hashes = self.activate_embeddings(request)
        # 4. denoise (from a checkpoint, when resuming); with a hires fix, this is its first pass
        first = request if request.hires is None else replace(request, hires=None)
        deep_cache = DeepCache(pipe.unet, request.deep_cache)
        hooks = self.step_hooks(first, counting_both_passes(on_step, 0, request.denoising_steps),
                                resume_from, on_checkpoint, pipe, generator, deep_cache)
        try:
            latents = self.denoise(pipe, first, generator, hooks, deep_cache, prompts)
            if request.hires is not None:
                latents = self.hires_pass(pipe, request, latents, generator, on_step, prompts,
                                          hooks)
        finally:
            self.slot.loras.deactivate(self.slot.pipe)  # the next job starts from the bare model
        # 5. decode and paste
        decode_started = time.perf_counter()
        with vae_in_tiles(pipe.vae, self.hires_tiles(request)):
            image, nsfw = self.decode(pipe, request, latents, generator)
        timings = {"decode_seconds": time.perf_counter() - decode_started,
                   "seconds": time.perf_counter() - started,
                   "seconds_per_step": seconds_per_step(started, hooks.step_times)}
        # 6. infotext and PNG
        return self.png_result(request, seed, image, nsfw, lora_hashes, timings, ti_hashes)

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """The request as it will run: on its model (switched to first: the job waited its
        turn), with the full VAE where TAESD is missing; UnsupportedRequest when the UNet
        backend or the model's family cannot run it (validation refused it already for the
        model it expected; the served one may have changed since)."""
        if self.slot.pipe is None:
            raise RuntimeError("the model is not loaded")
        if request.model is not None:
            self.slot.switch(request.model)
        effective = request.as_run(tiny_decoder=self.slot.taesd is not None)
        if effective is not request:
            # Falling back beats failing a job after minutes of steps; the PNG says so.
            log.warning("vae_decoder 'tiny' asked for but TAESD is not loaded (TAESD_MODEL): "
                        "decoding with the full VAE")
        self.slot.backend.check_request(effective)
        if effective.deep_cache > 1 and self.slot.model is not None:
            problem = deep_cache_problem(self.slot.model.family, self.slot.model_name)
            if problem:
                raise UnsupportedRequest(problem)
        return effective

    def pipeline_for(self, mode: str, scheduler_name: str):
        """The shared pipeline, or a view of it for this job's mode and scheduler (the same
        modules, so no weight is copied, and the shared pipeline is never changed)."""
        return pipeline_view(self.slot.pipe, mode, scheduler_name,
                             self.slot.default_scheduler_config)

    def use_free_cores(self) -> None:
        """Run this image with one torch thread per core free now (or TORCH_THREADS)."""
        import torch

        threads = threads_for_next_job(self.settings.torch_threads)
        if threads != torch.get_num_threads():
            log.info("torch threads %d -> %d (cores free now)", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)
        self.slot.publish(torch_threads=threads)

    def activate_loras(self, request: GenerationRequest) -> dict[str, str]:
        """Make the request's LoRAs (and only those) active on the shared modules, and return
        their file hashes for the infotext; LoraError when one does not fit this model."""
        entries = [(find_lora(self.settings, name), te, unet)
                   for name, te, unet in request.loras]
        model = self.slot.model
        for entry, _te, _unet in entries if model is not None else ():
            problem = lora_problem(entry, model.family, self.slot.model_name)
            if problem:
                raise LoraError(problem)
        loras = self.slot.loras
        loras.activate(self.slot.pipe, [
            (entry, te if te == unet else {"unet": unet, "text_encoder": te})
            for entry, te, unet in entries])
        return {entry.name: loras.sha256(entry) for entry, _te, _unet in entries}

    def activate_embeddings(self, request: GenerationRequest) -> tuple[tuple[str, str | None],
                                                                       dict[str, str]]:
        """Load the embeddings the prompt or negative prompt writes (EMBEDDINGS_DIR); return
        (prompt, negative prompt) as the pipeline is to read them (each usable embedding's
        name replaced by its token) and their file hashes for the infotext. One that does not
        fit the model is skipped (logged): its name stays a plain word, as in A1111."""
        negative = request.negative_prompt or None
        used = used_embeddings(list_embeddings(self.settings), request.clip_prompt,
                               negative or "")
        if not used:
            return (request.clip_prompt, negative), {}
        embeddings = self.slot.embeddings
        family = self.slot.model.family if self.slot.model is not None else None
        skipped = embeddings.activate(self.slot.pipe, used, family)
        usable = [entry for entry in used if entry.name not in skipped]
        return ((embeddings.rewrite(request.clip_prompt, usable),
                 embeddings.rewrite(negative, usable)),
                {entry.name: embeddings.sha256(entry) for entry in usable})

    def step_hooks(self, request: GenerationRequest, on_step: StepCallback | None,
                   resume_from: bytes | None, on_checkpoint: CheckpointSink | None, pipe,
                   generator, deep_cache: DeepCache) -> StepHooks:
        """The step callback of this run: progress, and checkpoints kept or resumed from (a
        checkpoint that cannot be read is logged and the job starts over)."""
        policy = fast_forward = None
        if on_checkpoint is not None and self.settings.checkpoint_steps:
            policy = CheckpointPolicy(self.settings.checkpoint_steps,
                                      self.settings.checkpoint_max_cost, on_checkpoint,
                                      generator, deep_cache)
        if resume_from is not None:
            try:
                checkpoint = Checkpoint.from_bytes(resume_from)
            except ValueError as exc:
                log.warning("cannot resume from the checkpoint (%s): starting over", exc)
            else:
                fast_forward = FastForward(checkpoint, pipe.unet, generator, deep_cache)
        return StepHooks(request, on_step, policy, fast_forward)

    @staticmethod
    def denoise(pipe, request: GenerationRequest, generator, hooks: StepHooks,
                deep_cache: DeepCache, prompts: tuple[str, str | None] | None = None):
        """The denoised latents (DeepCache around the UNet when the request asks for it;
        a resumed run replays the steps before its checkpoint without the UNet); `prompts`
        is (prompt, negative prompt) as the text encoder reads them, embeddings' tokens in."""
        import contextlib

        import torch

        replay = hooks.fast_forward or contextlib.nullcontext()
        with torch.inference_mode(), deep_cache, replay:
            prompt, negative = prompts or (request.clip_prompt, request.negative_prompt or None)
            return pipe(prompt=prompt, negative_prompt=negative,
                        num_inference_steps=request.steps,
                        guidance_scale=request.guidance_scale, generator=generator,
                        output_type="latent", callback_on_step_end=hooks,
                        callback_on_step_end_tensor_inputs=TENSOR_INPUTS[request.mode],
                        **({} if request.eta is None else {"eta": request.eta}),
                        **mode_arguments(request)).images

    def hires_pass(self, pipe, request: GenerationRequest, latents, generator,
                   on_step: StepCallback | None, prompts: tuple[str, str | None],
                   first_hooks: StepHooks):
        """The hires fix after its first pass: upscale, then an img2img pass over the same
        modules (no checkpoints: a resumed job replays its first pass from one and runs this
        pass whole); its step times join `first_hooks`' for the image's pace."""
        second = second_pass_request(request, upscaled_latents(
            pipe, request, latents, generator, self.settings, self.hires_tiles(request)))
        view = self.pipeline_for(second.mode, second.scheduler)
        second = without_unused_eta(view, second)
        hooks = StepHooks(second, counting_both_passes(on_step, request.steps,
                                                       request.denoising_steps))
        deep_cache = DeepCache(view.unet, second.deep_cache)
        with guidance_halves_in_turn(view.unet, split=not deep_cache.active
                                     and self.settings.engine == "torch"):
            latents = self.denoise(view, second, generator, hooks, deep_cache,
                                   second_pass_prompts(request, prompts))
        first_hooks.step_times.extend(hooks.step_times)
        return latents

    def hires_tiles(self, request: GenerationRequest) -> bool:
        """Whether this job's VAE work at the hires size runs in tiles (HIRES_VAE_TILES)."""
        return request.hires is not None and self.settings.hires_vae_tiles == "on"

    def decode(self, pipe, request: GenerationRequest, latents, generator):
        """(image, nsfw): the latents as pixels, by the VAE or TAESD as asked, with the
        input's pixels pasted back outside an inpainting mask."""
        import torch

        taesd = self.slot.taesd if request.vae_decoder == "tiny" else None
        with torch.inference_mode():
            image, nsfw = decode_image(pipe, latents, taesd, generator)
        if not nsfw:  # a flagged image stays black, input pixels included
            image = paste_over_input(image, request)
        return image, nsfw

    def png_result(self, request: GenerationRequest, seed: int, image, nsfw: bool,
                   lora_hashes: dict[str, str], timings: dict[str, float],
                   ti_hashes: dict[str, str] | None = None) -> GenerationResult:
        """The PNG, its A1111 infotext embedded, and how it was made."""
        model = self.slot.model
        parameters = write_infotext(request, seed, self.slot.model_name,
                                    self.slot.default_sampler, lora_hashes, ti_hashes,
                                    model.sha256 if model is not None else None)
        return GenerationResult(png=encode_png(image, parameters), seed=seed, width=image.width,
                                height=image.height, steps=request.steps, nsfw=nsfw,
                                parameters=parameters,
                                **{name: round(value, 3) for name, value in timings.items()})
