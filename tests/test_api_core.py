"""/, /health and /generate through the Flask app on the tiny real pipeline."""
import io
import threading

import pytest
from PIL import Image


def test_health_goes_from_loading_to_healthy(make_app):
    app = make_app(start_worker=False)
    client = app.test_client()
    r = client.get("/health")
    assert r.status_code == 503 and r.json["status"] == "loading"
    assert r.headers["Retry-After"] and r.json["phase"] == "starting"
    r = client.post("/generate", json={"prompt": "a cat"})
    assert r.status_code == 503 and r.json["error"] == "loading" and r.headers["Retry-After"]
    queue = app.extensions["sd_server"].queue
    queue.start()
    assert queue.wait_until_loaded(60)
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json
    assert body["status"] == "healthy" and body["device"] == "cpu"
    assert body["dtype"] == "float32" and "sdpa-attention" in body["optimizations"]
    assert body["queue"]["capacity"] == 4 and body["queue"]["waiting"] == 0
    # The precision probe's figures and choice (DTYPE=float32 here) are reported.
    assert body["precision"]["chosen"] == "float32" and body["precision"]["bf16_speedup"] > 0


def test_a_dead_worker_makes_health_unhealthy(app, monkeypatch):
    """SystemExit from a generation (injected: the worker guards every Exception) ends the
    only worker thread; /health must stop saying healthy."""
    import engine as engine_module

    def exits(self, request, seed, on_step=None, *more, **options):
        raise SystemExit(3)

    monkeypatch.setattr(engine_module.Engine, "generate", exits)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    queue = app.extensions["sd_server"].queue
    job = queue.submit(engine_module.pipeline.GenerationRequest(prompt="a cat", steps=1))
    assert queue.wait(job, 60)
    r = client.get("/health")
    assert r.status_code == 503 and r.json["status"] == "unhealthy"
    assert "worker stopped" in r.json["error"] and "restart" in r.json["error"]


def test_failed_load_leaves_server_up_and_unhealthy(make_app, tmp_path):
    app = make_app(MODEL_ID=str(tmp_path / "missing"))
    client = app.test_client()
    r = client.get("/health")
    assert r.status_code == 503 and r.json["status"] == "unhealthy"
    assert "missing" in r.json["error"] and "MODEL_ID" in r.json["error"]
    r = client.post("/generate", json={"prompt": "a cat"})
    assert r.status_code == 503 and r.json["error"] == "model_unavailable"
    assert client.get("/").status_code == 200  # the process is still serving


def test_generate_returns_png_with_seed_timings_and_metadata(client):
    r = client.post("/generate", json={"prompt": "a cat", "negative_prompt": "dog", "seed": 42,
                                       "steps": 2, "guidance_scale": 6, "width": 128,
                                       "height": 64})
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert r.headers["X-Seed"] == "42"
    assert float(r.headers["X-Generation-Seconds"]) > 0
    image = Image.open(io.BytesIO(r.data))
    assert image.size == (128, 64)
    assert image.info["parameters"].startswith("a cat\nNegative prompt: dog\nSteps: 2, ")
    assert "CFG scale: 6, Seed: 42, Size: 128x64" in image.info["parameters"]


def test_same_seed_same_bytes_and_random_seed_reported(client):
    a = client.post("/generate", json={"prompt": "a cat", "seed": 9})
    b = client.post("/generate", json={"prompt": "a cat", "seed": 9})
    assert a.data == b.data
    c = client.post("/generate", json={"prompt": "a cat"})
    seed = int(c.headers["X-Seed"])
    d = client.post("/generate", json={"prompt": "a cat", "seed": seed})
    assert c.data == d.data


