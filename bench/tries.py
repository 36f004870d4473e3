"""Try to close the fp32 gap to OpenVINO on one UNet call, at a fraction of its memory (issue 10).

    python3 bench/tries.py                          # every variant in DEFAULT_RUN, writes
                                                    # bench/tries-results.md
    python3 bench/tries.py --only compile-freezing-cold,compile-freezing-warm   # add rows
    python3 bench/tries.py --again --only eager-anon,eager-malloc-keep   # controls; a repeat
                                                    # gets its own row ("name #2")
    python3 bench/tries.py --report                 # rewrite the Markdown from the last runs

Each variant runs ONE UNet forward at 512x512 (latents 2x4x64x64, encoder_hidden_states
2x77x768, timestep 500, the same seeded inputs everywhere) in a fresh subprocess under
`flock /tmp/heavy.lock` (the main benchmark's lock), with 2 torch threads and inference_mode:
one warm-up call (for torch.compile: the compiling call), then the median of 3 timed calls.
It records the one-off setup seconds, RssAnon after load / after setup / peak (sampled every
20 ms, as bench/run.py's AnonPeak), and the output's max abs difference from the eager
baseline's output (saved by the first `eager` run).

The UNet is loaded as the engine loads it: diffusers `UNet2DConditionModel.from_pretrained`,
fp32, safetensors memory-mapped (file-backed, so it costs no anonymous RAM). Everything this
writes besides the Markdown lives in bench/cache/tries/ (git-ignored): the eager output, the
channels-last conv weights, the inductor caches, results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import AnonPeak, _status_kib  # noqa: E402  (the main benchmark's RssAnon sampler)

CACHE = BENCH / "cache"
MODEL_DIR = CACHE / "sd-v1-4-random"
TRIES = CACHE / "tries"
RESULTS = TRIES / "results.json"
EAGER_OUT = TRIES / "out-eager.pt"
CL_WEIGHTS = TRIES / "unet-conv-weights-channels-last.safetensors"
# The same files rewritten so every tensor starts on a 64-byte boundary (safetensors pads its
# header to 8 bytes only: in the files above the weights sit at 24 or 48 mod 64).
CL_WEIGHTS_ALIGNED = TRIES / "unet-conv-weights-channels-last-aligned.safetensors"
UNET_ALIGNED = TRIES / "unet-aligned"
ALIGN = 64
MARKDOWN = BENCH / "tries-results.md"
LOCK = "/tmp/heavy.lock"
THREADS = 2
TIMED_CALLS = 3
TIMESTEP = 500
LIMIT_S = 600            # hard limit per process, once it holds the lock
COMPILE_LIMIT_S = 900    # torch.compile on 2 cores: the brief's 15 minutes
GIB_KIB = 1024**2
DISTURBED_CORES = 1.6    # a row whose timed calls kept fewer cores busy met outside load

# name -> what it is. The eager baseline runs first and again last (the VM drifts +-10 %).
VARIANTS = {
    "eager": "eager baseline (what the engine does): NCHW, mmapped weights",
    "channels-last": "unet.to(channels_last) + channels_last inputs (conv weights copied)",
    "channels-last-mmap": "channels_last conv weights written once to safetensors, mmapped, "
                          "assigned as permuted views; channels_last inputs",
    "channels-last-mmap-aligned": "as channels-last-mmap, the file rewritten with every "
                                  "tensor 64-byte aligned",
    "eager-mmap-aligned": "eager NCHW, the UNet's safetensors rewritten with every weight "
                          "64-byte aligned (still mmapped)",
    "eager-anon": "control: eager NCHW with every weight copied into anonymous RAM (is it "
                  "the layout or the memory that channels-last changes?)",
    "jit-freeze": "torch.jit.trace + freeze + optimize_for_inference (oneDNN fusion)",
    "compile-cold": "torch.compile (inductor, freezing=False), empty on-disk cache: first "
                    "call compiles",
    "compile-warm": "torch.compile (inductor, freezing=False), fresh process, on-disk cache "
                    "from the cold run",
    "compile-freezing-cold": "torch.compile (inductor, freezing=True: weights prepacked), "
                             "empty cache",
    "compile-freezing-warm": "torch.compile (inductor, freezing=True), fresh process, cache "
                             "from the cold run",
    "eager-thp": "eager, THP_MEM_ALLOC_ENABLE=1 (torch madvises its >= 2 MiB buffers to "
                 "transparent huge pages: fewer page faults per call)",
    "eager-malloc-keep": "eager, glibc told to keep freed memory: MALLOC_MMAP_THRESHOLD_=32 "
                         "MiB (its maximum), MALLOC_TRIM_THRESHOLD_=4 GiB",
    "eager-again": "eager baseline, repeated at the end (drift)",
}
# Process environment for some variants (read by glibc / torch when the process starts).
# Why: one eager call takes ~0.8 million minor page faults (~3 GiB of activations
# mmapped, touched and unmapped again), which these try to avoid.
VARIANT_ENV = {
    "eager-thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "eager-malloc-keep": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                          "MALLOC_TRIM_THRESHOLD_": str(4 << 30)},
}
DEFAULT_RUN = ["eager", "channels-last", "channels-last-mmap", "jit-freeze", "compile-cold",
               "compile-warm", "eager-again"]


def _inductor_dir(name: str) -> Path:
    return TRIES / ("inductor-freezing" if "freezing" in name else "inductor")


# ------------------------------------------------------------------ worker side
def _source_key() -> str:
    """Size and mtime of the UNet's safetensors: a rebuilt model never meets stale weights."""
    st = (MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors").stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


def _load_unet(folder: Path = MODEL_DIR / "unet"):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(folder)).eval()


