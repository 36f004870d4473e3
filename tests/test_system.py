"""system: the one /proc reader, checked against what the kernel says through other doors
(sysconf, getrusage, the boot clock, a process that really ended)."""
import os
import resource
import subprocess
import sys
import time

import pytest

import system

pytestmark = pytest.mark.skipif(not system.PROC.joinpath("self").is_dir(), reason="no /proc")


def test_meminfo_is_in_bytes_and_matches_sysconf():
    info = system.meminfo()
    assert info["MemTotal"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < info["MemAvailable"] <= info["MemTotal"]
    assert 0 < info["MemFree"] <= info["MemTotal"]


def test_process_status_is_in_bytes_and_sees_memory_grow():
    status = system.process_status()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    assert status["VmHWM"] == pytest.approx(peak, rel=0.05)
    assert 0 < status["RssAnon"] <= status["VmRSS"] <= status["VmHWM"] * 1.05
    before = status["RssAnon"]
    block = bytearray(64 * 2**20)  # zero-filled, so every page is touched
    grown = system.process_status()["RssAnon"] - before
    assert 56 * 2**20 < grown < 96 * 2**20, grown
    del block
    assert system.process_status(os.getpid())["VmRSS"] > 0  # by number as by "self"


def test_cpu_times_count_every_cpu_since_boot():
    times = system.cpu_times()
    assert set(times) == set(range(os.cpu_count()))
    up = time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")
    for total, idle in times.values():
        assert 0 <= idle <= total and total == pytest.approx(up, rel=0.1)


def test_cpu_times_reads_a_given_text():
    text = "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 0 0 4 5 0 0 0 0 0\ncpu1 3 0 0 1 0 0 0 0\nintr 1\n"
    assert system.cpu_times(text) == {0: (10, 9), 1: (4, 1)}
    assert system.cpu_times("garbage\n\n") == {}
    with pytest.raises(ValueError):
        system.cpu_times("cpu0 x y")


def test_process_alive_tells_a_running_process_from_an_ended_one():
    assert system.process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert system.process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not system.process_alive(child.pid)  # reaped: its /proc entry is gone
