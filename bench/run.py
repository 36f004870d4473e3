"""Benchmark the engine on the full-size SD v1-4 architecture (random weights), one command:

    python3 bench/run.py                 # 512x512, every configuration, writes bench/results.md
    python3 bench/run.py --size 256 --steps 2 --only default   # a quick check while developing
    python3 bench/report.py              # rewrite results.md and the plot from the last run

What it measures, each configuration in a fresh subprocess that holds /tmp/heavy.lock (so
the 2 shared cores are quiet and RSS peaks are per configuration):
seconds per UNet step (median), text encode, VAE decode, load time, process start -> first
step, peak RSS (VmHWM) and peak anonymous RSS (RssAnon, sampled every 20 ms), the % of this
CPU's measured matmul peak the UNet reaches, and the final latents' max abs difference from
a plain diffusers StableDiffusionPipeline fp32 run with the same inputs. Then the same
generation inside a 2 GiB memory cgroup, and the server's startup (listening, healthy).

The model is built once by `engine.build_random_pipeline` into bench/cache/ (git-ignored)
and loaded through the project's own `engine.Engine`, exactly as the server loads SD v1-4.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

T_PROCESS_START = time.perf_counter()  # before torch is imported: "start -> first step"

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / "cache"
MODEL_DIR = CACHE / "sd-v1-4-random"
LOCK = "/tmp/heavy.lock"
CGROUP = Path("/sys/fs/cgroup/memory/sd-bench-2g")
CGROUP_LIMIT = 2 * 1024**3
UNET_TFLOP_PER_CFG_STEP_512 = 1.354  # counted below with torch.utils.flop_counter
EXPECTED_PARAMS_M = {"unet": 859.5, "vae": 83.7, "text_encoder": 123.1}

PROMPT, NEGATIVE, SEED, GUIDANCE = "a lighthouse at dusk, oil painting", "blurry", 42, 7.5

# name -> (environment for Settings.from_env, what it is). The seed recipe comes first:
# every ratio is against it. "busy" configs run beside a process that keeps one core busy
# (a laptop with a browser open).
TAESD_DIR = CACHE / "taesd-random"
LORA_DIR = CACHE / "loras"
# file stem -> build_random_lora arguments (the LCM one is marked LCM by its name)
LORA_FILES = {
    "bench-peft-r16": {"fmt": "peft", "rank": 16, "seed": 1},
    "bench-kohya-r16": {"fmt": "kohya", "rank": 16, "seed": 2},
    "lcm-lora-random-r64": {"fmt": "peft", "rank": 64, "seed": 3, "text_encoder": False,
                            "lcm": True},
}
CONFIGS: dict[str, tuple[dict[str, str], str]] = {
    "seed": ({"ATTENTION_SLICING": "on", "DTYPE": "float32"},
             "the seed recipe: fp32, attention slicing"),
    "default": ({}, "the project default (no settings)"),
    "dtype-auto": ({"DTYPE": "auto"}, "DTYPE=auto (the load-time probe decides)"),
    "bf16": ({"DTYPE": "bfloat16"}, "DTYPE=bfloat16 (weights from the mmapped bf16 cache)"),
    "cfg-cutoff": ({"CFG_CUTOFF": "0.5"}, "cfg_cutoff=0.5 alone"),
    "deep-cache": ({"DEEP_CACHE": "3"}, "deep_cache=3 alone"),
    "tiny-vae": ({"VAE_DECODER": "tiny", "TAESD_MODEL": str(TAESD_DIR)},
                 "vae_decoder=tiny (TAESD) alone"),
    "dpm-karras": ({}, "DPM++ 2M Karras alone (same steps as PNDM)"),
    "fp32-small": ({}, "float32 at the size and steps given (the bf16 row's reduced ones, "
                   "for its ratio and latent difference)"),
    "preset-balanced": ({"SPEED_PRESET": "balanced", "TAESD_MODEL": str(TAESD_DIR)},
                        "speed_preset=balanced (whole image, its own steps)"),
    "preset-fast": ({"SPEED_PRESET": "fast", "TAESD_MODEL": str(TAESD_DIR)},
                    "speed_preset=fast (whole image, its own steps)"),
    "threads-1": ({"TORCH_THREADS": "1"}, "TORCH_THREADS=1"),
    "busy-threads-2": ({"TORCH_THREADS": "2"}, "TORCH_THREADS=2, other core busy"),
    "busy-threads-2-passive": ({"TORCH_THREADS": "2"}, "TORCH_THREADS=2, other core busy, "
                               "OMP_WAIT_POLICY=PASSIVE"),
    "busy-threads-1": ({"TORCH_THREADS": "1"}, "TORCH_THREADS=1, other core busy"),
    "busy-adaptive": ({"TORCH_THREADS": "0"}, "TORCH_THREADS=0 (adaptive, the default), "
                      "other core busy"),
    # LoRAs (issue 12): peft adapters, not fused; compared with "lora-base", the default
    # measured in the same run right before them
    "lora-base": ({"LORA_DIR": str(LORA_DIR)}, "the project default, beside the LoRA rows "
                  "(their baseline)"),
    "lora-1": ({"LORA_DIR": str(LORA_DIR)}, "one LoRA (peft, rank 16 on attention + text "
               "encoder, weight 0.8)"),
    "lora-2": ({"LORA_DIR": str(LORA_DIR)}, "two LoRAs at once (that one + a kohya one, "
               "rank 16, weight 0.6)"),
    "lcm-lora-4": ({"LORA_DIR": str(LORA_DIR)}, "an LCM-LoRA-SD1.5-shaped LoRA (rank 64, "
                   "attention + conv, UNet only) with its defaults: LCM, 4 steps, guidance 1 "
                   "(no CFG); whole image"),
    # the first two again, to show how much this shared VM drifts during the run
    "seed-again": ({"ATTENTION_SLICING": "on", "DTYPE": "float32"}, "the seed recipe, repeated"),
    "default-again": ({}, "the project default, repeated"),
}
# What a plain `bench/run.py` measures (the thread-policy rows were measured on earlier CPUs;
# name them with --only to re-run them).
DEFAULT_RUN = ["seed", "default", "dtype-auto", "bf16", "cfg-cutoff", "deep-cache", "tiny-vae",
               "dpm-karras", "preset-balanced", "preset-fast", "lora-base", "lora-1", "lora-2",
               "lcm-lora-4", "seed-again", "default-again"]
# Request fields per config (on top of prompt, negative prompt, guidance, size and, unless a
# preset decides them, --steps).
# A None drops the field, so the request gets its own default (an LCM-LoRA's guidance 1).
REQUESTS: dict[str, dict] = {
    "dpm-karras": {"scheduler": "DPM++ 2M Karras"},
    "lora-1": {"loras": [{"name": "bench-peft-r16", "weight": 0.8}]},
    "lora-2": {"loras": [{"name": "bench-peft-r16", "weight": 0.8},
                         {"name": "bench-kohya-r16", "weight": 0.6}]},
    "lcm-lora-4": {"loras": [{"name": "lcm-lora-random-r64", "weight": 1.0}],
                   "guidance_scale": None},
}
# Speed-ups whose steps differ in cost (cached or batch-1 steps) run this many steps, so the
# mix of cheap and full steps is close to a 25-step image's.
SPEEDUP_STEPS = {"cfg-cutoff": 10, "deep-cache": 10}
# Rows whose request decides its own steps: measured as a whole image.
OWN_STEPS = {"preset-balanced", "preset-fast", "lcm-lora-4"}
# Process environment (read by OpenMP when torch loads) for some configs.
PROCESS_ENV = {"busy-threads-2-passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
BUSY_STEPS = 2  # a busy core can make a step 5-10x slower: keep each lock hold short
# Where the machine probe finds bf16 below this fraction of fp32's speed, its row shrinks.
BF16_HOPELESS = 0.25
BF16_HOPELESS_SIZE = 128


# ------------------------------------------------------------------ worker side
def _status_kib(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonPeak:
    """Samples RssAnon every 20 ms in a thread (the kernel keeps no high-water mark for it)."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))
        return self.peak_kib


