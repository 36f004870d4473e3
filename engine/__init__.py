"""The engine: the only package that imports torch and diffusers, one concern a module.

    pipeline        Engine, the facade the job worker and the routes use
    slot            ModelSlot: the one model in memory (load, switch, unload), its status
                    snapshot for /health, the precision chosen at start
    generation      Generation: one image as numbered steps; StepHooks, the step callback;
                    CheckpointPolicy (when a running job keeps a checkpoint)
    resume          checkpoints of a running generation, and FastForward to resume one to
                    the same bytes
    unet_backend    what runs the UNet, chosen once from ENGINE: TorchBackend, OpenVinoBackend
    openvino_engine ENGINE=openvino: the UNet exported to OpenVINO IR and compiled per shape
    status          what the engine reports, torch-free: EngineStatus, GenerationResult
    loading         from_pretrained on the CPU, in the chosen precision; what was applied
    single_file     single-file checkpoints converted once to diffusers folders, and back
    hub_files       which files of a Hub model from_pretrained reads (diffusers' own rules)
    cpu             usable and free cores (the adaptive thread policy), the precision probe
    weights_cache   bf16 copies of the weights written once and memory-mapped
    loras           LoRA adapters (peft) activated per request, never fused
    img2img         txt2img, img2img and inpainting as views of the one loaded pipeline
    speedups        opt-in: CFG cutoff and DeepCache
    decoders        latents -> pixels: the model's VAE or TAESD
    vae_bands       VAE decode strategies with a lower memory peak and the same pixels
    preview         live previews of the latents (TAESD when loaded, else a linear map)
    images          PNG encoding
    load_errors     a loading failure as one line of advice
    upscalers       upscale_image: Pillow resamplers and ESRGAN-family models, tiled; one
                    model kept loaded
    rrdbnet         RRDBNet (ESRGAN, Real-ESRGAN) from its published architecture
    random_model    random-weight pipelines: tiny ones of every family (tests), full-size
                    SD v1-4 (benchmarks)

Staged writes (catalog.files) and /proc (system) live outside: they are torch-free.
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
