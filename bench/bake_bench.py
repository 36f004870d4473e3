"""What does baking a LoRA cost, and what does it save per step?

    .venv/bin/python bench/bake_bench.py [--size 512] [--steps 3] [--write]

(each phase takes /tmp/heavy.lock itself, so other heavy jobs may run between phases, never
during one).

On the full-size random SD v1-4 (bench/cache/sd-v1-4-random, built by bench/run.py's
ensure_model) and a random rank-64 LoRA on the SD 1.x attention projections (UNet to_q/k/v/out
and the text encoder's q/k/v/out), each phase in a fresh process through the app's own code:
  bake      BAKE=<base>+<lora>:0.8 at engine load: seconds, peak RSS and RssAnon during it
  again     the same BAKE again (the key found on disk: no rewrite): seconds
  unbaked   the base with <lora:...:0.8> per job: s/step, RssAnon after the load and the image
  baked     MODEL_ID=the baked model, no LoRA: the same
`--write` saves bench/bake-results.md. The bakes go to bench/cache/bake-models/.baked/
(git-ignored; delete it to bake from scratch).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from img2img_memory import cpu_model, memory_mib  # noqa: E402
from run import CACHE, LOCK, MODEL_DIR, AnonPeak, ensure_model  # noqa: E402

LORAS = CACHE / "bake-loras"
MODELS = CACHE / "bake-models"
LORA = "bench-attn-r64"
WEIGHT = 0.8
BASE = MODEL_DIR.name
BAKED = f"{BASE}+{LORA}:{WEIGHT:g}"
RESULT_FILE = BENCH / "bake-results.md"
PHASES = ("bake", "again", "unbaked", "baked", "interleaved")


def settings_env(**extra: str) -> dict[str, str]:
    """The bench's settings: the full-size model, its LoRA folder, float32."""
    return {"MODEL_ID": str(MODEL_DIR), "LORA_DIR": str(LORAS), "MODELS_DIR": str(MODELS),
            "OUTPUT_DIR": "", "TAESD_MODEL": "", "DTYPE": "float32", "JOURNAL_PATH": "",
            # the base by its path, as MODEL_ID may name it (the baked phase's MODEL_ID is
            # the bake, and the base is in no MODELS_DIR)
            "BAKE": f"{BAKED}={MODEL_DIR}+{LORA}:{WEIGHT:g}", **extra}


def phase(name: str, size: int, steps: int) -> dict:
    """One phase in this process; its figures."""
    from config import Settings
    from engine import Engine
    from params import parse_generation_request

    env = settings_env(MODEL_ID=BAKED) if name == "baked" else settings_env()
    settings = Settings.from_env(env)
    engine = Engine(settings)
    peak = AnonPeak()
    started = time.perf_counter()
    engine.load()
    load_seconds = time.perf_counter() - started
    out = {"phase": name, "load_seconds": round(load_seconds, 1),
           "peak_anon_during_load": round(peak.stop() / 1024),
           "peak_rss_during_load": round(_hwm_mib()), **_rounded(memory_mib())}
    if engine.status.state != "ready":
        raise SystemExit(f"load failed: {engine.status.error}")
    if name in ("bake", "again"):
        return out
    prompt = "a lighthouse at dusk" + (f" <lora:{LORA}:{WEIGHT}>" if name == "unbaked" else "")
    request = parse_generation_request({"prompt": prompt, "steps": steps, "width": size,
                                        "height": size, "guidance_scale": 7.5,
                                        "scheduler": "Euler"}, settings)
    peak = AnonPeak()
    result = engine.generate(request, 42)
    out.update(seconds=round(result.seconds, 1), seconds_per_step=result.seconds_per_step,
               peak_anon_during_image=round(peak.stop() / 1024),
               after_image=_rounded(memory_mib()), threads=engine.status.torch_threads)
    (CACHE / f"bake-{name}.png").write_bytes(result.png)
    return out


