"""ENGINE=openvino: the same diffusers pipeline, with its UNet run by OpenVINO.

The UNet is the only hot part (25+ calls per image against one text-encoder and one VAE
call), so only it is exported: once, to OpenVINO IR under OPENVINO_CACHE_DIR, keyed by the
model files (real path, size, mtime) and the openvino and torch versions, so a changed model
is never served stale. Later starts read the IR and compile it. The pipeline's UNet is then
replaced by `OpenVinoUNet`, a torch module with the UNet's `config` whose forward runs the
compiled model; schedulers, the step callback (progress, cancel, CFG cutoff), seeds, live
previews, img2img/inpainting (the VAE encoder stays torch), batches and the safety checker
are diffusers' own code and work unchanged. What patches the UNet's torch layers (DeepCache,
LoRAs) cannot, and is refused with a 400 naming the engine
(engine.unet_backend.OpenVinoBackend, which also imports this module lazily).

Shapes: each compiled model has static shapes. Measured (bench/openvino-engine-results.md,
SD v1-4 UNet, 512 px, batch 2, 2 threads, f32): dynamic compiles in 3 s but its first call
for a shape takes 21 s, static compiles in 11 s and its first call takes 12 s, then both run
alike (11-12 s a call on a busy machine); on the tiny model static calls ran 1.7x faster.
So the default size at CFG batch 2 is compiled at load (the server is ready with its first
step already prepared); another size or batch compiles on first use, and at most
COMPILED_SHAPES compiled shapes are kept (least recently used dropped first), which bounds
memory.

The optional dependency: `pip install -r requirements-openvino.txt` (openvino only, no
optimum-intel, whose pins clash with our transformers/diffusers). Without it, ENGINE=openvino
fails at load with one line saying so.

This module imports torch at the top (OpenVinoUNet is a torch module): import it lazily,
where ENGINE=openvino is in use, so the server still starts listening before torch loads.
"""
from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

from catalog.files import remove_abandoned_partials, staged
from config import Settings
from engine.weights_cache import source_key
from errors import ModelLoadError, UnsupportedRequest
from system import meminfo, process_status

log = logging.getLogger(__name__)

MISSING_MESSAGE = ("ENGINE=openvino needs the openvino package, which is not installed: run "
                   "`pip install -r requirements-openvino.txt` or set ENGINE=torch")
# Compiled static shapes kept at once. Each holds its own copy of the weights: measured on
# SD v1-4 (bench/openvino-engine-results.md), +3.3 GiB RssAnon per shape (3.7 GiB after the
# load, 7.0 with a second shape, 10.3 with a third). Two keep a 16 GB server comfortable and
# cover the default size plus one other (or the CFG cutoff's batch 1).
COMPILED_SHAPES = 2
# The export traces the torch UNet (its weights memory-mapped) into an OpenVINO graph and
# writes it, then the load compiles it: measured on SD v1-4 (bench/openvino-engine-results.md)
# the peak RssAnon was 5.7 GiB, 0.9 GiB of it the rest of the pipeline, so about 1.5x the
# UNet's 3.4 GB of float32 weights on top (peak RSS 12.6 GiB counts the mapped files too).
EXPORT_RAM_FACTOR = 1.5
TEXT_TOKENS = 77  # CLIP's sequence length: the encoder_hidden_states the pipeline passes
IR_NAME = "unet.xml"
EXPORT_FORMAT = 1  # part of the cache key: raise it when export_unet changes what it writes
PRECISIONS = {False: "f32", True: "bf16"}  # the engine's bf16 choice -> OpenVINO's hint

Progress = Callable[[str, int, int], None]  # (phase, done, total), as engine.loading's


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


def use_openvino_unet(pipe, settings: Settings, bf16: bool, threads: int,
                      progress: Progress) -> list[str]:
    """Replace `pipe.unet` with its OpenVINO-compiled copy (exported first if needed) and
    return what was applied, for /health's optimizations."""
    ov = import_openvino()
    unet = pipe.unet
    key = source_key(unet, f"openvino-{ov.get_version()}-export{EXPORT_FORMAT}")
    folder = settings.path(settings.openvino_cache_dir) / f"{type(unet).__name__}-{key}"
    export_seconds = None
    if not (folder / IR_NAME).is_file():
        progress("exporting", 0, 0)
        started = time.perf_counter()
        export_unet(ov, unet, folder)
        export_seconds = round(time.perf_counter() - started, 1)
    progress("compiling", 0, 0)
    core = ov.Core()
    model = core.read_model(str(folder / IR_NAME))
    wrapper = OpenVinoUNet(core, model, unet.config, PRECISIONS[bf16], threads)
    wrapper.export_seconds = export_seconds
    wrapper.ir_folder = str(folder)
    pipe.unet = wrapper  # the torch UNet goes (its weights were only memory-mapped)
    del unet
    latent = settings.default_size // 8
    wrapper.compiled_for((2, latent, latent, TEXT_TOKENS))  # the default size, CFG batch 2
    compiled_in = next(iter(wrapper.compile_seconds.values()))
    return [f"openvino-unet ({wrapper.chosen_precision}, compiled in {compiled_in} s; static "
            f"shapes, up to {COMPILED_SHAPES} compiled)"]


