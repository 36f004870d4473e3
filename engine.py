"""The engine: the only module that imports torch and diffusers.

It loads the Stable Diffusion pipeline once (memory-mapped safetensors, CPU), turns one
validated `GenerationRequest` into a PNG, reports every step to a caller's callback (which
may raise to stop the run), renders cheap latent previews, and builds random-weight
pipelines (a tiny one for tests and trying the server, the full-size SD v1-4 architecture
for benchmarks).

torch is imported lazily (on first load or generation), so the HTTP server can be listening
within a second while the heavy libraries load in the worker thread.
"""
from __future__ import annotations

import ctypes
import io
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from config import TINY_MODEL_ID, Settings
from params import SAMPLER_OF_CLASS, SCHEDULERS, GenerationRequest

log = logging.getLogger(__name__)

# A1111's "Approx cheap" latent -> RGB map for SD 1.x latents (4 channels -> 3 colours):
# a fixed linear map, so a preview costs microseconds and needs no VAE decode.
LATENT_RGB_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173),
                      (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
PREVIEW_SCALE = 4  # preview pixels per latent pixel (a 512x512 image previews at 256x256)

StepCallback = Callable[[int, int, Any], None]  # (step, total, latents tensor)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do about it."""


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


@dataclass
class EngineStatus:
    """What /health reports about the model."""

    state: str = "loading"  # loading | ready | failed
    error: str = ""
    load_seconds: float | None = None
    dtype: str = ""
    optimizations: list[str] = field(default_factory=list)
    torch_threads: int = 0


def cpu_has_amx_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has AMX bf16 tiles, the only place bf16 is expected to beat fp32.

    bench/results.md: on AVX512-BF16 without AMX, bf16 matmul reaches about half of fp32's
    rate and a UNet step is slower in bf16, so DTYPE=auto keeps float32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "amx_bf16" in cpuinfo.split()


# How long the engine watches the CPU before a job to see which cores other programs use.
IDLE_SAMPLE_SECONDS = 0.2


def idle_cores(sample_seconds: float = IDLE_SAMPLE_SECONDS,
               read_stat: Callable[[], str] | None = None,
               cpus: set[int] | None = None) -> float | None:
    """How many of this process's cores sat idle over a short sample (from /proc/stat's
    per-CPU lines, only the CPUs in `cpus`, default our affinity); None if unknown."""
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return None

    def read() -> str:
        return read_stat() if read_stat else Path("/proc/stat").read_text()

    def totals(text: str) -> dict[int, tuple[int, int]]:
        out = {}
        for line in text.splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                fields = [int(v) for v in values[:8]]  # user..steal; guest is inside user
                out[int(name[3:])] = (sum(fields), fields[3] + fields[4])  # idle + iowait
        return out

    try:
        before = totals(read())
        time.sleep(sample_seconds)
        after = totals(read())
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for cpu, (total, idle_after) in after.items():
        if cpu not in before or total <= before[cpu][0]:
            continue
        idle += max(0, idle_after - before[cpu][1]) / (total - before[cpu][0])
    return idle if after else None


def adaptive_threads(usable: int, idle: float | None) -> int:
    """One torch thread per core that is free right now (all usable cores if unknown).

    OpenMP threads spin and wait for each other at every op: a thread sharing its core with
    another program stalls the rest, so on a busy laptop fewer threads run faster.
    """
    if idle is None:
        return usable
    # A core counts while at least 25 % of it is free. Measured (bench/results.md): dropping
    # a thread wins only ~7 % when the other core is fully busy, while one thread too few
    # costs up to 1.7x on an idle core, so the rule leans towards more threads.
    return max(1, min(usable, math.floor(idle + 0.75)))


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Engine:
    """Owns the diffusers pipeline; not thread-safe, so only the job worker calls it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.status = EngineStatus()
        self.pipe = None
        self._default_scheduler_config = None

    # ----------------------------------------------------------------- loading
    def load(self) -> None:
        """Load the pipeline; on failure set status 'failed' with advice, never raise."""
        started = time.perf_counter()
        try:
            self._load()
        except Exception as exc:  # any failure must leave the server up and explain itself
            # The message first: /health must never see "failed" without its reason.
            self.status.error = explain_load_error(self.settings, exc)
            self.status.state = "failed"
            log.error("model load failed: %s", self.status.error)
            return
        self.status.load_seconds = round(time.perf_counter() - started, 2)
        self.status.state = "ready"
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
        self.status.torch_threads = threads
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
        low_memory_vae_decode(pipe.vae)
        vae_decode_in_row_bands(pipe.vae)
        optimizations = ["mmap-safetensors" if dtype == torch.float32 else
                         "safetensors (cast to bf16 on load)", "inference-mode",
                         "low-memory-vae-decode", "vae-decode-in-row-bands",
                         f"torch-threads={threads}" if s.torch_threads else
                         "torch-threads=adaptive (one per free core, chosen per image)"]
        if self.attention_slicing_enabled():
            pipe.enable_attention_slicing()
            optimizations.insert(0, "attention-slicing")
        else:
            optimizations.insert(0, "sdpa-attention")
        if dtype == torch.bfloat16:
            optimizations.insert(0, "bfloat16")
        self.pipe = pipe
        self._default_scheduler_config = dict(pipe.scheduler.config)
        self.status.dtype = str(dtype).replace("torch.", "")
        self.status.optimizations = optimizations

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
        """Make one image; `on_step(step, total, latents)` runs after every step and may raise."""
        import torch

        if self.pipe is None:
            raise RuntimeError("the model is not loaded")
        started = time.perf_counter()  # the thread check below is part of this image's time
        pipe = self._pipeline_for(request.scheduler)
        threads = self.threads_for_next_job()
        if threads != torch.get_num_threads():
            log.info("torch threads %d -> %d (cores free now)", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)
        self.status.torch_threads = threads
        generator = torch.Generator("cpu").manual_seed(seed)
        step_times: list[float] = []

        def callback(pipeline, step_index, _timestep, callback_kwargs):
            step_times.append(time.perf_counter())
            if step_index + 1 == getattr(pipeline, "num_timesteps", None):
                release_freed_memory()  # before the VAE decode, the peak of anonymous RAM
            if on_step is not None:
                # Some schedulers run one more UNet step than asked (PNDM: steps + 1), so
                # report the pipeline's own count.
                total = getattr(pipeline, "num_timesteps", None) or request.steps
                on_step(step_index + 1, total, callback_kwargs["latents"])
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
        """A small PNG of the current latents through the fixed 4x3 linear map."""
        import torch

        factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32)
        lat = latents[0].detach().to(torch.float32)  # (4, h, w)
        rgb = torch.einsum("chw,cr->hwr", lat, factors)
        rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        image = Image.fromarray(rgb, "RGB")
        image = image.resize((image.width * PREVIEW_SCALE, image.height * PREVIEW_SCALE),
                             Image.Resampling.BILINEAR)
        return encode_png(image)

    def info(self) -> dict[str, Any]:
        """Model facts for /health and the compatibility APIs."""
        st = self.status
        return {"model": self.settings.model_id, "device": "cpu", "dtype": st.dtype,
                "optimizations": list(st.optimizations), "torch_threads": st.torch_threads,
                "load_seconds": st.load_seconds}


def low_memory_vae_decode(vae) -> None:
    """Make the VAE's SiLUs in-place: same pixels, one activation-sized tensor less at a time.

    The VAE decode is where anonymous memory peaks (~1 GB of activations at 512x512); each
    SiLU there follows a GroupNorm whose fresh output nothing else reads, so overwriting it
    is safe (inference only: the engine never trains). bench/results.md has the effect.
    """
    import torch

    for module in list(vae.modules()):
        for name, child in module.named_children():
            if type(child) is torch.nn.SiLU:
                setattr(module, name, torch.nn.SiLU(inplace=True))


# Rows per band are chosen so one band of one activation is about this big: small next to
# the 128-256 MiB full-resolution tensors it replaces, big enough that oneDNN convolutions
# keep their speed (bench/results.md has the measurements).
VAE_BAND_BYTES = 8 * 2**20


def vae_decode_in_row_bands(vae) -> None:
    """Run the VAE decoder's up-blocks and output layers band by band (less RAM; same pixels
    at 512x512 and 256x256, elsewhere within ~4e-6, i.e. at most 1/255 on a pixel).

    At 512x512 the decoder's full-resolution stages (an upsampled 512x512x256 tensor is
    256 MiB) made the whole generation peak at ~1.4-1.6 GiB of anonymous memory, mostly
    GroupNorm outputs and oneDNN's full-size copies. Here every GroupNorm -> SiLU -> 3x3 conv
    and every nearest-2x upsample -> conv runs on horizontal bands of rows with a one-row halo,
    writing into one preallocated output: a 3x3 conv's output rows depend only on the input
    rows next to them, and GroupNorm takes its per-group mean/rstd first from the whole
    tensor through torch's own kernel, so every value is computed exactly as diffusers
    computes it (the tests check the pixels). The second conv of a ResNet block writes over
    its own input (keeping the one row above each band), so a block holds its input and one
    output-sized tensor. Blocks that do not have the plain SD VAE shape keep diffusers' code.
    """
    import torch
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    decoder = vae.decoder
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            if type(resnet) is ResnetBlock2D and _plain_resnet(resnet):
                resnet.forward = _BandedResnet(resnet)
        for upsampler in block.upsamplers or []:
            if type(upsampler) is Upsample2D and _plain_upsampler(upsampler):
                upsampler.forward = _BandedUpsample(upsampler)
    if type(decoder.conv_norm_out) is torch.nn.GroupNorm and _plain_conv(decoder.conv_out):
        decoder.forward = _BandedDecoderForward(decoder)


def _plain_conv(conv, size: int = 3) -> bool:
    """A stride-1 `size`x`size` conv whose padding keeps the size: the bands carry a one-row
    halo, enough for 3x3 (and 1x1, used only for shortcuts)."""
    import torch

    k = conv.kernel_size
    return (type(conv) is torch.nn.Conv2d and k == (size, size)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding == (k[0] // 2, k[1] // 2) and conv.padding_mode == "zeros")


def _plain_resnet(r) -> bool:
    """A ResnetBlock2D as in the SD VAE: no time embedding, no resampling, GroupNorms."""
    import torch

    return (r.time_emb_proj is None and r.upsample is None and r.downsample is None
            and type(r.norm1) is torch.nn.GroupNorm and type(r.norm2) is torch.nn.GroupNorm
            and _plain_conv(r.conv1) and _plain_conv(r.conv2)
            and (r.conv_shortcut is None or _plain_conv(r.conv_shortcut, 1))
            and r.time_embedding_norm != "scale_shift")  # without temb: norm2 only


def _plain_upsampler(u) -> bool:
    """An Upsample2D doing nearest 2x interpolation then a plain conv."""
    return (u.interpolate and u.use_conv and not u.use_conv_transpose and u.norm is None
            and u.name == "conv" and _plain_conv(u.conv))


def _exact_banding_applies(x) -> bool:
    """Inference on contiguous float32: where the banded result was checked to be exact."""
    import torch

    return x.dtype == torch.float32 and x.is_contiguous() and not torch.is_grad_enabled()


def _row_bands(x, height: int, step: int = 1):
    """(start, end) row ranges covering `height` rows of x's width and channels, `step`-aligned."""
    row_bytes = x.shape[0] * x.shape[1] * x.shape[3] * x.element_size()
    rows = max(step, VAE_BAND_BYTES // max(row_bytes, 1) // step * step)
    return [(a, min(a + rows, height)) for a in range(0, height, rows)]


def _norm_coefficients(norm, x):
    """Per-channel (scale, shift) so that norm(x) == x * scale + shift, bit for bit.

    mean/rstd come from torch's own GroupNorm kernel run on one group at a time (its
    throw-away output is one group's size), then scale/shift are formed as that kernel does
    (fused multiply-adds), so the banded result equals `norm(x)` exactly.
    """
    import torch

    n, c = x.shape[:2]
    g = norm.num_groups
    rows = x.reshape(n * g, -1)  # a view: x is contiguous NCHW, each group's values adjacent
    stats = [torch.native_group_norm(rows[i].view(1, 1, -1), None, None, 1, 1, rows.shape[1],
                                     1, norm.eps)[1:] for i in range(n * g)]
    mean = torch.cat([m.view(1) for m, _ in stats]).view(n, g, 1)
    rstd = torch.cat([r.view(1) for _, r in stats]).view(n, g, 1)
    scale = rstd * norm.weight.view(1, g, -1)
    shift = torch.addcmul(norm.bias.view(1, g, -1), -scale, mean)
    return scale.reshape(n, c, 1, 1), shift.reshape(n, c, 1, 1)


def _conv_band(conv, rows, a: int, b: int, lo: int, hi: int):
    """conv's output rows [a, b) from `rows`, the conv input's rows [lo, hi) (zeros beyond)."""
    import torch.nn.functional as F

    pad = conv.padding[0]
    if lo > a - pad or hi < b + pad:  # the image's top/bottom edge: the conv's zero padding
        rows = F.pad(rows, (0, 0, lo - (a - pad), (b + pad) - hi))
    return F.conv2d(rows, conv.weight, conv.bias, padding=(0, conv.padding[1]))


class _BandedResnet:
    """ResnetBlock2D.forward (no time embedding) computed in row bands; see vae_decode_in_row_bands."""

    def __init__(self, resnet):
        self.r = resnet
        self.original = resnet.forward

    def __call__(self, input_tensor, temb=None, *args, **kwargs):
        import torch

        r = self.r
        x = input_tensor
        if temb is not None or args or kwargs or not _exact_banding_applies(x):
            return self.original(input_tensor, temb, *args, **kwargs)
        n, _, height, width = x.shape
        act = r.nonlinearity
        h = x.new_empty(n, r.conv1.out_channels, height, width)
        scale, shift = _norm_coefficients(r.norm1, x)
        for a, b in _row_bands(x, height):
            lo, hi = max(a - 1, 0), min(b + 1, height)
            h[:, :, a:b] = _conv_band(r.conv1, act(torch.addcmul(shift, x[:, :, lo:hi], scale)),
                                      a, b, lo, hi)
        scale, shift = _norm_coefficients(r.norm2, h)
        above = None  # h's last row of the previous band, as it was before being overwritten
        for a, b in _row_bands(h, height):
            hi = min(b + 1, height)
            raw = h[:, :, a:hi] if above is None else torch.cat([above, h[:, :, a:hi]], dim=2)
            hidden = _conv_band(r.conv2, act(torch.addcmul(shift, raw, scale)), a, b,
                                max(a - 1, 0), hi)
            above = h[:, :, b - 1:b].clone()
            shortcut = x[:, :, a:b]
            if r.conv_shortcut is not None:
                shortcut = _conv_band(r.conv_shortcut, shortcut, a, b, a, b)
            h[:, :, a:b] = (shortcut + hidden) / r.output_scale_factor
        return h


class _BandedUpsample:
    """Upsample2D.forward (nearest 2x, then conv) computed in row bands of its output."""

    def __init__(self, upsampler):
        self.u = upsampler
        self.original = upsampler.forward

    def __call__(self, hidden_states, output_size=None, *args, **kwargs):
        import torch
        import torch.nn.functional as F

        x = hidden_states
        if output_size is not None or args or kwargs or not _exact_banding_applies(x):
            return self.original(hidden_states, output_size, *args, **kwargs)
        conv = self.u.conv
        n, _, height, width = x.shape
        out = x.new_empty(n, conv.out_channels, 2 * height, 2 * width)
        for a, b in _row_bands(out, 2 * height, step=2):
            lo, hi = max(a - 1, 0), min(b + 1, 2 * height)  # upsampled rows the conv reads
            up = F.interpolate(x[:, :, lo // 2:(hi + 1) // 2], scale_factor=2.0, mode="nearest")
            up = up[:, :, lo - lo // 2 * 2:][:, :, :hi - lo]
            out[:, :, a:b] = _conv_band(conv, up, a, b, lo, hi)
        return out


class _BandedDecoderForward:
    """Decoder.forward with its up-blocks unrolled and GroupNorm -> SiLU -> conv_out in bands."""

    def __init__(self, decoder):
        self.d = decoder
        self.original = decoder.forward

    def __call__(self, sample, latent_embeds=None):
        import torch
        from diffusers.models.resnet import ResnetBlock2D
        from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D

        d = self.d
        if latent_embeds is not None or not _exact_banding_applies(sample):
            return self.original(sample, latent_embeds)
        sample = d.conv_in(sample)
        sample = d.mid_block(sample, latent_embeds)
        for up_block in d.up_blocks:
            if type(up_block) is not UpDecoderBlock2D:
                sample = up_block(sample, latent_embeds)
                continue
            # UpDecoderBlock2D.forward, unrolled: called as a module, a block keeps its input
            # (a full-resolution tensor) alive until it returns; here each layer's input is
            # freed as soon as the next layer has its output.
            for layer in [*up_block.resnets, *(up_block.upsamplers or [])]:
                sample = layer(sample, None) if isinstance(layer, ResnetBlock2D) else layer(sample)
        if not sample.is_contiguous():
            sample = sample.contiguous()
        n, _, height, width = sample.shape
        out = sample.new_empty(n, d.conv_out.out_channels, height, width)
        scale, shift = _norm_coefficients(d.conv_norm_out, sample)
        for a, b in _row_bands(sample, height):
            lo, hi = max(a - 1, 0), min(b + 1, height)
            rows = d.conv_act(torch.addcmul(shift, sample[:, :, lo:hi], scale))
            out[:, :, a:b] = _conv_band(d.conv_out, rows, a, b, lo, hi)
        return out


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


def encode_png(image: Image.Image, parameters: str = "") -> bytes:
    """PNG bytes, with A1111's `parameters` text chunk when given (deterministic output)."""
    info = None
    if parameters:
        info = PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and every cause/context behind it (the Hub's errors hide in there)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def explain_load_error(settings: Settings, exc: Exception) -> str:
    """Turn a loading exception into one line that says what went wrong and what to do."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    model = settings.model_id
    chain = _exception_chain(exc)
    names = {type(e).__name__ for e in chain}
    lowered = " ".join(str(e) for e in chain).lower()
    if isinstance(exc, ModelLoadError):
        return str(exc)
    if "GatedRepoError" in names or "gated" in lowered:
        return (f"model {model!r} is gated: accept its licence on the Hub, then set HF_TOKEN "
                f"to a token of that account. ({text[:300]})")
    if "RepositoryNotFoundError" in names:
        return (f"model {model!r} does not exist on the Hub, or is private (then set "
                f"HF_TOKEN): check MODEL_ID. ({text[:300]})")
    offline = {"LocalEntryNotFoundError", "ConnectError", "ConnectionError", "ConnectTimeout",
               "gaierror", "OfflineModeIsEnabled"}
    if names & offline or any(k in lowered for k in (
            "not fully cached", "cached locally", "outgoing traffic", "offline", "connect",
            "not a valid model identifier", "cannot find the requested files",
            "does not appear to have", "not a valid local path")):
        return (f"model {model!r} is not in the local Hugging Face cache and the Hub could not "
                "be reached: download it once with network access (e.g. `hf download "
                f"{model}`), or set MODEL_ID to a local diffusers folder, or MODEL_ID=tiny-random "
                f"to try the server. ({text[:300]})")
    if "safetensors" in lowered:
        return (f"model {model!r} has no .safetensors weights; convert it or pick a revision "
                f"that has them. ({text[:300]})")
    if isinstance(exc, MemoryError):
        return "out of memory while loading the model: close other programs or use DTYPE=bfloat16"
    return f"could not load model {model!r}: {text[:500]}"


# --------------------------------------------------------------- random-weight models
def _byte_characters() -> list[str]:
    """GPT-2/CLIP's printable stand-in character for each of the 256 byte values."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _byte_tokenizer_vocab() -> dict[str, int]:
    """A CLIP BPE vocab with one token per byte-character (plus word ends): any text tokenizes."""
    chars = _byte_characters()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    return vocab


ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    # Small enough that a 64x64 image takes well under a second on one core; attention
    # only at the lower resolution, so a 512x512 image stays cheap too.
    "tiny": {
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                     block_out_channels=(32, 64), norm_num_groups=8,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                     cross_attention_dim=32, attention_head_dim=4),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                    block_out_channels=(16, 16, 16, 16), norm_num_groups=8, sample_size=64,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4),
        "text": dict(vocab_size=1000, hidden_size=32, intermediate_size=37,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                     projection_dim=32, hidden_act="quick_gelu"),
    },
    # Exactly CompVis/stable-diffusion-v1-4: compute and memory match the real model.
    "full": {
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                    block_out_channels=(128, 256, 512, 512), sample_size=512,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4),
        "text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                     projection_dim=768, hidden_act="quick_gelu"),
    },
}


def build_random_pipeline(folder: Path | str, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight SD pipeline (`tiny` or `full` v1-4 architecture) as a diffusers folder."""
    import torch

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    arch = ARCHITECTURES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**arch["unet"])
    vae = AutoencoderKL(**arch["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                                **arch["text"]))
    tokenizer = CLIPTokenizer(vocab=_byte_tokenizer_vocab(), merges=[], model_max_length=77)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    # Save beside the target and rename, so a half-written folder is never loaded.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    pipe.save_pretrained(tmp, safe_serialization=True)
    if folder.exists():  # another process built it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(folder)
    return folder
