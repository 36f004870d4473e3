"""The job API: submit, poll, preview, image, cancel (queued and running), list, retention."""
import io

from PIL import Image

from tests.helpers import poll_until, wait_state

JOB_FIELDS = {"id", "state", "step", "total_steps", "progress", "eta_seconds", "queue_position",
              "seed", "created_at", "started_at", "finished_at", "error"}


def test_submit_poll_and_fetch(client):
    r = client.post("/jobs", json={"prompt": "a fox", "seed": 11, "steps": 3, "width": 128})
    assert r.status_code == 202
    body = r.json
    assert JOB_FIELDS <= set(body) and body["state"] in ("queued", "running")
    assert r.headers["Location"] == body["status_url"] == f"/jobs/{body['id']}"
    assert body["seed"] == 11 and body["queue_position"] in (0, 1)
    done = wait_state(client, body["id"], {"succeeded"})
    assert done["progress"] == 1.0 and done["step"] == done["total_steps"]
    assert done["eta_seconds"] == 0.0 and done["finished_at"] >= done["started_at"]
    assert done["queue_position"] is None and done["error"] is None
    image = client.get(done["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (128, 64)
    assert image.headers["X-Seed"] == "11"
    download = client.get(done["image_url"] + "?download=1")
    assert download.headers["Content-Disposition"].startswith("attachment; filename=")
    assert download.data == image.data


def test_unknown_ids_are_404_json(client):
    for path in ("/jobs/nope", "/jobs/nope/image", "/jobs/nope/preview"):
        r = client.get(path)
        assert r.status_code == 404 and r.json["error"] == "not_found"
    assert client.post("/jobs/nope/cancel").status_code == 404
    assert client.delete("/jobs/nope").status_code == 404


def test_running_job_has_progress_eta_and_a_live_preview(app, gate):
    client = app.test_client()
    job = client.post("/jobs", json={"prompt": "x", "steps": 10, "width": 128}).json
    gate.wait_reached()
    body = client.get(f"/jobs/{job['id']}").json
    assert body["state"] == "running" and body["step"] == 1 and 0 < body["progress"] < 1
    assert body["queue_position"] == 0
    image = client.get(f"/jobs/{job['id']}/image")
    assert image.status_code == 409 and image.json["error"] == "not_ready"
    preview = client.get(f"/jobs/{job['id']}/preview")
    assert preview.status_code == 200 and preview.headers["X-Step"] == "1"
    assert Image.open(io.BytesIO(preview.data)).size == (64, 32)  # latents x4: 32x16 -> 4x
    first = preview.data
    gate.release(1)
    poll_until(lambda: client.get(f"/jobs/{job['id']}").json["step"] >= 2, 10, "step 2")
    second = client.get(f"/jobs/{job['id']}/preview")
    assert second.headers["X-Step"] == "2" and second.data != first
    gate.open()
    wait_state(client, job["id"], {"succeeded"})
    final = client.get(f"/jobs/{job['id']}/preview")
    assert final.data == client.get(f"/jobs/{job['id']}/image").data  # done: the real image


def test_preview_before_first_step_is_409(app, gate):
    client = app.test_client()
    running = client.post("/jobs", json={"prompt": "x"}).json
    gate.wait_reached()
    queued = client.post("/jobs", json={"prompt": "y"}).json
    assert queued["queue_position"] == 1 and queued["state"] == "queued"
    r = client.get(f"/jobs/{queued['id']}/preview")
    assert r.status_code == 409 and r.json["error"] == "no_preview"
    gate.open()
    wait_state(client, queued["id"], {"succeeded"})
    wait_state(client, running["id"], {"succeeded"})


def test_cancel_running_and_queued(app, gate):
    client = app.test_client()
    running = client.post("/jobs", json={"prompt": "r", "steps": 20}).json
    gate.wait_reached()
    queued = client.post("/jobs", json={"prompt": "q"}).json
    r = client.delete(f"/jobs/{queued['id']}")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    assert r.json["started_at"] is None
    r = client.post(f"/jobs/{running['id']}/cancel")
    assert r.status_code == 200
    gate.release(1)
    body = wait_state(client, running["id"], {"cancelled"})
    assert body["step"] <= 2 and "cancelled at step" in body["error"]
    r = client.get(f"/jobs/{running['id']}/image")
    assert r.status_code == 409 and r.json["error"] == "cancelled"
    # Cancelling a finished job changes nothing.
    assert client.post(f"/jobs/{running['id']}/cancel").json["state"] == "cancelled"


def test_list_is_newest_first_and_limited(client):
    ids = [client.post("/jobs", json={"prompt": f"p{i}"}).json["id"] for i in range(3)]
    for job_id in ids:
        wait_state(client, job_id, {"succeeded"})
    listed = [j["id"] for j in client.get("/jobs").json["jobs"]]
    assert listed[:3] == ids[::-1]
    assert [j["id"] for j in client.get("/jobs?limit=2").json["jobs"]] == ids[::-1][:2]
    for bad in ("x", "0", "-1"):
        r = client.get(f"/jobs?limit={bad}")
        assert r.status_code == 400 and "'limit'" in r.json["message"]


def test_finished_jobs_are_forgotten_after_retention(make_app, monkeypatch):
    app = make_app(JOB_RETENTION_SECONDS="10")
    client = app.test_client()
    job_id = client.post("/jobs", json={"prompt": "old"}).json["id"]
    wait_state(client, job_id, {"succeeded"})
    queue = app.extensions["sd_server"].queue
    real_clock = queue.clock
    monkeypatch.setattr(queue, "clock", lambda: real_clock() + 11)  # 11 s later
    r = client.get(f"/jobs/{job_id}")
    assert r.status_code == 404 and "JOB_RETENTION_SECONDS" in r.json["message"]
    assert job_id not in [j["id"] for j in client.get("/jobs").json["jobs"]]