def worker(args) -> None:
    """One configuration in this (fresh) process: load, generate, measure, print JSON."""
    if args.cgroup:  # join the memory cgroup before anything big is allocated
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    anon = AnonPeak()
    sys.path.insert(0, str(ROOT))
    env = json.loads(args.env)
    import torch

    from config import Settings
    from engine import Engine
    from params import parse_generation_request

    settings = Settings.from_env({"MODEL_ID": str(MODEL_DIR), "OUTPUT_DIR": "",
                                  "MIN_SIZE": "64", "MAX_SIZE": "1024",
                                  "BF16_CACHE_DIR": str(CACHE / "bf16"), "TAESD_MODEL": "",
                                  **env})
    engine = Engine(settings)
    t0 = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - t0
    if engine.status.state != "ready":
        raise SystemExit(f"load failed: {engine.status.error}")
    after_load_anon = _status_kib("RssAnon")
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": GUIDANCE,
            "width": args.size, "height": args.size, **REQUESTS.get(args.name, {})}
    body = {k: v for k, v in body.items() if v is not None}
    if args.name not in OWN_STEPS:
        body["steps"] = args.steps
    # Through the one validator every dialect uses, so the server's knobs and presets apply.
    request = parse_generation_request(body, settings)
    marks, last, lora_s = [], {}, []
    activate = engine.loras.activate

    def timed_activate(*a, **k):  # loading the LoRA files into adapters, inside generate
        t = time.perf_counter()
        activate(*a, **k)
        lora_s.append(time.perf_counter() - t)
    engine.loras.activate = timed_activate

    def on_step(step, total, latents):
        marks.append(time.perf_counter())
        last["anon_steps_kib"] = anon.peak_kib  # so far: load + text encode + UNet steps
        last["latents"] = latents.detach().to(torch.float32).clone()

    t_gen, cpu_gen = time.perf_counter(), time.process_time()
    result = engine.generate(request, SEED, on_step=on_step)
    t_end, cpu_end = time.perf_counter(), time.process_time()
    steps = [b - a for a, b in zip(marks, marks[1:])]  # the first also pays text encoding
    pipe = engine.pipe
    encode = []
    with torch.inference_mode():
        for _ in range(3):
            t = time.perf_counter()
            pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
            encode.append(time.perf_counter() - t)
    encode.sort()
    torch.save(last["latents"], CACHE / f"latents-{args.name}.pt")
    out = {
        "name": args.name, "env": env, "optimizations": list(engine.status.optimizations),
        "dtype": engine.status.dtype, "threads": engine.status.torch_threads,
        "load_s": load_s, "start_to_first_step_s": marks[0] - T_PROCESS_START,
        "first_step_s": marks[0] - t_gen, "step_s": sorted(steps),
        "step_median_s": sorted(steps)[len(steps) // 2] if steps else None,
        "text_encode_s": encode[1], "vae_decode_png_s": t_end - marks[-1],
        "decode_s": result.decode_seconds, "request": request.to_dict(), "size": args.size,
        "precision": engine.status.precision,
        "step_mean_s": sum(steps) / len(steps) if steps else None,
        "unet_evals": len(marks), "generate_s": t_end - t_gen,
        # cores this process kept busy while generating: well below TORCH_THREADS means
        # something outside the lock competed for the CPU
        "cores_used": (cpu_end - cpu_gen) / (t_end - t_gen),
        "peak_rss_kib": _status_kib("VmHWM"), "peak_anon_kib": anon.stop(),
        "anon_after_load_kib": after_load_anon, "anon_steps_kib": last["anon_steps_kib"],
        "png_bytes": len(result.png), "lora_activate_s": lora_s[0] if lora_s else None,
    }
    if args.cgroup:
        cg = Path(args.cgroup)
        out["cgroup_max_usage"] = int((cg / "memory.max_usage_in_bytes").read_text())
        out["cgroup_failcnt"] = int((cg / "memory.failcnt").read_text())
    print("RESULT " + json.dumps(out), flush=True)


def reference_worker(args) -> None:
    """Plain diffusers, fp32, its own defaults: the fidelity reference for every config."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                       guidance_scale=GUIDANCE, width=args.size, height=args.size,
                       generator=torch.Generator("cpu").manual_seed(SEED),
                       output_type="latent").images
    torch.save(latents.to(torch.float32), CACHE / "latents-reference.pt")
    counts = {name: round(sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6, 1)
              for name in EXPECTED_PARAMS_M}
    print("RESULT " + json.dumps({"params_m": counts}), flush=True)


def machine_worker(args) -> None:
    """Matmul peak (fp32 and bf16, large torch.mm) and the UNet's FLOPs per CFG step."""
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from engine.cpu import probe_precision

    probe = probe_precision(threads).as_dict()  # what the engine's DTYPE=auto sees

    def rate(fn, flop: float, repeats: int = 5) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return flop / best / 1e9

    peaks, conv = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        # Without bf16 kernels a 4096^2 bf16 matmul takes minutes: size it by the probe.
        n = 4096 if dtype == torch.float32 or probe["bf16_speedup"] >= BF16_HOPELESS else 1024
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        peaks[name] = rate(lambda: torch.mm(a, b), 2 * n**3)
        # The UNet's own conv (oneDNN): 320 channels at 64x64, batch 2 (a 512x512 CFG step).
        rows = 64 if n == 4096 else 8
        x = torch.randn(2, 320, rows, 64, dtype=dtype)
        w = torch.randn(320, 320, 3, 3, dtype=dtype)
        with torch.inference_mode():
            conv[name] = rate(lambda: torch.nn.functional.conv2d(x, w, padding=1),
                              2 * 2 * 320 * 320 * 9 * rows * 64, 3)
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet = UNet2DConditionModel.from_pretrained(str(MODEL_DIR / "unet"))
    h = args.size // 8
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(torch.randn(2, 4, h, h), torch.tensor(500),
             encoder_hidden_states=torch.randn(2, 77, 768))
    print("RESULT " + json.dumps({"matmul_gflops": peaks, "conv_gflops": conv, "probe": probe,
                                  "threads": threads,
                                  "unet_tflop_per_step": counter.get_total_flops() / 1e12}),
          flush=True)


# ------------------------------------------------------------------ parent side
def run_locked(argv: list[str], busy: bool = False, cgroup: str | None = None,
               extra_env: dict | None = None) -> dict:
    """Run this script as a worker under `flock /tmp/heavy.lock`; return its RESULT JSON."""
    cmd = ["flock", LOCK, sys.executable, __file__, *argv]
    if cgroup:
        cmd += ["--cgroup", cgroup]
    if busy:  # the competitor must start only once we hold the lock: wrap it in the worker
        cmd = ["flock", LOCK, "sh", "-c",
               f"{sys.executable} -c 'while True: pass' & B=$!; "
               f"{' '.join(map(_quote, cmd[2:]))}; R=$?; kill $B; exit $R"]
    print("$", " ".join(argv), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(extra_env or {})})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": f"exit {proc.returncode}: {tail}"}


