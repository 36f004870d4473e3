"""The catalogue: what is on disk (or on the Hub) to load, found by any name a client sends.
Torch-free, so request threads, validation and the routes may use it; the engine loads what
it finds.

    models       the MODEL_ID model and MODELS_DIR's diffusers folders and checkpoints
    checkpoints  single-file checkpoints sniffed from their safetensors header
    loras        LORA_DIR's LoRAs, read from their headers (format, LCM or not)
    hashes       file sha256s as A1111 shows them
    download     fetching a Hub model before from_pretrained reads it (resumable)
    files        staged writes (write beside, rename) and abandoned partials' cleanup
"""
