"""Issue 20's benchmark: one 512x512 image end to end through the project's Engine, for the
1-step architectures (random weights of each exact full-size architecture), torch and
OpenVINO, with the full VAE and with TAESD; and FastSD CPU's own recipe beside them.

    .venv/bin/python bench/pipeline_bench.py             # every row, writes the JSON below
    .venv/bin/python bench/pipeline_bench.py --only sdxs # the rows of one architecture

Each row runs in a fresh process (the /tmp/heavy.lock held once for the run): load (timed), then IMAGES images
(the first one apart, the median of the rest), peak RSS (VmHWM) and peak RssAnon (sampled
every 20 ms), the load average before and after, the CPU. Every request is the 1-step
recipe (Euler trailing, 1 step, guidance 0: no classifier-free guidance, the UNet at batch 1)
with DTYPE=auto (bf16 where the load's probe measures it faster) and TORCH_THREADS=2. Before
the timed rows, an untimed pass loads each configuration once, so the one-off work (the
OpenVINO export, the bf16 weight copy) is done and its time recorded apart.

FastSD CPU's recipe (rupeshs/fastsdcpu, src/backend/lcm_text_to_image.py and
openvino/pipelines.py) runs in the bench's own venv (bench/openvino_setup.sh): optimum-intel's
OVStableDiffusionPipeline (text encoder, UNet, VAE in OpenVINO, its default precision),
reshaped to 512x512 and compiled, with TAESD's decoder in OpenVINO (bench/fastsd_recipe.py).

Writes bench/cache/pipeline-bench.json; bench/pipeline_report.py turns it into the table and
plot in bench/results.md.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

T_PROCESS_START = time.perf_counter()

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / "cache"
OUT = CACHE / "pipeline-bench.json"
LOCK = "/tmp/heavy.lock"
TAESD = CACHE / "taesd-full-random"
OV_CACHE = CACHE / "openvino-pipeline"
BF16_CACHE = CACHE / "bf16"
IMAGES = 4  # per row: the first (it may pay a first call) and the median of the other three
SIZE = 512
PROMPT = "a lighthouse at dusk, oil painting"
RECIPE = {"scheduler": "Euler trailing", "steps": 1, "guidance_scale": 0.0}
# row architecture -> (engine.random_model ARCHITECTURES name, what the row stands for)
ARCHS = {
    "sdxs": ("sdxs", "SDXS-512-0.9 architecture (pruned UNet, OpenCLIP-H, tiny VAE)"),
    "sd-turbo": ("sd-turbo", "SD-Turbo architecture (SD 2.1-base UNet, OpenCLIP-H)"),
    "sdxs-dreamshaper": ("sdxs-dreamshaper", "SDXS-512-DreamShaper architecture (CLIP-L)"),
    "sd1-1step": ("full", "SD 1.x (v1-4 architecture) at 1 step, as a baked 1-step LoRA runs"),
}


def model_dir(arch: str) -> Path:
    """The random-weight folder of `arch` (built once)."""
    return CACHE / f"{ARCHS[arch][0]}-random"


def full_vae_view(arch: str) -> Path:
    """SDXS with its full VAE (vae_large/) as vae/: the folder a user makes to decode with it.
    Other architectures already have the full VAE."""
    source = model_dir(arch)
    if not (source / "vae_large").is_dir():
        return source
    view = CACHE / f"{source.name}-vae-large"
    if not view.is_dir():
        # Folders of linked files (no linked folders: rglob, as the exporter's, skips those).
        for path in source.rglob("*"):
            relative = path.relative_to(source)
            if path.is_file() and relative.parts[0] not in ("vae", "model_index.json"):
                parts = relative.parts
                target = view.joinpath("vae" if parts[0] == "vae_large" else parts[0], *parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
        index = json.loads((source / "model_index.json").read_text())
        index["vae"] = ["diffusers", "AutoencoderKL"]
        (view / "model_index.json").write_text(json.dumps(index, indent=2))
    return view


def rows(only: str | None) -> list[dict]:
    """Every row: (architecture, engine, decoder), then FastSD CPU's recipe per architecture."""
    out = []
    for arch in ARCHS:
        if only and arch != only:
            continue
        tiny_vae = (model_dir(arch) / "vae_large").is_dir()
        for engine in ("torch", "openvino"):
            for decoder in ("full", "tiny"):
                # SDXS's own vae/ is TAESD's architecture: its TAESD rows decode with it.
                folder = full_vae_view(arch) if decoder == "full" else model_dir(arch)
                taesd = "" if (decoder == "tiny" and tiny_vae) else str(TAESD)
                out.append({"name": f"{arch}/{engine}/{'vae' if decoder == 'full' else 'taesd'}",
                            "arch": arch, "engine": engine, "decoder": decoder,
                            "env": {"MODEL_ID": str(folder), "ENGINE": engine, "DTYPE": "auto",
                                    "TAESD_MODEL": taesd, "TORCH_THREADS": "2",
                                    "SAFETY_CHECKER": "off", "OUTPUT_DIR": "",
                                    "OPENVINO_CACHE_DIR": str(OV_CACHE),
                                    "BF16_CACHE_DIR": str(BF16_CACHE), "MIN_SIZE": "256",
                                    "MAX_SIZE": "768", "DEFAULT_SIZE": str(SIZE)},
                            "request": {**RECIPE, "vae_decoder": decoder if taesd else "full"}})
        out.append({"name": f"{arch}/fastsd-recipe", "arch": arch, "engine": "fastsd",
                    "decoder": "tiny", "model": str(full_vae_view(arch))})
    return out


