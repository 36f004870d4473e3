"""CPU facts the engine decides by: usable cores, how many of them are free right now, and
which precision this CPU runs fastest."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

def cpu_has_amx_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has AMX bf16 tiles, the only place bf16 is expected to beat fp32.

    bench/results.md: on AVX512-BF16 without AMX, bf16 matmul reaches about half of fp32's
    rate and a UNet step is slower in bf16, so DTYPE=auto keeps float32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "amx_bf16" in cpuinfo.split()


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

    def read() -> str:
        return read_stat() if read_stat else Path("/proc/stat").read_text()

    def totals(text: str) -> dict[int, tuple[int, int]]:
        out = {}
        for line in text.splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                fields = [int(v) for v in values[:8]]  # user..steal; guest is inside user
                out[int(name[3:])] = (sum(fields), fields[3] + fields[4])  # idle + iowait
        return out

    try:
        before = totals(read())
        time.sleep(sample_seconds)
        after = totals(read())
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


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
