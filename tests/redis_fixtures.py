"""Fixtures for the redis backend: a real redis-server on a free port in a temp folder, and
real `python worker.py` processes on the tiny model. Import them into a test module with
`from tests.redis_fixtures import *  # noqa: F401,F403`.

redis-server must be installed (`apt-get install -y redis-server`): without it these tests
fail with that message, never skip.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BASE_ENV
from tests.helpers import free_port, poll_until, stop_process

PROJECT = Path(__file__).resolve().parent.parent
START_SECONDS = 120  # a worker imports torch and loads the tiny model


class RedisServer:
    """A private redis-server process (no system daemon), with AOF persistence so a restart
    keeps the queue."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server "
                        "(the redis backend tests need a real one; they never skip)")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        """Start (or restart on the same port and folder) and wait until it answers."""
        import redis

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--save", "", "--appendonly", "yes", "--appendfsync",
             "always"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        poll_until(lambda: _pings(client), 20, "redis-server to answer")
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM: it flushes the append-only file)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class WorkerProcess:
    """`python worker.py` as a user runs it, with the test's environment (or `script`, e.g.
    tests/gated_worker.py: the same worker with a step gate)."""

    def __init__(self, env: dict[str, str], log_path: Path, script: Path = PROJECT / "worker.py"):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, str(script)],
                                        cwd=PROJECT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def output(self) -> str:
        """What it logged so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (default SIGKILL: no chance to clean up) and reap it."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def close(self) -> None:
        """Stop it if still running."""
        stop_process(self.process)
        self.log.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server for this module (persistent, so it can be restarted)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_env(redis_server, tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """The environment of every process of the redis tests: tiny model, small images."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_", "REDIS_"))}
    env.update(BASE_ENV)
    env.update({"MODEL_ID": str(tiny_model_dir), "QUEUE_BACKEND": "redis",
                "REDIS_URL": redis_server.url, "QUEUE_SIZE": "6", "MAX_BATCH": "4",
                "BF16_CACHE_DIR": str(tmp_path_factory.mktemp("bf16")),
                "OUTPUT_DIR": str(tmp_path_factory.mktemp("outputs")),
                "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="module")
def start_worker(redis_env, tmp_path_factory):
    """Start `python worker.py` processes; all are stopped after the module."""
    workers: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(**extra: str) -> WorkerProcess:
        worker = WorkerProcess({**redis_env, **extra}, logs / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()
