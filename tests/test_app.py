"""main(): configuration errors, binding HOST:PORT (waitress or the dev server), answering
while the model loads, and shutdown."""
import json
import socket
import subprocess
import sys
import urllib.request

import pytest

import app as app_module
from tests.conftest import ROOT
from tests.helpers import free_port, poll_until
from tests.test_engine_download import REPO, hub  # noqa: F401  (a fixture)


def test_bad_config_stops_startup_with_one_line():
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PORT": "x"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("configuration error: PORT='x' is not valid: allowed an "
                                     "integer 1..65535")


def test_listen_binds_waitress_with_our_settings(make_app):
    app = make_app(wait=False, start_worker=False, PORT=str(free_port()))
    settings = app.extensions["sd_server"].settings
    server = app_module.listen(app, settings)
    try:
        assert server.kind == "waitress"
        assert int(server.server.effective_port) == settings.port
        assert server.server.adj.threads == settings.threads
        assert server.server.adj.channel_request_lookahead > 0  # needed to notice disconnects
    finally:
        server.server.close()


def test_listen_falls_back_to_flask_dev_server(make_app, monkeypatch, caplog):
    """waitress is made unimportable to check the fallback choice."""
    monkeypatch.setitem(sys.modules, "waitress", None)
    app = make_app(wait=False, start_worker=False, PORT=str(free_port()))
    with caplog.at_level("WARNING"):
        server = app_module.listen(app, app.extensions["sd_server"].settings)
    try:
        assert server.kind == "flask" and server.server.port == app.extensions[
            "sd_server"].settings.port
    finally:
        server.server.server_close()
    assert "waitress is not installed" in caplog.text


@pytest.mark.parametrize("env, expected", [
    ({"PORT": "{held}"}, "PORT {held} is in use; set PORT=... or stop the other server"),
    # 192.0.2.0/24 is reserved for documentation: no machine has it.
    ({"HOST": "192.0.2.1"}, "HOST 192.0.2.1 cannot be bound (cannot assign requested "
                            "address); set HOST=... to an address of this machine (127.0.0.1, "
                            "or 0.0.0.0 for every network)"),
])
def test_an_address_that_cannot_be_bound_is_one_line_and_exit_1(tiny_model_dir, env, expected):
    """A real `python app.py` against a port this test holds open (or an address no
    machine has): one line on stderr naming the knob, exit status 1, no stack trace."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        env = {"PATH": "/usr/bin:/bin", "MODEL_ID": str(tiny_model_dir), "PORT": str(free_port()),
               "MIN_SIZE": "64", "DEFAULT_SIZE": "64", "OUTPUT_DIR": "", "RATE_LIMIT": "",
               "JOURNAL_PATH": "",
               **{key: value.format(held=port) for key, value in env.items()}}
        result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == expected.format(held=port)
    assert result.stdout == ""


def get_health(port: int) -> tuple[int, dict]:
    """GET /health of a server on 127.0.0.1:`port`: status and body (OSError if nobody
    listens yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_answers_health_while_the_model_loads_then_becomes_healthy(hub, tmp_path):
    """A real `python app.py` process whose model comes from the fake Hub of
    tests/test_engine_download.py, which holds every answer until the test has seen /health:
    listening is not blocked on loading, whatever the machine's speed."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "MODEL_ID": REPO, "PORT": str(port), "MIN_SIZE": "64",
           "DEFAULT_SIZE": "64", "OUTPUT_DIR": "", "RATE_LIMIT": "",
           "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "JOURNAL_PATH": ""}
    hub.answering.clear()  # the download, hence the load, waits for the test
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, body = poll_until(lambda: get_health(port), 120, "the server to listen",
                                  interval=0.05, ignoring=(OSError,))
        assert status == 503 and body["status"] == "loading", body
        assert hub.gets == []  # nothing downloaded yet: the load is still held
        hub.answering.set()

        def loaded():
            status, body = get_health(port)
            return (status, body) if body["status"] != "loading" else None

        status, body = poll_until(loaded, 120, "the model to finish loading", interval=0.1)
        assert status == 200 and body["status"] == "healthy", body
        proc.send_signal(2)  # SIGINT drains and exits 0
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "loaded in" in output and "serving on" in output


def test_sigterm_mid_generation_delivers_the_whole_image_and_exits_0(tiny_model_dir, tmp_path):
    """A real process: SIGTERM while a synchronous /generate runs. The client still gets the
    complete PNG, a request queued behind it gets 503 shutting_down, and the exit code is 0."""
    import http.client
    import threading

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "MODEL_ID": str(tiny_model_dir), "PORT": str(port),
           "MIN_SIZE": "64", "MAX_SIZE": "512", "DEFAULT_SIZE": "64", "OUTPUT_DIR": "",
           "RATE_LIMIT": "", "SHUTDOWN_GRACE_SECONDS": "120", "TORCH_THREADS": "1",
           "JOURNAL_PATH": str(tmp_path / "jobs.sqlite")}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}

    def generate(name, body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        results[name] = (r.status, r.read())

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())

    try:
        poll_until(lambda: get_health(port)[1]["status"] == "healthy", 120,
                   "the server to be healthy", interval=0.1, ignoring=(OSError,))
        long = threading.Thread(target=generate, args=("long", {
            "prompt": "long", "steps": 40, "width": 512, "height": 512}))
        long.start()
        poll_until(lambda: any(j["state"] == "running" and j["step"] >= 1
                               for j in get("/jobs")["jobs"]), 120, "the long job's first step")
        queued = threading.Thread(target=generate, args=("queued", {"prompt": "queued"}))
        queued.start()
        poll_until(lambda: len(get("/jobs")["jobs"]) == 2, 60, "the second job to be queued")
        proc.send_signal(15)
        long.join(300)
        queued.join(60)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    status, body = results["long"]
    assert status == 200 and body.startswith(b"\x89PNG") and body.endswith(b"IEND\xaeB`\x82")
    status, body = results["queued"]
    assert status == 503 and json.loads(body)["error"] == "shutting_down"
