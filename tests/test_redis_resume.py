"""Nothing accepted is lost on Redis (issue 21): a job whose worker is killed (SIGKILL, as
the OOM killer does) runs again on another worker from its last checkpoint, and its image is
byte-identical to an uninterrupted run with the same seed; after JOB_MAX_ATTEMPTS runs it
fails, naming the workers. Real redis-server, real gated worker processes (tests/
gated_worker.py), the real web app."""
from __future__ import annotations

import signal

import pytest
import redis

from jobs import redis_common as rc
from tests.gated_worker import OPEN, PERMITS, REACHED
from tests.helpers import FINISHED, poll_until, wait_state
from tests.redis_fixtures import PROJECT, WorkerProcess
from tests.redis_fixtures import *  # noqa: F401,F403  redis_server, redis_env

JOB = {"prompt": "a lighthouse", "steps": 12, "width": 64, "height": 64, "seed": 4242,
       "scheduler": "DPM++ 2M"}  # a multistep sampler: its history must come back too


@pytest.fixture
def gated_workers(redis_env, redis_server, tmp_path):
    """Two gated workers (closed gate: each step waits for a permit), stopped after the
    test; the web side's client; and Redis for the gate."""
    connection = redis.Redis.from_url(redis_server.url)
    connection.delete(REACHED, PERMITS, OPEN)
    env = {**redis_env, "TEST_GATE_URL": redis_server.url, "CHECKPOINT_STEPS": "2",
           "CHECKPOINT_MAX_COST": "1"}
    workers = [WorkerProcess(env, tmp_path / f"worker-{i}.log",
                             PROJECT / "tests" / "gated_worker.py") for i in range(2)]
    yield workers, connection
    connection.set(OPEN, 1)
    connection.rpush(PERMITS, *["go"] * 100)
    for worker in workers:
        worker.close()


@pytest.fixture
def client(make_app, redis_env):
    """The web app on the test's Redis (as `python app.py` would run it: no model)."""
    keys = ("MODEL_ID", "QUEUE_BACKEND", "REDIS_URL", "QUEUE_SIZE", "OUTPUT_DIR")
    client = make_app(wait=False, **{k: redis_env[k] for k in keys}).test_client()
    poll_until(lambda: client.get("/health").status_code == 200, 180, "a ready worker")
    return client


def go_to_step(connection, client, job_id: str, step: int) -> dict:
    """Let the job run to `step` (one permit a step) and return its JSON there, with its
    worker paused after that step: the job is read only while the worker waits, so a read
    can never be a step behind and let one permit too many through."""
    while True:
        poll_until(lambda: connection.getdel(REACHED), 60, "the worker paused at a step")
        body = client.get(f"/jobs/{job_id}").get_json()
        if body["step"] >= step:
            return body
        connection.rpush(PERMITS, "go")


def image(client, job_id: str) -> bytes:
    return client.get(f"/jobs/{job_id}/image").data


def kill_runner(workers, body) -> WorkerProcess:
    victim = next(w for w in workers if body["worker"].endswith(f"-{w.pid}"))
    victim.kill(signal.SIGKILL)
    return victim


def test_a_killed_workers_job_resumes_elsewhere_to_the_same_bytes(gated_workers, client):
    workers, connection = gated_workers
    # The uninterrupted run, for the bytes.
    connection.set(OPEN, 1)
    whole_id = client.post("/jobs", json=JOB).get_json()["id"]
    assert wait_state(client, whole_id, FINISHED, 60)["state"] == "succeeded"
    whole = image(client, whole_id)
    connection.delete(OPEN, REACHED, PERMITS)
    # The same job, its worker killed after step 5 (checkpoints after steps 2 and 4).
    job_id = client.post("/jobs", json=JOB).get_json()["id"]
    body = go_to_step(connection, client, job_id, 5)
    assert connection.exists(rc.checkpoint_key(job_id))
    victim = kill_runner(workers, body)
    connection.set(OPEN, 1)
    connection.rpush(PERMITS, *["go"] * 50)
    done = wait_state(client, job_id, FINISHED, 60)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["resumed_at_step"] == 4
    assert not done["worker"].endswith(f"-{victim.pid}")
    assert image(client, job_id) == whole
    assert not connection.exists(rc.checkpoint_key(job_id))  # kept only while it runs


def test_a_job_whose_workers_keep_dying_fails_naming_them(gated_workers, client):
    workers, connection = gated_workers
    job_id = client.post("/jobs", json=JOB).get_json()["id"]
    first = kill_runner(workers, go_to_step(connection, client, job_id, 3))
    body = poll_until(lambda: (lambda b: b if b["attempts"] == 2 and b["state"] == "running"
                               else None)(client.get(f"/jobs/{job_id}").get_json()), 60,
                      "the second attempt to run")
    second = kill_runner(workers, body)
    done = wait_state(client, job_id, FINISHED, 60)  # nobody left: the web process reaps it
    assert done["state"] == "failed" and "stopped 2 times" in done["error"]
    assert f"-{first.pid}" in done["error"] and f"-{second.pid}" in done["error"]
    assert "JOB_MAX_ATTEMPTS=2" in done["error"]
    assert client.get(f"/jobs/{job_id}/image").status_code >= 400
