"""QUEUE_BACKEND=redis end to end: a real redis-server, the web app (no model) and two
real `python worker.py` processes on the tiny model. Each test stands alone, in any order:
the module's workers are started once, and `two_workers` replaces one an earlier test
killed and waits until both are ready and idle with nothing queued."""
from __future__ import annotations

import base64
import shutil
import signal

import pytest

from tests.redis_fixtures import *  # noqa: F401,F403  redis_server, redis_env, start_worker
from tests.helpers import FINISHED, free_port, poll_until, wait_state
from tests.redis_fixtures import RedisServer

LONG = {"prompt": "a long one", "steps": 50, "width": 256, "height": 256}


@pytest.fixture
def redis_app(make_app, redis_env):
    """Build a web app on the test's Redis (as `python app.py` would: no model)."""
    keys = ("MODEL_ID", "QUEUE_BACKEND", "REDIS_URL", "QUEUE_SIZE", "OUTPUT_DIR")

    def make(**env: str):
        return make_app(wait=False, **{**{k: redis_env[k] for k in keys}, **env})

    return make


@pytest.fixture(scope="module")
def worker_pool() -> list:
    """The module's live `python worker.py` processes (two_workers fills it)."""
    return []


@pytest.fixture
def two_workers(worker_pool, start_worker, redis_server, redis_app) -> list:
    """Two ready, idle workers and an empty queue, whatever an earlier test did: Redis is
    started if a test left it stopped, a dead worker is replaced, and /health must list
    exactly these two (a killed one has left it)."""
    if redis_server.process.poll() is not None:
        redis_server.start()
    worker_pool[:] = [w for w in worker_pool if w.process.poll() is None]
    while len(worker_pool) < 2:
        worker_pool.append(start_worker())
    client = redis_app().test_client()
    pids = {w.pid for w in worker_pool}

    def ready_and_idle() -> bool:
        body = client.get("/health").get_json()
        workers = body.get("workers", [])
        return ({w["pid"] for w in workers} == pids and len(workers) == 2
                and all(w["state"] == "ready" and not w["job"] for w in workers)
                and body["queue"]["waiting"] == 0)

    poll_until(ready_and_idle, 180, f"workers {sorted(pids)} ready and idle, nothing queued")
    return list(worker_pool)