def interleaved(size: int, rounds: int) -> dict:
    """One UNet call (CFG batch 2) of the base with the LoRA active, then of the baked UNet,
    alternately `rounds` times in this process, so load from other programs hits both
    alike; the seconds of each call."""
    import torch
    from diffusers import UNet2DConditionModel

    from catalog.loras import find_lora
    from config import Settings
    from engine import Engine

    settings = Settings.from_env(settings_env())
    engine = Engine(settings)
    engine.load()
    pipe = engine.pipe
    baked = UNet2DConditionModel.from_pretrained(
        _baked_folder() / "unet", low_cpu_mem_usage=True)
    engine.loras.activate(pipe, [(find_lora(settings, LORA), WEIGHT)])
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, size // 8, size // 8, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    times: dict[str, list[float]] = {"unbaked": [], "baked": []}
    with torch.inference_mode():
        for unet in (pipe.unet, baked):  # warm both once, untimed
            unet(sample, 500, encoder_hidden_states=context)
        for _ in range(rounds):
            for name, unet in (("unbaked", pipe.unet), ("baked", baked)):
                started = time.perf_counter()
                unet(sample, 500, encoder_hidden_states=context)
                times[name].append(round(time.perf_counter() - started, 2))
    return {"phase": "interleaved", **times, "threads": torch.get_num_threads()}


def _baked_folder() -> Path:
    """The one baked folder this bench writes."""
    return next(p for p in (MODELS / ".baked").iterdir() if p.is_dir())


def _cpu_flags() -> str:
    """' (AMX, AVX512-BF16)' as far as this CPU has them (the bf16 kernels torch can use)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split())
    except (OSError, IndexError):
        return ""
    found = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                     ("avx2", "AVX2")) if flag in flags]
    return f" ({', '.join(found[:2])})" if found else ""


def _hwm_mib() -> float:
    """This process's peak RSS (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rounded(figures: dict) -> dict:
    return {k: round(v) for k, v in figures.items()}


def ensure_lora() -> None:
    """The rank-64 attention LoRA, built once."""
    path = LORAS / f"{LORA}.safetensors"
    if path.exists():
        return
    from tests.random_lora import ATTENTION_TARGETS, build_random_lora

    build_random_lora(MODEL_DIR, path, "peft", rank=64, targets=ATTENTION_TARGETS,
                      text_encoder=True, seed=5)


def pixel_difference() -> int:
    """The largest difference of one channel between the unbaked and the baked image."""
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(CACHE / f"bake-{n}.png").convert("RGB"), dtype=int)
            for n in ("unbaked", "baked"))
    return int(np.abs(a - b).max())