def export_unet(ov, unet, folder: Path) -> None:
    """Trace `unet` and write it as OpenVINO IR (float32 weights) into `folder`, beside
    first and then renamed, after checking there is disk and RAM enough."""
    weight_bytes = sum(p.numel() * 4 for p in unet.parameters())
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_partials(folder.parent)
    check_room(folder.parent, weight_bytes)
    log.info("exporting the UNet to OpenVINO IR once: %s (%.1f GB)", folder, weight_bytes / 1e9)
    with staged(folder, directory=True) as tmp:
        c = unet.config
        # Odd latent sizes on purpose: the trace then takes the UNet's branch that upsamples
        # to each skip connection's size, which fits every size. Traced at even sizes, the
        # IR would only take sizes that halve evenly at every level (a multiple of 64 px).
        example = (torch.randn(2, c.in_channels, c.sample_size + 1, c.sample_size - 1),
                   torch.tensor([999.0, 999.0]), torch.randn(2, TEXT_TOKENS,
                                                            c.cross_attention_dim))
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings name shape checks that hold for every SD input (batch >= 64,
            # 2**31 elements): noise in the server log, not a problem.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(_TraceableUNet(unet), example_input=example)
        # float32 weights: fp16 compression would move the pixels further from torch's.
        ov.save_model(model, str(tmp / IR_NAME), compress_to_fp16=False)
        del model


def check_room(cache_dir: Path, weight_bytes: int) -> None:
    """NotEnoughForExport, with the figures, when the export would not fit."""
    free = shutil.disk_usage(cache_dir).free
    if free < weight_bytes * 1.05:
        raise NotEnoughForExport(
            f"exporting the UNet for ENGINE=openvino needs {weight_bytes / 1e9:.1f} GB in "
            f"{cache_dir}, {free / 1e9:.1f} GB free: free some space, set OPENVINO_CACHE_DIR "
            "to a disk that has it, or use ENGINE=torch")
    available = available_ram()
    needed = weight_bytes * EXPORT_RAM_FACTOR
    if available is not None and available < needed:
        raise NotEnoughForExport(
            f"exporting the UNet for ENGINE=openvino needs about {needed / 2**30:.1f} GiB of "
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


class OpenVinoUNet(torch.nn.Module):
    """Stands in for the pipeline's UNet: same `config`, forward runs the compiled model."""

    def __init__(self, core, model, config, precision: str, threads: int):
        super().__init__()
        self.core, self.model, self.config = core, model, config
        self.precision_hint, self.threads = precision, threads
        self.compiled: OrderedDict[tuple, Any] = OrderedDict()  # shape -> infer request
        self.compile_seconds: dict[str, float] = {}
        self.chosen_precision = ""
        self.export_seconds: float | None = None
        self.ir_folder = ""

    @property
    def dtype(self) -> torch.dtype:
        """What the pipeline casts its latents to (the IR's inputs are float32)."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        """Where the pipeline puts its tensors."""
        return torch.device("cpu")

    def compiled_for(self, shape: tuple[int, int, int, int]):
        """The infer request for (batch, latent height, latent width, tokens), compiled on
        first use; the least recently used shape is dropped beyond COMPILED_SHAPES."""
        if shape in self.compiled:
            self.compiled.move_to_end(shape)
            return self.compiled[shape]
        batch, height, width, tokens = shape
        c = self.config
        # Dropped before compiling the new one, so memory never holds one shape more.
        while len(self.compiled) >= COMPILED_SHAPES:
            dropped, _ = self.compiled.popitem(last=False)
            self.compile_seconds.pop(f"{dropped[0]}x{dropped[1] * 8}x{dropped[2] * 8}", None)
        self.model.reshape({0: [batch, c.in_channels, height, width], 1: [batch],
                            2: [batch, tokens, c.cross_attention_dim]})
        started = time.perf_counter()
        compiled = self.core.compile_model(self.model, "CPU", {
            "INFERENCE_PRECISION_HINT": self.precision_hint, "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.threads)})
        seconds = round(time.perf_counter() - started, 2)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.chosen_precision = getattr(hint, "get_type_name", hint.__str__)()
        label = f"{batch}x{height * 8}x{width * 8}"
        self.compile_seconds[label] = seconds
        log.info("OpenVINO compiled the UNet for batch %d, %dx%d in %.1f s (%s)", batch,
                 width * 8, height * 8, seconds, self.chosen_precision)
        self.compiled[shape] = compiled.create_infer_request()
        return self.compiled[shape]

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
        request = self.compiled_for((batch, sample.shape[2], sample.shape[3],
                                     encoder_hidden_states.shape[1]))
        out = request.infer([sample.float().numpy(), steps.contiguous().numpy(),
                             encoder_hidden_states.float().numpy()])[0]
        # The request reuses its output buffer on the next call: copy out of it.
        result = torch.from_numpy(out.copy()).to(sample.dtype)
        return UNet2DConditionOutput(sample=result) if return_dict else (result,)

    def report(self) -> dict[str, Any]:
        """For /health: what OpenVINO chose, the compile and export times, memory."""
        return {"name": "openvino", "precision": self.chosen_precision,
                "precision_hint": self.precision_hint, "threads": self.threads,
                "compile_seconds": dict(self.compile_seconds),
                "export_seconds": self.export_seconds, "memory": process_memory()}


def process_memory() -> dict[str, float]:
    """This process's resident and anonymous memory in GiB (Linux), else {}."""
    try:
        status = process_status()
    except OSError:
        return {}
    return {f"{name.lower()}_gib": round(status[name] / 2**30, 2)
            for name in ("VmRSS", "RssAnon") if name in status}