@pytest.fixture
def lone_redis(tmp_path):
    """A redis-server of the test's own, which no worker serves."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_health_without_workers_is_503_no_workers_and_jobs_are_refused(redis_app, lone_redis):
    client = redis_app(REDIS_URL=lone_redis.url).test_client()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "no_workers" and "python worker.py" in body["advice"]
    refused = client.post("/generate", json={"prompt": "a cat"})
    assert refused.status_code == 503 and refused.get_json()["error"] == "no_workers"


def test_health_is_200_with_two_ready_workers(redis_app, two_workers):
    client = redis_app().test_client()
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "healthy"
    assert body["queue"]["backend"] == "redis" and body["queue"]["waiting"] == 0
    assert body["model"] and body["dtype"]
    assert {w["pid"] for w in body["workers"]} == {w.pid for w in two_workers}


def test_the_three_dialects_run_on_the_workers(redis_app, two_workers):
    client = redis_app().test_client()
    native = client.post("/generate", json={"prompt": "a cat", "seed": 3})
    assert native.status_code == 200 and native.data[:8] == b"\x89PNG\r\n\x1a\n"
    job = client.get(f"/jobs/{native.headers['X-Job-Id']}").get_json()
    assert job["state"] == "succeeded" and job["worker"] and job["seed"] == 3
    again = client.get(f"/jobs/{job['id']}/image")
    assert again.status_code == 200 and again.data == native.data
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a dog", "steps": 2,
                                                    "width": 64, "height": 64,
                                                    "batch_size": 2, "seed": 5})
    assert a1111.status_code == 200, a1111.get_json()
    images = a1111.get_json()["images"]
    assert len(images) == 2 and base64.b64decode(images[0])[:4] == b"\x89PNG"
    openai = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64",
                                                          "response_format": "b64_json"})
    assert openai.status_code == 200, openai.get_json()
    assert base64.b64decode(openai.get_json()["data"][0]["b64_json"])[:4] == b"\x89PNG"


def test_jobs_spread_over_both_workers(redis_app, two_workers):
    client = redis_app().test_client()
    ids = [client.post("/jobs", json={"prompt": f"p{i}", "steps": 8, "width": 128,
                                      "height": 128}).get_json()["id"] for i in range(4)]
    jobs = [wait_state(client, i, FINISHED, 120) for i in ids]
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    assert len({j["worker"] for j in jobs}) == 2


def test_cancel_queued_and_running(redis_app, two_workers):
    client = redis_app().test_client()
    ids = [client.post("/jobs", json=LONG).get_json()["id"] for _ in range(3)]
    running = poll_until(lambda: next((i for i in ids if client.get(f"/jobs/{i}").get_json()[
        "step"] >= 1), None), 60, "a job to make a step")
    queued = ids[-1]
    assert client.get(f"/jobs/{queued}").get_json()["state"] == "queued"
    assert client.post(f"/jobs/{queued}/cancel").get_json()["state"] == "cancelled"
    preview = poll_until(lambda: client.get(f"/jobs/{running}/preview").status_code == 200,
                         30, "a live preview")
    assert preview
    client.post(f"/jobs/{running}/cancel")
    done = wait_state(client, running, FINISHED, 30)
    assert done["state"] == "cancelled" and done["step"] < done["total_steps"]
    for job_id in ids:
        client.post(f"/jobs/{job_id}/cancel")
        wait_state(client, job_id, FINISHED, 30)


def test_queue_size_holds_across_web_processes(redis_app, two_workers):
    clients = [redis_app().test_client() for _ in range(3)]
    ids, refused = [], []
    for client in clients:  # three web processes, one Redis: 12 long jobs for 6 places
        for _ in range(4):
            response = client.post("/jobs", json=LONG)
            if response.status_code < 300:
                ids.append(response.get_json()["id"])
            else:
                refused.append(response)
    assert refused and len(ids) <= 6 + 2  # 6 waiting, and each worker runs one
    assert all(r.status_code == 503 and r.headers["Retry-After"] for r in refused)
    assert clients[0].get("/health").get_json()["queue"]["waiting"] <= 6
    for job_id in ids:
        clients[0].post(f"/jobs/{job_id}/cancel")
    for job_id in ids:
        wait_state(clients[0], job_id, FINISHED, 60)


def test_each_worker_serves_its_own_model(redis_app, two_workers, start_worker, tiny_model_dir,
                                         tmp_path):
    """A model in the catalogue that no live worker serves is a 400 listing the served
    ones; a worker started for it (WORKER_MODELS) takes its jobs; the lists and /health
    show what is served, and by whom."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "other")
    client = redis_app(MODELS_DIR=str(models)).test_client()
    refused = client.post("/generate", json={"prompt": "a cat", "model": "other"})
    assert refused.status_code == 400 and refused.get_json()["error"] == "model_not_served"
    assert "'other'" in refused.get_json()["message"] and "tiny" in refused.get_json()["message"]
    assert client.post("/generate", json={"prompt": "a cat", "model": "tiny"}).status_code == 200
    worker = start_worker(MODELS_DIR=str(models), WORKER_MODELS="other")
    try:
        queued = poll_until(lambda: (lambda r: r.get_json() if r.status_code == 202 else None)(
            client.post("/jobs", json={"prompt": "a cat", "model": "other"})), 120,
            "the third worker to serve 'other' (until then: 400 model_not_served)")
        job_id = queued["id"]
        done = wait_state(client, job_id, FINISHED, 60)
        assert done["state"] == "succeeded" and done["worker"].endswith(f"-{worker.pid}")
        health = client.get("/health").get_json()
        assert set(health["models"]) == {"tiny", "other"}
        assert health["models"]["other"] == [done["worker"]]
        listed = {m["id"] for m in client.get("/v1/models").get_json()["data"]}
        assert "other" in listed and len(listed) == 2  # the served one by its MODEL_ID
        # A1111's options switch the default of requests without a model, for every client.
        assert client.post("/sdapi/v1/options", json={
            "sd_model_checkpoint": "other"}).status_code == 200
        job_id = client.post("/jobs", json={"prompt": "no model named"}).get_json()["id"]
        assert wait_state(client, job_id, FINISHED, 60)["worker"] == done["worker"]
        assert client.post("/sdapi/v1/options", json={
            "sd_model_checkpoint": "tiny"}).status_code == 200
    finally:
        worker.close()


