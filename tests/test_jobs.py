"""The job queue on the tiny real pipeline: ordering, limits, cancel, faults, retention."""
import time

import pytest

from jobs import JobQueue, JobState, NotAccepting, QueueFull
from params import GenerationRequest

REQ = GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64)


def queue_of(app):
    return app.extensions["sd_server"].queue


def test_jobs_run_in_order_and_report_progress(app):
    q = queue_of(app)
    jobs = [q.submit(REQ) for _ in range(3)]
    for job in jobs:
        assert q.wait(job, 60)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 3
    assert jobs[0].finished_at <= jobs[1].started_at <= jobs[2].started_at
    snap = q.snapshot(jobs[0])
    assert snap["step"] == snap["total_steps"] and snap["progress"] == 1.0
    assert snap["queue_position"] is None and snap["eta_seconds"] == 0.0
    assert snap["seed"] == jobs[0].seed and 0 <= jobs[0].seed < 2**32
    assert q.stats()["completed"] == 3


def test_queue_full_raises_with_retry_after(app, gate):
    q = queue_of(app)
    running = q.submit(REQ)
    gate.wait_reached()
    waiting = [q.submit(REQ) for _ in range(q.settings.queue_size)]
    with pytest.raises(QueueFull) as err:
        q.submit(REQ)
    assert err.value.retry_after >= 5
    assert [q.queue_position(j) for j in waiting] == list(range(1, len(waiting) + 1))
    assert q.queue_position(running) == 0
    gate.open()
    assert all(q.wait(j, 60) for j in [running, *waiting])


def test_cancel_queued_job_leaves_queue_and_never_runs(app, gate):
    q = queue_of(app)
    first = q.submit(REQ)
    gate.wait_reached()
    second, third = q.submit(REQ), q.submit(REQ)
    q.cancel(second.id)
    assert second.state == JobState.CANCELLED and second.started_at is None
    assert q.queue_position(third) == 1
    gate.open()
    assert q.wait(third, 60) and third.state == JobState.SUCCEEDED
    assert second.started_at is None and second.png is None


def test_cancel_running_job_stops_within_one_step(app, gate):
    q = queue_of(app)
    job = q.submit(GenerationRequest(prompt="x", steps=20, width=64, height=64))
    gate.wait_reached()
    assert job.state == JobState.RUNNING and job.step == 1
    q.cancel(job.id)
    gate.release(1)  # the step in flight finishes; the next callback stops the run
    assert q.wait(job, 30)
    assert job.state == JobState.CANCELLED and job.step <= 2 and job.png is None
    nxt = q.submit(REQ)
    gate.open()
    assert q.wait(nxt, 60) and nxt.state == JobState.SUCCEEDED


