"""What a model upscale costs here: seconds and peak memory of a 4x with the full-size
RealESRGAN_x4plus architecture (23 RRDB blocks, 64 features, 32 growth; random weights),
through the server's own engine.upscalers.upscale_image:

    flock /tmp/heavy.lock .venv/bin/python bench/upscaler_bench.py          # print the table
    flock /tmp/heavy.lock .venv/bin/python bench/upscaler_bench.py --write  # and write
                                                                 # bench/upscaler.md

Each configuration runs in a fresh process (VmHWM is a per-process high-water mark): DTYPE=float32
and DTYPE=bfloat16 (the upscaler's bf16 autocast; measured, not assumed: it depends on the CPU's AMX / AVX512-BF16),
with the server's tile (engine.upscalers.TILE), input 512 px (and 1024 px for the memory
claim: a tile's activations, not the picture's). Peak RssAnon is sampled every 20 ms (bench/run.py's AnonPeak).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from run import CACHE, AnonPeak, _status_kib  # noqa: E402

MODELS = CACHE / "upscaler-models"
FILE = MODELS / "RealESRGAN" / "RealESRGAN_x4plus.pth"
RESULT_FILE = BENCH / "upscaler.md"
# (label, input px, tile, bf16)
CONFIGS = [("float32", 512, 192, False), ("bf16 autocast", 512, 192, True),
           ("float32", 1024, 192, False), ("bf16 autocast", 1024, 192, True)]
ROWS = CACHE / "upscaler-rows.json"  # every row measured so far, so --only adds one


def build_file() -> None:
    """The full-size x4plus file in Real-ESRGAN's layout (params_ema), random weights."""
    if FILE.exists():
        return
    import torch

    from catalog.upscalers import RRDBSpec
    from engine.rrdbnet import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(RRDBSpec("real-esrgan", 4, 3, 3, 64, 23, 32))
    state = {k.replace("ups.0.", "conv_up1.").replace("ups.1.", "conv_up2."): v
             for k, v in net.state_dict().items()}
    FILE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, FILE)


def one(size: int, tile: int, bf16: bool) -> dict:
    """One 4x upscale in this process; its seconds and memory."""
    import numpy as np
    import torch
    from PIL import Image

    from config import Settings
    from engine import upscalers

    settings = Settings.from_env({"MODELS_DIR": str(MODELS),
                                  "DTYPE": "bfloat16" if bf16 else "float32"})
    upscalers.TILE = tile
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    before = _status_kib("RssAnon")
    peak = AnonPeak()
    started = time.perf_counter()
    out = upscalers.upscale_image(image, "R-ESRGAN 4x+", (4 * size, 4 * size), settings)
    seconds = time.perf_counter() - started
    assert out.size == (4 * size, 4 * size)
    return {"seconds": seconds, "peak_anon_mib": peak.stop() / 1024,
            "anon_before_mib": before / 1024, "peak_rss_mib": _status_kib("VmHWM") / 1024,
            "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def cpu_model() -> str:
    """`lscpu`'s model name and the bf16 flags /proc/cpuinfo shows."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")), "unknown")
    flags = set(Path("/proc/cpuinfo").read_text().split())
    extra = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(extra) or 'no bf16 instructions'})"


def report(rows: list[dict]) -> str:
    """The Markdown page."""
    lines = ["| input | precision | tile | seconds | s per input MP | peak RSS MiB | "
             "peak RssAnon MiB | load avg after |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} px -> {4 * r['size']} px | {r['label']} | {r['tile']} | "
                     f"{r['seconds']:.1f} | {r['seconds'] / (r['size'] ** 2 / 1e6):.0f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['peak_anon_mib']:.0f} | {r['load']:.1f} |")
    return f"""# Model upscaler: a 4x with RealESRGAN_x4plus

Measured {datetime.now(timezone.utc):%Y-%m-%d} by `bench/upscaler_bench.py` under
`flock /tmp/heavy.lock`, each row a fresh process (other developers' tests shared the 2
cores, so seconds are indicative). CPU: {cpu_model()}; torch threads: {rows[0]['threads']}.
Model: the full-size RealESRGAN_x4plus architecture (23 RRDB blocks, 64 features, 32 growth,
16.7 M parameters) with random weights, saved as a Real-ESRGAN `.pth` (`params_ema`) and run
through `engine.upscalers.upscale_image` (read with `weights_only`, tiled with a 16 px
overlap, output written into a uint8 array).

{chr(10).join(lines)}

RssAnon is ~150 MiB before the upscale (torch, the process); the weights add 64 MiB and the
rest of the peak is one tile's activations (the 2x and 4x stages run channels-last, so oneDNN
keeps no blocked copies of the largest maps: before that change a 512 px float32 upscale
peaked at 1136 MiB, bf16 at 840). A 1024 px input peaks within ~50 MiB of a 512 px one (its
4096x4096 uint8 output is 48 MiB): the tile, not the picture, sets the memory.
{_speedup(rows)}"""


def _speedup(rows: list[dict]) -> str:
    """One line comparing bf16 with float32 at each size both were measured at."""
    parts = []
    for size in sorted({r["size"] for r in rows}):
        fp32 = [r for r in rows if r["size"] == size and r["label"] == "float32"]
        bf16 = [r for r in rows if r["size"] == size and r["label"] != "float32"]
        if fp32 and bf16:
            parts.append(f"{fp32[0]['seconds'] / bf16[0]['seconds']:.1f}x at {size} px")
    return ("bfloat16 autocast is faster on this CPU (AMX): " + ", ".join(parts) + ". The "
            "server uses it with DTYPE=bfloat16, or auto where its probe finds bf16 faster.\n"
            if parts else "")


def main() -> None:
    """Build the file, run every configuration in its own process, print / write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {RESULT_FILE.name}")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "TILE", "BF16"),
                        help="(internal) run one configuration, print JSON")
    parser.add_argument("--only", type=int, help="run only this CONFIGS index")
    args = parser.parse_args()
    if args.one:
        size, tile, bf16 = args.one
        print(json.dumps(one(int(size), int(tile), bf16 == "1")))
        return
    build_file()
    saved = json.loads(ROWS.read_text()) if ROWS.exists() else []
    for index, (label, size, tile, bf16) in enumerate(CONFIGS):
        if args.only is not None and index != args.only:
            continue
        out = subprocess.run([sys.executable, __file__, "--one", str(size), str(tile),
                              "1" if bf16 else "0"], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout
        row = {"label": label, "size": size, "tile": tile, **json.loads(out.splitlines()[-1])}
        print(json.dumps(row), flush=True)
        saved = [r for r in saved if (r["label"], r["size"], r["tile"]) != (label, size, tile)]
        saved.append(row)
        ROWS.write_text(json.dumps(saved))
        text = report(ordered(saved))
        if args.write:  # after every row: a run cut short keeps what it measured
            RESULT_FILE.write_text(text)
    print(report(ordered(saved)))


def ordered(rows: list[dict]) -> list[dict]:
    """The rows in CONFIGS' order."""
    order = {(label, size, tile): i for i, (label, size, tile, _) in enumerate(CONFIGS)}
    return sorted(rows, key=lambda r: order.get((r["label"], r["size"], r["tile"]), 99))


if __name__ == "__main__":
    main()