def test_a_restarted_web_process_finds_its_jobs(redis_app, two_workers):
    first = redis_app().test_client()
    job_id = first.post("/jobs", json={"prompt": "restart", "steps": 20, "width": 128,
                                       "height": 128}).get_json()["id"]
    del first  # the web process is gone; the job lives in Redis
    second = redis_app().test_client()
    done = wait_state(second, job_id, FINISHED, 60)
    assert done["state"] == "succeeded"
    assert second.get(f"/jobs/{job_id}/image").data[:4] == b"\x89PNG"
    assert job_id in [j["id"] for j in second.get("/jobs").get_json()["jobs"]]


def test_a_killed_worker_leaves_and_the_other_goes_on(redis_app, two_workers):
    """Its job is not lost (tests/test_redis_resume.py shows it resuming, byte for byte)."""
    client = redis_app().test_client()
    job_id = client.post("/jobs", json=LONG).get_json()["id"]
    job = poll_until(lambda: (lambda j: j if j["step"] >= 1 else None)(
        client.get(f"/jobs/{job_id}").get_json()), 60, "the job to run")
    victim = next(w for w in two_workers if job["worker"].endswith(f"-{w.pid}"))
    victim.kill(signal.SIGKILL)
    done = wait_state(client, job_id, FINISHED, 60)
    assert done["state"] == "succeeded"
    # Resumed on the other worker, unless it had finished before the kill landed.
    assert done["attempts"] == 1 or not done["worker"].endswith(f"-{victim.pid}")
    after = client.post("/generate", json={"prompt": "still here"})
    assert after.status_code == 200
    poll_until(lambda: len(client.get("/health").get_json()["workers"]) == 1, 30,
               "the dead worker to leave /health")


def test_the_image_history_reads_and_deletes_what_the_workers_made(redis_app, two_workers,
                                                                   redis_env):
    """GET/DELETE /images under Redis: the job from Redis, its file from the workers'
    OUTPUT_DIR (shared with the web process here, as a volume would be)."""
    from pathlib import Path

    client = redis_app().test_client()
    made = client.post("/generate", json={"prompt": "a worker's cat", "seed": 9})
    job_id = made.headers["X-Job-Id"]
    newest = client.get("/images?limit=1").get_json()["images"][0]
    assert newest["job_id"] == job_id and newest["settings"]["Seed"] == "9"
    assert newest["name"].startswith(f"{job_id}-9-")
    assert client.get(newest["url"]).data == made.data
    assert client.delete(newest["url"]).status_code == 200
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(newest["url"]).status_code == 404
    assert not list(Path(redis_env["OUTPUT_DIR"]).glob(f"*/{newest['name']}"))


def test_unreachable_redis_is_503_unhealthy_with_the_password_redacted(make_app, redis_env):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    app = make_app(wait=False, MODEL_ID=redis_env["MODEL_ID"], QUEUE_BACKEND="redis",
                   REDIS_URL=url)
    client = app.test_client()
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "unhealthy"
    assert "hunter2" not in response.get_data(as_text=True) and "***" in body["redis"]
    assert body["advice"]
    refused = client.post("/generate", json={"prompt": "a cat"})
    assert refused.status_code == 503 and "hunter2" not in refused.get_data(as_text=True)


def test_a_redis_restart_keeps_finished_jobs_and_health_says_when_it_is_away(
        redis_app, two_workers, redis_server):
    """Redis runs with appendonly yes (see README, Scaling out): a restart keeps the jobs."""
    client = redis_app().test_client()
    done = client.post("/generate", json={"prompt": "kept"})
    assert done.status_code == 200
    job_id = done.headers["X-Job-Id"]
    redis_server.stop()
    away = client.get("/health")
    assert away.status_code == 503 and away.get_json()["status"] == "unhealthy"
    assert client.post("/generate", json={"prompt": "x"}).status_code == 503
    redis_server.start()
    after = redis_app().test_client()
    assert after.get(f"/jobs/{job_id}").get_json()["state"] == "succeeded"
    assert after.get(f"/jobs/{job_id}/image").data == done.data
