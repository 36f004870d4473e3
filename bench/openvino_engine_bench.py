"""ENGINE=openvino beside ENGINE=torch, through the project's own Engine (bench/run.py's
worker: load, one image, RSS/RssAnon sampled), on the full-size SD v1-4 architecture with
random weights, and the fidelity of OpenVINO's fp32 against torch's fp32 (final latents).

    .venv/bin/python bench/openvino_engine_bench.py --size 512 --steps 4 --threads 2

Each configuration runs in a fresh process under `flock /tmp/heavy.lock` (run.py's worker),
so its load time and memory peak are its own. The first OpenVINO run exports the UNet into
bench/cache/openvino-engine (its load time includes the export), the second loads that IR
and only compiles. Writes bench/openvino-engine-results.md and prints the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / "cache"
OV_CACHE = CACHE / "openvino-engine"
RESULTS = BENCH / "openvino-engine-results.md"
LOCK = "/tmp/heavy.lock"


def configurations(threads: int) -> list[tuple[str, dict]]:
    """(row name, env) in run order: torch fp32, OpenVINO fp32 cold (export) and warm, bf16."""
    common = {"TORCH_THREADS": str(threads), "SAFETY_CHECKER": "off",
              "OPENVINO_CACHE_DIR": str(OV_CACHE)}
    return [("ove-torch-fp32", {**common, "ENGINE": "torch", "DTYPE": "float32"}),
            ("ove-openvino-fp32-export", {**common, "ENGINE": "openvino", "DTYPE": "float32"}),
            ("ove-openvino-fp32", {**common, "ENGINE": "openvino", "DTYPE": "float32"}),
            ("ove-openvino-bf16", {**common, "ENGINE": "openvino", "DTYPE": "bfloat16"})]


def run_worker(name: str, env: dict, size: int, steps: int) -> dict:
    """One configuration in its own process (bench/run.py --worker); its RESULT dict."""
    cmd = ["flock", LOCK, sys.executable, str(BENCH / "run.py"), "--worker", name,
           "--env", json.dumps(env), "--size", str(size), "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"name": name, "error": (out.stderr or out.stdout)[-1500:]}


def latent_difference(a: str, b: str) -> dict:
    """Max and mean absolute difference of two rows' final latents (run.py saves them)."""
    import torch

    x = torch.load(CACHE / f"latents-{a}.pt")
    y = torch.load(CACHE / f"latents-{b}.pt")
    return {"max_abs": round(float((x - y).abs().max()), 5),
            "mean_abs": round(float((x - y).abs().mean()), 6),
            "latent_std": round(float(x.std()), 4)}


def report(rows: list[dict], fidelity: dict, size: int, steps: int) -> str:
    """The results as Markdown."""
    lines = [f"# ENGINE=openvino vs ENGINE=torch ({size}x{size}, {steps} steps, "
             "full-size SD v1-4 architecture, random weights)", "",
             "Made by `bench/openvino_engine_bench.py` through the project's Engine (bench/run.py's "
             "worker), one fresh process per row, serialized under /tmp/heavy.lock.", "",
             "| Row | engine precision | s/step (median) | est. s per 25-step image | load s | "
             "peak RSS GiB | peak RssAnon GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error'][-200:]!r} ||||||")
            continue
        ov = [o for o in r["optimizations"] if o.startswith("openvino")]
        step = r["step_median_s"]
        lines.append(
            f"| {r['name']} | {ov[0] if ov else 'torch ' + r['dtype']} | {step:.2f} | "
            f"{step * 25 + r['decode_s']:.0f} | {r['load_s']:.1f} | "
            f"{r['peak_rss_kib'] / 2**20:.2f} | {r['peak_anon_kib'] / 2**20:.2f} |")
    lines += ["", f"Fidelity, OpenVINO f32 vs torch fp32, final latents after {steps} steps "
              f"(same seed): {json.dumps(fidelity)}", ""]
    return "\n".join(lines)


def shapes_worker(threads: int) -> dict:
    """RssAnon after the load (default shape compiled) and after each further compiled shape:
    what a bigger COMPILED_SHAPES would cost (run in its own process, IR already exported)."""
    import time

    sys.path.insert(0, str(ROOT))
    from config import Settings
    from engine import Engine
    from engine.openvino_engine import process_memory

    settings = Settings.from_env({"MODEL_ID": str(CACHE / "sd-v1-4-random"), "OUTPUT_DIR": "",
                                  "TAESD_MODEL": "", "ENGINE": "openvino", "DTYPE": "float32",
                                  "TORCH_THREADS": str(threads), "SAFETY_CHECKER": "off",
                                  "OPENVINO_CACHE_DIR": str(OV_CACHE), "MAX_SIZE": "1024"})
    engine = Engine(settings)
    engine.load()
    out = {"after_load": process_memory()}
    for shape in ((2, 64, 80, 77), (2, 80, 64, 77), (1, 64, 64, 77)):
        started = time.perf_counter()
        engine.pipe.unet.warm(shape)
        out[f"after_{shape[0]}x{shape[1] * 8}x{shape[2] * 8}"] = {
            **process_memory(), "compile_s": round(time.perf_counter() - started, 1)}
    return out


def main() -> None:
    """Run every configuration, then write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", action="store_true",
                        help="only measure memory per compiled shape (needs the export)")
    args = parser.parse_args()
    if args.shapes:
        print(json.dumps(shapes_worker(args.threads)))
        return
    shutil.rmtree(OV_CACHE, ignore_errors=True)  # the export row must really export
    rows = []
    for name, env in configurations(args.threads):
        row = run_worker(name, env, args.size, args.steps)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("name", "error", "step_median_s", "load_s",
                                                   "peak_rss_kib", "peak_anon_kib",
                                                   "optimizations")}), flush=True)
    fidelity = latent_difference("ove-torch-fp32", "ove-openvino-fp32")
    RESULTS.write_text(report(rows, fidelity, args.size, args.steps))
    print(json.dumps(fidelity))


if __name__ == "__main__":
    main()
