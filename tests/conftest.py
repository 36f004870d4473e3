"""Shared fixtures: the tiny real pipeline (built once per session), apps, live servers.

The tiny model is a real diffusers StableDiffusionPipeline with random weights, saved with
`save_pretrained` and loaded by the app through the same `from_pretrained` path as SD v1-4.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402

from tests.helpers import accepts_connections, poll_until  # noqa: E402

# Small images and few steps keep the suite fast; the bounds are ordinary settings.
BASE_ENV = {
    "MIN_SIZE": "64", "DEFAULT_SIZE": "64", "MAX_SIZE": "256", "DEFAULT_STEPS": "2",
    "MAX_STEPS": "50", "RATE_LIMIT": "", "OUTPUT_DIR": "", "TORCH_THREADS": "1",
    "QUEUE_SIZE": "4", "THREADS": "16", "LOG_LEVEL": "INFO",
    "TAESD_MODEL": "",  # no Hub here; tests that want TAESD pass the random one (taesd_dir)
    "JOURNAL_PATH": "",  # jobs in memory; the journal's tests give it a folder of their own
}


@pytest.fixture(scope="session", autouse=True)
def precision_probed_once():
    """The real precision probe, run once per thread count for the session.

    Every engine load times bf16 against fp32 (about 0.15 s of convs and GEMMs); the suite
    loads hundreds of engines on one CPU, so the engine modules get the figures measured
    the first time for that thread count: real figures, not made up, just not re-measured.
    tests/test_engine_cpu.py runs the probe itself, unshared.
    """
    import engine  # noqa: F401  (loads the engine modules that call the probe)
    from engine.cpu import PrecisionProbe, probe_precision

    measured: dict[int, PrecisionProbe] = {}
    lock = threading.Lock()

    def probe_once(threads: int) -> PrecisionProbe:
        with lock:
            if threads not in measured:
                measured[threads] = probe_precision(threads)
            return measured[threads]

    callers = [module for name, module in list(sys.modules.items())
               if name.startswith("engine.") and name != "engine.cpu"
               and getattr(module, "probe_precision", None) is probe_precision]
    assert callers, "no engine module calls probe_precision any more: update this fixture"
    with pytest.MonkeyPatch.context() as patch:
        for module in callers:
            patch.setattr(module, "probe_precision", probe_once)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SD pipeline saved as a diffusers folder (built by the project)."""
    from engine import build_random_pipeline

    return build_random_pipeline(tmp_path_factory.mktemp("models") / "tiny", "tiny")


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir, bf16_cache_dir):
    """A loaded Engine on the tiny model with the suite's settings, one per test module."""
    from engine import Engine

    e = Engine(Settings.from_env({"MODEL_ID": str(tiny_model_dir), **BASE_ENV,
                                  "BF16_CACHE_DIR": str(bf16_cache_dir)}))
    e.load()
    assert e.status.state == "ready", e.status.error
    return e


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """`family_model(arch)`: a tiny random model of another family (an engine.random_model
    ARCHITECTURES name: tiny-sd2-v, tiny-sd-turbo, tiny-sdxs, tiny-sdxs-dreamshaper) saved as
    a diffusers folder, built on first use and kept for the session."""
    from engine import build_random_pipeline

    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_random_pipeline(root / arch, arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def taesd_dir(tmp_path_factory) -> Path:
    """A tiny random-weight TAESD (AutoencoderTiny) saved as a diffusers folder."""
    from engine.random_model import build_random_taesd

    return build_random_taesd(tmp_path_factory.mktemp("models") / "taesd", "tiny")


@pytest.fixture(scope="session")
def bf16_cache_dir(tmp_path_factory) -> Path:
    """Where this session's bf16 weight copies go (shared: converting once is the point)."""
    return tmp_path_factory.mktemp("bf16-cache")


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """LORA_DIR for the tiny model: random LoRAs made with peft in both file formats
    (diffusers/peft and kohya/A1111), an LCM-named one, one the user marks as LCM, and two
    files that are not LoRAs."""
    import json

    import torch
    from safetensors.torch import save_file

    from tests.random_lora import build_random_lora

    folder = tmp_path_factory.mktemp("lora")
    build_random_lora(tiny_model_dir, folder / "style-peft.safetensors", "peft", scale=5,
                      metadata={"ss_output_name": "Style"})
    build_random_lora(tiny_model_dir, folder / "sub" / "detail-kohya.safetensors", "kohya",
                      seed=1, scale=5)
    build_random_lora(tiny_model_dir, folder / "lcm-lora-tiny.safetensors", "peft", seed=2)
    build_random_lora(tiny_model_dir, folder / "marked.safetensors", "peft", seed=3)
    (folder / "marked.json").write_text(json.dumps({"lcm": True}))
    save_file({"weight": torch.zeros(2)}, str(folder / "not-a-lora.safetensors"))
    (folder / "broken.safetensors").write_bytes(b"\x01")
    return folder


@pytest.fixture
def make_settings(tiny_model_dir, bf16_cache_dir):
    """Settings as the environment would give them, on the tiny model, with overrides."""
    def make(**env: str) -> Settings:
        return Settings.from_env({"MODEL_ID": str(tiny_model_dir), **BASE_ENV,
                                  "BF16_CACHE_DIR": str(bf16_cache_dir), **env})

    return make


@pytest.fixture
def make_app(make_settings):
    """Build apps whose model has finished loading; their workers stop after the test."""
    from app import create_app

    apps = []

    def make(wait: bool = True, start_worker: bool = True, **env: str):
        app = create_app(make_settings(**env), start_worker=start_worker)
        app.testing = True
        apps.append(app)
        if wait and start_worker:
            assert app.extensions["sd_server"].queue.wait_until_loaded(120)
        return app

    yield make
    for app in apps:
        app.extensions["sd_server"].queue.stop(grace_seconds=0)


@pytest.fixture
def app(make_app):
    """A ready app on the tiny model with the test defaults."""
    return make_app()


@pytest.fixture
def client(app):
    """A Flask test client of `app`."""
    return app.test_client()


class StepGate:
    """Pauses the real pipeline at each step until the test lets it go on.

    Not a fake: the tiny pipeline still runs every step; this only makes "the worker is
    busy" deterministic for tests of queueing and cancelling.
    """

    def __init__(self):
        self.permits = threading.Semaphore(0)
        self.reached = threading.Event()
        self.open_all = False

    def release(self, steps: int = 1) -> None:
        """Let `steps` more steps run."""
        for _ in range(steps):
            self.permits.release()

    def open(self) -> None:
        """Stop pausing."""
        self.open_all = True
        self.release(1000)

    def wait_reached(self, timeout: float = 30) -> None:
        """Wait until a job is paused at a step."""
        assert self.reached.wait(timeout), "the worker never reached a step"
        self.reached.clear()

    def pause(self, step: int, timeout: float = 60) -> None:
        """Called by the pipeline after each step: say so, then wait for a permit."""
        self.reached.set()
        if not self.open_all:
            assert self.permits.acquire(timeout=timeout), "test never released the gate"

    def close(self) -> None:
        """Pause again at every step, from a clean slate (a gate reused across tests)."""
        self.open_all = False
        while self.permits.acquire(blocking=False):
            pass
        self.reached.clear()


@pytest.fixture
def gate(monkeypatch):
    """Install a StepGate in every Engine.generate of this test."""
    import engine as engine_module

    from tests.gated_worker import gated_generate

    g = StepGate()
    monkeypatch.setattr(engine_module.Engine, "generate",
                        gated_generate(engine_module.Engine.generate, g.pause))
    yield g
    g.open()


class LiveServer:
    """A real waitress server on 127.0.0.1 running an app in a background thread."""

    def __init__(self, app, threads: int = 16):
        import waitress

        self.app = app
        # Port 0: the kernel picks a free port as it binds, so parallel test processes
        # never race for one.
        self.server = waitress.create_server(app, host="127.0.0.1", port=0,
                                             threads=threads, channel_request_lookahead=5)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        poll_until(lambda: accepts_connections(self.server.effective_port), 10,
                   f"waitress to accept connections at {self.url}")

    def close(self) -> None:
        """Stop listening and close every connection."""
        self.server.close()


@pytest.fixture
def live_server(make_app):
    """Start waitress on a free port with an app built from env overrides."""
    servers = []

    def start(**env: str) -> LiveServer:
        server = LiveServer(make_app(**env))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
