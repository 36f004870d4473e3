"""CPU facts the engine decides by: usable cores, how many of them are free right now, and
which precision this CPU runs fastest."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from system import cpu_times

# How long the engine watches the CPU before a job to see which cores other programs use.
IDLE_SAMPLE_SECONDS = 0.2


def idle_cores(sample_seconds: float = IDLE_SAMPLE_SECONDS,
               read_stat: Callable[[], str] | None = None,
               cpus: set[int] | None = None) -> float | None:
    """How many of this process's cores sat idle over a short sample (from /proc/stat's
    per-CPU lines, only the CPUs in `cpus`, default our affinity); None if unknown."""
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return None

    def totals() -> dict[int, tuple[int, int]]:
        times = cpu_times(read_stat() if read_stat else None)
        return {cpu: figures for cpu, figures in times.items() if cpu in cpus}

    try:
        before = totals()
        time.sleep(sample_seconds)
        after = totals()
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for cpu, (total, idle_after) in after.items():
        if cpu not in before or total <= before[cpu][0]:
            continue
        idle += max(0, idle_after - before[cpu][1]) / (total - before[cpu][0])
    return idle if after else None


def adaptive_threads(usable: int, idle: float | None) -> int:
    """One torch thread per core that is free right now (all usable cores if unknown).

    OpenMP threads spin and wait for each other at every op: a thread sharing its core with
    another program stalls the rest, so on a busy laptop fewer threads run faster.
    """
    if idle is None:
        return usable
    # A core counts while at least 25 % of it is free. Measured (bench/results.md): dropping
    # a thread wins only ~7 % when the other core is fully busy, while one thread too few
    # costs up to 1.7x on an idle core, so the rule leans towards more threads.
    return max(1, min(usable, math.floor(idle + 0.75)))


def threads_for_next_job(torch_threads: int) -> int:
    """TORCH_THREADS when set; with 0, one per usable core that other programs leave free."""
    if torch_threads:
        return torch_threads
    return adaptive_threads(usable_cores(), idle_cores())


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# bf16 must beat fp32 by this much on the probe before DTYPE=auto takes it: the probe's
# small shapes are a proxy for the UNet, and bf16 also changes the pixels slightly.
BF16_MIN_SPEEDUP = 1.3
# The probe stops a precision early once it has used this long (a CPU without native bf16
# can be 5-10x slower in it); the whole probe stays near a second.
PROBE_BUDGET_SECONDS = 0.4


@dataclass(frozen=True)
class PrecisionProbe:
    """What the load-time probe measured: GFLOP/s of a UNet-sized conv and GEMM per dtype."""

    conv_gflops: dict[str, float]
    gemm_gflops: dict[str, float]
    bf16_speedup: float  # fp32 time / bf16 time over the same conv + GEMM work
    threads: int
    seconds: float

    @property
    def bf16_faster(self) -> bool:
        """True where DTYPE=auto takes bf16."""
        return self.bf16_speedup >= BF16_MIN_SPEEDUP

    def as_dict(self) -> dict[str, Any]:
        """For /health."""
        return {"bf16_speedup": self.bf16_speedup, "threshold": BF16_MIN_SPEEDUP,
                "conv_gflops": self.conv_gflops, "gemm_gflops": self.gemm_gflops,
                "threads": self.threads, "seconds": self.seconds}


def probe_precision(threads: int) -> PrecisionProbe:
    """Time bf16 against fp32 on shapes that stand for the SD 1.x UNet, with `threads`.

    A 3x3 conv at the UNet's 64x64 level (320 channels, as in its first ResNets, at a
    quarter of the rows to keep the probe short) and the attention/feed-forward GEMM of the
    same level (tokens x 320 -> 1280). The UNet's time is mostly these two kinds of op; a
    bare square matmul overstates bf16 (bench/results.md: 5.4x on a CPU where the UNet ran
    2.9x), so the ratio is taken over both, weighted by their FLOPs.
    """
    import torch
    import torch.nn.functional as F

    started = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)

    def best_time(fn, budget: float) -> float:
        t = time.perf_counter()
        fn()  # first call: oneDNN picks and caches its kernel
        first = time.perf_counter() - t
        if first > budget:  # hopelessly slow: its first call is answer enough
            return first
        times: list[float] = []
        spent = time.perf_counter()
        while len(times) < 5 and (time.perf_counter() - spent < budget or len(times) < 2):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def measure(rows: int, tokens: int) -> tuple[dict, dict, int, int]:
        gen = torch.Generator().manual_seed(0)
        x32 = torch.randn(1, 320, rows, 64, generator=gen)
        w32 = torch.randn(320, 320, 3, 3, generator=gen) * 0.02
        a32 = torch.randn(tokens, 320, generator=gen)
        b32 = torch.randn(320, 1280, generator=gen) * 0.05
        conv, gemm = {}, {}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            x, w, a, b = (t.to(dtype) for t in (x32, w32, a32, b32))
            conv[name] = best_time(lambda: F.conv2d(x, w, padding=1), PROBE_BUDGET_SECONDS / 4)
            gemm[name] = best_time(lambda: a @ b, PROBE_BUDGET_SECONDS / 4)
        return conv, gemm, 2 * 320 * 320 * 9 * rows * 64, 2 * tokens * 320 * 1280

    try:
        with torch.inference_mode():
            # A CPU without bf16 kernels runs it 50-100x slower (seen: 0.3 GFLOP/s), so a
            # small first pass decides whether the full-size pass is worth its time.
            conv, gemm, conv_flop, gemm_flop = measure(1, 64)
            if _ratio(conv, gemm) >= BF16_MIN_SPEEDUP / 2:
                conv, gemm, conv_flop, gemm_flop = measure(16, 1024)
    finally:
        torch.set_num_threads(previous)
    return PrecisionProbe(
        conv_gflops={k: round(conv_flop / v / 1e9, 1) for k, v in conv.items()},
        gemm_gflops={k: round(gemm_flop / v / 1e9, 1) for k, v in gemm.items()},
        bf16_speedup=round(_ratio(conv, gemm), 2), threads=threads,
        seconds=round(time.perf_counter() - started, 3))


def _ratio(conv: dict[str, float], gemm: dict[str, float]) -> float:
    """fp32 time over bf16 time for the same conv + GEMM work."""
    return (conv["float32"] + gemm["float32"]) / (conv["bfloat16"] + gemm["bfloat16"])
