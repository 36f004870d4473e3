"""The pipeline's parts in OpenVINO: export any torch part once, compile it per input shape,
and the stand-ins the pipeline calls (text encoder, VAE or TAESD decode).

Each part is exported once to IR under OPENVINO_CACHE_DIR (keyed by its model files and the
versions, engine.weights_cache.source_key) and read with its weights memory-mapped (OpenVINO's
default for IR: file pages, not anonymous memory). `CompiledShapes` compiles it for each input
shape in use (static shapes: every size's kernels chosen for it), keeps the `keep` most
recently used, and says on /health where it runs, in what precision, and the compile times.

Imports torch and numpy at the top: import it lazily, where ENGINE=openvino is in use.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from catalog.files import staged
from errors import UnsupportedRequest

log = logging.getLogger(__name__)

IR_FILE = "model.xml"


def export_part(ov, module: torch.nn.Module, example: tuple, folder: Path) -> None:
    """Trace `module` with `example` inputs and write it as float32 IR into `folder` (staged:
    a half-written export is never read)."""
    with staged(folder, directory=True) as tmp, torch.no_grad(), warnings.catch_warnings(), \
            original_forwards(module):
        # TracerWarnings name shape checks that hold for every SD input: log noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(module, example_input=example)
        # float32 weights: fp16 compression would move the pixels further from torch's.
        ov.save_model(model, str(tmp / IR_FILE), compress_to_fp16=False)
        del model


@contextlib.contextmanager
def original_forwards(module: torch.nn.Module) -> Iterator[None]:
    """diffusers' own forwards while tracing: the banded VAE decode (engine.vae_bands) patches
    instances' `forward` for torch's memory, which OpenVINO plans itself."""
    patched = [(m, m.__dict__.pop("forward")) for m in module.modules() if "forward" in m.__dict__]
    try:
        yield
    finally:
        for m, forward in patched:
            m.forward = forward


class CompiledShapes:
    """One exported part, compiled per input shape (the `keep` most recent kept)."""

    def __init__(self, core, folder: Path, name: str, config: dict[str, str], keep: int,
                 per_call_request: bool = False, bounds: list | None = None):
        self.core, self.name, self.config, self.keep = core, name, config, keep
        self.model = core.read_model(str(folder / IR_FILE))  # weights memory-mapped
        # Bounded dynamic input shapes: one compiled model (one copy of the weights) for all.
        self.bounds = bounds
        self.shapes_run: list[str] = []
        # Parts also called from request threads (TAESD previews) get a request per call.
        self.per_call_request = per_call_request
        self.compiled: OrderedDict[tuple, Any] = OrderedDict()
        self.compile_seconds: dict[str, float] = {}
        self.precision = ""

    def compiled_for(self, shapes: tuple[tuple[int, ...], ...]):
        """The compiled model for these input shapes, compiled on first use; the least
        recently used one is dropped (before compiling: memory never holds one more)."""
        label = shape_label(shapes)
        if label not in self.shapes_run:
            self.shapes_run.append(label)
        if self.bounds is not None:
            shapes, label = ("dynamic",), "dynamic"
        if shapes in self.compiled:
            self.compiled.move_to_end(shapes)
            return self.compiled[shapes]
        while len(self.compiled) >= self.keep:
            dropped, _ = self.compiled.popitem(last=False)
            self.compile_seconds.pop(shape_label(dropped), None)
        self.model.reshape(dict(enumerate(self.bounds or [list(s) for s in shapes])))
        started = time.perf_counter()
        compiled = self.core.compile_model(self.model, "CPU", self.config)
        seconds = round(time.perf_counter() - started, 2)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = getattr(hint, "get_type_name", hint.__str__)()
        self.compile_seconds[label] = seconds
        log.info("OpenVINO compiled the %s for %s in %.1f s (%s)", self.name, label, seconds,
                 self.precision)
        request = None if self.per_call_request else compiled.create_infer_request()
        self.compiled[shapes] = (compiled, request)
        return self.compiled[shapes]

    def infer(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The first output for these inputs (float32 tensors), as a torch tensor of its own."""
        arrays = [t.detach().float().contiguous().numpy() for t in tensors]
        compiled, request = self.compiled_for(tuple(tuple(a.shape) for a in arrays))
        request = request or compiled.create_infer_request()
        out = request.infer(arrays)[0]
        # A kept request reuses its output buffer on the next call: copy out of it.
        return torch.from_numpy(out.copy())

    def report(self) -> dict[str, Any]:
        """For /health: where it runs, the precision OpenVINO chose, compile times."""
        return {"device": "openvino CPU", "precision": self.precision,
                "shapes": "shared (bounded dynamic)" if self.bounds else "static",
                "compile_seconds": dict(self.compile_seconds), "shapes_run": self.shapes_run}


def shape_label(shapes: tuple) -> str:
    """The first input's shape as text: latents as batch x pixel height x width (2x512x512),
    anything else as it is (1x77)."""
    first = shapes[0]
    if isinstance(first, str):
        return first
    if len(first) == 4:
        return f"{first[0]}x{first[2] * 8}x{first[3] * 8}"
    return "x".join(str(d) for d in first)


class TextEncoderGraph(torch.nn.Module):
    """The text encoder with token ids in and the last hidden state out, as traced."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        """One encoder call."""
        return self.encoder(input_ids, return_dict=False)[0]


class OpenVinoStandIn(torch.nn.Module):
    """A torch module the pipeline calls in place of one of its own: the real `config`, the
    compiled part behind it, float32 on the CPU."""

    def __init__(self, part: CompiledShapes, config):
        super().__init__()
        self.part, self.config = part, config

    @property
    def dtype(self) -> torch.dtype:
        """What the pipeline casts inputs and outputs to (the IR takes float32)."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        """Where the pipeline puts its tensors."""
        return torch.device("cpu")


class OpenVinoTextEncoder(OpenVinoStandIn):
    """Stands in for the pipeline's CLIP text encoder: same `config`, runs in OpenVINO."""

    def get_input_embeddings(self):
        """Embeddings add tokens to the torch encoder's table, which the IR has fixed."""
        raise UnsupportedRequest("embeddings (textual inversion) are not available with "
                                 "ENGINE=openvino (the text encoder is compiled with its token "
                                 "table); remove the embedding's name or use ENGINE=torch")

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **unused):
        """The last hidden state, one prompt row at a time (one static shape: 1 x tokens)."""
        if output_hidden_states:
            raise UnsupportedRequest("clip skip is not available with ENGINE=openvino (only the "
                                     "text encoder's last layer is exported); use ENGINE=torch")
        rows = [self.part.infer(row[None].to(torch.int64)) for row in input_ids]
        return (torch.cat(rows),)


class DecoderGraph(torch.nn.Module):
    """A VAE's (or TAESD's) decode with latents in and the image tensor out, as traced."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        """One decode."""
        return self.vae.decode(latents, return_dict=False)[0]


def openvino_decode(part: CompiledShapes) -> Callable:
    """A `decode(latents, return_dict=True, generator=None)` running `part`, to set on a VAE
    instance (its encoder, for img2img, stays torch)."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    def decode(z, return_dict: bool = True, generator=None, **unused):
        image = part.infer(z).to(z.dtype)
        return DecoderOutput(sample=image) if return_dict else (image,)

    decode.openvino_part = part  # for /health, and so it is applied once
    return decode
