"""Metrics and event streams under QUEUE_BACKEND=redis: a real redis-server, a real gated
`python worker.py` process (tests/gated_worker.py) and two web apps served by waitress, as two
`python app.py` behind a load balancer would be. A job submitted to one web process is
streamed from the other (the worker's steps reach it over Redis pub/sub), and either web
process's /metrics counts what both web processes and the worker did.

These tests fail, never skip, without redis-server."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from jobs.metrics import model_label
from tests.conftest import ROOT, LiveServer
from tests.helpers import EventStream, metric, metric_samples, poll_until, stop_process
from tests.redis_fixtures import *  # noqa: F401,F403  redis_server, redis_env
from tests.redis_fixtures import START_SECONDS
from tests.test_queue_backends import RedisGate

WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def cluster(redis_env, redis_server, tmp_path_factory):
    """(web A, web B, gate): two web apps on one Redis and one gated worker process."""
    from app import create_app
    from config import Settings

    env = {**redis_env, "TEST_GATE_URL": redis_server.url}
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gated_worker.py")],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    apps = [create_app(Settings.from_env(env)) for _ in range(2)]
    servers = [LiveServer(app) for app in apps]
    gate = RedisGate(redis_server.url)
    try:
        if not apps[0].extensions["sd_server"].queue.wait_until_loaded(START_SECONDS):
            pytest.fail(f"the gated worker never got ready:\n{log_path.read_text()[-3000:]}")
        yield servers[0], servers[1], gate
    finally:
        gate.open()
        for server in servers:
            server.close()
        stop_process(worker)


@pytest.fixture
def web(cluster):
    """The cluster with its gate closed; the queue is left idle after the test."""
    a, b, gate = cluster
    gate.close()
    yield a, b, gate
    gate.open()
    queue = a.app.extensions["sd_server"].queue
    poll_until(lambda: queue.active() is None, WAIT_SECONDS, "the queue to be idle")


def call(server, path: str, body: dict | None = None) -> dict:
    """POST `body` (or GET) as a client would; the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers={
        "Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
        return json.load(response)


def test_a_job_queued_on_one_web_process_streams_from_the_other(web):
    a, b, gate = web
    job = call(a, "/jobs", {"prompt": "a lighthouse", "steps": 4})
    gate.wait_reached()
    stream = EventStream(b.url, f"/jobs/{job['id']}/events")
    assert stream.status == 200
    name, progress = stream.next()
    assert name == "progress" and (progress["step"], progress["total_steps"]) == (1, 4)
    # The open stream asks the worker for previews: the next step brings one.
    gate.release(1)
    events = stream.events_until("preview")
    assert ("progress", 2) in [(n, d["step"]) for n, d in events]
    with urllib.request.urlopen(a.url + events[-1][1]["preview_url"], timeout=10) as response:
        assert response.read().startswith(b"\x89PNG")
    gate.open()
    finished = stream.events_until("finished")[-1][1]
    assert finished["state"] == "succeeded" and finished["worker"]
    assert stream.next() is None
    with urllib.request.urlopen(b.url + finished["image_url"], timeout=10) as response:
        assert response.read().startswith(b"\x89PNG")


def test_a_queued_job_streams_its_position_until_it_runs(web):
    a, b, gate = web
    first = call(a, "/jobs", {"prompt": "first", "steps": 20})
    gate.wait_reached()
    second = call(a, "/jobs", {"prompt": "second", "steps": 2})
    stream = EventStream(b.url, f"/jobs/{second['id']}/events")
    name, queued = stream.next()
    assert name == "queued" and queued["queue_position"] == 1
    call(b, f"/jobs/{first['id']}/cancel", {})
    gate.open()
    events = stream.events_until("finished")
    assert events[-1][1]["state"] == "succeeded"
    assert call(a, f"/jobs/{first['id']}")["state"] == "cancelled"


def test_a_stopping_web_process_ends_its_streams_and_the_job_goes_on(web, redis_env):
    from app import create_app
    from config import Settings

    a, _b, gate = web
    job = call(a, "/jobs", {"prompt": "long", "steps": 3})
    gate.wait_reached()
    leaving = LiveServer(create_app(Settings.from_env(redis_env)))
    try:
        stream = EventStream(leaving.url, f"/jobs/{job['id']}/events")
        assert stream.next()[0] == "progress"
        leaving.app.extensions["sd_server"].queue.stop(grace_seconds=0)
        assert stream.next() is None  # ended: the client reconnects to another process
    finally:
        leaving.close()
    gate.open()
    assert EventStream(a.url, f"/jobs/{job['id']}/events").events_until(
        "finished")[-1][1]["state"] == "succeeded"


def image_count(samples: dict, model: str) -> float:
    """Images timed for `model`, over every sampler."""
    return sum(value for (name, labels), value in samples.items()
               if name == "sd_image_seconds_count" and ("model", model) in labels)


def test_either_web_process_counts_both_web_processes_and_the_worker(web):
    a, b, gate = web
    gate.open()
    model = model_label(b.app.extensions["sd_server"].engine)  # its catalogue name
    # The baseline must hold what A counted in earlier tests (its flusher adds them to Redis
    # within a second; here at once), or they would show up as this test's.
    a.app.extensions["sd_server"].queue.metrics.store.flush()
    before = metric_samples(urllib.request.urlopen(b.url + "/metrics", timeout=10)
                            .read().decode())
    job = call(a, "/jobs", {"prompt": "native", "steps": 2})  # web A, native
    call(b, "/sdapi/v1/txt2img", {"prompt": "a1111", "steps": 2, "sampler_name": "Euler"})
    poll_until(lambda: call(a, f"/jobs/{job['id']}")["state"] == "succeeded", WAIT_SECONDS,
               "the native job to succeed")

    def grew(name: str, by: float, **labels: str):
        def check(samples: dict) -> bool:
            return metric(samples, name, **labels) - metric(before, name, **labels) == by
        return check

    wanted = [grew("sd_jobs_submitted_total", 1, dialect="native"),       # web A's count
              grew("sd_jobs_submitted_total", 1, dialect="a1111"),        # web B's
              grew("sd_jobs_finished_total", 1, outcome="succeeded", dialect="native"),
              grew("sd_jobs_finished_total", 1, outcome="succeeded", dialect="a1111"),
              grew("sd_http_requests_total", 1, route="/jobs", method="POST", status="202"),
              lambda s: image_count(s, model) - image_count(before, model) == 2]  # worker's

    def scrape_b():
        text = urllib.request.urlopen(b.url + "/metrics", timeout=10).read().decode()
        samples = metric_samples(text)
        return samples if all(check(samples) for check in wanted) else None

    # Web A adds its counts to Redis within a second (FLUSH_SECONDS); B reads them there.
    after = poll_until(scrape_b, 10, "web B's /metrics to count what A and the worker did")
    assert metric(after, "sd_step_seconds_count", model=model, sampler="Euler") >= 1
    assert metric(after, "sd_workers", state="ready") == 1
    assert metric(after, "sd_queue_depth", model=model) == 0
    assert metric(after, "sd_jobs_running") == 0
    load = [value for (name, labels), value in after.items()
            if name == "sd_model_load_seconds"]
    assert len(load) == 1 and load[0] > 0  # one per live worker, named by it


def test_metrics_are_protected_like_the_api(redis_env):
    """Under Redis as under memory (the knob is read by the routes, not the backend)."""
    from app import create_app
    from config import Settings

    app = create_app(Settings.from_env({**redis_env, "API_KEY": "k3y"}))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer k3y"}).status_code == 200
