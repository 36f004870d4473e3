"""One suite, both queue backends (jobs.backend.QueueBackend): the in-process JobQueue with
the real Engine, and RedisJobQueue on a real redis-server with a real `python worker.py`
process. Every test runs on each; what differs between them is said where it does.

Both run the tiny real pipeline. A step gate makes "the worker is busy" deterministic: the
memory backend's is tests/conftest.py's StepGate, the Redis worker's tests/gated_worker.py
(the same wrapper, driven through Redis). Each test leaves its backend idle.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import JobState, NotAccepting, QueueFull
from jobs.backend import QueueBackend
from jobs.pace import pace_kind
from params import GenerationRequest
from tests.conftest import BASE_ENV, StepGate
from tests.gated_worker import gated_generate
from tests.helpers import poll_until, stop_process
from tests.redis_fixtures import RedisServer

ROOT = Path(__file__).resolve().parent.parent
QUICK = GenerationRequest(prompt="a quick one", steps=2, width=64, height=64)
LONG = GenerationRequest(prompt="a long one", steps=20, width=64, height=64)
QUEUE_SIZE, MAX_BATCH = 4, 3
WAIT_SECONDS = 60


class RedisGate:
    """StepGate's interface for a worker process (see tests/gated_worker.py)."""

    def __init__(self, url: str):
        import redis

        from tests import gated_worker

        self.keys = gated_worker
        self.connection = redis.Redis.from_url(url)
        self.connection.delete(self.keys.REACHED, self.keys.PERMITS, self.keys.OPEN)

    def release(self, steps: int = 1) -> None:
        """Let `steps` more steps run."""
        self.connection.rpush(self.keys.PERMITS, *["go"] * steps)

    def open(self) -> None:
        """Stop pausing."""
        self.connection.set(self.keys.OPEN, 1)
        self.release(50)

    def close(self) -> None:
        """Pause again at every step, from a clean slate."""
        self.connection.delete(self.keys.REACHED, self.keys.PERMITS, self.keys.OPEN)

    def wait_reached(self, timeout: float = 30) -> None:
        """Wait until a job is paused at a step."""
        poll_until(lambda: self.connection.getdel(self.keys.REACHED), timeout,
                   "the worker to reach a step")


@pytest.fixture(scope="module")
def memory_backend(tiny_model_dir, tmp_path_factory):
    """The memory backend on a gated real Engine, loaded once for the module."""
    import engine as engine_module
    from config import Settings
    from jobs import JobQueue

    gate = StepGate()
    gated = gated_generate(engine_module.Engine.generate,
                           lambda step: gate.pause(step, WAIT_SECONDS))

    settings = Settings.from_env({**BASE_ENV, "MODEL_ID": str(tiny_model_dir),
                                  "QUEUE_SIZE": str(QUEUE_SIZE), "MAX_BATCH": str(MAX_BATCH),
                                  "BF16_CACHE_DIR": str(tmp_path_factory.mktemp("bf16"))})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module.Engine, "generate", gated)
        queue = JobQueue(engine_module.Engine(settings), settings).start()
        assert queue.wait_until_loaded(120)
        yield queue, gate
        gate.open()
        queue.stop(grace_seconds=5)


@pytest.fixture(scope="module")
def redis_backend(tiny_model_dir, tmp_path_factory):
    """The Redis backend: a real redis-server, one gated `python worker.py` process on the
    tiny model, and the web side's RedisJobQueue in this process."""
    from config import Settings
    from jobs.redis_queue import RedisJobQueue

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "REDIS_"))}
    env.update({**BASE_ENV, "MODEL_ID": str(tiny_model_dir), "QUEUE_BACKEND": "redis",
                "REDIS_URL": server.url, "TEST_GATE_URL": server.url,
                "QUEUE_SIZE": str(QUEUE_SIZE), "MAX_BATCH": str(MAX_BATCH),
                "BF16_CACHE_DIR": str(tmp_path_factory.mktemp("bf16")),
                "PYTHONUNBUFFERED": "1"})
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gated_worker.py")],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    settings = Settings.from_env(env)
    queue = RedisJobQueue(settings).start()
    gate = RedisGate(server.url)
    try:
        if not queue.wait_until_loaded(120):
            pytest.fail(f"the gated worker never got ready:\n{log_path.read_text()[-3000:]}")
        yield queue, gate
    finally:
        gate.open()
        stop_process(worker)
        server.stop()


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> tuple[QueueBackend, StepGate | RedisGate]:
    """(queue, gate) of each backend; the gate starts closed and the queue idle, and both
    are left so after the test."""
    queue, gate = request.getfixturevalue(f"{request.param}_backend")
    gate.close()
    yield queue, gate
    gate.open()
    poll_until(lambda: queue.active() is None, WAIT_SECONDS, "the backend to be idle")


