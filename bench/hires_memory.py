"""Hires fix 512 -> 1024 on the full-size SD v1-4 architecture (random weights): peak
anonymous memory of each phase, and seconds, measured in one process:

    flock /tmp/heavy.lock .venv/bin/python bench/hires_memory.py          # print the table
    flock /tmp/heavy.lock .venv/bin/python bench/hires_memory.py --write  # and write
                                                                  # bench/hires-memory.md

The model is the one bench/run.py builds in bench/cache/sd-v1-4-random (build it first:
bench/run.py builds it under the same lock, so not from inside this one). Loads it through
the app's Engine with the server's default settings, then makes a plain 512x512 txt2img
(the reference), a hires fix with the "Latent" upscaler and one with "Lanczos" (an image
upscaler: decode at 512, resize, encode at 1024), each 2 + 2 steps, with HIRES_VAE_TILES on
(the default) and off. RssAnon is sampled every
20 ms; the step callback splits the peak into phases: first pass, upscale + second pass,
decode + PNG.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from img2img_memory import cpu_model, memory_mib  # noqa: E402
from run import MODEL_DIR, AnonPeak  # noqa: E402

RESULT_FILE = BENCH / "hires-memory.md"
SIZE, STEPS, SEED = 512, 2, 42
LATENT = {"scale": 2, "upscaler": "Latent", "steps": STEPS, "denoising_strength": 0.5}
LANCZOS = {**LATENT, "upscaler": "Lanczos"}
# name -> (hires object or None, HIRES_VAE_TILES)
RUNS = {"txt2img 512": (None, "on"),
        "hires 512->1024, Latent, VAE tiles": (LATENT, "on"),
        "hires 512->1024, Lanczos, VAE tiles": (LANCZOS, "on"),
        "hires 512->1024, Latent, one VAE pass": (LATENT, "off"),
        "hires 512->1024, Lanczos, one VAE pass": (LANCZOS, "off")}


def measure(threads: str = "0") -> tuple[list[dict], dict]:
    """Load, then each run; per run the peak RssAnon of each phase and the seconds
    (`threads`: TORCH_THREADS, 0 = adaptive as the server runs)."""
    from config import Settings
    from engine import Engine
    from params import parse_generation_request

    settings = Settings.from_env({"MODEL_ID": str(MODEL_DIR), "OUTPUT_DIR": "",
                                  "TAESD_MODEL": "", "MIN_SIZE": "64", "MAX_SIZE": "1024",
                                  "MAX_HIRES_SIZE": "1024", "TORCH_THREADS": threads})
    engine = Engine(settings)
    engine.load()
    if engine.status.state != "ready":
        raise SystemExit(f"load failed: {engine.status.error}")
    rows = []
    loaded = memory_mib()
    from dataclasses import replace

    for name, (hires, tiles) in RUNS.items():
        # the knob, as a server started with HIRES_VAE_TILES=<tiles> reads it
        engine._generation.settings = replace(settings, hires_vae_tiles=tiles)
        body = {"prompt": "a lighthouse at dusk", "steps": STEPS, "width": SIZE,
                "height": SIZE, **({"hires": hires} if hires else {})}
        request = parse_generation_request(body, settings)
        peak = AnonPeak()
        phases: list[tuple[int, float]] = []  # (step, peak KiB since the previous step)

        def on_step(step, _total, _latents, peak=peak, phases=phases):
            phases.append((step, peak.peak_kib))
            peak.peak_kib = 0  # the next interval's own peak

        started = time.perf_counter()
        result = engine.generate(request, SEED, on_step=on_step)
        seconds = time.perf_counter() - started
        tail = peak.stop()
        first = max(kib for step, kib in phases if step <= STEPS)
        second = max((kib for step, kib in phases if step > STEPS), default=None)
        rows.append({"run": name, "size": f"{result.width}x{result.height}",
                     "first": first / 1024, "second": second and second / 1024,
                     "decode": tail / 1024, "seconds": seconds,
                     "decode_seconds": result.decode_seconds, **memory_mib()})
    facts = {"dtype": engine.status.dtype, "threads": engine.status.torch_threads,
             "optimizations": engine.status.optimizations, "loaded": loaded}
    return rows, facts


def table(rows: list[dict]) -> str:
    """The rows as Markdown."""
    lines = ["| run | output | peak RssAnon, first pass MiB | upscale + second pass MiB | "
             "decode + PNG MiB | RssAnon after MiB | seconds (decode) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        second = "" if r["second"] is None else f"{r['second']:.0f}"
        lines.append(f"| {r['run']} | {r['size']} | {r['first']:.0f} | {second} | "
                     f"{r['decode']:.0f} | {r['RssAnon']:.0f} | {r['seconds']:.0f} "
                     f"({r['decode_seconds']:.0f}) |")
    return "\n".join(lines)


def report(rows: list[dict], facts: dict) -> str:
    """The Markdown page."""
    return f"""# Hires fix 512 -> 1024: memory by phase

Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `bench/hires_memory.py`, once,
under `flock /tmp/heavy.lock` (other developers' tests shared the 2 cores, so the seconds are
indicative only). CPU: {cpu_model()} (AMX, AVX512-BF16); torch threads: {facts['threads']};
weights: {facts['dtype']}; VAE: {', '.join(facts['optimizations']) or 'as loaded'}. Model:
full-size SD v1-4 architecture with random weights through the app's `Engine`, server
defaults. Each run {STEPS} first-pass steps at {SIZE}x{SIZE}; the hires runs then {STEPS}
second-pass steps at 1024x1024 (denoising strength 0.5). RssAnon after the load:
{facts['loaded']['RssAnon']:.0f} MiB (weights are memory-mapped: RssFile).

{table(rows)}

Peak RssAnon of each phase is sampled every 20 ms between step callbacks: "first pass" up to
its last step, "upscale + second pass" from there to the last step (the Lanczos run decodes
at 512, resizes and encodes at 1024 in it), "decode + PNG" after the last step.
"VAE tiles" is HIRES_VAE_TILES=on (the default): the VAE's work at 1024 in its own 512 px
tiles, blended, each decoded in row bands; "one VAE pass" is off: the whole 1024x1024 decode
in row bands (exact, as at 512) and the encode in one piece.
"""


def main() -> None:
    """Measure, print, and with --write save bench/hires-memory.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {RESULT_FILE.name}")
    parser.add_argument("--only", default="", help="run only the runs whose name contains "
                        "this text (the 512 px reference always runs)")
    parser.add_argument("--threads", default="0", help="TORCH_THREADS (0 = adaptive, "
                        "one per free core: fewer on a busy machine)")
    args = parser.parse_args()
    for name in [n for n in RUNS if args.only not in n and n != "txt2img 512"]:
        del RUNS[name]
    if not (MODEL_DIR / "model_index.json").exists():
        raise SystemExit(f"no model in {MODEL_DIR}: run bench/run.py once to build it")
    rows, facts = measure(args.threads)
    text = report(rows, facts)
    print(text)
    if args.write:
        RESULT_FILE.write_text(text)


if __name__ == "__main__":
    main()