def run_openvino(args, data: dict) -> None:
    """The OpenVINO rows (optimum-intel in its own venv, same random weights, same prompt),
    fp32 and OpenVINO's default precision, side by side with ours."""
    import openvino_bench

    for precision in openvino_bench.PRECISIONS:
        name = f"openvino-{precision}"
        print("$ openvino", precision, flush=True)
        r = openvino_bench.run(MODEL_DIR, args.size, args.steps, precision,
                               threads=len(os.sched_getaffinity(0)),
                               latents_out=CACHE / f"latents-{name}.pt")
        data["configs"][name] = r
        data["descriptions"][name] = (f"OpenVINO (optimum-intel), "
                                      f"{'fp32' if precision == 'f32' else 'its default precision'}")
        print(name, {k: r.get(k) for k in ("step_median_s", "peak_anon_kib", "error")},
              flush=True)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def ensure_model() -> None:
    if not (TAESD_DIR / "config.json").exists():
        subprocess.run(["flock", LOCK, sys.executable, "-c",
                        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from engine.random_model "
                        f"import build_random_taesd; build_random_taesd({str(TAESD_DIR)!r}, "
                        "'full')"], check=True)
    if (MODEL_DIR / "model_index.json").exists():
        return
    print(f"building the full-size random-weight SD v1-4 in {MODEL_DIR} (~4 GB, once)")
    subprocess.run(["flock", LOCK, sys.executable, "-c",
                    f"import sys; sys.path.insert(0, {str(ROOT)!r}); from engine import "
                    f"build_random_pipeline; build_random_pipeline({str(MODEL_DIR)!r}, 'full')"],
                   check=True)