def write_aligned(src: Path, dst: Path) -> dict:
    """Copy a safetensors file so that every tensor whose size is a multiple of ALIGN bytes
    starts on an ALIGN boundary: the header is padded with spaces (as safetensors itself pads
    it to 8) and the odd-sized tensors go last (the format allows no gaps between tensors)."""
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        meta = header.pop("__metadata__", None)

        def size(k):
            return header[k]["data_offsets"][1] - header[k]["data_offsets"][0]

        names = sorted(header, key=lambda k: (size(k) % ALIGN != 0,
                                              header[k]["data_offsets"][0]))
        new, offset = {}, 0
        for k in names:
            new[k] = {**header[k], "data_offsets": [offset, offset + size(k)]}
            offset += size(k)
        if meta:
            new["__metadata__"] = meta
        raw = json.dumps(new, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % ALIGN)
        tmp = dst.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            for k in names:
                f.seek(base + header[k]["data_offsets"][0])
                left = size(k)
                while left:
                    chunk = f.read(min(left, 1 << 24))
                    out.write(chunk)
                    left -= len(chunk)
        tmp.replace(dst)
    return {"tensors": len(names), "odd_sized": sum(size(k) % ALIGN != 0 for k in names)}


def make_aligned_copies() -> dict:
    """The aligned channels-last conv weights and an aligned copy of the UNet folder."""
    out = {"channels_last": write_aligned(CL_WEIGHTS, CL_WEIGHTS_ALIGNED)}
    UNET_ALIGNED.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODEL_DIR / "unet" / "config.json", UNET_ALIGNED / "config.json")
    out["unet"] = write_aligned(MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors",
                                UNET_ALIGNED / "diffusion_pytorch_model.safetensors")
    return out


def _inputs():
    import torch

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, generator=gen)
    ehs = torch.randn(2, 77, 768, generator=gen)
    return sample, torch.tensor(TIMESTEP), ehs


def _sample_module(unet):
    """The UNet as a module that returns the sample tensor (what tracing and compile need)."""
    import torch

    class UNetSample(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                             return_dict=False)[0]

    return UNetSample(unet).eval()