def report(rows: dict, size: int, steps: int) -> str:
    """The Markdown page."""
    bake, again, unbaked, baked = (rows[n] for n in ("bake", "again", "unbaked", "baked"))
    folder = _baked_folder()
    written = sum(p.stat().st_size for p in folder.rglob("*.safetensors")
                  if not any(part.is_symlink() for part in [p, *p.parents][:3]))
    ratio = baked["seconds_per_step"] / unbaked["seconds_per_step"]
    bake_seconds = json.loads((folder / "bake.json").read_text())["seconds"]
    return f"""# Baking a LoRA (bench/bake_bench.py)

Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, each phase under `flock /tmp/heavy.lock`. CPU:
{cpu_model()}{_cpu_flags()}, 2 cores shared with other work; float32.
Full-size SD v1-4 architecture with random weights; a random rank-64 LoRA on the attention
projections of the UNet (to_q/k/v/out) and of the text encoder (q/k/v/out), weight {WEIGHT}.
Each row is a fresh process going through the server's own code (Engine.load with
`BAKE={BAKED}`, then Engine.generate).

| phase | seconds | peak RSS MiB | peak RssAnon MiB | after: RssAnon / RssFile MiB |
|---|---:|---:|---:|---:|
| bake at first start (load included) | {bake['load_seconds']} | {bake['peak_rss_during_load']} | {bake['peak_anon_during_load']} | {bake['RssAnon']} / {bake['RssFile']} |
| the same BAKE again (key on disk, reused) | {again['load_seconds']} | {again['peak_rss_during_load']} | {again['peak_anon_during_load']} | {again['RssAnon']} / {again['RssFile']} |

The bake itself (merging and writing, inside that first start) took {bake_seconds} s.
Peak RSS counts the base's memory-mapped pages read while merging (file-backed: the kernel
drops them under pressure); anonymous memory is what a bake really takes.
Written: {written / 1e9:.2f} GB (the merged UNet and text encoder); the VAE, tokenizer and
scheduler are links to the base's folders.

| {size}x{size}, {steps} steps, Euler, CFG 7.5 | s/step | image s | RssAnon after load MiB | peak RssAnon during image MiB |
|---|---:|---:|---:|---:|
| base + LoRA per job (peft adapter, unbaked) | {unbaked['seconds_per_step']:.2f} | {unbaked['seconds']} | {unbaked['RssAnon']} | {unbaked['peak_anon_during_image']} |
| baked model, no LoRA | {baked['seconds_per_step']:.2f} | {baked['seconds']} | {baked['RssAnon']} | {baked['peak_anon_during_image']} |

Baked / unbaked s/step: {ratio:.2f} (two processes minutes apart, with {unbaked['threads']}
and {baked['threads']} torch threads: as many as the cores other programs left free, so this
ratio says more about the shared machine than about the LoRA{"" if unbaked['threads'] ==
baked['threads'] else "; the interleaved calls below are the fair comparison"}).
{_interleaved(rows.get("interleaved"), size)}
Largest pixel difference between the two images (same seed): {pixel_difference()} of 255.
"""


def _interleaved(row: dict | None, size: int) -> str:
    """The interleaved UNet calls as a sentence (empty when that phase did not run)."""
    if not row:
        return ""
    import statistics

    unbaked, baked = (statistics.median(row[n]) for n in ("unbaked", "baked"))
    return (f"\nOne UNet call ({size}x{size}, CFG batch 2), alternating in one process "
            f"({row['threads']} threads): unbaked {', '.join(map(str, row['unbaked']))} s, "
            f"baked {', '.join(map(str, row['baked']))} s; medians {unbaked:.2f} vs "
            f"{baked:.2f} s, baked/unbaked {baked / unbaked:.3f}.\n")


def main() -> None:
    """Run the phases in fresh processes, print (and with --write save) the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only", help="comma-separated phases to run again (of "
                        f"{', '.join(PHASES)}), the others' figures kept from the last run")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the page from the last run's figures")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        text = report(json.loads((CACHE / "bake-rows.json").read_text()), args.size,
                      args.steps)
        print(text)
        if args.write:
            RESULT_FILE.write_text(text)
        return
    if args.phase == "lora":
        ensure_lora()
        return
    if args.phase == "interleaved":
        print("RESULT " + json.dumps(interleaved(args.size, args.steps)), flush=True)
        return
    if args.phase:
        print("RESULT " + json.dumps(phase(args.phase, args.size, args.steps)), flush=True)
        return
    ensure_model()
    subprocess.run(["flock", LOCK, sys.executable, __file__, "--phase", "lora"], check=True)
    phases = args.only.split(",") if args.only else list(PHASES)
    rows = json.loads((CACHE / "bake-rows.json").read_text()) if args.only else {}
    if "bake" in phases:
        shutil.rmtree(MODELS / ".baked", ignore_errors=True)  # it bakes from scratch
    for name in phases:
        out = subprocess.run(["flock", LOCK, sys.executable, __file__, "--phase", name, "--size",
                              str(args.size), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
        rows[name] = json.loads(line[len("RESULT "):])
        print(name, rows[name], flush=True)
    (CACHE / "bake-rows.json").write_text(json.dumps(rows))  # `--report` rewrites the page
    text = report(rows, args.size, args.steps)
    print(text)
    if args.write:
        RESULT_FILE.write_text(text)


if __name__ == "__main__":
    main()
