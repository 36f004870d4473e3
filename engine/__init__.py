"""The engine: the only package that imports torch and diffusers, one concern a module.

    pipeline      Engine: load the pipeline once, generate one image, status for /health
    loading       from_pretrained on the CPU, in the chosen precision; what was applied
    cpu           usable and free cores (the adaptive thread policy), the precision probe
    weights_cache bf16 copies of the weights written once and memory-mapped
    speedups      opt-in: CFG cutoff and DeepCache
    decoders      latents -> pixels: the model's VAE or TAESD
    vae_bands     VAE decode strategies with a lower memory peak and the same pixels
    preview       live previews of the latents (TAESD when loaded, else a linear map)
    images        PNG encoding
    load_errors   a loading failure as one line of advice
    random_model  random-weight pipelines (tiny for tests, full-size for benchmarks)

torch is imported lazily (on first load or generation), so the HTTP server can be listening
within a second while the heavy libraries load in the worker thread.
"""
from engine.cpu import (PrecisionProbe, adaptive_threads, idle_cores, probe_precision,
                        usable_cores)
from engine.images import encode_png
from engine.load_errors import explain_load_error
from engine.pipeline import Engine
from engine.status import EngineStatus, GenerationResult, StepCallback
from engine.random_model import ARCHITECTURES, build_random_pipeline

__all__ = ["ARCHITECTURES", "Engine", "EngineStatus", "GenerationResult", "PrecisionProbe",
           "StepCallback", "adaptive_threads", "build_random_pipeline", "encode_png",
           "explain_load_error", "idle_cores", "probe_precision", "usable_cores"]
