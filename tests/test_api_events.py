"""GET /jobs/<id>/events under the memory backend, read as a client reads it: over a real
HTTP connection to waitress (the Flask test client would not stream). The gate pauses the
real pipeline at each step. (Under QUEUE_BACKEND=redis: tests/test_monitoring_redis.py.)"""
from __future__ import annotations

import json
import urllib.request

from tests.helpers import EventStream, poll_until


def post_job(server, body: dict, headers: dict | None = None) -> dict:
    """POST /jobs as another client would; the job's JSON."""
    request = urllib.request.Request(f"{server.url}/jobs", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def cancel(server, job_id: str) -> None:
    request = urllib.request.Request(f"{server.url}/jobs/{job_id}/cancel", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def test_a_running_job_streams_its_steps_previews_and_then_its_image(live_server, gate):
    server = live_server()
    job = post_job(server, {"prompt": "a lighthouse", "steps": 4})
    gate.wait_reached()  # paused after step 1
    stream = EventStream(server.url, f"/jobs/{job['id']}/events")
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["Cache-Control"] == "no-store"
    name, progress = stream.next()
    assert name == "progress" and progress["state"] == "running"
    assert (progress["step"], progress["total_steps"]) == (1, 4) and 0 < progress["progress"] < 1
    name, preview = stream.next()
    assert name == "preview" and preview["step"] == 1
    with urllib.request.urlopen(server.url + preview["preview_url"], timeout=10) as response:
        assert response.read().startswith(b"\x89PNG")

    gate.release(1)  # one more step: told as it happens
    name, second = stream.next()
    assert name == "progress" and (second["step"], second["total_steps"]) == (2, 4)
    assert stream.next() == ("preview", {**preview, "step": 2})
    gate.open()
    events = stream.events_until("finished")
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and all(2 < s <= 4 for s in steps)
    finished = events[-1][1]
    assert finished["state"] == "succeeded" and finished["step"] == 4
    assert finished["image_url"] == f"/jobs/{job['id']}/image"
    assert stream.next() is None  # the stream ends with its job
    with urllib.request.urlopen(server.url + finished["image_url"], timeout=10) as response:
        assert response.read().startswith(b"\x89PNG")


def test_a_queued_job_streams_its_position_then_runs_to_the_end(live_server, gate):
    server = live_server()
    first = post_job(server, {"prompt": "first", "steps": 20})
    gate.wait_reached()
    second = post_job(server, {"prompt": "second", "steps": 2})
    stream = EventStream(server.url, f"/jobs/{second['id']}/events")
    name, queued = stream.next()
    assert name == "queued" and queued["queue_position"] == 1 and queued["state"] == "queued"
    cancel(server, first["id"])
    gate.open()
    events = stream.events_until("finished")
    assert "progress" in [name for name, _ in events]
    assert events[-1][1]["state"] == "succeeded"
    assert stream.next() is None


def test_a_finished_job_is_told_at_once_and_the_stream_ends(live_server, gate):
    server = live_server()
    job = post_job(server, {"prompt": "short", "steps": 20})
    gate.wait_reached()
    cancel(server, job["id"])
    gate.open()
    queue = server.app.extensions["sd_server"].queue
    assert queue.wait(queue.get(job["id"]), 30)
    stream = EventStream(server.url, f"/jobs/{job['id']}/events")
    name, data = stream.next()
    assert name == "finished" and data["state"] == "cancelled" and data["error"]
    assert stream.next() is None


def test_a_quiet_stream_sends_a_heartbeat_comment(live_server, gate, monkeypatch):
    import jobs.streams

    monkeypatch.setattr(jobs.streams, "HEARTBEAT_SECONDS", 0.5)  # ~15 s in production
    server = live_server()
    job = post_job(server, {"prompt": "paused", "steps": 3})
    gate.wait_reached()
    stream = EventStream(server.url, f"/jobs/{job['id']}/events")
    assert [stream.next()[0], stream.next()[0]] == ["progress", "preview"]
    assert stream.next() == ("comment", "heartbeat")  # the gate holds: nothing else to tell
    gate.open()
    assert stream.events_until("finished")[-1][1]["state"] == "succeeded"


def test_streams_past_event_streams_are_refused_and_a_left_one_frees_its_slot(live_server,
                                                                               gate):
    server = live_server(EVENT_STREAMS="1")
    job = post_job(server, {"prompt": "watched", "steps": 3})
    gate.wait_reached()
    first = EventStream(server.url, f"/jobs/{job['id']}/events")
    assert first.next()[0] == "progress"
    refused = EventStream(server.url, f"/jobs/{job['id']}/events")
    assert refused.status == 503 and int(refused.headers["Retry-After"]) > 0
    body = json.loads(refused.response.read())
    assert body["error"] == "too_many_streams" and "EVENT_STREAMS" in body["message"]

    first.close()  # the client leaves while its job is still paused: the slot comes back
    again = poll_until(lambda: (s := EventStream(server.url, f"/jobs/{job['id']}/events"))
                       .status == 200 and s, 30, "the left stream's slot to be free")
    assert again.next()[0] == "progress"
    gate.open()
    assert again.events_until("finished")[-1][1]["state"] == "succeeded"


def test_unknown_jobs_404_and_the_api_key_is_needed(live_server):
    server = live_server(API_KEY="k3y", EVENT_STREAMS="0")
    stream = EventStream(server.url, "/jobs/nope/events")
    assert stream.status == 401
    stream = EventStream(server.url, "/jobs/nope/events", {"Authorization": "Bearer k3y"})
    assert stream.status == 404 and json.loads(stream.response.read())["error"] == "not_found"
    job = post_job(server, {"prompt": "x", "steps": 2}, {"Authorization": "Bearer k3y"})
    stream = EventStream(server.url, f"/jobs/{job['id']}/events",
                         {"Authorization": "Bearer k3y"})
    assert stream.status == 503  # EVENT_STREAMS=0: no streams at all, clients poll