def finished(queue: QueueBackend, job) -> bool:
    """Wait for the job to finish; True when it did."""
    return queue.wait(job, WAIT_SECONDS)


def test_a_job_runs_and_its_image_and_figures_are_kept(backend):
    queue, gate = backend
    gate.open()
    job = queue.submit(QUICK, client="tester")
    assert finished(queue, job) and job.state == JobState.SUCCEEDED
    assert job.png.startswith(b"\x89PNG") and 0 <= job.seed < 2**32
    again = queue.get(job.id)
    assert again is not None and again.png == job.png and again.client == "tester"
    snap = queue.snapshot(job)
    assert snap["state"] == "succeeded" and snap["step"] == snap["total_steps"] == 2
    assert snap["progress"] == 1.0 and snap["queue_position"] is None
    assert snap["eta_seconds"] == 0.0 and snap["seconds_per_step"] > 0
    assert "worker" in snap and snap["request"]["prompt"] == QUICK.prompt
    assert job.id in [j.id for j in queue.recent(10)]
    assert queue.stats()["completed"] >= 1
    # Its kind's pace is in the book (in Redis for the workers' backend), for estimates.
    figures = queue.pace_book()[pace_kind(QUICK, queue.engine.model_name)]
    assert figures["seconds_per_step"] > 0 and figures["images"] >= 1


def test_a_batch_shares_its_id_has_consecutive_indexes_and_runs_in_order(backend):
    queue, gate = backend
    gate.open()
    batch = queue.submit_many([QUICK] * MAX_BATCH)
    assert all(finished(queue, job) for job in batch)
    batch = [queue.get(job.id) for job in batch]
    assert [j.batch_index for j in batch] == list(range(MAX_BATCH))
    assert {j.batch_id for j in batch} == {batch[0].id}
    assert {j.batch_size for j in batch} == {MAX_BATCH}
    assert all(j.state == JobState.SUCCEEDED for j in batch)
    assert batch[0].started_at <= batch[1].started_at <= batch[2].started_at


def test_progress_and_a_preview_while_running(backend):
    queue, gate = backend
    job = queue.submit(LONG)
    gate.wait_reached()
    snap = queue.snapshot(job)
    assert snap["state"] == "running" and snap["step"] == 1 and snap["total_steps"] == 20
    assert snap["queue_position"] == 0 and 0 < snap["progress"] < 1
    # The Redis worker renders a preview only once someone asks: the next step brings it.
    def preview():
        png = queue.preview(job)
        if png is None:
            gate.release(1)
            gate.wait_reached()
        return png

    png = poll_until(preview, 30, "a live preview")
    assert png.startswith(b"\x89PNG")
    queue.cancel(job.id)
    gate.open()
    assert finished(queue, job)


def test_queued_jobs_know_their_position_and_a_full_queue_says_when_to_retry(backend):
    queue, gate = backend
    running = queue.submit(LONG)
    gate.wait_reached()
    waiting = [queue.submit(QUICK) for _ in range(QUEUE_SIZE)]
    assert [queue.queue_position(j) for j in waiting] == list(range(1, QUEUE_SIZE + 1))
    assert queue.queue_position(running) == 0
    with pytest.raises(QueueFull) as full:
        queue.submit(QUICK)
    assert full.value.retry_after >= 5
    with pytest.raises(QueueFull):  # a batch is all or nothing
        queue.submit_many([QUICK, QUICK])
    queue.cancel(running.id)
    gate.open()
    assert all(finished(queue, j) for j in [running, *waiting])
    assert all(queue.get(j.id).state == JobState.SUCCEEDED for j in waiting)


def test_clients_share_the_queue_round_robin(backend):
    """One client's batch no longer holds up another's single image: each waits behind at
    most one image of every other client; one client's own jobs keep their order."""
    queue, gate = backend
    running = queue.submit(LONG, client="alice")
    gate.wait_reached()
    batch = queue.submit_many([QUICK] * 3, client="alice")
    bob = queue.submit(QUICK, client="bob")
    assert queue.queue_position(bob) == 1  # alice is running one already
    assert [queue.queue_position(j) for j in batch] == [2, 3, 4]
    queue.cancel(running.id)
    gate.open()
    for job in [running, *batch, bob]:
        assert finished(queue, job)
    started = {job.id: queue.get(job.id).started_at for job in [bob, *batch]}
    assert started[bob.id] <= min(started[j.id] for j in batch)


