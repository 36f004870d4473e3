"""What does a LoRA cost per step? Paired and interleaved, so load from other programs hits
every configuration alike:

    flock /tmp/heavy.lock .venv/bin/python bench/lora_overhead.py [--rounds 3] [--write]

Loads the full-size random SD v1-4 (bench/cache/sd-v1-4-random) through the app's Engine and
the random LoRAs bench/run.py made in bench/cache/loras/, then times one UNet call at 512x512
with CFG (batch 2) for: no LoRA, one LoRA (peft, rank 16 on attention + text encoder), two
LoRAs (+ a kohya one), round-robin `--rounds` times, adapters switched by the engine's own
LoraAdapters between calls (as between jobs). Reports each configuration's median, its ratio
to no LoRA from the same rounds, and RssAnon after each. `--write` saves
bench/lora-overhead.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from img2img_memory import cpu_model, memory_mib  # noqa: E402
from run import CACHE, MODEL_DIR  # noqa: E402

LORAS = CACHE / "loras"
RESULT_FILE = BENCH / "lora-overhead.md"
CONFIGS = {"no LoRA": [], "one LoRA": [("bench-peft-r16", 0.8)],
           "two LoRAs": [("bench-peft-r16", 0.8), ("bench-kohya-r16", 0.6)]}


def measure(rounds: int) -> tuple[dict, dict, dict]:
    """{config: [seconds per UNet call]}, {config: RssAnon MiB after}, facts."""
    import torch

    from config import Settings
    from engine import Engine
    from catalog.loras import find_lora

    settings = Settings.from_env({"MODEL_ID": str(MODEL_DIR), "LORA_DIR": str(LORAS),
                                  "OUTPUT_DIR": "", "TAESD_MODEL": "",
                                  "BF16_CACHE_DIR": str(CACHE / "bf16")})
    engine = Engine(settings)
    engine.load()
    if engine.status.state != "ready":
        raise SystemExit(f"load failed: {engine.status.error}")
    pipe = engine.pipe
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    anon: dict[str, float] = {}
    with torch.inference_mode():
        for name, loras in CONFIGS.items():  # load every adapter once, before timing
            engine.loras.activate(pipe, [(find_lora(settings, n), w) for n, w in loras])
            pipe.unet(sample, 500, encoder_hidden_states=context)
        for _ in range(rounds):
            for name, loras in CONFIGS.items():
                engine.loras.activate(pipe, [(find_lora(settings, n), w) for n, w in loras])
                started = time.perf_counter()
                pipe.unet(sample, 500, encoder_hidden_states=context)
                times[name].append(time.perf_counter() - started)
                anon[name] = memory_mib()["RssAnon"]
        engine.loras.deactivate(pipe)
    return times, anon, {"threads": engine.status.torch_threads, "dtype": engine.status.dtype}


def report(times: dict, anon: dict, facts: dict, rounds: int) -> str:
    """The Markdown page."""
    base = statistics.median(times["no LoRA"])
    rows = ["| configuration | median s per UNet call | vs no LoRA | each call (s) "
            "| RssAnon after (MiB) |", "|---|---:|---:|---|---:|"]
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.2f} | {median / base - 1:+.1%} | "
                    f"{', '.join(f'{v:.2f}' for v in values)} | {anon[name]:.0f} |")
    table = "\n".join(rows)
    return f"""# What a LoRA costs per step (bench/lora_overhead.py)

Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC under `flock /tmp/heavy.lock`. CPU:
{cpu_model()}, 2 cores; torch threads {facts['threads']}; weights {facts['dtype']}. Full-size
SD v1-4 architecture (random weights), one UNet call at 512x512 with CFG (batch 2), the three
configurations round-robin {rounds} times so that load from other programs falls on each
alike; LoRAs are active peft adapters (not fused), switched by the engine's LoraAdapters.

{table}
"""


def main() -> None:
    """Measure, print, and with --write save bench/lora-overhead.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    missing = [n for loras in CONFIGS.values() for n, _ in loras
               if not (LORAS / f"{n}.safetensors").exists()]
    if missing:
        raise SystemExit(f"missing {missing} in {LORAS}: run bench/run.py --only lora-1,lora-2")
    times, anon, facts = measure(args.rounds)
    text = report(times, anon, facts, args.rounds)
    print(text)
    if args.write:
        RESULT_FILE.write_text(text)


if __name__ == "__main__":
    main()