def ensure_loras() -> None:
    """The random LoRAs of LORA_FILES in bench/cache/loras (git-ignored), built once."""
    for stem, spec in LORA_FILES.items():
        path = LORA_DIR / f"{stem}.safetensors"
        if path.exists():
            continue
        kwargs = {k: v for k, v in spec.items() if k != "lcm"}
        targets = "LCM_TARGETS" if spec.get("lcm") else "ATTENTION_TARGETS"
        print(f"building the random LoRA {path.name}", flush=True)
        subprocess.run(["flock", LOCK, sys.executable, "-c",
                        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.random_lora "
                        f"import build_random_lora, {targets}; build_random_lora("
                        f"{str(MODEL_DIR)!r}, {str(path)!r}, targets={targets}, **{kwargs!r})"],
                       check=True)


def drop_from_page_cache(folder: Path) -> None:
    """Evict the model's files from the page cache (only these files, not the machine's)."""
    for path in folder.rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def capped_run(args, env: dict, cold: bool) -> dict:
    """The same generation inside a cgroup-v1 memory cgroup limited to 2 GiB."""
    if not Path("/sys/fs/cgroup/memory").is_dir():
        return {"error": "cgroup v1 memory controller not mounted at /sys/fs/cgroup/memory"}
    try:
        CGROUP.mkdir(exist_ok=True)
        (CGROUP / "memory.limit_in_bytes").write_text(str(CGROUP_LIMIT))
        (CGROUP / "memory.max_usage_in_bytes").write_text("0")
        (CGROUP / "memory.failcnt").write_text("0")
    except OSError as exc:
        return {"error": f"cannot create {CGROUP}: {exc}"}
    if cold:
        drop_from_page_cache(MODEL_DIR)
    name = "capped-cold" if cold else "capped-warm"
    try:
        return run_locked(["--worker", name, "--env", json.dumps(env), "--size", str(args.size),
                           "--steps", str(args.steps)], cgroup=str(CGROUP))
    finally:
        try:
            CGROUP.rmdir()
        except OSError:
            pass


