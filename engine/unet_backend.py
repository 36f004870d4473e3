"""What runs the model, chosen once from ENGINE: torch (diffusers' own modules) or OpenVINO
(text encoder, UNet and decoders exported and compiled, engine/openvino_engine.py). The rest
of the pipeline is the same diffusers code either way; the backend answers the four
questions that differ:

    weights_bf16   load the torch weights in bf16? (OpenVINO takes bf16 as a compile hint)
    attach         what to do to a freshly loaded pipeline (OpenVINO: swap its parts)
    check_request  what this backend cannot run (a 400 naming the engine)
    info           /health's `engine`

openvino (and engine.openvino_engine, which imports it) is imported only by OpenVinoBackend's
methods, so ENGINE=torch never loads it.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from config import Settings
from errors import UnsupportedRequest
from params import GenerationRequest

Progress = Callable[..., None]  # (phase, done, total, **extra), as ModelSlot.report_progress


class UNetBackend(Protocol):
    """The UNet runtime the engine was started with."""

    name: str

    def weights_bf16(self, bf16: bool) -> bool:
        """Whether the torch weights are loaded in bf16, given the precision chosen."""

    def attach(self, pipe, bf16: bool, threads: int, progress: Progress, taesd=None,
               defaults: dict[str, Any] | None = None) -> list[str]:
        """Make a freshly loaded pipeline (and TAESD) run here, ready for the `defaults` (the
        model card's size and guidance); what was applied, for /health."""

    def check_request(self, request: GenerationRequest) -> None:
        """UnsupportedRequest when this backend cannot run the request."""

    def info(self, pipe) -> dict[str, Any]:
        """/health's `engine`: the name, and what the backend knows of itself."""


class TorchBackend:
    """diffusers' UNet as loaded: nothing to attach, nothing refused."""

    name = "torch"

    def weights_bf16(self, bf16: bool) -> bool:
        """bf16 weights are the bf16 choice itself."""
        return bf16

    def attach(self, pipe, bf16: bool, threads: int, progress: Progress, taesd=None,
               defaults: dict[str, Any] | None = None) -> list[str]:
        """Nothing to do: the loaded modules run as they are."""
        return []

    def check_request(self, request: GenerationRequest) -> None:
        """Every valid request runs on torch."""

    def info(self, pipe) -> dict[str, Any]:
        """Just the name."""
        return {"name": self.name}


class OpenVinoBackend:
    """Text encoder, UNet and decoders exported to OpenVINO IR once and compiled; see
    openvino_engine."""

    name = "openvino"

    def __init__(self, settings: Settings):
        self.settings = settings

    def weights_bf16(self, bf16: bool) -> bool:
        """float32: the UNet is compiled in OpenVINO's precision (bf16 is a compile hint
        there, not a second copy of the weights) and the rest stays float32."""
        return False

    def attach(self, pipe, bf16: bool, threads: int, progress: Progress, taesd=None,
               defaults: dict[str, Any] | None = None) -> list[str]:
        """Swap the pipeline's parts (and TAESD's decode) for OpenVINO-compiled ones,
        exported first if needed."""
        from engine.openvino_engine import use_openvino_pipeline  # imports openvino: lazily

        return use_openvino_pipeline(pipe, taesd, self.settings, bf16, threads, progress,
                                     defaults or {})

    def check_request(self, request: GenerationRequest) -> None:
        """DeepCache and LoRAs patch the torch UNet's layers, which this engine no longer
        runs: refused with a 400 naming the engine."""
        if request.deep_cache > 1:
            raise UnsupportedRequest("deep_cache is not available with ENGINE=openvino (it "
                                     "reuses the torch UNet's blocks); send deep_cache 0 or "
                                     "use ENGINE=torch")
        if request.loras:
            raise UnsupportedRequest("LoRAs are not available with ENGINE=openvino (they "
                                     "patch the torch UNet's layers); bake them into a model, "
                                     "remove the <lora:...> tags or use ENGINE=torch")

    def info(self, pipe) -> dict[str, Any]:
        """The name, and once loaded where each part runs, in what precision, compile and
        export times, memory."""
        if pipe is None or not hasattr(pipe, "openvino_parts"):
            return {"name": self.name}
        from engine.openvino_engine import engine_report

        return engine_report(pipe)


def unet_backend(settings: Settings) -> UNetBackend:
    """The backend ENGINE names (config has validated it: torch or openvino)."""
    return OpenVinoBackend(settings) if settings.engine == "openvino" else TorchBackend()