@pytest.mark.parametrize("fault", [
    MemoryError(), RuntimeError("boom"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes")])
def test_a_failing_generation_fails_only_that_job(app, monkeypatch, fault):
    """The fault is injected (a real OOM cannot be provoked safely); the next job is real."""
    import engine as engine_module

    q = queue_of(app)
    real = engine_module.Engine.generate
    calls = []

    def fail_once(self, request, seed, on_step=None):
        calls.append(seed)
        if len(calls) == 1:
            raise fault
        return real(self, request, seed, on_step)

    monkeypatch.setattr(engine_module.Engine, "generate", fail_once)
    bad, good = q.submit(REQ), q.submit(REQ)
    assert q.wait(bad, 60) and q.wait(good, 60)
    assert bad.state == JobState.FAILED and "smaller size" in bad.error
    assert "Traceback" not in bad.error
    if "boom" not in str(fault):
        assert "out of memory" in bad.error
    assert good.state == JobState.SUCCEEDED and good.png
    assert q.stats()["failed"] == 1


def test_finished_jobs_are_kept_for_a_bounded_count(make_app):
    q = queue_of(make_app(JOB_RETENTION_COUNT="2"))
    jobs = [q.submit(REQ) for _ in range(4)]
    for job in jobs:
        q.wait(job, 60)
    q.submit(REQ)  # pruning happens on activity
    # Nobody fetched these images yet: the count limit must not lose them.
    assert {j.id for j in jobs} <= {j.id for j in q.recent()}
    for job in jobs:
        q.mark_delivered(job)
    q.submit(REQ)
    kept = {j.id for j in q.recent()}
    assert jobs[0].id not in kept and jobs[1].id not in kept
    assert jobs[2].id in kept and jobs[3].id in kept


def test_finished_jobs_expire_after_retention_seconds(make_settings):
    from engine import Engine

    now = [1000.0]
    settings = make_settings(JOB_RETENTION_SECONDS="60")
    q = JobQueue(Engine(settings), settings, clock=lambda: now[0]).start()
    try:
        assert q.wait_until_loaded(60)
        job = q.submit(REQ)
        assert q.wait(job, 60)
        now[0] += 59
        assert q.get(job.id) is job
        now[0] += 2
        assert q.get(job.id) is None
    finally:
        q.stop(0)


def test_eta_uses_measured_seconds_per_step(make_settings, gate):
    """A controlled clock makes every step take exactly 2 s; the ETA must follow."""
    from engine import Engine

    now = [1000.0]
    settings = make_settings()
    q = JobQueue(Engine(settings), settings, clock=lambda: now[0]).start()
    try:
        assert q.wait_until_loaded(60)
        job = q.submit(GenerationRequest(prompt="x", steps=9, width=64, height=64))
        behind = q.submit(GenerationRequest(prompt="y", steps=3, width=64, height=64))
        for _ in range(3):  # steps 1..3, each "taking" 2 s
            gate.wait_reached()
            now[0] += 2.0
            gate.release(1)
        gate.wait_reached()  # step 4 reached at t+8 (clock read at each step)
        total = job.total_steps  # PNDM: 10 UNet steps for 9 requested
        snap = q.snapshot(job)
        assert snap["step"] == 4
        # measured 2 s/step from this run (marks at +0, +2, +4, +6) times steps left
        assert snap["eta_seconds"] == pytest.approx((total - 4) * 2.0)
        # the job behind waits for the rest of this one plus its own steps
        assert q.snapshot(behind)["eta_seconds"] is None or q.snapshot(behind)[
            "eta_seconds"] >= snap["eta_seconds"]
        gate.open()
        assert q.wait(behind, 60)
        # after a run, a queued job's ETA comes from the measured s/step of earlier runs
        assert q.stats()["seconds_per_step"] is not None
    finally:
        gate.open()
        q.stop(0)


def test_not_accepting_while_loading_and_after_stop(make_settings):
    from engine import Engine

    settings = make_settings()
    q = JobQueue(Engine(settings), settings)
    with pytest.raises(NotAccepting) as err:
        q.submit(REQ)
    assert err.value.reason == "loading" and err.value.retry_after
    q.start()
    assert q.wait_until_loaded(60)
    q.stop(0)
    with pytest.raises(NotAccepting) as err:
        q.submit(REQ)
    assert err.value.reason == "shutting_down"


def test_stop_lets_the_running_job_finish_within_grace(app, gate):
    q = queue_of(app)
    running = q.submit(REQ)
    gate.wait_reached()
    queued = q.submit(REQ)
    gate.open()
    q.stop(grace_seconds=30)
    assert running.state == JobState.SUCCEEDED
    assert queued.state == JobState.CANCELLED


def test_stop_cancels_the_running_job_after_grace(app, gate):
    q = queue_of(app)
    running = q.submit(GenerationRequest(prompt="x", steps=20, width=64, height=64))
    gate.wait_reached()
    started = time.monotonic()
    import threading

    threading.Timer(0.5, gate.open).start()  # the job would go on after the grace period
    q.stop(grace_seconds=0.2)
    assert running.state == JobState.CANCELLED
    assert time.monotonic() - started < 30


def test_finished_images_are_saved_to_output_dir(make_app, tmp_path):
    q = queue_of(make_app(OUTPUT_DIR=str(tmp_path / "out")))
    job = q.submit(GenerationRequest(prompt="A Red Barn!", steps=2, width=64, height=64,
                                     seed=5))
    q.wait(job, 60)
    saved = list((tmp_path / "out").rglob("*.png"))
    assert len(saved) == 1 and saved[0].read_bytes() == job.png
    assert saved[0].name == f"{job.id}-5-a-red-barn.png"


def test_a_batch_is_accepted_whole_or_not_at_all(app, gate):
    q = queue_of(app)
    first = q.submit(REQ)
    gate.wait_reached()
    assert q.current() is first
    with pytest.raises(QueueFull):
        q.submit_many([REQ] * (q.settings.queue_size + 1))
    assert q.stats()["waiting"] == 0
    batch = q.submit_many([REQ] * q.settings.queue_size)
    assert [q.queue_position(j) for j in batch] == list(range(1, q.settings.queue_size + 1))
    gate.open()
    assert all(q.wait(j, 60) for j in batch)


def test_saved_images_come_back_after_a_restart(make_app, tmp_path):
    import os

    out = str(tmp_path / "out")
    first = queue_of(make_app(OUTPUT_DIR=out))
    jobs = [first.submit(GenerationRequest(prompt=f"barn {i}", negative_prompt="fog", steps=2,
                                           width=64, height=64, scheduler="Euler", seed=i))
            for i in range(3)]
    for job in jobs:
        assert first.wait(job, 60)
    first.stop(0)
    old = next((tmp_path / "out").rglob(f"{jobs[0].id}-*.png"))
    os.utime(old, (1, 1))  # older than JOB_RETENTION_SECONDS: stays on disk, not restored
    (tmp_path / "out" / "notes").mkdir()
    (tmp_path / "out" / "notes" / "stray.png").write_bytes(b"not a png")
    second = queue_of(make_app(OUTPUT_DIR=out))
    restored = {j.id: j for j in second.recent()}
    assert set(restored) == {jobs[1].id, jobs[2].id}
    for job in jobs[1:]:
        back = restored[job.id]
        assert back.state == JobState.SUCCEEDED and back.png == job.png and back.seed == job.seed
        assert back.request == GenerationRequest(**{**job.request.to_dict(), "seed": job.seed})
    assert second.snapshot(restored[jobs[2].id])["progress"] == 1.0
