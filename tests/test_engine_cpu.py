"""engine.cpu: free cores from /proc/stat, the adaptive thread policy, the precision probe."""
import pytest

from engine.cpu import BF16_MIN_SPEEDUP, PrecisionProbe, probe_precision


def test_precision_probe_times_both_dtypes_on_unet_shapes_within_its_budget():
    import torch

    before = torch.get_num_threads()
    probe = probe_precision(before + 1)
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    assert probe.threads == before + 1
    assert set(probe.conv_gflops) == set(probe.gemm_gflops) == {"float32", "bfloat16"}
    assert all(v > 0 for v in [*probe.conv_gflops.values(), *probe.gemm_gflops.values()])
    assert probe.seconds < 5  # ~1 s; slack for a loaded machine
    assert probe.bf16_faster == (probe.bf16_speedup >= BF16_MIN_SPEEDUP)


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


