"""jobs.journal: the embedded queue's accepted jobs on disk. Unit tests of the journal
itself, then a real `python app.py` killed with SIGKILL mid-job and mid-queue and started
again: the running job resumes from its checkpoint to the same bytes, the queued ones run
in their order, and every job id answers."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
import redis

from jobs import JobQueue, JobState, NotAccepting
from jobs.batch import build_batch
from jobs.journal import Journal, JournalError
from params import GenerationRequest
from tests.conftest import BASE_ENV, ROOT
from tests.gated_worker import OPEN, PERMITS, REACHED
from tests.helpers import FINISHED, free_port, poll_until, stop_process
from tests.redis_fixtures import RedisServer

REQ = GenerationRequest(prompt="a kettle", steps=3, width=64, height=64)


def accepted(journal: Journal, count: int, client: str = "c") -> list:
    jobs = build_batch([REQ] * count, client, 100.0, tiny_decoder=False)
    journal.accepted(jobs)
    return jobs


def test_a_restart_finds_the_queue_in_order_the_interrupted_job_first(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite")
    first, second, third = accepted(journal, 3)
    first.state, first.attempts = JobState.RUNNING, 1
    journal.started(first)
    journal.keep_checkpoint(first.id, b"ckpt-1", 2)
    journal.keep_checkpoint(first.id, b"ckpt-2", 4)  # the newest replaces the one before
    second.state, second.attempts, third.state = JobState.RUNNING, 1, JobState.CANCELLED
    journal.started(second)
    second.state, second.error, second.finished_at = JobState.FAILED, "boom", 101.0
    journal.finished(second)
    journal.finished(third)
    journal.close()

    again = Journal(tmp_path / "jobs.sqlite")
    found = again.recover(max_attempts=2, now=200.0)
    assert [j.id for j in found.waiting] == [first.id]
    resumed = found.waiting[0]
    assert resumed.state == JobState.QUEUED and resumed.attempts == 1
    assert resumed.request == REQ and resumed.seed == first.seed and resumed.step == 4
    assert again.checkpoint(first.id) == b"ckpt-2"
    assert {(j.id, j.state, j.error) for j in found.finished} == {
        (second.id, JobState.FAILED, "boom"), (third.id, JobState.CANCELLED, None)}
    assert again.checkpoint(second.id) is None


def test_a_job_that_keeps_killing_the_server_is_failed_not_run_forever(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite")
    [job] = accepted(journal, 1)
    job.state, job.attempts = JobState.RUNNING, 2
    journal.started(job)
    found = journal.recover(max_attempts=2, now=5.0)
    assert found.waiting == []
    [failed] = found.finished
    assert failed.state == JobState.FAILED and "stopped 2 times" in failed.error
    assert "JOB_MAX_ATTEMPTS=2" in failed.error
    assert journal.recover(max_attempts=2, now=6.0).finished[0].state == JobState.FAILED


def test_images_survive_the_round_trip(tmp_path):
    from PIL import Image

    journal = Journal(tmp_path / "jobs.sqlite")
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    request = GenerationRequest(prompt="", init_image=image, strength=0.5, steps=4,
                                loras=(("ink", 0.5, 1.0),))
    journal.accepted(build_batch([request], "", 1.0, tiny_decoder=False))
    [back] = journal.recover(2, 2.0).waiting
    assert back.request == request and back.request.init_image.tobytes() == image.tobytes()


def test_an_unreadable_journal_is_moved_aside_and_said_on_health(tmp_path, make_app):
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    app = make_app(JOURNAL_PATH=str(path))
    body = app.test_client().get("/health").get_json()
    assert body["status"] == "healthy" and "could not be read" in body["warning"]
    assert body["queue"]["journal"]["path"] == str(path)
    assert list(tmp_path.glob("jobs.sqlite.unreadable-*"))
    assert sqlite3.connect(path).execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_a_journal_that_cannot_be_written_refuses_the_job_it_would_lose(tmp_path, make_app):
    app = make_app(JOURNAL_PATH=str(tmp_path / "jobs.sqlite"))
    queue: JobQueue = app.extensions["sd_server"].queue
    queue._state.journal._db.close()  # as a full disk or a vanished folder would
    with pytest.raises(NotAccepting) as refused:
        queue.submit(REQ)
    assert refused.value.reason == "journal_unavailable" and refused.value.status == 503
    assert "cannot be written" in refused.value.message
    response = app.test_client().post("/generate", json={"prompt": "a cat"})
    assert response.status_code == 503 and response.get_json()["error"] == "journal_unavailable"
    with pytest.raises(JournalError):
        queue._state.journal.accepted(build_batch([REQ], "", 1.0, False))


# ---------------------------------------------------------------- a real kill -9 and restart
JOB = {"prompt": "a windmill", "steps": 10, "width": 64, "height": 64, "seed": 77,
       "scheduler": "DPM++ 2M SDE"}  # multistep and stochastic: history and RNG come back


class GatedApp:
    """`python app.py` with a step gate (tests/gated_worker.py app) on a journal file."""

    def __init__(self, env: dict[str, str], log_path):
        self.env, self.port = env, int(env["PORT"])
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "gated_worker.py"), "app"], cwd=ROOT,
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        poll_until(lambda: self.get("/health")[0] == 200, 120, "the app to be healthy",
                   ignoring=(OSError,))

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def job(self, job_id: str) -> dict:
        return json.loads(self.get(f"/jobs/{job_id}")[1])

    def post(self, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/jobs",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def close(self) -> None:
        stop_process(self.process)
        self.log.close()


@pytest.fixture
def gate(tmp_path):
    """A redis-server of the test's own, carrying the step gate to the app process."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder).start()
    connection = redis.Redis.from_url(server.url)
    yield server.url, connection
    server.stop()