def startup_run(port: int = 5077) -> dict:
    """`python app.py` on the full-size model: seconds to listening and to /health 200."""
    env = {**os.environ, "MODEL_ID": str(MODEL_DIR), "PORT": str(port), "OUTPUT_DIR": "",
           "LOG_LEVEL": "WARNING"}
    for path in MODEL_DIR.rglob("*"):  # warm disk cache, as the issue asks
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    import fcntl

    lock = open(LOCK, "a")  # the same lock `flock /tmp/heavy.lock` takes, held in this process
    fcntl.flock(lock, fcntl.LOCK_EX)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening = healthy = None
    try:
        while time.time() - t0 < 120:
            if listening is None:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    listening = time.time() - t0
                except OSError:
                    pass
            if listening is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            healthy = time.time() - t0
                            break
                except Exception:
                    pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(60)
        lock.close()
    return {"listening_s": listening, "healthy_s": healthy}


def machine_summary() -> dict:
    import diffusers
    import torch

    cpu = flags = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not cpu:
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
              "amx_tile", "amx_bf16", "amx_int8")
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return {"cpu": cpu, "flags": [f for f in wanted if f in flags],
            "missing": [f for f in wanted if f not in flags],
            "cores": len(os.sched_getaffinity(0)), "mem_gib": round(mem, 1),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4, help="denoising steps (PNDM runs +1 UNet)")
    p.add_argument("--only", default="", help="comma-separated config names")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: "
                   "machine,reference,openvino,capped,startup")
    p.add_argument("--merge", action="store_true", help="update bench/cache/results.json "
                   "with this run's measurements instead of starting afresh")
    p.add_argument("--out", default=str(BENCH / "results.md"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--env", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--cgroup", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "machine":
        return machine_worker(args)
    if args.worker == "reference":
        return reference_worker(args)
    if args.worker:
        args.name = args.worker
        return worker(args)

    ensure_model()
    skip = set(filter(None, args.skip.split(",")))
    names = [n for n in (args.only.split(",") if args.only else DEFAULT_RUN)]
    if any(CONFIGS[n][0].get("LORA_DIR") for n in names):
        ensure_loras()
    common = ["--size", str(args.size), "--steps", str(args.steps)]
    data: dict = {"machine": machine_summary(), "size": args.size, "steps": args.steps,
                  "configs": {}, "descriptions": {n: CONFIGS[n][1] for n in names}}
    if "machine" not in skip:
        data["peak"] = run_locked(["--worker", "machine", *common])
        print(data["peak"], flush=True)
    if "reference" not in skip:
        data["reference"] = run_locked(["--worker", "reference", *common])
        print(data["reference"], flush=True)
    bf16_hopeless = (data.get("peak", {}).get("probe", {}).get("bf16_speedup", 1)
                     < BF16_HOPELESS)
    for name in names:
        env, _ = CONFIGS[name]
        busy = name.startswith("busy-")
        argv = ["--worker", name, "--env", json.dumps(env), *common]
        if busy:
            argv += ["--steps", str(min(args.steps, BUSY_STEPS))]
        elif name in SPEEDUP_STEPS:
            argv += ["--steps", str(SPEEDUP_STEPS[name])]
        elif env.get("DTYPE") == "bfloat16" and bf16_hopeless:
            # bf16 with no bf16 kernels runs at ~1 % of fp32 here: a 512x512 step would take
            # over an hour. One step at 128x128 still shows the ratio and the memory path.
            argv += ["--steps", "1", "--size", str(BF16_HOPELESS_SIZE)]
            data["descriptions"][name] += (f" - reduced to 1 step at {BF16_HOPELESS_SIZE}x"
                                           f"{BF16_HOPELESS_SIZE}: bf16 is hopeless here")
        r = run_locked(argv, busy=busy, extra_env=PROCESS_ENV.get(name))
        data["configs"][name] = r
        print(name, {k: r.get(k) for k in ("step_median_s", "generate_s", "peak_anon_kib",
                                           "error")}, flush=True)
    if "openvino" not in skip:
        run_openvino(args, data)
    if "capped" not in skip:
        for cold in (False, True):
            r = capped_run(args, {}, cold)
            data["configs"]["capped-cold" if cold else "capped-warm"] = r
            data["descriptions"]["capped-cold" if cold else "capped-warm"] = (
                "default, in a 2 GiB memory cgroup" + (
                    ", model evicted from page cache first" if cold else ", page cache warm"))
            print("capped", cold, {k: r.get(k) for k in ("step_median_s", "error")}, flush=True)
    if "startup" not in skip:
        data["startup"] = startup_run()
        print("startup", data["startup"], flush=True)
    if args.merge and (CACHE / "results.json").exists():
        old = json.loads((CACHE / "results.json").read_text())
        for key in ("configs", "descriptions"):
            old[key].update(data[key])
        # The run's own size/steps/machine stay those of the main run: merged rows carry
        # their own size and request.
        keep = ("configs", "descriptions", "size", "steps", "machine")
        data = {**old, **{k: v for k, v in data.items() if k not in keep}}
    add_fidelity(data)
    (CACHE / "results.json").write_text(json.dumps(data, indent=1))
    import report

    report.write(data, Path(args.out))
    print(f"wrote {args.out}")


def add_fidelity(data: dict) -> None:
    import torch

    ref_path = CACHE / "latents-reference.pt"
    if not ref_path.exists():
        return
    ref = torch.load(ref_path)
    for name, r in data["configs"].items():
        path = CACHE / f"latents-{name}.pt"
        if "error" not in r and (r.get("unet_evals") != data["steps"] + 1
                                 or (r.get("request") or {}).get("loras")):
            r["max_abs_diff"] = None  # other steps, or a LoRA changes the image: not comparable
        elif "error" not in r and path.exists():
            lat = torch.load(path)
            if lat.shape != ref.shape:  # another size (a quick --size check)
                r["max_abs_diff"] = None
                continue
            r["max_abs_diff"] = (lat - ref).abs().max().item()
            r["ref_abs_max"] = ref.abs().max().item()


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()
