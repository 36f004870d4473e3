"""Faults, disconnects, shutdown, many clients over real HTTP, and the optional safety checker."""
import io
import json
import signal
import socket
import threading
import urllib.error
import urllib.request

import pytest
from PIL import Image

from jobs import JobState
from params import GenerationRequest

from tests.helpers import poll_until


def open_generate(server, body):
    """Send POST /generate on a raw socket and return the socket without reading."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_disconnect_cancels_the_running_job_within_one_step(live_server, gate):
    server = live_server()
    q = server.app.extensions["sd_server"].queue
    sock = open_generate(server, {"prompt": "left early", "steps": 20})
    gate.wait_reached()
    job = q.current()
    assert job is not None and job.state == JobState.RUNNING
    sock.close()
    poll_until(lambda: job.cancel_requested, 20, "the disconnect to cancel the job")
    gate.release(1)
    assert q.wait(job, 20)
    assert job.state == JobState.CANCELLED and job.step <= 2


def test_queued_job_of_a_gone_client_never_starts(live_server, gate):
    server = live_server()
    q = server.app.extensions["sd_server"].queue
    blocker = q.submit(GenerationRequest(prompt="busy", steps=3, width=64, height=64))
    gate.wait_reached()
    sock = open_generate(server, {"prompt": "gone"})
    poll_until(lambda: len(q.recent()) == 2, 20, "the second request to be queued")
    gone = next(j for j in q.recent() if j is not blocker)
    sock.close()
    poll_until(lambda: gone.state == JobState.CANCELLED, 20,
               "the gone client's queued job to be cancelled")
    gate.open()
    assert q.wait(blocker, 30) and blocker.state == JobState.SUCCEEDED
    assert gone.started_at is None


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_sigterm_refuses_new_work_lets_the_running_job_finish_and_exits_0(
        app, gate, restore_signals):
    from app import install_signal_handlers

    settings = app.extensions["sd_server"].settings
    q = app.extensions["sd_server"].queue
    exits = []
    install_signal_handlers(app, settings, exit_process=exits.append)
    job = q.submit(GenerationRequest(prompt="finish me", steps=3, width=64, height=64))
    gate.wait_reached()
    signal.raise_signal(signal.SIGTERM)
    poll_until(lambda: not q.accepting, 20, "SIGTERM to stop accepting jobs")
    client = app.test_client()
    # Responses are closed as a WSGI server would: shutdown waits for every open one.
    with client.post("/generate", json={"prompt": "too late"}) as r:
        assert r.status_code == 503 and r.json["error"] == "shutting_down"
        assert r.headers["Retry-After"]
    with client.get("/health") as r:
        assert r.json["status"] == "shutting_down"
    assert exits == []  # still draining
    gate.open()
    poll_until(lambda: exits == [0], 20, "the drain to exit 0")
    assert job.state == JobState.SUCCEEDED and job.png


def test_shutdown_waits_for_every_open_response(app):
    """The WSGI middleware counts each response until the server closes its body; the
    drain exits only once none is open."""
    from app import ResponseTracker
    from jobs import drain_in_background

    responses = app.extensions[ResponseTracker.EXTENSION]
    client = app.test_client()
    response = client.get("/health")  # unbuffered: open until the "server" closes it
    assert responses.count == 1
    exited = threading.Event()
    drain = drain_in_background(app.extensions["sd_server"].queue, responses, 0, exited.set)
    drain.join(0.5)  # plenty for the stop itself; the open response must hold it
    assert drain.is_alive() and not exited.is_set()
    response.close()
    assert exited.wait(30) and responses.count == 0


def test_many_clients_over_http_lose_nothing(live_server):
    """30 simultaneous clients against real waitress: only 200/202/429/503, and every
    accepted job finishes with a retrievable image."""
    server = live_server(QUEUE_SIZE="4", RATE_LIMIT="20/minute")
    results = []
    lock = threading.Lock()

    def client(i):
        path = "/generate" if i % 2 else "/jobs"
        req = urllib.request.Request(server.url + path, method="POST",
                                     data=json.dumps({"prompt": f"c{i}", "seed": i}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, body, ctype = r.status, r.read(), r.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            status, body, ctype = e.code, e.read(), e.headers["Content-Type"]
        with lock:
            results.append((path, status, body, ctype))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(results) == 30
    assert {s for _, s, _, _ in results} <= {200, 202, 429, 503}
    assert any(s in (200, 202) for _, s, _, _ in results)
    for path, status, body, ctype in results:
        if status == 200:
            assert ctype == "image/png" and Image.open(io.BytesIO(body)).size == (64, 64)
        elif status == 202:
            job_id = json.loads(body)["id"]
            q = server.app.extensions["sd_server"].queue
            job = q.get(job_id)
            assert q.wait(job, 60) and job.state == JobState.SUCCEEDED
            with urllib.request.urlopen(f"{server.url}/jobs/{job_id}/image") as r:
                assert r.status == 200 and r.read() == job.png
        else:
            assert "json" in ctype and set(json.loads(body)) == {"error", "message"}


def build_model_with_checker(src, dst, always_flag: bool):
    """The tiny pipeline plus a tiny real StableDiffusionSafetyChecker whose concept
    thresholds make it flag everything (or nothing): the checker's own code runs."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 37,
                                     "num_attention_heads": 4, "num_hidden_layers": 2},
                        vision_config={"hidden_size": 32, "intermediate_size": 37,
                                       "num_attention_heads": 4, "num_hidden_layers": 2,
                                       "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        # score = cosine distance (in -1..1) - weight: -2 flags every image, +2 none.
        checker.concept_embeds_weights.fill_(-2.0 if always_flag else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32},
                                   crop_size={"height": 32, "width": 32})
    pipe = StableDiffusionPipeline.from_pretrained(str(src), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe = StableDiffusionPipeline(**{**pipe.components, "safety_checker": checker,
                                      "feature_extractor": extractor})
    pipe.save_pretrained(dst, safe_serialization=True)
    return dst


@pytest.mark.parametrize("always_flag", [True, False])
def test_safety_checker_blanks_flagged_images_and_says_so(make_app, tiny_model_dir, tmp_path,
                                                          always_flag):
    model = build_model_with_checker(tiny_model_dir, tmp_path / "checked", always_flag)
    app = make_app(MODEL_ID=str(model), SAFETY_CHECKER="on")
    client = app.test_client()
    r = client.post("/generate", json={"prompt": "a cat", "seed": 1})
    assert r.status_code == 200
    image = Image.open(io.BytesIO(r.data)).convert("RGB")
    pixels = {color for _, color in image.getcolors(maxcolors=image.width * image.height)}
    if always_flag:
        assert r.headers["X-NSFW-Blocked"] == "true" and pixels == {(0, 0, 0)}
        job = client.get(f"/jobs/{r.headers['X-Job-Id']}").json
        assert job["nsfw"] is True
    else:
        assert "X-NSFW-Blocked" not in r.headers and len(pixels) > 1
