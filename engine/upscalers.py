"""Upscaling an image to an exact size by any upscaler name a client may send: Pillow's
resamplers (Lanczos, Nearest, Bicubic, Bilinear) or an ESRGAN-family model file
(catalog.upscalers; the net is engine.rrdbnet's).

A model runs at its native scale, in tiles with an overlap (so a 4x of a 1024 px image holds
one tile's activations, not the whole picture's: see TILE), as many passes as the wanted size
needs, then Lanczos brings the result to the exact size. At most one model is kept loaded
(`unload_upscaler` drops it, e.g. before something else needs the memory); it is loaded on
first use. Callers run one at a time (the job worker, or jobs' engine turn): nothing here
locks. torch is imported only when a model runs, so Pillow upscales stay torch-free.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PIL import Image

from catalog.upscalers import NONE, PILLOW_UPSCALERS, UpscalerEntry, find_upscaler
from config import Settings
from engine.cpu import probe_precision
from errors import UnsupportedRequest

log = logging.getLogger(__name__)

RESAMPLERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST,
              "Bicubic": Image.Resampling.BICUBIC, "Bilinear": Image.Resampling.BILINEAR}
assert tuple(RESAMPLERS) == PILLOW_UPSCALERS
# Input pixels per tile side. A RealESRGAN_x4plus tile holds two 64-channel maps at 4x its
# padded size, 2 x (4 x 224)^2 x 64 x 4 B ~ 0.4 GiB in float32: a 4x of 512 or 1024 px peaks
# at ~0.8 GiB RssAnon in all (bench/upscaler.md); the picture's size no longer matters.
TILE = 192
# Input pixels each tile sees beyond its own edge, so the features near a tile's edge come
# from real neighbours, not padding (Real-ESRGAN's own tiling uses 10; the tests check tiled
# against whole pictures within one grey level).
TILE_OVERLAP = 16
# A1111 runs a model at most 3 times (64x with a 4x model); more would only blow up memory.
MAX_PASSES = 3


class UnknownUpscaler(UnsupportedRequest):
    """No upscaler has that name, or its file cannot be used; the message says which."""


class UpscaleTooBig(UnsupportedRequest):
    """The model ran out of memory on this picture; the message says to ask for less."""


_settings: Settings | None = None
_loaded: tuple[tuple[str, int, int], Any] | None = None  # (file identity, net): at most one
_bf16_measured: bool | None = None  # DTYPE=auto: the precision probe's answer, asked once


def configure(settings: Settings) -> None:
    """Where model upscalers are found (MODELS_DIR): the Engine calls this once."""
    global _settings
    _settings = settings


def unload_upscaler() -> bool:
    """Drop the loaded upscaler model (its memory goes back); False when none was."""
    global _loaded
    had, _loaded = _loaded is not None, None
    return had


def loaded_upscaler() -> str | None:
    """The file of the model kept loaded, or None."""
    return _loaded[0][0] if _loaded else None


def upscale_image(image: Image.Image, name: str, size: tuple[int, int],
                  settings: Settings | None = None) -> Image.Image:
    """`image` upscaled by the upscaler `name` to exactly `size` (width, height): a Pillow
    resampler, or a model file run at its native scale then resized with Lanczos.
    UnknownUpscaler (a 4xx) for a name we do not have or a file we cannot use. `settings`
    defaults to the Engine's (`configure`), else the environment's."""
    if name == NONE:
        return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)
    if name in RESAMPLERS:
        return image.resize(size, RESAMPLERS[name])
    settings = settings or _settings or Settings.from_env()
    entry = find_upscaler(settings, name)
    if entry is None:
        raise UnknownUpscaler(f"upscaler {name!r} is not available here; GET "
                              "/sdapi/v1/upscalers lists the ones we have")
    if entry.problem:
        raise UnknownUpscaler(f"upscaler {name!r} ({entry.relative}) cannot be used: "
                              f"{entry.problem}")
    net = _net(entry)
    try:
        return _upscale_with(net, image, size, use_bf16(settings))
    except (MemoryError, RuntimeError) as exc:
        # torch reports a failed allocation as RuntimeError("... can't allocate memory ...")
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise UpscaleTooBig(f"out of memory upscaling {image.width}x{image.height} to "
                            f"{size[0]}x{size[1]} with {name!r}: ask for a smaller size, or "
                            "close other programs") from None


def use_bf16(settings: Settings) -> bool:
    """Whether a model runs under bfloat16 autocast: DTYPE as for the SD model (bfloat16
    always, auto where the load-time probe measures bf16 faster on this CPU, float32 never).
    Measured on an AMX Xeon, RealESRGAN_x4plus runs 2.3x faster in bf16 (bench/upscaler.md);
    where the CPU has no bf16 kernels it would be many times slower, hence the probe."""
    global _bf16_measured
    if settings.dtype != "auto":
        return settings.dtype == "bfloat16"
    if _bf16_measured is None:
        import torch

        _bf16_measured = probe_precision(torch.get_num_threads()).bf16_faster
    return _bf16_measured


def _net(entry: UpscalerEntry) -> Any:
    """The entry's net: the loaded one when it is the same file, else loaded now (the
    previous one dropped first, so two are never held)."""
    global _loaded
    from engine.rrdbnet import load_rrdbnet

    stat = entry.path.stat()
    key = (str(entry.path), stat.st_size, stat.st_mtime_ns)
    if _loaded is not None and _loaded[0] == key:
        return _loaded[1]
    unload_upscaler()
    started = time.monotonic()
    try:
        net = load_rrdbnet(Path(entry.path))
    except ValueError as exc:
        raise UnknownUpscaler(f"upscaler {entry.name!r} ({entry.relative}) cannot be used: "
                              f"{exc}") from None
    _loaded = (key, net)
    spec = net.spec
    log.info("upscaler %s loaded: %s x%d, %d blocks, %d features (%.2f s)", entry.name,
             spec.layout, spec.scale, spec.num_block, spec.num_feat, time.monotonic() - started)
    return net


def _upscale_with(net: Any, image: Image.Image, size: tuple[int, int],
                  bf16: bool = False) -> Image.Image:
    """Passes of the net until the image covers `size`, then Lanczos to it exactly; an
    alpha channel is upscaled with Lanczos beside the colours."""
    started, passes = time.monotonic(), 0
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    rgb = image.convert("RGB")
    scale = net.spec.scale
    # As A1111: passes while either side is short of the target, at most MAX_PASSES.
    while passes < (1 if scale == 1 else MAX_PASSES) and (
            rgb.width < size[0] or rgb.height < size[1]):
        rgb = run_tiled(net, rgb, bf16=bf16)
        passes += 1
    out = rgb if rgb.size == tuple(size) else rgb.resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        out.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
    log.info("upscaled %dx%d -> %dx%d with x%d model, %d pass(es), %s, %.2f s", image.width,
             image.height, size[0], size[1], scale, passes, "bf16" if bf16 else "float32",
             time.monotonic() - started)
    return out


def run_tiled(net: Any, image: Image.Image, tile: int | None = None,
              overlap: int = TILE_OVERLAP, bf16: bool = False) -> Image.Image:
    """One pass of the net over an RGB image, `tile` input pixels at a time, each seeing
    `overlap` more on every side (under bfloat16 autocast with `bf16`); the output is
    written straight into a uint8 array."""
    import contextlib

    import numpy as np
    import torch

    spec = net.spec
    unit = spec.unshuffle  # tile edges and padding must be multiples of the unshuffle
    tile = TILE if tile is None else tile
    tile, overlap = max(unit, tile - tile % unit), overlap + (-overlap) % unit
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    height, width = pixels.shape[1:]
    pad_h, pad_w = (-height) % unit, (-width) % unit
    if pad_h or pad_w:  # Real-ESRGAN x2/x1 need sides divisible by the unshuffle
        pixels = torch.nn.functional.pad(pixels[None], (0, pad_w, 0, pad_h),
                                         mode="reflect" if min(height, width) > 1
                                         else "replicate")[0]
    full_h, full_w = pixels.shape[1:]
    s = spec.scale
    out = np.empty((full_h * s, full_w * s, 3), dtype=np.uint8)
    precision = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                 else contextlib.nullcontext())
    with torch.inference_mode(), precision:
        for top in range(0, full_h, tile):
            for left in range(0, full_w, tile):
                bottom, right = min(top + tile, full_h), min(left + tile, full_w)
                y0, x0 = max(0, top - overlap), max(0, left - overlap)
                y1, x1 = min(full_h, bottom + overlap), min(full_w, right + overlap)
                result = net(pixels[None, :, y0:y1, x0:x1])[0].float()
                crop = result[:, (top - y0) * s:(bottom - y0) * s,
                              (left - x0) * s:(right - x0) * s]
                out[top * s:bottom * s, left * s:right * s] = (
                    crop.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return Image.fromarray(out[:height * s, :width * s])

