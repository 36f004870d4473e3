"""ENGINE=openvino: the same diffusers pipeline, with its text encoder, UNet and decoders
(the model's VAE decoder, TAESD) run by OpenVINO.

Each part is exported once, to OpenVINO IR under OPENVINO_CACHE_DIR, keyed by the part's
model files (real path, size, mtime) and the openvino and torch versions, so a changed model
is never served stale; later starts read the IR (weights memory-mapped) and compile it
(engine.openvino_parts). The pipeline then calls stand-ins: `OpenVinoUNet` and
`OpenVinoTextEncoder`, torch modules with the real `config`, and a `decode` set on the VAE and
on TAESD (the VAE's encoder, for img2img and inpainting, stays torch). Schedulers, the step
callback (progress, cancel, CFG cutoff), seeds, live previews and the safety checker are
diffusers' own code and work unchanged; without classifier-free guidance (guidance <= 1, the
1-step models' default) diffusers calls the UNet at batch 1. What patches torch layers
(DeepCache, LoRAs, embeddings, clip skip) cannot, and is refused with a 400 naming the engine
(engine.unet_backend.OpenVinoBackend, which imports this module lazily). A LoRA used on every
request is baked into a model folder instead, which this engine runs like any model.

Shapes (measured, bench/openvino-pipeline-results.md): OpenVINO's CPU plugin repacks the
weights into each compiled model, and two compiled models share none of them, not even two of
the same ov.Model at the same static shape (+1.7 GiB each for SD 2.1's UNet in bf16). So with
OPENVINO_SHAPES=shared (the default) the UNet is compiled once with bounded dynamic batch and
size, and every size runs on that one copy; its first call at a size is slower (paid at load
for the default one). OPENVINO_SHAPES=static compiles one per size and batch and keeps the 2
most recent. The text encoder (one shape) and the decoders (small) are compiled statically.

The optional dependency: `pip install -r requirements-openvino.txt` (openvino only). Without
it, ENGINE=openvino fails at load with one line saying so. Imports torch at the top: import
this module lazily, where ENGINE=openvino is in use.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from catalog.files import remove_abandoned_partials
from config import Settings
from engine.openvino_parts import (IR_FILE, CompiledShapes, DecoderGraph, OpenVinoStandIn,
                                   OpenVinoTextEncoder, TextEncoderGraph, export_part,
                                   openvino_decode)
from engine.weights_cache import source_key
from errors import ModelLoadError, UnsupportedRequest
from system import meminfo, process_status

log = logging.getLogger(__name__)

MISSING_MESSAGE = ("ENGINE=openvino needs the openvino package, which is not installed: run "
                   "`pip install -r requirements-openvino.txt` or set ENGINE=torch")
# OPENVINO_SHAPES=static: compiled UNet shapes kept at once, each with its own copy of the
# weights (SD v1-4 f32: +3.3 GiB each; SD 2.1 bf16: +1.7 GiB).
COMPILED_SHAPES = 2
DECODER_SHAPES = 2  # a decoder's compiled sizes kept (small: TAESD 1 M, the VAE's 49 M weights)
MAX_BATCH = 4  # OPENVINO_SHAPES=shared: the UNet's batch bound (CFG doubles the images)
# The export traces a torch part (its weights memory-mapped) into an OpenVINO graph and writes
# it, then the load compiles it: measured on SD v1-4's UNet the peak RssAnon was about 1.5x its
# float32 weights on top of the rest of the pipeline.
EXPORT_RAM_FACTOR = 1.5
TEXT_TOKENS = 77  # CLIP's sequence length: the encoder_hidden_states the pipeline passes
EXPORT_FORMAT = 2  # part of the cache key: raise it when an export changes what it writes
PRECISIONS = {False: "f32", True: "bf16"}  # the engine's bf16 choice -> OpenVINO's hint

Progress = Callable[..., None]  # (phase, done, total), as engine.loading's


class OpenVinoUnavailable(ModelLoadError):
    """ENGINE=openvino without the openvino package installed."""


class NotEnoughForExport(ModelLoadError):
    """The one-off export would not fit in free disk or RAM; the message has the figures."""


def import_openvino():
    """The openvino module, or OpenVinoUnavailable saying what to install."""
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoUnavailable(MISSING_MESSAGE) from exc
    return openvino


class PipelineExport:
    """Exports the parts of one pipeline (each once) and reads them back to compile."""

    def __init__(self, ov, settings: Settings, bf16: bool, threads: int, progress: Progress):
        self.ov, self.settings, self.progress = ov, settings, progress
        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": PRECISIONS[bf16], "NUM_STREAMS": "1",
                       "INFERENCE_NUM_THREADS": str(threads)}
        self.export_seconds: dict[str, float] = {}

    def part(self, name: str, module: torch.nn.Module, graph: torch.nn.Module, example: tuple,
             keep: int, **options) -> CompiledShapes:
        """`graph` (built around `module`) exported if its IR is missing, read and ready."""
        key = source_key(module, f"openvino-{self.ov.get_version()}-{name}-{EXPORT_FORMAT}")
        folder = self.settings.path(self.settings.openvino_cache_dir) / f"{name}-{key}"
        if not (folder / IR_FILE).is_file():
            self.progress("exporting", 0, 0)
            weight_bytes = sum(p.numel() * 4 for p in module.parameters())
            folder.parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned_partials(folder.parent)
            check_room(folder.parent, weight_bytes)
            log.info("exporting the %s to OpenVINO IR once: %s (%.2f GB)", name, folder,
                     weight_bytes / 1e9)
            started = time.perf_counter()
            export_part(self.ov, graph, example, folder)
            self.export_seconds[name] = round(time.perf_counter() - started, 1)
        self.progress("compiling", 0, 0)
        return CompiledShapes(self.core, folder, name, self.config, keep, **options)


def use_openvino_pipeline(pipe, taesd, settings: Settings, bf16: bool, threads: int,
                          progress: Progress, defaults: dict[str, Any]) -> list[str]:
    """Run `pipe`'s text encoder, UNet and VAE decoder (and `taesd`'s decoder) in OpenVINO,
    exported first where needed; the default shapes (`defaults`: the model card's size and
    guidance) are compiled now. What was applied, for /health's optimizations."""
    ov = import_openvino()
    export = PipelineExport(ov, settings, bf16, threads, progress)
    unet = pipe.unet
    c = unet.config
    # Odd latent sizes on purpose: the trace then takes the UNet's branch that upsamples to
    # each skip connection's size, which fits every size (traced at even sizes, the IR would
    # only take sizes that halve evenly at every level: a multiple of 64 px).
    example = (torch.randn(2, c.in_channels, c.sample_size + 1, c.sample_size - 1),
               torch.tensor([999.0, 999.0]), torch.randn(2, TEXT_TOKENS, c.cross_attention_dim))
    shared = settings.openvino_shapes == "shared"
    bounds = unet_bounds(c, settings) if shared else None
    unet_part = export.part("unet", unet, _TraceableUNet(unet), example,
                            1 if shared else COMPILED_SHAPES, bounds=bounds)
    pipe.unet = OpenVinoUNet(unet_part, c)
    del unet  # its weights were only memory-mapped
    text = pipe.text_encoder
    text_part = export.part("text-encoder", text, TextEncoderGraph(text),
                            (torch.zeros(1, TEXT_TOKENS, dtype=torch.int64),), 1)
    pipe.text_encoder = OpenVinoTextEncoder(text_part, text.config)
    del text
    decoders = {"vae": use_openvino_decoder(export, pipe.vae, "vae-decoder", settings)}
    if taesd is not None:  # shared by every model: exported and set once
        decoders["taesd"] = use_openvino_decoder(export, taesd, "taesd-decoder", settings)
    pipe.openvino_parts = {"unet": unet_part, "text_encoder": text_part, **decoders}
    pipe.openvino_export_seconds = export.export_seconds
    latent_w, latent_h = (defaults.get(k, settings.default_size) // 8 for k in ("width", "height"))
    batch = 2 if defaults.get("guidance_scale", settings.default_guidance) > 1 else 1
    started = time.perf_counter()
    pipe.unet.warm((batch, latent_h, latent_w, TEXT_TOKENS))
    text_part.compiled_for(((1, TEXT_TOKENS),))
    for part in decoders.values():
        part.compiled_for(((1, c.in_channels, latent_h, latent_w),))
    ready = round(time.perf_counter() - started, 1)
    shapes = "one compiled model for every size" if shared else "static shapes"
    return [f"openvino (text encoder, unet, vae decoder{', taesd' if taesd else ''}; "
            f"{unet_part.precision}; unet: {shapes}; default shapes ready in {ready} s)"]


def use_openvino_decoder(export: PipelineExport, vae, name: str,
                         settings: Settings) -> CompiledShapes:
    """Set `vae.decode` to its OpenVINO-compiled decoder (once per VAE instance)."""
    done = getattr(vae.__dict__.get("decode"), "openvino_part", None)
    if done is not None:
        return done
    latent = settings.default_size // 8
    part = export.part(name, vae, DecoderGraph(vae),
                       (torch.randn(1, vae.config.latent_channels, latent, latent),),
                       DECODER_SHAPES, per_call_request=True)
    vae.decode = openvino_decode(part)
    return part


def unet_bounds(config, settings: Settings) -> list:
    """OPENVINO_SHAPES=shared: the UNet's inputs as bounded ranges (batch 1..MAX_BATCH, every
    size MIN_SIZE..MAX_SIZE allows, and up to MAX_HIRES_SIZE for a hires fix's second pass),
    for its one compiled model."""
    import openvino as ov

    lo, hi = settings.min_size // 8, max(settings.max_size, settings.max_hires_size) // 8
    batch = ov.Dimension(1, MAX_BATCH)
    return [ov.PartialShape([batch, config.in_channels, ov.Dimension(lo, hi),
                             ov.Dimension(lo, hi)]),
            ov.PartialShape([batch]),
            ov.PartialShape([batch, ov.Dimension(1, 4 * TEXT_TOKENS),
                             config.cross_attention_dim])]


def export_unet(ov, unet, folder: Path) -> None:
    """Trace `unet` and write it as OpenVINO IR (float32 weights) into `folder` as unet.xml
    (bench/openvino_shapes_probe.py's export: the engine's own graph)."""
    c = unet.config
    example = (torch.randn(2, c.in_channels, c.sample_size + 1, c.sample_size - 1),
               torch.tensor([999.0, 999.0]), torch.randn(2, TEXT_TOKENS, c.cross_attention_dim))
    export_part(ov, _TraceableUNet(unet), example, folder)
    (folder / IR_FILE).rename(folder / "unet.xml")
    (folder / IR_FILE).with_suffix(".bin").rename(folder / "unet.bin")


def check_room(cache_dir: Path, weight_bytes: int) -> None:
    """NotEnoughForExport, with the figures, when the export would not fit."""
    free = shutil.disk_usage(cache_dir).free
    if free < weight_bytes * 1.05:
        raise NotEnoughForExport(
            f"exporting for ENGINE=openvino needs {weight_bytes / 1e9:.1f} GB in "
            f"{cache_dir}, {free / 1e9:.1f} GB free: free some space, set OPENVINO_CACHE_DIR "
            "to a disk that has it, or use ENGINE=torch")
    available = available_ram()
    needed = weight_bytes * EXPORT_RAM_FACTOR
    if available is not None and available < needed:
        raise NotEnoughForExport(
            f"exporting for ENGINE=openvino needs about {needed / 2**30:.1f} GiB of "
            f"free RAM, {available / 2**30:.1f} GiB available: close other programs or use "
            "ENGINE=torch")


def available_ram() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        return meminfo().get("MemAvailable")
    except OSError:
        return None


class _TraceableUNet(torch.nn.Module):
    """The UNet with positional tensors in and one tensor out, as convert_model traces it."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        """One UNet call."""
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class OpenVinoUNet(OpenVinoStandIn):
    """Stands in for the pipeline's UNet: same `config`, forward runs the compiled model."""

    def warm(self, shape: tuple[int, int, int, int]) -> None:
        """Compile for (batch, latent height, latent width, tokens) and run it once (a shared
        model's first call at a size is its slow one): the first request's step is quick."""
        batch, height, width, tokens = shape
        c = self.config
        self.part.infer(torch.zeros(batch, c.in_channels, height, width),
                        torch.full((batch,), 999.0),
                        torch.zeros(batch, tokens, c.cross_attention_dim))

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None,
                cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=True,
                **unused):
        """One UNet call through OpenVINO; the same outputs as UNet2DConditionModel's."""
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        if timestep_cond is not None:
            raise UnsupportedRequest("this model needs timestep_cond (an LCM-distilled UNet), "
                                     "which ENGINE=openvino's export leaves out; use "
                                     "ENGINE=torch")
        batch = sample.shape[0]
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch)
        result = self.part.infer(sample, steps, encoder_hidden_states).to(sample.dtype)
        return UNet2DConditionOutput(sample=result) if return_dict else (result,)


def engine_report(pipe) -> dict[str, Any]:
    """For /health: each part's device, precision and compile times, the export times and
    this process's memory."""
    parts = getattr(pipe, "openvino_parts", {})
    unet = parts.get("unet")
    report = {name: part.report() for name, part in parts.items()}
    report["vae_encoder"] = {"device": "torch CPU", "precision": "float32"}
    return {"name": "openvino", "precision": unet.precision if unet else "",
            "precision_hint": unet.config["INFERENCE_PRECISION_HINT"] if unet else "",
            "threads": int(unet.config["INFERENCE_NUM_THREADS"]) if unet else 0,
            "compile_seconds": dict(unet.compile_seconds) if unet else {},
            "parts": report, "export_seconds": getattr(pipe, "openvino_export_seconds", {}),
            "memory": process_memory()}


def process_memory() -> dict[str, float]:
    """This process's resident and anonymous memory in GiB (Linux), else {}."""
    try:
        status = process_status()
    except OSError:
        return {}
    return {f"{name.lower()}_gib": round(status[name] / 2**30, 2)
            for name in ("VmRSS", "RssAnon") if name in status}