def test_a_killed_server_resumes_its_job_and_runs_its_queue_after_a_restart(
        tiny_model_dir, tmp_path, gate):
    url, connection = gate
    env = {**{k: v for k, v in os.environ.items() if k not in ("QUEUE_BACKEND",)},
           **BASE_ENV, "MODEL_ID": str(tiny_model_dir), "PORT": str(free_port()),
           "JOURNAL_PATH": str(tmp_path / "jobs.sqlite"), "TEST_GATE_URL": url,
           "OUTPUT_DIR": str(tmp_path / "outputs"), "CHECKPOINT_STEPS": "2",
           "CHECKPOINT_MAX_COST": "1", "BF16_CACHE_DIR": str(tmp_path / "bf16")}
    app = GatedApp(env, tmp_path / "app.log")
    try:
        connection.set(OPEN, 1)  # the uninterrupted run, for the bytes
        whole_id = app.post(JOB)["id"]
        poll_until(lambda: app.job(whole_id)["state"] in FINISHED, 60, "the first job")
        whole = app.get(f"/jobs/{whole_id}/image")[1]
        connection.delete(OPEN, REACHED, PERMITS)

        running = app.post(JOB)["id"]
        queued = [app.post({**JOB, "seed": seed})["id"] for seed in (1, 2)]
        # One permit a step, up to step 5; the job is read only while the app waits at a
        # step, so a read is never a step behind (which would let one permit too many by).
        while True:
            poll_until(lambda: connection.getdel(REACHED), 60, "the app paused at a step")
            if app.job(running)["step"] >= 5:
                break
            connection.rpush(PERMITS, "go")
        app.process.send_signal(signal.SIGKILL)
        app.process.wait(30)
        app.close()

        connection.set(OPEN, 1)
        app = GatedApp(env, tmp_path / "app.log")
        done = poll_until(lambda: (lambda b: b if b["state"] in FINISHED else None)(
            app.job(running)), 60, "the interrupted job to finish")
        assert done["state"] == "succeeded" and done["attempts"] == 2
        assert done["resumed_at_step"] == 4
        assert app.get(f"/jobs/{running}/image")[1] == whole
        after = [poll_until(lambda j=j: (lambda b: b if b["state"] in FINISHED else None)(
            app.job(j)), 60, "the queued jobs") for j in queued]
        assert [b["state"] for b in after] == ["succeeded", "succeeded"]
        assert done["finished_at"] <= after[0]["started_at"] <= after[1]["started_at"]
        assert app.job(whole_id)["state"] == "succeeded"  # an id from before still answers
    finally:
        connection.set(OPEN, 1)
        connection.rpush(PERMITS, *["go"] * 50)
        app.close()
