"""The job queue on the tiny real pipeline: ordering, limits, cancel, faults, retention."""

import pytest

from jobs import JobQueue, JobState, NotAccepting, QueueFull
from params import GenerationRequest
from params.infotext import write_infotext

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
    q.submit(REQ)  # runs first, paused by the gate
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

    def fail_once(self, request, seed, on_step=None, *more, **options):
        calls.append(seed)
        if len(calls) == 1:
            raise fault
        return real(self, request, seed, on_step, *more, **options)

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
        assert q.wait(job, 60) and job.state == JobState.SUCCEEDED
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
        # A first run gives the queue a measured pace for the jobs that wait.
        # (Euler: one pipeline step per step asked, so one gate permit per step)
        first = q.submit(GenerationRequest(prompt="w", steps=2, width=64, height=64,
                                           scheduler="Euler"))
        gate.wait_reached()
        gate.release(first.total_steps)  # this step and the rest
        assert q.wait(first, 60) and first.seconds_per_step
        gate.reached.clear()  # set again by the first job's last step
        earlier = first.seconds_per_step
        assert q.stats()["seconds_per_step"] == pytest.approx(earlier, abs=0.001)

        job = q.submit(GenerationRequest(prompt="x", steps=9, width=64, height=64))
        behind = q.submit(GenerationRequest(prompt="y", steps=3, width=64, height=64))
        for _ in range(3):  # steps 1..3, each "taking" 2 s
            gate.wait_reached()
            now[0] += 2.0
            gate.release(1)
        gate.wait_reached()  # step 4 reached at t+6 (clock read at each step)
        total = job.total_steps
        snap = q.snapshot(job)
        assert snap["step"] == 4
        # measured 2 s/step from this run (marks at +0, +2, +4, +6) times steps left
        assert snap["eta_seconds"] == pytest.approx((total - 4) * 2.0)
        # the job behind waits for the rest of this one plus its own steps, at the pace
        # the last finished run measured (its own run has not started)
        waiting = q.snapshot(behind)
        assert waiting["queue_position"] == 1
        assert waiting["eta_seconds"] == pytest.approx(
            (total - 4 + behind.total_steps) * earlier, abs=0.051)
        gate.open()
        assert q.wait(behind, 60) and q.snapshot(behind)["eta_seconds"] == 0.0
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


def test_stop_cancels_the_running_job_after_grace(app, gate, monkeypatch):
    import threading

    q = queue_of(app)
    running = q.submit(GenerationRequest(prompt="x", steps=20, width=64, height=64))
    gate.wait_reached()
    cancelled = threading.Event()
    real_cancel = q.cancel

    def cancel_and_tell(job_id):
        job = real_cancel(job_id)
        cancelled.set()
        return job

    monkeypatch.setattr(q, "cancel", cancel_and_tell)  # spy: the real cancel still runs
    stopper = threading.Thread(target=q.stop, kwargs={"grace_seconds": 0.2})
    stopper.start()
    # The gate holds the job at step 1, so only the grace period running out can cancel it.
    assert cancelled.wait(30)
    assert running.state == JobState.RUNNING and running.cancel_requested
    gate.open()  # the next step sees the cancel
    stopper.join(30)
    assert not stopper.is_alive()
    assert running.state == JobState.CANCELLED and running.step <= 2


def test_finished_images_are_saved_to_output_dir(make_app, tmp_path):
    q = queue_of(make_app(OUTPUT_DIR=str(tmp_path / "out")))
    job = q.submit(GenerationRequest(prompt="A Red Barn!", steps=2, width=64, height=64,
                                     seed=5))
    assert q.wait(job, 60) and job.state == JobState.SUCCEEDED
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


# ---------------------------------------------------------------- the pure ETA function
def test_eta_of_a_finished_job_is_zero_and_unknown_without_a_pace():
    from jobs.eta import eta_seconds

    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert eta_seconds(state, 5, [], None, 100.0, None) == 0.0
    assert eta_seconds(JobState.QUEUED, 5, [], None, 100.0, None) is None
    assert eta_seconds(JobState.RUNNING, 5, [], 90.0, 100.0, None) is None


def test_eta_of_a_queued_job_is_its_steps_left_at_the_earlier_pace():
    from jobs.eta import eta_seconds

    assert eta_seconds(JobState.QUEUED, 12, [], None, 100.0, 1.5) == 18.0


def test_eta_of_a_running_job_uses_its_own_pace_and_the_time_on_this_step():
    from jobs.eta import eta_seconds

    marks = [10.0, 12.0, 14.0]  # 2 s/step, though earlier runs went at 5
    assert eta_seconds(JobState.RUNNING, 6, marks, 9.0, 14.0, 5.0) == 12.0
    assert eta_seconds(JobState.RUNNING, 6, marks, 9.0, 15.5, 5.0) == 10.5
    # the step in progress counts for at most one step, and the ETA never goes negative
    assert eta_seconds(JobState.RUNNING, 6, marks, 9.0, 99.0, 5.0) == 10.0
    assert eta_seconds(JobState.RUNNING, 0, marks, 9.0, 99.0, 5.0) == 0.0


