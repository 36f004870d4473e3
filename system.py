"""What Linux tells about this machine and its processes, read from /proc in one place.

A leaf: it imports nothing of ours, so the routes (api/), the engine and the catalogue may
all use it. Every reader raises OSError where there is no /proc (not Linux); the caller
decides what that means for it (a /health figure left out, an A1111 error body...).
"""
from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _numeric_fields(path: Path) -> dict[str, int]:
    """The `Name: value [kB]` lines of a /proc file whose value is a number, kB in bytes."""
    fields = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def meminfo() -> dict[str, int]:
    """/proc/meminfo: MemTotal, MemFree, MemAvailable... in bytes (counts stay counts)."""
    return _numeric_fields(PROC / "meminfo")


def process_status(pid: int | str = "self") -> dict[str, int]:
    """/proc/<pid>/status's numeric fields: VmRSS, RssAnon, RssFile... in bytes."""
    return _numeric_fields(PROC / str(pid) / "status")


def cpu_times(stat_text: str | None = None) -> dict[int, tuple[int, int]]:
    """Per CPU number, from /proc/stat (or the text of one given): (all jiffies, idle +
    iowait jiffies) since boot. ValueError or IndexError on a malformed CPU line."""
    text = (PROC / "stat").read_text() if stat_text is None else stat_text
    times = {}
    for line in text.splitlines():
        name, *values = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit():
            fields = [int(v) for v in values[:8]]  # user..steal; guest is inside user
            times[int(name[3:])] = (sum(fields), fields[3] + fields[4])
    return times


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (this process always does)."""
    return pid == os.getpid() or (PROC / str(pid)).exists()
