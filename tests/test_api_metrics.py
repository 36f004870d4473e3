"""GET /metrics under the memory backend, read with prometheus_client's own parser: jobs by
dialect and outcome, the image and step histograms, queue depth, running jobs, workers, load
seconds, HTTP requests, refusals; protected by API_KEY unless METRICS_PUBLIC=1. (Under
QUEUE_BACKEND=redis: tests/test_monitoring_redis.py.)"""
from __future__ import annotations

from jobs.metrics import (IMAGE_SECONDS, SWITCH_SECONDS, LocalCounts, JobMetrics, RunFigures,
                          count_finished, model_label)
from tests.helpers import metric, metric_samples, wait_state


def scrape(client) -> dict:
    """GET /metrics, parsed."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return metric_samples(response.data.decode())


def test_jobs_are_counted_by_dialect_and_outcome_and_each_image_is_timed(app, gate):
    client = app.test_client()
    model = model_label(app.extensions["sd_server"].engine)  # its catalogue name
    running = client.post("/jobs", json={"prompt": "a fox", "steps": 3}).json
    gate.wait_reached()
    waiting = client.post("/jobs", json={"prompt": "an owl", "steps": 3}).json
    during = scrape(client)
    assert metric(during, "sd_queue_depth", model=model) == 1
    assert metric(during, "sd_jobs_running") == 1
    client.post(f"/jobs/{waiting['id']}/cancel")
    gate.open()
    wait_state(client, running["id"], {"succeeded"})
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2,
                                                   "sampler_name": "Euler"})
    assert a1111.status_code == 200

    after = scrape(client)
    assert metric(after, "sd_jobs_submitted_total", dialect="native") == 2
    assert metric(after, "sd_jobs_submitted_total", dialect="a1111") == 1
    assert metric(after, "sd_jobs_finished_total", outcome="succeeded", dialect="native") == 1
    assert metric(after, "sd_jobs_finished_total", outcome="cancelled", dialect="native") == 1
    assert metric(after, "sd_jobs_finished_total", outcome="succeeded", dialect="a1111") == 1
    default = app.extensions["sd_server"].engine.default_sampler
    for sampler in (default, "Euler"):  # 'default' is named as the model's own sampler
        labels = {"model": model, "sampler": sampler}
        assert metric(after, "sd_image_seconds_count", **labels) == 1
        assert metric(after, "sd_image_seconds_bucket", le="+Inf", **labels) == 1
        assert metric(after, "sd_image_seconds_sum", **labels) > 0
        assert metric(after, "sd_step_seconds_count", **labels) == 1
    assert metric(after, "sd_queue_depth", model=model) == 0
    assert metric(after, "sd_jobs_running") == 0
    assert metric(after, "sd_workers", state="ready") == 1
    assert metric(after, "sd_workers", state="loading") == 0
    assert metric(after, "sd_model_load_seconds", worker="in-process") > 0
    assert metric(after, "sd_http_requests_total", route="/jobs", method="POST",
                  status="202") == 2
    assert metric(after, "sd_http_requests_total", route="/jobs/<job_id>/cancel",
                  method="POST", status="200") == 1
    assert metric(after, "sd_http_requests_total", route="/metrics", method="GET",
                  status="200") == 1  # the first scrape; this one is counted once answered


def test_refusals_are_counted_by_reason(make_app, gate):
    full = make_app(QUEUE_SIZE="1", MAX_BATCH="1")
    client = full.test_client()
    client.post("/jobs", json={"prompt": "runs", "steps": 3})
    gate.wait_reached()
    client.post("/jobs", json={"prompt": "waits", "steps": 3})
    assert client.post("/jobs", json={"prompt": "no room", "steps": 3}).status_code == 503
    assert metric(scrape(client), "sd_refusals_total", reason="queue_full") == 1
    gate.open()

    limited = make_app(RATE_LIMIT="1/minute").test_client()
    assert limited.post("/jobs", json={"prompt": "one", "steps": 2}).status_code == 202
    assert limited.post("/jobs", json={"prompt": "two", "steps": 2}).status_code == 429
    samples = scrape(limited)
    assert metric(samples, "sd_refusals_total", reason="rate_limited") == 1
    assert metric(samples, "sd_http_requests_total", route="/jobs", method="POST",
                  status="429") == 1

    loading = make_app(wait=False, start_worker=False).test_client()
    assert loading.post("/jobs", json={"prompt": "too soon"}).status_code == 503
    samples = scrape(loading)
    assert metric(samples, "sd_refusals_total", reason="loading") == 1
    assert metric(samples, "sd_workers", state="ready") == 0


def test_metrics_need_the_api_key_unless_metrics_public(make_app):
    protected = make_app(API_KEY="k3y").test_client()
    refused = protected.get("/metrics")
    assert refused.status_code == 401 and refused.json["error"] == "unauthorized"
    assert protected.get("/metrics", headers={"Authorization": "Bearer k3y"}).status_code == 200

    public = make_app(API_KEY="k3y", METRICS_PUBLIC="1").test_client()
    assert public.get("/metrics").status_code == 200
    assert public.get("/jobs").status_code == 401  # only the metrics are opened


def test_a_switch_is_timed_and_a_job_is_counted_whichever_half_comes_first():
    """The store alone (no model): a finish that arrives before its route's dialect is still
    counted once, and a successful model switch lands in the switch histogram."""
    store = LocalCounts()
    metrics = JobMetrics(store, lambda: [])
    count_finished(store, "early", "failed", None)  # finished before the route noted it
    metrics.submitted(["early", "late"], "openai")
    count_finished(store, "late", "succeeded", RunFigures("generate", "m", "Euler", 3.0, 0.5))
    count_finished(store, "switch", "succeeded", RunFigures("switch_model", "other", "", 12.0,
                                                            None))
    samples = metric_samples(metrics.text().decode())
    assert metric(samples, "sd_jobs_submitted_total", dialect="openai") == 2
    assert metric(samples, "sd_jobs_finished_total", outcome="failed", dialect="openai") == 1
    assert metric(samples, "sd_jobs_finished_total", outcome="succeeded", dialect="openai") == 1
    assert metric(samples, f"{IMAGE_SECONDS.name}_bucket", model="m", sampler="Euler",
                  le="2.0") == 0
    assert metric(samples, f"{IMAGE_SECONDS.name}_bucket", model="m", sampler="Euler",
                  le="5.0") == 1
    assert metric(samples, f"{SWITCH_SECONDS.name}_count", model="other") == 1
    assert metric(samples, f"{SWITCH_SECONDS.name}_sum", model="other") == 12.0


def test_every_metric_is_listed_in_the_readme():
    from config import PROJECT_DIR
    from jobs.metrics import METRICS

    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme[readme.index("## Monitoring"):readme.index("## Performance")]
    for declared in METRICS:
        row = next((line for line in section.splitlines()
                    if line.startswith(f"| `{declared.name}` |")), None)
        assert row is not None, f"{declared.name} is missing from README's Monitoring table"
        assert f"| {declared.kind} |" in row
        for label in declared.labels:
            assert f"`{label}`" in row, (declared.name, label)