def test_a_cancelled_queued_job_never_runs(backend):
    queue, gate = backend
    running = queue.submit(LONG)
    gate.wait_reached()
    second, third = queue.submit(QUICK), queue.submit(QUICK)
    cancelled = queue.cancel(second.id)
    assert cancelled.state == JobState.CANCELLED and queue.queue_position(third) == 1
    queue.cancel(running.id)
    gate.open()
    assert finished(queue, third) and third.state == JobState.SUCCEEDED
    second = queue.get(second.id)
    assert second.state == JobState.CANCELLED and second.started_at is None
    assert second.png is None and "before it started" in second.error


def test_a_cancelled_running_job_stops_at_its_next_step(backend):
    queue, gate = backend
    job = queue.submit(LONG)
    gate.wait_reached()
    queue.cancel(job.id)
    gate.release(1)  # the step in flight ends; the next step's callback stops the run
    assert finished(queue, job)
    job = queue.get(job.id)
    assert job.state == JobState.CANCELLED and job.png is None
    assert job.step <= 2 and "cancelled at step" in job.error
    gate.open()
    after = queue.submit(QUICK)  # the worker goes on with the next job
    assert finished(queue, after) and after.state == JobState.SUCCEEDED


def test_a_failing_generation_fails_that_job_only_with_a_message(backend):
    queue, gate = backend
    gate.open()
    # Past validation on purpose: diffusers refuses a size that is no multiple of 8.
    bad = queue.submit(GenerationRequest(prompt="x", steps=2, width=60, height=64))
    good = queue.submit(QUICK)
    assert finished(queue, bad) and finished(queue, good)
    bad = queue.get(bad.id)
    assert bad.state == JobState.FAILED and bad.png is None and not bad.rejected
    assert "generation failed (ValueError)" in bad.error and "server log" in bad.error
    assert good.state == JobState.SUCCEEDED
    assert queue.stats()["failed"] >= 1


def test_a_finished_job_is_kept_for_the_retention_time_then_forgotten(backend):
    """Memory prunes on its clock (advanced here); Redis lets keys expire (their TTLs are
    checked: a test cannot wait an hour)."""
    queue, gate = backend
    gate.open()
    job = queue.submit(QUICK)
    assert finished(queue, job) and queue.get(job.id) is not None
    retention = queue.settings.job_retention_seconds
    if hasattr(queue, "connection"):
        from jobs import redis_common as rc

        for key in (rc.png_key(job.id), f"rq:job:{job.id}"):
            assert 0 < queue.connection.ttl(key) <= retention, key
        return
    real_clock = queue.clock
    queue.clock = lambda: real_clock() + retention + 1
    try:
        assert queue.get(job.id) is None and job.id not in [j.id for j in queue.recent()]
    finally:
        queue.clock = real_clock


def test_forget_drops_a_finished_job_and_its_image_never_an_unfinished_one(backend):
    """What deleting an image from the history does to its job (DELETE /images/<name>)."""
    queue, gate = backend
    running = queue.submit(LONG)
    gate.wait_reached()
    assert queue.forget(running.id) is None  # running: cancelled, never forgotten
    assert queue.get(running.id) is not None
    queue.cancel(running.id)
    gate.open()
    done = queue.submit(QUICK)
    assert finished(queue, done) and finished(queue, running)
    assert queue.forget(done.id).id == done.id
    assert queue.get(done.id) is None and done.id not in [j.id for j in queue.recent()]
    assert queue.forget(done.id) is None and queue.forget("no-such-job") is None


def test_health_is_200_with_the_model_and_queue_figures(backend):
    queue, _gate = backend
    health = queue.health()
    assert health.code == 200 and health.body["status"] == "healthy"
    assert health.body["model"] and health.body["queue"]["capacity"] == QUEUE_SIZE
    assert health.body["queue"]["backend"] in ("memory", "redis")


def test_a_stopping_process_refuses_new_jobs_and_the_running_one_is_not_lost(backend):
    """Memory: stop() lets the running job finish within the grace; Redis: this web process
    stops taking jobs while the worker, a process of its own, finishes it."""
    queue, gate = backend
    job = queue.submit(QUICK)
    gate.wait_reached()
    gate.open()
    queue.stop(grace_seconds=WAIT_SECONDS)
    assert finished(queue, job) and queue.get(job.id).state == JobState.SUCCEEDED
    assert not queue.accepting
    with pytest.raises(NotAccepting) as refused:
        queue.submit(QUICK)
    assert refused.value.reason == "shutting_down" and refused.value.status == 503
    health = queue.health()
    assert health.code == 503 and health.body["status"] == "shutting_down"
