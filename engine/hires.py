"""Hires fix between the passes: the first pass's latents upscaled (interpolated, or decoded,
upscaled as an image and encoded again), the second pass's request, and progress counted
across both passes.

The second pass is an img2img view of the loaded pipeline (engine.img2img.pipeline_view: the
same UNet, VAE and text encoder objects, no weight copied) started from those latents, as
A1111's `sample_hr_pass` does, its guidance halves through the UNet in turn (the UNet's
activations set the peak at that size). The VAE's work at the large size runs in its own
512 px tiles, each decoded in row bands (HIRES_VAE_TILES): one banded pass over a 1024 px
image still peaks at 2.3 GiB, the tiles near a 512 px decode's 1.0 GiB
(bench/hires-memory.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace


from config import Settings
from engine.decoders import decode_full
from engine.status import StepCallback
from engine.upscalers import upscale_image
from params import GenerationRequest
from params.hires import LATENT_UPSCALERS, hires_sizes, second_pass_schedule
from params.prompt import clip_prompt


def upscale_latents(latents, upscaler: str, size: tuple[int, int]):
    """Latents interpolated to `size` pixels (a latent is 8x8 of them) by one of A1111's
    latent modes (torch's mode and antialias; computed in float32, given back in the
    latents' own dtype)."""
    import torch.nn.functional as F

    mode, antialias = LATENT_UPSCALERS[upscaler]
    upscaled = F.interpolate(latents.float(), size=(size[1] // 8, size[0] // 8), mode=mode,
                             antialias=antialias)
    return upscaled.to(latents.dtype)


@contextmanager
def vae_in_tiles(vae, tiles: bool):
    """With `tiles`, the VAE decodes and encodes anything larger than its own sample size in
    diffusers' overlapping, blended tiles (its `use_tiling`, set for this block only: the
    worker thread is the VAE's only user), each tile decoded in row bands; else unchanged.

    Measured at 1024 px (bench/hires-memory.md): the decode's peak drops to about a 512 px
    one's, the encode's likewise; the price is ~2.7x the VAE's time (1.56x the pixels in
    overlapping tiles, and each tile's fixed cost) and pixels blended across the seams
    instead of one exact pass."""
    if not tiles or not hasattr(vae, "use_tiling"):
        yield
        return
    before = vae.use_tiling
    vae.use_tiling = True
    try:
        yield
    finally:
        vae.use_tiling = before


@contextmanager
def guidance_halves_in_turn(unet, split: bool = True):
    """While the second pass runs: a classifier-free-guidance batch (unconditional and
    conditional latents) goes through `unet` one half at a time, outputs joined again.

    At the hires size the UNet's activations set the image's peak. Measured on the full-size
    SD v1-4 UNet at 128x128 latents (1024 px), 2 threads, Intel Xeon (AMX, AVX512-BF16):
    +1314 MiB of RssAnon as one batch of 2 (46.3 s), +786 MiB one half at a time (45.7 s):
    at this size the halves are as fast, so the memory comes free. Not with `split` False
    (DeepCache counts calls per step; an OpenVINO UNet has shapes of its own)."""
    if not split:
        yield
        return
    import torch

    forward = unet.forward

    def in_turn(sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        batch = sample.shape[0]
        if batch < 2 or args:
            return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

        def item(value, i):
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
                return value[i:i + 1]
            if isinstance(value, dict):
                return {key: item(v, i) for key, v in value.items()}
            return value

        outputs = [forward(item(sample, i), item(timestep, i),
                           item(encoder_hidden_states, i),
                           **{key: item(v, i) for key, v in kwargs.items()})
                   for i in range(batch)]
        joined = torch.cat([out[0] for out in outputs])
        return (joined,) if isinstance(outputs[0], tuple) else type(outputs[0])(sample=joined)

    wrapped = unet.__dict__.get("forward")  # another wrapper's, else the class's is used
    unet.forward = in_turn
    try:
        yield
    finally:
        if wrapped is None:
            del unet.forward
        else:
            unet.forward = wrapped


def upscale_through_image(pipe, latents, upscaler: str, size: tuple[int, int], generator,
                          settings: Settings, tiles: bool = False):
    """Latents decoded by the VAE (at the first pass's size), upscaled as an image to `size`
    (the upscaler found in `settings`' MODELS_DIR), and encoded again as img2img encodes its
    input (a sample of the VAE's distribution, scaled to the UNet's latent space); encoded in
    tiles with `tiles`."""
    pixels = decode_full(pipe.vae, latents, generator)
    image = pipe.image_processor.postprocess(pixels, output_type="pil")[0]
    del pixels
    image = upscale_image(image, upscaler, size, settings)
    vae = pipe.vae
    tensor = pipe.image_processor.preprocess(image).to(vae.dtype)
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import \
        retrieve_latents  # a KL VAE's sample, or a tiny VAE's (SDXS) latents

    with vae_in_tiles(vae, tiles):
        encoded = retrieve_latents(vae.encode(tensor), generator)
    return (encoded * vae.config.scaling_factor).to(latents.dtype)


def crop_latents(latents, size: tuple[int, int]):
    """The centre `size` pixels of larger latents (A1111's truncate when hires width and
    height fill another aspect); the latents themselves when they fit already."""
    height, width = latents.shape[2], latents.shape[3]
    w, h = size[0] // 8, size[1] // 8
    top, left = (height - h) // 2, (width - w) // 2
    return latents[:, :, top:top + h, left:left + w].contiguous()


def upscaled_latents(pipe, request: GenerationRequest, latents, generator,
                     settings: Settings, tiles: bool = False):
    """The second pass's starting latents at the hires output size (an image upscaler's
    encode in VAE tiles with `tiles`)."""
    import torch

    hires = request.hires
    upscale, output = hires_sizes(request.width, request.height, hires)
    with torch.inference_mode():
        if hires.latent:
            start = upscale_latents(latents, hires.upscaler, upscale)
        else:
            start = upscale_through_image(pipe, latents, hires.upscaler, upscale, generator,
                                          settings, tiles)
        return crop_latents(start, output)


def second_pass_request(request: GenerationRequest, start) -> GenerationRequest:
    """The img2img request the second pass runs: `start` (latents) as its input, the hires
    fix's steps, strength, sampler and prompts; its denoising_steps are the pass's steps."""
    hires = request.hires
    length, _runs = second_pass_schedule(request.steps, hires)
    _upscale, (width, height) = hires_sizes(request.width, request.height, hires)
    return replace(request, hires=None, init_image=start, mask_image=None, steps=length,
                   strength=hires.denoising_strength, width=width, height=height,
                   scheduler=hires.scheduler or request.scheduler,
                   prompt=hires.prompt or request.prompt,
                   negative_prompt=hires.negative_prompt or request.negative_prompt)


def second_pass_prompts(request: GenerationRequest,
                        prompts: tuple[str, str | None]) -> tuple[str, str | None]:
    """(prompt, negative prompt) for the text encoder in the second pass: the first pass's
    (embeddings' tokens in) unless the hires fix has its own."""
    hires = request.hires
    return (clip_prompt(hires.prompt) if hires.prompt else prompts[0],
            hires.negative_prompt or prompts[1])


def counting_both_passes(on_step: StepCallback | None, before: int,
                         total: int) -> StepCallback | None:
    """`on_step` told "step n of N" across both passes: a pass's own step plus the `before`
    steps of the passes before it, of `total` in all."""
    if on_step is None:
        return None

    def report(step: int, _pass_total: int, latents) -> None:
        on_step(before + step, total, latents)

    return report