def cpu_model() -> str:
    """This CPU's model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def worker(row: dict, timed: bool) -> dict:
    """One row in this fresh process: load, IMAGES images, the figures."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(BENCH))
    from run import AnonPeak, _status_kib

    anon = AnonPeak()
    load_before = os.getloadavg()
    from config import Settings
    from engine import Engine
    from params import parse_generation_request

    # bf16, as DTYPE=auto chose on this CPU when quiet (its probe: bf16 5.2x f32); under load
    # the probe once measured less than its 1.3x threshold and chose float32, which would
    # make rows differ by the machine's mood rather than by what they compare.
    env = {**row["env"], "DTYPE": "bfloat16"} if row["env"].get("DTYPE") == "auto" else row["env"]
    settings = Settings.from_env(env)
    engine = Engine(settings)
    t0 = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - t0
    if engine.status.state != "ready":
        return {"error": f"load failed: {engine.status.error}"}
    out = {"load_s": round(load_s, 2), "dtype": engine.status.dtype,
           "optimizations": list(engine.status.optimizations),
           "engine_info": engine.engine_info(), "family": engine.info().get("family")}
    if not timed:
        return out
    anon_after_load = _status_kib("RssAnon")
    request = parse_generation_request({"prompt": PROMPT, "width": SIZE, "height": SIZE,
                                        **row["request"]}, settings)
    seconds, decode = [], []
    for seed in range(IMAGES):
        t = time.perf_counter()
        result = engine.generate(request, 42 + seed)
        seconds.append(time.perf_counter() - t)
        decode.append(result.decode_seconds)
    return {**out, "first_image_s": round(seconds[0], 2),
            "image_s": round(statistics.median(seconds[1:]), 2),
            "images_s": [round(s, 2) for s in seconds],
            "decode_s": round(statistics.median(decode[1:]), 2),
            "engine_info_after": engine.engine_info(),
            "peak_rss_gib": round(_status_kib("VmHWM") / 2**20, 2),
            "peak_anon_gib": round(anon.stop() / 2**20, 2),
            "anon_after_load_gib": round(anon_after_load / 2**20, 2),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "precision": engine.status.precision}


def run_row(row: dict, timed: bool) -> dict:
    """`row` in a fresh process holding the heavy lock; its figures or {"error"}."""
    if row["engine"] == "fastsd":
        from openvino_bench import ensure_venv

        python = str(ensure_venv())
        cmd = [python, str(BENCH / "fastsd_recipe.py"), "--model", row["model"], "--taesd",
               str(TAESD), "--size", str(SIZE), "--images", str(IMAGES), "--prompt", PROMPT]
        if not timed:
            cmd.append("--prepare")
    else:
        cmd = [sys.executable, __file__, "--worker", json.dumps(row)]
        if not timed:
            cmd.append("--prepare")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)  # lock held by main
    wall = round(time.perf_counter() - started, 1)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "process_wall_s": wall}
    return {"error": (proc.stderr or proc.stdout)[-2000:], "process_wall_s": wall}


def ensure_models() -> None:
    """Every architecture's random folder and the full-size random TAESD (built once)."""
    sys.path.insert(0, str(ROOT))
    from engine.random_model import build_random_pipeline, build_random_taesd

    for arch in ARCHS:
        if not (model_dir(arch) / "model_index.json").is_file():
            print("building", model_dir(arch), flush=True)
            build_random_pipeline(model_dir(arch), ARCHS[arch][0])
    if not (TAESD / "config.json").is_file():
        build_random_taesd(TAESD, "full")


def main() -> None:
    """Prepare every configuration untimed, then run the timed rows; write OUT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(ARCHS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker), not args.prepare)),
              flush=True)
        return
    sys.path.insert(0, str(BENCH))
    ensure_models()
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data.update({"cpu": cpu_model(), "cores": os.cpu_count(), "size": SIZE,
                 "images": IMAGES, "recipe": RECIPE})
    prepared, results = data.setdefault("prepare", {}), data.setdefault("rows", {})
    # The heavy lock once for the whole run (its rows one after another, each in a fresh
    # process): with several developers' jobs queued, taking it per row or per architecture
    # would queue this run behind all of them again each time.
    lock = open(LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("lock taken", time.strftime("%H:%M:%S"), flush=True)
    data["lock_taken"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for arch in [args.only] if args.only else ARCHS:  # one architecture at a time
        todo = rows(arch)
        for row in todo if not args.skip_prepare else ():
            # One-off work (exports, bf16 copies) outside the timed rows: a TAESD row makes
            # every export and bf16 copy of its architecture; SDXS's full VAE is apart.
            if row["decoder"] == "full" and not (row["engine"] == "openvino"
                                                 and "vae-large" in row["env"]["MODEL_ID"]):
                continue
            prepared[row["name"]] = run_row(row, timed=False)
            print("prepared", row["name"], json.dumps(prepared[row["name"]])[:300], flush=True)
            OUT.write_text(json.dumps(data, indent=1))
        for row in todo:
            results[row["name"]] = {**{k: row[k] for k in ("arch", "engine", "decoder")},
                                    **run_row(row, timed=True)}
            print(row["name"], json.dumps(results[row["name"]])[:400], flush=True)
            OUT.write_text(json.dumps(data, indent=1))
    lock.close()  # releases the lock
    if shutil.which("uptime"):
        data["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                              text=True).stdout.strip()
    OUT.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
