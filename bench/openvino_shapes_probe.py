"""Can compiled UNet shapes share one copy of the weights? Measured on the full-size SD-Turbo
(SD 2.1-base) UNet, random weights, OpenVINO's CPU plugin, each mode in a fresh process:

    flock /tmp/heavy.lock .venv/bin/python bench/openvino_shapes_probe.py --export
    flock /tmp/heavy.lock .venv/bin/python bench/openvino_shapes_probe.py --mode static2 --precision bf16

modes: `static2` two static shapes of one ov.Model (512x512 and 512x640, batch 1);
`same2` the same static shape compiled twice; `dynamic` one compile with bounded dynamic
height/width, then calls at both sizes. Prints RssAnon after each compile and call, and the
call times, as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
IR = BENCH / "cache" / "probe-ir"
SHAPES = ((64, 64), (64, 80))  # latent (height, width): 512x512 and 512x640


def anon_gib() -> float:
    """This process's RssAnon in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return 0.0


def export() -> None:
    """The SD-Turbo UNet (random weights) as IR, by the engine's own export."""
    sys.path.insert(0, str(ROOT))
    import openvino as ov
    from diffusers import UNet2DConditionModel

    from engine.openvino_engine import export_unet
    from engine.random_model import ARCHITECTURES

    unet = UNet2DConditionModel(**ARCHITECTURES["sd-turbo"]["unet"]).eval()
    export_unet(ov, unet, IR)


def probe(mode: str, precision: str, threads: int) -> dict:
    """Compile per `mode`, call each shape twice; RssAnon and seconds at each point."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    out = {"mode": mode, "precision": precision, "start_anon": anon_gib()}
    model = core.read_model(str(IR / "unet.xml"))
    out["after_read_anon"] = anon_gib()
    config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1",
              "INFERENCE_NUM_THREADS": str(threads)}
    text = 1024  # SD 2.1-base's cross-attention width

    def inputs(h, w):
        return [np.random.randn(1, 4, h, w).astype(np.float32), np.array([999.0], np.float32),
                np.random.randn(1, 77, text).astype(np.float32)]

    requests = {}
    if mode == "dynamic":
        model.reshape({0: ov.PartialShape([1, 4, ov.Dimension(32, 96), ov.Dimension(32, 96)]),
                       1: [1], 2: [1, 77, text]})
        t = time.perf_counter()
        compiled = core.compile_model(model, "CPU", config)
        out["compile_s"] = round(time.perf_counter() - t, 1)
        request = compiled.create_infer_request()
        requests = {shape: request for shape in SHAPES}
        out["after_compile_anon"] = anon_gib()
    else:
        for i, shape in enumerate(SHAPES if mode == "static2" else SHAPES[:1] * 2):
            model.reshape({0: [1, 4, *shape], 1: [1], 2: [1, 77, text]})
            t = time.perf_counter()
            compiled = core.compile_model(model, "CPU", config)
            out[f"compile{i}_s"] = round(time.perf_counter() - t, 1)
            requests[(shape, i)] = compiled.create_infer_request()
            out[f"after_compile{i}_anon"] = anon_gib()
    for key, request in requests.items():
        shape = key[0] if isinstance(key[0], tuple) else key
        for call in range(2):
            t = time.perf_counter()
            request.infer(inputs(*shape))
            out[f"call{key}-{call}_s".replace(" ", "")] = round(time.perf_counter() - t, 2)
        out[f"after_calls{key}_anon".replace(" ", "")] = anon_gib()
    out["hint_chosen"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return out


def main() -> None:
    """--export once, then one --mode per process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--mode", choices=("static2", "same2", "dynamic"))
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.export:
        export()
        return
    print(json.dumps(probe(args.mode, args.precision, args.threads)), flush=True)


if __name__ == "__main__":
    main()