def make_channels_last_weights() -> dict:
    """Write every Conv2d weight permuted to (O, H, W, I), contiguous, into one safetensors."""
    import torch
    from safetensors.torch import save_file

    unet = _load_unet()
    tensors = {f"{name}.weight": m.weight.detach().permute(0, 2, 3, 1).contiguous()
               for name, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d)}
    tmp = CL_WEIGHTS.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"source": _source_key()})
    tmp.replace(CL_WEIGHTS)
    return {"conv_weights": len(tensors),
            "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}


def _setup(name: str, unet, sample, info: dict):
    """The variant's one-off setup; returns (callable module, input sample)."""
    import torch

    if name in ("eager", "eager-again", "eager-mmap-aligned") or name in VARIANT_ENV:
        return _sample_module(unet), sample
    if name == "eager-anon":
        for param in unet.parameters():
            param.data = param.data.clone()
        return _sample_module(unet), sample
    if name == "channels-last":
        unet.to(memory_format=torch.channels_last)
        return _sample_module(unet), sample.to(memory_format=torch.channels_last)
    if name.startswith("channels-last-mmap"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = CL_WEIGHTS_ALIGNED if name.endswith("aligned") else CL_WEIGHTS
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("source") != _source_key():
                raise SystemExit(f"{path} is stale: delete it and run again")
        loaded = load_file(str(path))  # memory-mapped: file-backed pages, no copy
        views = 0
        for mname, m in unet.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                w = loaded[f"{mname}.weight"].permute(0, 3, 1, 2)  # NCHW shape, NHWC strides
                assert w.shape == m.weight.shape, mname
                assert w.is_contiguous(memory_format=torch.channels_last), mname
                assert w.data_ptr() == loaded[f"{mname}.weight"].data_ptr(), "a copy was made"
                m.weight = torch.nn.Parameter(w, requires_grad=False)
                views += 1
        info["conv_weight_views"] = views
        return _sample_module(unet), sample.to(memory_format=torch.channels_last)
    if name == "jit-freeze":
        module = _sample_module(unet)
        _, t, ehs = _inputs()
        with torch.no_grad():  # tracing under inference_mode would bake inference tensors in
            t0 = time.perf_counter()
            traced = torch.jit.trace(module, (sample, t, ehs), check_trace=False)
            info["trace_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            frozen = torch.jit.freeze(traced)
            info["freeze_s"] = time.perf_counter() - t0
            info["anon_after_freeze_kib"] = _status_kib("RssAnon")
            t0 = time.perf_counter()
            optimized = torch.jit.optimize_for_inference(frozen)
            info["optimize_s"] = time.perf_counter() - t0
        return optimized, sample
    if name.startswith("compile"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = "freezing" in name
        info["freezing"] = inductor_config.freezing
        return torch.compile(_sample_module(unet)), sample
    raise SystemExit(f"unknown variant {name}")


def worker(name: str) -> None:
    """One variant in this fresh process: load, set up, time, compare; print RESULT JSON."""
    anon = AnonPeak()
    if name.startswith("compile"):  # before torch is imported: inductor reads them at import
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_inductor_dir(name))
        os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    import torch

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    unet = _load_unet(UNET_ALIGNED if name == "eager-mmap-aligned" else MODEL_DIR / "unet")
    out: dict = {"name": name, "env": VARIANT_ENV.get(name, {}), "load_s": time.perf_counter() - t0,
                 "anon_after_load_kib": _status_kib("RssAnon")}
    sample, t, ehs = _inputs()
    t0 = time.perf_counter()
    module, x = _setup(name, unet, sample, out)
    out["setup_s"] = time.perf_counter() - t0
    out["anon_after_setup_kib"] = _status_kib("RssAnon")
    params = [p for p in unet.parameters() if p.numel() * p.element_size() >= 1 << 16]
    out["params_not_64b_aligned"] = f"{sum(p.data_ptr() % 64 != 0 for p in params)}/{len(params)}"

    def call():
        return module(x, t, ehs)

    with torch.inference_mode():
        t0 = time.perf_counter()
        result = call()  # the warm-up; for torch.compile the call that compiles
        out["first_call_s"] = time.perf_counter() - t0
        out["anon_after_first_call_kib"] = _status_kib("RssAnon")
        times = []
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(TIMED_CALLS):
            t0 = time.perf_counter()
            result = call()
            times.append(time.perf_counter() - t0)
        out["cores_used"] = (time.process_time() - t_cpu) / (time.perf_counter() - t_wall)
        out["minor_faults_per_call"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                                        - faults) / TIMED_CALLS
    result = result.detach().to(torch.float32).contiguous()
    out["call_s"] = sorted(times)
    out["call_median_s"] = sorted(times)[len(times) // 2]
    out["peak_anon_kib"] = anon.stop()
    out["peak_rss_kib"] = _status_kib("VmHWM")
    if name.startswith("compile"):
        from torch._dynamo.utils import counters

        out["inductor_counters"] = {k: v for k, v in counters["inductor"].items()
                                    if "cache" in k}
    if name == "eager":
        torch.save(result, EAGER_OUT)
    if EAGER_OUT.exists():
        ref = torch.load(EAGER_OUT)
        out["max_abs_diff"] = (result - ref).abs().max().item()
        out["ref_abs_max"] = ref.abs().max().item()
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------ parent side
def run_locked(argv: list[str], limit_s: int, env: dict | None = None) -> dict:
    """This script as a worker under `flock /tmp/heavy.lock`, killed `limit_s` after it holds
    the lock (timeout runs inside flock, so waiting for the lock is not counted)."""
    cmd = ["flock", LOCK, "timeout", "-k", "20", str(limit_s),
           sys.executable, __file__, *argv]
    print("$", " ".join(argv), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if proc.returncode in (124, 137):
        return {"error": f"did not finish in {limit_s // 60} min", "wall_s":
                time.perf_counter() - t0}
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": f"exit {proc.returncode}: {tail}"}


def machine_summary() -> dict:
    import diffusers
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), "?")
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = info.get("flags", "").split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return {"cpu": model, "family": info.get("cpu family"), "model": info.get("model"),
            "flags": [f for f in wanted if f in flags],
            "missing": [f for f in wanted if f not in flags],
            "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _f(value, fmt="{:.2f}", missing="–"):
    return missing if value is None else fmt.format(value)


def _gib(kib):
    return _f(None if kib is None else kib / GIB_KIB)


def write_markdown(data: dict) -> None:
    """Write bench/tries-results.md; a hand-written "## Verdicts" section is kept as it is."""
    m = data["machine"]
    lines = [
        "# Tries: closing the fp32 gap to OpenVINO on one UNet call (issue 10)",
        "",
        "Generated by `python3 bench/tries.py` (the method is in its docstring): one UNet "
        "forward at 512x512 (batch 2, a CFG step), full-size SD v1-4 architecture with random "
        "weights, 2 torch threads, inference_mode, each variant in a fresh process holding "
        "`/tmp/heavy.lock`; median of 3 calls after one warm-up (for torch.compile the warm-up "
        "is the compiling call).",
        "",
        f"- CPU: **{m['cpu']}** (family {m['family']} model {m['model']}), {m['cores']} cores; "
        f"has {', '.join(m['flags']) or '–'}; lacks {', '.join(m['missing']) or '–'}",
        f"- torch {m['torch']}, diffusers {m['diffusers']}, Python {m['python']}; "
        f"measured {m['date']} to {m.get('date_last', m['date'])}",
        "- Reference points from the main benchmark today (whole engine, per step): our fp32 "
        "~14.3-15.5 s/step at ~0.8-0.9 GiB peak RssAnon in the UNet phase; OpenVINO 2026.4 f32 "
        "~12.1-13.4 s/step at 5.4 GiB RssAnon. Budget: 1.2 GiB peak RssAnon per generation.",
        "",
        "| variant | what | s/call (median; range) | setup s | first call s | RssAnon GiB: "
        "after load / after setup / peak | peak RSS GiB | max abs diff vs eager | cores used | "
        "minor faults per call | weights >= 64 KiB not 64-B aligned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in data["runs"].items():
        what = VARIANTS.get(name.split(" #")[0], "")
        if " #" in name:
            what = "repeat (drift / noise check)"
        if "error" in r:
            lines.append(f"| {name} | {what} | **{r['error'][:300].splitlines()[-1]}** "
                         f"| | | | | | | | |")
            continue
        calls = r.get("call_s") or []
        span = f"{calls[0]:.2f}-{calls[-1]:.2f}" if calls else ""
        if (r.get("cores_used") or 2) < DISTURBED_CORES:
            span += " (disturbed: outside load)"
        setup = _f(r.get("setup_s"))
        parts = [f"{k[:-2]} {r[k]:.1f}" for k in ("trace_s", "freeze_s", "optimize_s") if k in r]
        if parts:
            setup += f" ({', '.join(parts)})"
        lines.append(
            f"| {name} | {what} | **{_f(r.get('call_median_s'))}**; {span} | {setup} | "
            f"{_f(r.get('first_call_s'), '{:.1f}')} | {_gib(r.get('anon_after_load_kib'))} / "
            f"{_gib(r.get('anon_after_setup_kib'))} / **{_gib(r.get('peak_anon_kib'))}** | "
            f"{_gib(r.get('peak_rss_kib'))} | {_f(r.get('max_abs_diff'), '{:.2e}')} | "
            f"{_f(r.get('cores_used'))} | {_f(r.get('minor_faults_per_call'), '{:.0f}')} | "
            f"{r.get('params_not_64b_aligned', '–')} |")
    extra = []
    if "make-channels-last-weights" in data:
        mk = data["make-channels-last-weights"]
        extra.append(f"- Channels-last conv weights file (once, its own locked process): "
                     f"{mk.get('conv_weights')} conv weights, "
                     f"{_f((mk.get('bytes') or 0) / 1024**3)} GiB, "
                     f"written in {_f(mk.get('wall_s'), '{:.1f}')} s.")
    if "make-aligned-copies" in data:
        mk = data["make-aligned-copies"]
        extra.append(f"- 64-byte aligned copies (once, its own locked process): {mk}.")
    for name, r in data["runs"].items():
        if r.get("inductor_counters"):
            extra.append(f"- {name}: inductor cache counters {r['inductor_counters']}.")
    ref_max = next((r.get("ref_abs_max") for r in data["runs"].values() if "ref_abs_max" in r),
                   None)
    if ref_max:
        extra.append(f"- The eager output's max abs value is {ref_max:.3g} (scale for the diffs).")
    lines += ["", *extra, ""]
    verdicts = "## Verdicts\n\n(to be written after reading the figures)\n"
    if MARKDOWN.exists():
        old = MARKDOWN.read_text()
        if "## Verdicts" in old:
            verdicts = old[old.index("## Verdicts"):]
    MARKDOWN.write_text("\n".join(lines) + "\n" + verdicts)
    print(f"wrote {MARKDOWN}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated variant names")
    p.add_argument("--report", action="store_true", help="only rewrite the Markdown")
    p.add_argument("--again", action="store_true",
                   help="keep earlier rows of the same variant (a repeat becomes 'name #2')")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "make-aligned-copies":
        t0 = time.perf_counter()
        r = make_aligned_copies()
        print("RESULT " + json.dumps({**r, "wall_s": time.perf_counter() - t0}), flush=True)
        return
    if args.worker == "make-channels-last-weights":
        t0 = time.perf_counter()
        r = make_channels_last_weights()
        print("RESULT " + json.dumps({**r, "wall_s": time.perf_counter() - t0}), flush=True)
        return
    if args.worker:
        return worker(args.worker)

    TRIES.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    machine = machine_summary()  # the first run's date stays; the last run's is added
    machine["date"] = data.get("machine", {}).get("date", machine["date"])
    machine["date_last"] = (data.get("machine", {}).get("date_last", machine["date"])
                            if args.report else machine_summary()["date"])
    data["machine"] = machine
    if not args.report:
        for name in args.only.split(",") if args.only else DEFAULT_RUN:
            if name not in VARIANTS:
                raise SystemExit(f"unknown variant {name}; known: {', '.join(VARIANTS)}")
            if name.startswith("channels-last-mmap") and not CL_WEIGHTS.exists():
                data["make-channels-last-weights"] = run_locked(
                    ["--worker", "make-channels-last-weights"], LIMIT_S)
            if name.endswith("-aligned") and not (
                    CL_WEIGHTS_ALIGNED.exists() and (UNET_ALIGNED / "config.json").exists()):
                data["make-aligned-copies"] = run_locked(["--worker", "make-aligned-copies"],
                                                         LIMIT_S)
            if name.endswith("-cold"):  # a cold compile starts from an empty on-disk cache
                shutil.rmtree(_inductor_dir(name), ignore_errors=True)
            limit = COMPILE_LIMIT_S if name.startswith("compile") else LIMIT_S
            r = run_locked(["--worker", name], limit, VARIANT_ENV.get(name))
            key, k = name, 1
            while args.again and key in data["runs"]:  # a repeat gets its own row
                k += 1
                key = f"{name} #{k}"
            data["runs"][key] = r
            print(name, {k: r.get(k) for k in ("call_median_s", "setup_s", "first_call_s",
                                               "peak_anon_kib", "max_abs_diff", "error")},
                  flush=True)
            RESULTS.write_text(json.dumps(data, indent=1))
    write_markdown(data)


if __name__ == "__main__":
    main()
