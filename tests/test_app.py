"""main(): configuration errors, the waitress / dev-server choice, and startup speed."""
import subprocess
import sys
import time
import urllib.request

import pytest

import app as app_module
from tests.conftest import ROOT, free_port


def test_bad_config_stops_startup_with_one_line():
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PORT": "x"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("configuration error: PORT='x' is not valid: allowed an "
                                     "integer 1..65535")


def test_serve_uses_waitress(make_app, monkeypatch):
    """waitress.serve is replaced by a recorder: we check what we ask of it, not waitress."""
    import waitress

    calls = []
    monkeypatch.setattr(waitress, "serve", lambda app, **kw: calls.append(kw))
    app = make_app(wait=False, start_worker=False)
    settings = app.extensions["sd_server"].settings
    assert app_module.serve(app, settings) == "waitress"
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == settings.port
    assert calls[0]["threads"] == settings.threads
    assert calls[0]["channel_request_lookahead"] > 0  # needed to notice disconnects


def test_serve_falls_back_to_flask_dev_server(make_app, monkeypatch, caplog):
    """waitress is made unimportable and app.run recorded, to check the fallback choice."""
    monkeypatch.setitem(sys.modules, "waitress", None)
    app = make_app(wait=False, start_worker=False)
    calls = []
    monkeypatch.setattr(app, "run", lambda **kw: calls.append(kw))
    with caplog.at_level("WARNING"):
        assert app_module.serve(app, app.extensions["sd_server"].settings) == "flask"
    assert calls[0]["debug"] is False
    assert "waitress is not installed" in caplog.text


def test_server_listens_within_a_second_and_becomes_healthy(tiny_model_dir):
    """A real `python app.py` process: health answers 503 'loading' at once, then 200."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "MODEL_ID": str(tiny_model_dir), "PORT": str(port),
           "MIN_SIZE": "64", "DEFAULT_SIZE": "64", "OUTPUT_DIR": "", "RATE_LIMIT": ""}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first_answer = None
        status = None
        while time.monotonic() - started < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                time.sleep(0.05)
                continue
            first_answer = first_answer or time.monotonic() - started
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200
        # Startup speed is reported by the benchmark; here only "not blocked on the model".
        assert first_answer is not None
        proc.send_signal(2)  # SIGINT drains and exits 0
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "loaded in" in output and "serving on" in output