@pytest.mark.parametrize("body,field", [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x" * 201}, "prompt"),
    ({"prompt": "a", "negative_prompt": "x" * 201}, "negative_prompt"),
    ({"prompt": "a", "seed": -1}, "seed"), ({"prompt": "a", "seed": 2**32}, "seed"),
    ({"prompt": "a", "steps": 0}, "steps"), ({"prompt": "a", "steps": 51}, "steps"),
    ({"prompt": "a", "guidance_scale": 21}, "guidance_scale"),
    ({"prompt": "a", "width": 65}, "width"), ({"prompt": "a", "height": 512}, "height"),
    ({"prompt": "a", "colour": "red"}, "colour"), ({"prompt": "a", "scheduler": "x"}, "scheduler"),
    # Found by tests/test_fuzz.py: an integer past float's range (JSON allows it).
    ({"prompt": "a", "guidance_scale": 10**400}, "guidance_scale"),
])
def test_bad_fields_are_400_naming_the_field(client, body, field):
    r = client.post("/generate", json=body)
    assert r.status_code == 400
    assert r.json["error"] == "invalid_field" and field in r.json["message"]
    assert set(r.json) == {"error", "message"}


def test_wrong_content_type_and_bad_json(client):
    r = client.post("/generate", data="prompt=a cat",
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and r.json["error"] == "unsupported_media_type"
    r = client.post("/generate", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.json["error"] == "invalid_json"
    r = client.post("/generate", json=["a cat"])
    assert r.status_code == 400 and "JSON object" in r.json["message"]


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.is_json and r.json["error"] == "not_found"
    r = client.get("/generate")
    assert r.status_code == 405 and r.is_json and "POST" in r.headers["Allow"]


def test_oversized_body_is_413_json(make_app):
    client = make_app(MAX_REQUEST_BYTES="2048").test_client()
    r = client.post("/generate", json={"prompt": "a" * 5000})
    assert r.status_code == 413 and r.is_json and r.json["error"] == "request_entity_too_large"


def test_queue_full_is_503_with_retry_after(app, gate):
    client = app.test_client()
    q = app.extensions["sd_server"].queue
    first = q.submit(q_request())
    gate.wait_reached()
    for _ in range(q.settings.queue_size):
        q.submit(q_request())
    r = client.post("/generate", json={"prompt": "one too many"})
    assert r.status_code == 503 and r.json["error"] == "queue_full"
    assert int(r.headers["Retry-After"]) >= 5
    gate.open()
    assert q.wait(first, 60)


def q_request():
    from params import GenerationRequest

    return GenerationRequest(prompt="busy", steps=2, width=64, height=64)


def test_concurrent_requests_all_succeed(app):
    results = []

    def call(i):
        r = app.test_client().post("/generate", json={"prompt": f"cat {i}", "seed": i})
        results.append((i, r.status_code, r.headers.get("X-Seed"), r.data))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(r[1] for r in results) == [200] * 4
    assert all(str(i) == seed for i, _, seed, _ in results)
    assert len({data for *_, data in results}) == 4


def test_generation_failure_is_500_with_advice(app, monkeypatch):
    """The fault is injected: a real one cannot be provoked safely on demand."""
    import engine as engine_module

    def explode(self, request, seed, on_step=None, *more, **options):
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(engine_module.Engine, "generate", explode)
    r = app.test_client().post("/generate", json={"prompt": "a cat"})
    assert r.status_code == 500 and r.json["error"] == "generation_failed"
    assert "fewer steps or a smaller size" in r.json["message"]
    assert "internal detail" not in r.json["message"] and "Traceback" not in r.get_data(True)


def test_index_serves_the_page_with_limits(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert b"prompt" in r.data and b"200" in r.data


def test_favicon_is_served_and_the_page_links_it(client):
    from config import PROJECT_DIR

    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.mimetype == "image/vnd.microsoft.icon"
    assert r.data == (PROJECT_DIR / "static" / "favicon.ico").read_bytes()
    assert Image.open(io.BytesIO(r.data)).format == "ICO"
    assert b'<link rel="icon" href="/favicon.ico"' in client.get("/").data
