"""The benchmark's OpenVINO rows: optimum-intel's OVStableDiffusionPipeline, fp32 and default.

It runs inside its own venv (bench/cache/openvino-venv, made by bench/openvino_setup.sh), never
in the project's: OpenVINO is not a runtime dependency of the server.

    bash bench/openvino_setup.sh     # once: the venv, pinned in bench/requirements-openvino.txt
    bench/cache/openvino-venv/bin/python bench/openvino_bench.py \\
        --model bench/cache/sd-v1-4-random --size 512 --steps 3 --precision f32

prints one JSON object on stdout (everything else goes to stderr). From the project venv,
bench/run.py calls `openvino_bench.run(...)`, which makes the venv if needed and runs this file
in it under `flock /tmp/heavy.lock`; the result uses bench/run.py's row keys.

What it does: exports the diffusers folder to OpenVINO IR once (a separate process, so its peak
RSS is its own) into bench/cache/openvino-ir/<model name>-<fingerprint>/, then loads it, reshapes
it to static shapes for the requested size, compiles with INFERENCE_NUM_THREADS and, for `f32`,
INFERENCE_PRECISION_HINT=f32 (`default` leaves OpenVINO to choose: bf16 where the CPU has
AVX512-BF16 or AMX, f32 elsewhere), and generates one image with bench/run.py's prompt, seed and
guidance. The IR is the same for both precisions (the precision is a compile-time setting), so
both share one export; `export_s` is the figure of the run that made it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

T_PROCESS_START = time.perf_counter()

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "cache"
IR_CACHE = CACHE / "openvino-ir"
SETUP = BENCH / "openvino_setup.sh"
LOCK = "/tmp/heavy.lock"
PRECISIONS = ("f32", "default")
# OpenVINO's element type names -> the torch dtype names bench/report.py looks up the peak by
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


# ------------------------------------------------------------------ caller side (project venv)
def ensure_venv() -> Path:
    """Make (or check) bench/cache/openvino-venv; return its python."""
    out = subprocess.run(["bash", str(SETUP)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def run(model_dir: Path | str, size: int, steps: int, precision: str, threads: int = 2,
        latents_out: Path | str | None = None, lock: str | None = LOCK) -> dict:
    """Run one OpenVINO configuration in the venv (holding `lock`); its result dict, or {"error"}."""
    try:
        python = ensure_venv()
    except subprocess.CalledProcessError as exc:
        return {"error": f"openvino venv setup failed: {(exc.stderr or '')[-1500:]}"}
    cmd = [str(python), str(Path(__file__).resolve()), "--model", str(model_dir),
           "--size", str(size), "--steps", str(steps), "--precision", precision,
           "--threads", str(threads)]
    if latents_out:
        cmd += ["--latents-out", str(latents_out)]
    if lock:
        cmd = ["flock", lock, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}


# ------------------------------------------------------------------ worker side (openvino venv)
def _offline() -> None:
    """No Hub access here: every load is from a local folder."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fingerprint(model_dir: Path) -> str:
    """Changes whenever a file of the model folder or the exporter's version changes."""
    import hashlib

    import openvino
    from optimum.intel.version import __version__ as optimum_intel_version

    h = hashlib.sha256(f"{openvino.__version__} {optimum_intel_version}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(model_dir)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _text_encoder_view(model_dir: Path, work: Path) -> Path:
    """`model_dir`, or a view of it whose CLIP text encoder this venv's transformers can load.

    transformers 5.24 (the project's) saves CLIPTextModel's weights without the `text_model.`
    prefix that transformers 5.5 (the newest optimum-intel 2.2 allows) expects; loaded as it is,
    the text encoder would be silently re-initialised. The view links every other file and holds
    a renamed copy of the text encoder's weights only.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = model_dir / "text_encoder" / "model.safetensors"
    if not weights.exists():
        return model_dir
    with safe_open(weights, "pt") as f:
        if any(k.startswith("text_model.") for k in f.keys()):
            return model_dir
        tensors = {f"text_model.{k}": f.get_tensor(k) for k in f.keys()}
    view = work / "model-view"
    for path in model_dir.rglob("*"):
        if path.is_file() and path != weights:
            (view / path.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (view / path.relative_to(model_dir)).symlink_to(path)
    save_file(tensors, view / "text_encoder" / "model.safetensors", metadata={"format": "pt"})
    return view


def export_worker(model_dir: Path, out: Path) -> dict:
    """In a fresh process: the diffusers folder -> OpenVINO IR, as `optimum-cli export openvino`."""
    from run import AnonPeak, _status_kib  # the same RSS measurements as every other row

    anon = AnonPeak()
    import tempfile

    from optimum.exporters.openvino import main_export

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        source = _text_encoder_view(model_dir, Path(work))
        # The same call OVStableDiffusionPipeline.from_pretrained(export=True) makes, writing
        # straight into `out` instead of a temporary folder that is then copied.
        main_export(model_name_or_path=str(source), output=out, task="text-to-image",
                    library_name="diffusers", do_validation=False, no_post_process=True,
                    local_files_only=True)
    return {"export_s": time.perf_counter() - t0, "export_peak_rss_kib": _status_kib("VmHWM"),
            "export_peak_anon_kib": anon.stop(), "export_text_encoder_renamed": source != model_dir}


def ensure_ir(model_dir: Path) -> tuple[Path, dict]:
    """The IR folder for `model_dir` (exported now in a child process if missing) and its export figures."""
    ir_dir = IR_CACHE / f"{model_dir.name}-{_fingerprint(model_dir)}"
    meta = ir_dir / "bench-export.json"
    if meta.exists():
        return ir_dir, {**json.loads(meta.read_text()), "export_cached": True}
    tmp = ir_dir.with_name(f"{ir_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--export-to", str(tmp), "--model",
                           str(model_dir)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"export failed (exit {proc.returncode})")
    figures = json.loads(proc.stdout)
    (tmp / "bench-export.json").write_text(json.dumps(figures))
    if ir_dir.exists():  # another process exported it meanwhile
        shutil.rmtree(tmp)
    else:
        tmp.replace(ir_dir)
    return ir_dir, {**figures, "export_cached": False}


def _precision(compiled) -> str:
    """What the compiled model actually runs in (f32, bf16, f16)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def bench_worker(args) -> dict:
    """Load, compile, generate one image; the measurements in bench/run.py's row keys."""
    from run import GUIDANCE, NEGATIVE, PROMPT, SEED, AnonPeak, _status_kib  # same as every row

    anon = AnonPeak()
    import openvino
    import torch
    from optimum.intel import OVStableDiffusionPipeline
    from optimum.intel.version import __version__ as optimum_intel_version

    model_dir = Path(args.model).resolve()
    t_export = time.perf_counter()
    ir_dir, export = ensure_ir(model_dir)
    export_wall_s = time.perf_counter() - t_export  # left out of "start -> first step"

    ov_config = {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY"}
    if args.precision == "f32":
        ov_config["INFERENCE_PRECISION_HINT"] = "f32"
    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(str(ir_dir), compile=False, ov_config=ov_config,
                                                     local_files_only=True)
    # static shapes: the docs' advice for speed; CFG doubles the UNet batch inside reshape()
    pipe.reshape(batch_size=1, height=args.size, width=args.size, num_images_per_prompt=1)
    pipe.compile()
    load_s = time.perf_counter() - t0
    after_load_anon = _status_kib("RssAnon")
    unet = pipe.unet.request
    precision = _precision(unet)

    marks, last = [], {}

    def on_step_end(_pipe, _step, _timestep, tensors):
        marks.append(time.perf_counter())
        last["anon_steps_kib"] = anon.peak_kib  # so far: load + text encode + UNet steps
        last["latents"] = tensors["latents"].detach().to(torch.float32).clone()
        return tensors

    t_gen, cpu_gen = time.perf_counter(), time.process_time()
    image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                 guidance_scale=GUIDANCE, width=args.size, height=args.size,
                 generator=torch.Generator("cpu").manual_seed(SEED),
                 callback_on_step_end=on_step_end,
                 callback_on_step_end_tensor_inputs=["latents"]).images[0]
    t_decoded = time.perf_counter()
    import io

    png = io.BytesIO()
    image.save(png, format="PNG")
    t_end, cpu_end = time.perf_counter(), time.process_time()
    steps = sorted(b - a for a, b in zip(marks, marks[1:]))  # the first also pays text encoding
    encode = []
    for _ in range(3):
        t = time.perf_counter()
        pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
        encode.append(time.perf_counter() - t)
    encode.sort()
    if args.latents_out:
        torch.save(last["latents"], args.latents_out)
    return {
        "name": f"openvino-{args.precision}", "engine": "openvino (optimum-intel)",
        "precision_mode": args.precision, "precision": precision,
        "dtype": DTYPE_NAMES.get(precision, precision),
        "vae_decoder_precision": _precision(pipe.vae_decoder.request),
        "ov_config": ov_config, "threads": int(unet.get_property("INFERENCE_NUM_THREADS")),
        "num_streams": str(unet.get_property("NUM_STREAMS")),
        "load_s": load_s,
        "start_to_first_step_s": marks[0] - T_PROCESS_START - export_wall_s,
        "first_step_s": marks[0] - t_gen, "step_s": steps,
        "step_median_s": steps[len(steps) // 2] if steps else None,
        "text_encode_s": encode[1], "vae_decode_s": t_decoded - marks[-1],
        "vae_decode_png_s": t_end - marks[-1], "unet_evals": len(marks),
        "generate_s": t_end - t_gen, "cores_used": (cpu_end - cpu_gen) / (t_end - t_gen),
        "peak_rss_kib": _status_kib("VmHWM"), "peak_anon_kib": anon.stop(),
        "anon_after_load_kib": after_load_anon, "anon_steps_kib": last["anon_steps_kib"],
        "png_bytes": png.tell(), "size": args.size, "steps": args.steps,
        **export,
        "ir_dir": str(ir_dir), "openvino_version": openvino.__version__,
        "optimum_intel_version": optimum_intel_version, "torch_version": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="denoising steps (PNDM runs +1 UNet)")
    p.add_argument("--precision", choices=PRECISIONS, default="f32")
    p.add_argument("--threads", type=int, default=2, help="INFERENCE_NUM_THREADS")
    p.add_argument("--latents-out", help="save the final latents here (torch.save)")
    p.add_argument("--export-to", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(BENCH))
    _offline()
    # stdout carries the one JSON object only: libraries' prints go to stderr
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.export_to:
        result = export_worker(Path(args.model).resolve(), Path(args.export_to))
    else:
        result = bench_worker(args)
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
