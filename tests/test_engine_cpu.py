"""engine.cpu: free cores from /proc/stat, the adaptive thread policy, the precision probe."""
import time

import pytest

from engine.cpu import BF16_MIN_SPEEDUP, PrecisionProbe, probe_precision


def test_precision_probe_times_both_dtypes_on_unet_shapes():
    import torch

    before = torch.get_num_threads()
    probe = probe_precision(before + 1)
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    assert probe.threads == before + 1
    assert set(probe.conv_gflops) == set(probe.gemm_gflops) == {"float32", "bfloat16"}
    assert all(v > 0 for v in [*probe.conv_gflops.values(), *probe.gemm_gflops.values()])
    assert probe.seconds > 0  # reported; how long it takes is not asserted here
    assert probe.bf16_faster == (probe.bf16_speedup >= BF16_MIN_SPEEDUP)


class SteppingClock:
    """The `time` module, but perf_counter moves `tick` seconds at each reading: the probe's
    budget is tested on this clock, since the real one depends on the machine and its load."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.mark.parametrize("tick, runs_per_timing", [
    (1e-6, 1 + 5),  # a fast machine: a first call, then at most five timed runs
    (10.0, 1),  # a slow one: a first call over the budget is answer enough
])
def test_the_precision_probe_bounds_its_work_by_runs_and_budget(monkeypatch, tick,
                                                                runs_per_timing):
    import torch

    convs = []
    real_conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d",
                        lambda *a, **k: convs.append(a[0].shape) or real_conv2d(*a, **k))
    monkeypatch.setitem(probe_precision.__globals__, "time", SteppingClock(tick))
    probe = probe_precision(1)
    # Two passes (small, then full size, since equal times make a ratio of 1), two dtypes.
    assert len(convs) == 2 * 2 * runs_per_timing
    assert {shape[2] for shape in convs} == {1, 16}  # the small pass, then the full one
    assert probe.bf16_speedup == 1.0  # every run took one tick, in either dtype


def test_bf16_is_chosen_only_at_the_measured_threshold():
    assert PrecisionProbe({}, {}, 1.3, 2, 0.1).bf16_faster
    assert not PrecisionProbe({}, {}, 1.29, 2, 0.1).bf16_faster


def _stat(*cores):
    """A /proc/stat text: one (user, idle) pair of cumulative jiffies per CPU."""
    lines = [f"cpu{i} {user} 0 0 {idle} 0 0 0 0 0 0" for i, (user, idle) in enumerate(cores)]
    return "cpu  0 0 0 0 0 0 0 0 0 0\n" + "\n".join(lines) + "\nintr 0\n"


def test_idle_cores_reads_proc_stat_deltas():
    """/proc/stat texts are supplied: the machine's real load can't be made deterministic."""
    from engine import idle_cores

    before = _stat((100, 100), (100, 100), (100, 100), (100, 100))
    after = _stat((200, 100), (100, 200), (100, 200), (150, 150))  # busy, idle, idle, half
    samples = iter([before, after] * 2)
    assert idle_cores(0, read_stat=lambda: next(samples), cpus={0, 1, 2, 3}) == \
        pytest.approx(2.5)
    # Only the CPUs this process may run on count (e.g. under taskset 0,1).
    assert idle_cores(0, read_stat=lambda: next(samples), cpus={0, 1}) == pytest.approx(1.0)
    samples = iter(["garbage", "garbage"])
    assert idle_cores(0, read_stat=lambda: next(samples), cpus={0}) is None
    real = idle_cores(0.05)  # the real file parses on Linux
    import os

    assert real is None or 0.0 <= real <= os.cpu_count()


def test_adaptive_threads_uses_the_free_cores():
    from engine import adaptive_threads

    assert adaptive_threads(2, 2.0) == 2
    assert adaptive_threads(2, 1.0) == 1  # the other core is busy: one thread is faster
    assert adaptive_threads(2, 1.3) == 2  # a core 30 % free still counts
    assert adaptive_threads(2, 1.2) == 1  # one 20 % free does not
    assert adaptive_threads(8, 3.5) == 4 and adaptive_threads(8, 2.1) == 2
    assert adaptive_threads(2, 0.1) == 1  # never zero
    assert adaptive_threads(4, None) == 4  # unknown: all usable cores


