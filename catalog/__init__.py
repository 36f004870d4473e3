"""The catalogue: what is on disk (or on the Hub) to load, found by any name a client sends.
Torch-free, so request threads, validation and the routes may use it; the engine loads what
it finds.

    models       the MODEL_ID model and MODELS_DIR's diffusers folders and checkpoints
    families     what kind of model each is (SD 1.x, 2.x, SD-Turbo, SDXS), from its configs
    cards        the `<name>.json` beside a model or LoRA: how it is meant to be run
    checkpoints  single-file checkpoints sniffed from their safetensors header (SD 1.x, 2.x)
    loras        LORA_DIR's LoRAs, read from their headers (format, what they were made for,
                 few-step kind: LCM, Hyper-SD, TCD, PCM)
    upscalers    Pillow's resamplers and MODELS_DIR/ESRGAN, RealESRGAN's model files; the
                 RRDBNet key layouts read from names and shapes (describe_rrdbnet)
    hashes       file sha256s as A1111 shows them
    download     fetching a Hub model before from_pretrained reads it (resumable)
    files        staged writes (write beside, rename) and abandoned partials' cleanup
"""
