"""FastSD CPU's recipe, for bench/pipeline_bench.py: run in the bench's own venv
(bench/cache/openvino-venv, bench/openvino_setup.sh), never in the project's.

What FastSD CPU does (rupeshs/fastsdcpu: src/backend/lcm_text_to_image.py `_compile_ov_pipeline`,
src/backend/openvino/pipelines.py `ov_load_tiny_autoencoder`): optimum-intel's
OVStableDiffusionPipeline from an OpenVINO IR folder, `reshape(batch_size=-1, height, width,
num_images_per_prompt=1)`, `compile()`, OpenVINO's default precision (bf16 on a CPU with AMX or
AVX512-BF16), and TAESD's decoder as OpenVINO IR in place of the VAE decoder. Here the
pipeline runs to latents and the compiled TAESD decoder makes the pixels (the same OpenVINO
work; FastSD wraps the same IR in optimum's OVModelVaeDecoder). The IR comes from
bench/openvino_bench.py's export (optimum's main_export, once per model folder); TAESD's
decoder is converted once here. INFERENCE_NUM_THREADS=2 as every other row (FastSD leaves
OpenVINO to choose; on this 2-core machine that is the same).

    bench/cache/openvino-venv/bin/python bench/fastsd_recipe.py --model DIR --taesd DIR

prints `RESULT {json}` on its last line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TAESD_IR = BENCH / "cache" / "fastsd-taesd-ir"
CONFIG = {"INFERENCE_NUM_THREADS": "2", "CACHE_DIR": ""}


def taesd_decoder_ir(taesd_dir: Path) -> Path:
    """TAESD's decoder as OpenVINO IR (latent_sample -> sample in [-1, 1]), converted once."""
    import openvino as ov
    import torch
    from diffusers import AutoencoderTiny

    xml = TAESD_IR / f"{taesd_dir.name}-{int(taesd_dir.stat().st_mtime)}" / "vae_decoder.xml"
    if xml.is_file():
        return xml
    taesd = AutoencoderTiny.from_pretrained(str(taesd_dir), local_files_only=True).eval()

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.taesd = taesd

        def forward(self, latent_sample):
            return self.taesd.decode(latent_sample, return_dict=False)[0]

    with torch.no_grad():
        model = ov.convert_model(Decoder(), example_input={"latent_sample": torch.randn(1, 4, 64, 64)})
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml))
    return xml


def main() -> None:
    """Load as FastSD does, then `--images` images; the figures as one RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--taesd", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--prompt", default="a lighthouse at dusk, oil painting")
    parser.add_argument("--prepare", action="store_true", help="export only")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    from openvino_bench import _offline, ensure_ir
    from run import AnonPeak, _status_kib

    _offline()
    anon = AnonPeak()
    load_before = os.getloadavg()
    started = time.perf_counter()
    ir_dir, export = ensure_ir(Path(args.model).resolve())
    taesd_xml = taesd_decoder_ir(Path(args.taesd).resolve())
    if args.prepare:
        print("RESULT " + json.dumps({"export_s": round(time.perf_counter() - started, 1),
                                      **export}), flush=True)
        return
    import numpy as np
    import openvino as ov
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline
    from PIL import Image

    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(str(ir_dir), compile=False,
                                                     ov_config=dict(CONFIG),
                                                     local_files_only=True)
    pipe.reshape(batch_size=-1, height=args.size, width=args.size, num_images_per_prompt=1)
    pipe.compile()
    # The 1-step models' sampler (SD-Turbo's and SDXS's cards: Euler from t=999).
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="trailing")
    core = ov.Core()
    taesd_model = core.read_model(str(taesd_xml))
    taesd_model.reshape([1, 4, args.size // 8, args.size // 8])
    taesd = core.compile_model(taesd_model, "CPU", {"INFERENCE_NUM_THREADS": "2"})
    taesd_request = taesd.create_infer_request()
    load_s = time.perf_counter() - t0
    seconds = []
    for seed in range(args.images):
        t = time.perf_counter()
        latents = pipe(prompt=args.prompt, num_inference_steps=1, guidance_scale=0.0,
                       width=args.size, height=args.size, output_type="latent",
                       generator=torch.Generator("cpu").manual_seed(42 + seed)).images
        pixels = taesd_request.infer([latents.numpy()])[0][0]
        rgb = ((np.clip(pixels, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(rgb).save(io.BytesIO(), format="PNG")
        seconds.append(time.perf_counter() - t)
    unet_precision = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
    print("RESULT " + json.dumps({
        "load_s": round(load_s, 2), "first_image_s": round(seconds[0], 2),
        "image_s": round(statistics.median(seconds[1:]), 2),
        "images_s": [round(s, 2) for s in seconds],
        "peak_rss_gib": round(_status_kib("VmHWM") / 2**20, 2),
        "peak_anon_gib": round(anon.stop() / 2**20, 2),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "precision": str(unet_precision), "dtype": str(unet_precision),
        "optimizations": ["optimum-intel OVStableDiffusionPipeline, TAESD decoder in OpenVINO"],
        **export}), flush=True)


if __name__ == "__main__":
    main()