def test_eta_after_one_step_prefers_the_earlier_pace_else_the_first_step():
    from jobs.eta import eta_seconds

    assert eta_seconds(JobState.RUNNING, 4, [13.0], 10.0, 13.0, 2.0) == 8.0
    assert eta_seconds(JobState.RUNNING, 4, [13.0], 10.0, 13.0, None) == 12.0


# ---------------------------------------------------------------- OutputStore
def _settings_with_output(make_settings, folder, **env):
    return make_settings(OUTPUT_DIR=str(folder), **env)


def _job(prompt="A Red Barn!", seed=5):
    from jobs import Job

    return Job(request=GenerationRequest(prompt=prompt, steps=2, width=64, height=64,
                                         scheduler="Euler", seed=seed), seed=seed)


def _png_with_parameters(job, width=64, height=64):
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", write_infotext(job.request, job.seed, "tiny"))
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _decompression_bomb_png():
    """A PNG header claiming 30000x30000 pixels: PIL refuses to open it with
    DecompressionBombError, which is not an OSError."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_output_store_saves_and_restores_a_job(make_settings, tmp_path):
    from jobs import OutputStore

    store = OutputStore(_settings_with_output(make_settings, tmp_path / "out"))
    job = _job()
    png = _png_with_parameters(job)
    path = store.save(job, png)
    assert path.endswith(f"{job.id}-5-a-red-barn.png") and open(path, "rb").read() == png
    [back] = store.restore()
    assert back.id == job.id and back.seed == 5 and back.png == png
    assert back.state == JobState.SUCCEEDED and back.done.is_set() and back.delivered
    assert back.step == back.total_steps and back.saved_path == path


def test_output_store_is_off_without_output_dir(make_settings):
    from jobs import OutputStore

    store = OutputStore(make_settings(OUTPUT_DIR=""))
    assert store.save(_job(), b"png") is None and store.restore() == []


def test_output_store_save_failures_are_logged_not_raised(make_settings, tmp_path,
                                                         monkeypatch, caplog):
    """A disk error (OUTPUT_DIR is a file) and an unforeseen error (injected into the
    write: a real one cannot be provoked) both leave the image unsaved, logged."""
    import pathlib

    from jobs import OutputStore

    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    assert OutputStore(_settings_with_output(make_settings, blocker)).save(_job(), b"x") \
        is None
    assert "could not save job" in caplog.text

    def broken_write(self, data):
        raise RuntimeError("driver bug")

    monkeypatch.setattr(pathlib.Path, "write_bytes", broken_write)
    caplog.clear()
    store = OutputStore(_settings_with_output(make_settings, tmp_path / "out"))
    assert store.save(_job(), b"x") is None
    [record] = [r for r in caplog.records if "could not save job" in r.getMessage()]
    assert record.exc_info and "driver bug" in caplog.text  # with its traceback


def test_output_store_restore_skips_bad_files_one_at_a_time(make_settings, tmp_path, caplog):
    import os

    from jobs import OutputStore

    out = tmp_path / "out"
    store = OutputStore(_settings_with_output(make_settings, out))
    good = _job()
    store.save(good, _png_with_parameters(good))
    day = next(out.iterdir())
    (day / "bomb-1-x.png").write_bytes(_decompression_bomb_png())
    (day / "stray.png").write_bytes(b"not a png")
    (day / "nopar-1-x.png").write_bytes(_png_with_parameters(_job())[:60])  # truncated
    os.symlink(day / "gone.png", day / "dangling-1-x.png")  # stat fails: vanished
    restored = store.restore()
    assert [j.id for j in restored] == [good.id]
    bomb = [r for r in caplog.records if "bomb-1-x.png" in r.getMessage()]
    assert len(bomb) == 1 and bomb[0].exc_info  # logged with its traceback


def test_output_store_restores_within_retention_newest_kept(make_settings, tmp_path):
    import os

    from jobs import OutputStore

    store = OutputStore(_settings_with_output(make_settings, tmp_path / "out",
                                              JOB_RETENTION_COUNT="2",
                                              JOB_RETENTION_SECONDS="3600"),
                        clock=lambda: 10_000.0)
    jobs = [_job(f"barn {i}", seed=i) for i in range(4)]
    for i, job in enumerate(jobs):
        path = store.save(job, _png_with_parameters(job))
        os.utime(path, (0, [1000.0, 8000.0, 9000.0, 9500.0][i]))
    # the first is older than an hour; of the rest the newest two are kept, oldest first
    assert [j.id for j in store.restore()] == [jobs[2].id, jobs[3].id]


# ---------------------------------------------------------------- OpenResponses
def test_open_responses_wait_until_all_are_closed():
    import threading

    from jobs import OpenResponses

    responses = OpenResponses()
    assert responses.wait_all_closed(0)
    responses.opened()
    responses.opened()
    assert responses.count == 2 and not responses.wait_all_closed(0.01)
    closer = threading.Thread(target=lambda: (responses.closed(), responses.closed()))
    closer.start()
    assert responses.wait_all_closed(30) and responses.count == 0
    closer.join()


# ---------------------------------------------------------------- the worker survives
def test_a_save_error_that_is_not_an_oserror_keeps_the_worker(make_app, tmp_path,
                                                              monkeypatch, caplog):
    """The write is made to fail with a non-OSError (injected: no real one is known to
    provoke); before the fix it ended the only worker and the job never finished."""
    import pathlib

    q = queue_of(make_app(OUTPUT_DIR=str(tmp_path / "out")))

    def broken_write(self, data):
        raise RuntimeError("driver bug")

    monkeypatch.setattr(pathlib.Path, "write_bytes", broken_write)
    job = q.submit(REQ)
    assert q.wait(job, 60)
    assert job.state == JobState.SUCCEEDED and job.png and job.saved_path is None
    assert any(r.exc_info for r in caplog.records if "could not save" in r.getMessage())
    monkeypatch.undo()
    nxt = q.submit(REQ)
    assert q.wait(nxt, 60) and nxt.state == JobState.SUCCEEDED and nxt.saved_path
    assert q.worker_alive and q.worker_error is None


def test_an_unexpected_error_after_the_generation_fails_only_that_job(app, monkeypatch,
                                                                      caplog):
    """A fault injected into the store (beyond anything it catches) stands for any bug
    between generating and recording a job."""
    from jobs import OutputStore

    q = queue_of(app)
    calls = []

    def save_once_broken(self, job, png):
        calls.append(job.id)
        if len(calls) == 1:
            raise TypeError("a bug")
        return None

    monkeypatch.setattr(OutputStore, "save", save_once_broken)
    bad, good = q.submit(REQ), q.submit(REQ)
    assert q.wait(bad, 60) and q.wait(good, 60)
    assert bad.state == JobState.FAILED and "unexpected error" in bad.error
    assert "Traceback" not in bad.error and q.current() is None
    assert good.state == JobState.SUCCEEDED and good.png
    assert any(r.exc_info for r in caplog.records if bad.id in r.getMessage())
    assert q.stats()["failed"] == 1 and q.worker_error is None


def test_an_unreadable_saved_image_is_skipped_and_the_worker_starts(make_settings, tmp_path,
                                                                   caplog):
    """Before the fix, PIL's DecompressionBombError from one file in OUTPUT_DIR ended the
    worker before the model loaded."""
    from engine import Engine

    settings = make_settings(OUTPUT_DIR=str(tmp_path / "out"))
    good = _job()
    day = tmp_path / "out" / "2030-01-01"  # as OUTPUT_DIR holds them: <day>/<id>-<seed>-...
    day.mkdir(parents=True)
    (day / f"{good.id}-5-a-red-barn.png").write_bytes(_png_with_parameters(good))
    (day / "bomb-1-x.png").write_bytes(_decompression_bomb_png())
    q = JobQueue(Engine(settings), settings).start()
    try:
        assert q.wait_until_loaded(60) and q.worker_error is None
        assert [j.id for j in q.recent()] == [good.id]
        job = q.submit(REQ)
        assert q.wait(job, 60) and job.state == JobState.SUCCEEDED
        assert any(r.exc_info for r in caplog.records if "bomb-1-x.png" in r.getMessage())
    finally:
        q.stop(0)


def test_a_dead_worker_is_reported_and_its_jobs_fail(app, monkeypatch, gate):
    """SystemExit from inside a generation (injected: the worker guards every Exception)
    ends the thread; the queue must say so, fail what waited, and refuse new jobs."""
    import engine as engine_module

    q = queue_of(app)
    assert q.worker_alive and q.worker_error is None and q.stats()["worker_error"] is None
    running = q.submit(REQ)
    gate.wait_reached()
    waiting = q.submit(REQ)

    def exits(self, request, seed, on_step=None, *more, **options):
        raise SystemExit(3)

    monkeypatch.setattr(engine_module.Engine, "generate", exits)
    gate.open()  # `running` finishes; `waiting` meets the SystemExit
    assert q.wait(running, 60) and running.state == JobState.SUCCEEDED
    assert q.wait(waiting, 60) and waiting.state == JobState.FAILED
    assert "worker stopped unexpectedly" in waiting.error
    assert "SystemExit" in q.worker_error and q.stats()["worker_error"] == q.worker_error
    with pytest.raises(NotAccepting) as err:
        q.submit(REQ)
    assert err.value.reason == "worker_stopped" and "restart" in err.value.message
    q.stop(0)  # joins the thread
    assert not q.worker_alive and q.worker_error


def test_a_worker_that_dies_while_loading_is_reported(make_settings, monkeypatch):
    """A BaseException from the model load (injected: the real load catches every
    Exception) ends the worker; waiting for the load must not hang on it."""
    from engine import Engine

    def dies(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "load", dies)
    settings = make_settings()
    q = JobQueue(Engine(settings), settings).start()
    try:
        assert q.wait_until_loaded(30)
        assert "KeyboardInterrupt" in q.worker_error
    finally:
        q.stop(0)  # joins the thread
    assert not q.worker_alive and q.worker_error  # a stop afterwards does not hide it
