"""The Docker image and compose.yaml, built and run for real (issue 22, item 3): the image
is CPU-only and runs as a user, and alone serves on the embedded queue; compose's web answers
/health 200 with two ready workers, makes an image on the tiny model, passes Docker's
HEALTHCHECK, and a worker container killed mid-job has its job finished by the other worker,
as README "Scaling out" says.

Minutes, not seconds (the first build installs torch), so the quick suite skips this file
unless RUN_DOCKER_TESTS=1; `scripts/docker-test.sh` sets it after preparing what this
machine needs (a base image, Redis, the CPU torch wheel) and passes these on:
    SD_DOCKER_BASE             the Dockerfile's BASE build arg (default: its own)
    SD_DOCKER_TORCH_INDEX_URL  its TORCH_INDEX_URL build arg (default: its own)
    SD_DOCKER_REDIS_IMAGE      compose's REDIS_IMAGE (default: compose's redis:7)
With RUN_DOCKER_TESTS=1 and no Docker daemon the tests fail, never skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import FINISHED, free_port, poll_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.environ.get("RUN_DOCKER_TESTS") != "1",
                       reason="builds and runs the Docker image (minutes): "
                              "scripts/docker-test.sh, or RUN_DOCKER_TESTS=1"),
]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("SD_DOCKER_IMAGE", "sd-cpu-server:test")
# The tiny model, small and quick by default; a long job to kill a worker in the middle of.
SETTINGS = {"MODEL_ID": "tiny-random", "TAESD_MODEL": "", "DEFAULT_SIZE": "64",
            "MIN_SIZE": "64", "DEFAULT_STEPS": "2", "RATE_LIMIT": ""}
LONG = {"prompt": "a long one", "steps": 100, "width": 320, "height": 320, "seed": 7}


def run(*args: str, env: dict | None = None, timeout: float = 600) -> str:
    """Run a docker command; its stdout, or the test fails with its output."""
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin is there, else Debian's `docker-compose` 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "no docker compose plugin and no docker-compose"
    return ["docker-compose"]


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built from this checkout (Docker's layer cache makes a rebuild quick)."""
    assert shutil.which("docker"), "RUN_DOCKER_TESTS=1 but no docker command"
    run("docker", "info", timeout=60)  # fails here, with the reason, when no daemon answers
    args = ["docker", "build", "-t", IMAGE]
    for arg, variable in (("BASE", "SD_DOCKER_BASE"),
                          ("TORCH_INDEX_URL", "SD_DOCKER_TORCH_INDEX_URL")):
        if os.environ.get(variable):
            args += ["--build-arg", f"{arg}={os.environ[variable]}"]
    started = time.monotonic()
    run(*args, str(ROOT), timeout=3600)
    size = run("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE).strip()
    print(f"\nbuilt {IMAGE} in {time.monotonic() - started:.0f} s, "
          f"{int(size) / 1e9:.2f} GB")
    return IMAGE


class Stack:
    """One compose project on this checkout's compose.yaml, the web on a free port."""

    def __init__(self, image: str):
        self.project = f"sdtest{os.getpid()}"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.compose = [*compose_command(), "-f", str(ROOT / "compose.yaml"),
                        "-p", self.project]
        self.env = self._environment(image)

    def _environment(self, image: str) -> dict[str, str]:
        # Only the settings of this test reach the containers, never the caller's own.
        env = dict(os.environ)
        spec = yaml.safe_load((ROOT / "compose.yaml").read_text())
        for name in spec["services"]["web"]["environment"]:
            env.pop(name, None)
        env.update(SETTINGS, SD_IMAGE=image, WEB_PUBLISH=self.url.removeprefix("http://"))
        if os.environ.get("SD_DOCKER_REDIS_IMAGE"):
            env["REDIS_IMAGE"] = os.environ["SD_DOCKER_REDIS_IMAGE"]
        return env

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return run(*self.compose, *args, env=self.env, timeout=timeout)

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **kwargs)

    def ready_workers(self) -> list[dict] | None:
        """/health's workers once it is 200 with two ready and idle, else None."""
        response = self.get("/health")
        workers = response.json().get("workers", []) if response.status_code == 200 else []
        idle = [w for w in workers if w["state"] == "ready" and not w["job"]]
        return idle if len(idle) == 2 and len(workers) == 2 else None


@pytest.fixture(scope="module")
def stack(image):
    """compose up (redis, web, two workers); down with the volumes afterwards, the logs
    shown first when a test failed."""
    stack = Stack(image)
    try:
        stack("up", "-d", "--no-build")
        yield stack
    finally:
        print(stack("logs", "--no-color", "--tail", "40"), flush=True)
        stack("down", "-v", "--remove-orphans", "--timeout", "10")


@pytest.fixture
def two_ready(stack) -> list[dict]:
    """The stack with /health 200 and both workers ready and idle."""
    return poll_until(stack.ready_workers, 300, "/health 200 with two ready, idle workers",
                      interval=1, ignoring=(requests.ConnectionError,))


def test_the_image_has_cpu_torch_only_and_runs_as_a_user(image):
    out = run("docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
              "id -u; python -c 'import torch; print(torch.__version__, "
              "torch.cuda.is_available())'; pip list 2>/dev/null")
    uid, torch_line, packages = out.split("\n", 2)
    assert uid != "0"
    assert torch_line.endswith("+cpu False"), torch_line
    assert "nvidia" not in packages.lower(), packages


def test_one_container_serves_on_the_embedded_queue(image):
    # The image's own command: app.py with QUEUE_BACKEND=memory, its journal in /app/state.
    port = free_port()
    env = [f"--env={k}={v}" for k, v in SETTINGS.items()]
    container = run("docker", "run", "-d", "--rm", *env, "-p", f"127.0.0.1:{port}:5000",
                    image).strip()
    try:
        url = f"http://127.0.0.1:{port}"
        poll_until(lambda: requests.get(f"{url}/health", timeout=10).status_code == 200, 180,
                   "/health 200", interval=1, ignoring=(requests.ConnectionError,))
        response = requests.post(f"{url}/generate", json={"prompt": "alone"}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["queue"]["journal"]["error"] is None and "warning" not in health, health
    finally:
        run("docker", "rm", "-f", "-v", container)


def test_compose_serves_images_from_its_workers_and_passes_the_healthcheck(stack, two_ready):
    response = stack.post("/generate", json={"prompt": "a lighthouse", "seed": 1})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    job = stack.get(f"/jobs/{response.headers['X-Job-Id']}").json()
    assert job["state"] == "succeeded" and job["worker"] in [w["name"] for w in two_ready]
    assert "sd_jobs_finished_total" in stack.get("/metrics").text
    # The worker (the app user) wrote it to the shared outputs volume.
    assert ".png" in stack("exec", "-T", "web", "find", "/app/outputs", "-name", "*.png")
    web = stack.container("web")
    poll_until(lambda: run("docker", "inspect", "-f", "{{.State.Health.Status}}",
                           web).strip() == "healthy",
               150, "Docker's HEALTHCHECK to call the web healthy", interval=2)


def test_a_killed_worker_containers_job_resumes_on_the_other_to_the_same_bytes(
        stack, two_ready):
    whole = stack.post("/generate", json=LONG)
    assert whole.status_code == 200, whole.text
    job_id = stack.post("/jobs", json=LONG).json()["id"]
    job = poll_until(lambda: (lambda j: j if j["step"] >= 1 else None)(
        stack.get(f"/jobs/{job_id}").json()), 120, "the long job to run")
    host = next(w["host"] for w in two_ready if w["name"] == job["worker"])
    victim = next(c for c in stack("ps", "-q").split()
                  if run("docker", "inspect", "-f", "{{.Config.Hostname}}", c).strip() == host)
    try:
        run("docker", "kill", victim)  # SIGKILL: no goodbye, as the OOM killer
        done = poll_until(lambda: (lambda j: j if j["state"] in FINISHED else None)(
            stack.get(f"/jobs/{job_id}").json()), 120, "the killed worker's job to end")
        # README "Scaling out": queued again when the heartbeat lapses, resumed by the other
        # worker from its checkpoint (if one was taken: CHECKPOINT_MAX_COST skips them while
        # they cost more than 2 % of a tiny step), the same bytes as an uninterrupted run.
        print(f"\nkilled {job['worker']} (seen running at step {job['step']}); "
              f"{done['worker']} finished the job (attempts {done['attempts']}, resumed at "
              f"step {done['resumed_at_step']})")
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2 and done["worker"] != job["worker"]
        assert stack.get(f"/jobs/{job_id}/image").content == whole.content
        poll_until(lambda: len(stack.get("/health").json()["workers"]) == 1, 30,
                   "the dead worker to leave /health")
    finally:
        # A new container, not `docker start`: the old one would come back under the same
        # worker name (host-pid, and pids repeat in a fresh container), which RQ refuses
        # while the dead worker's registration lives (see README "Docker").
        service = run("docker", "inspect", "-f",
                      '{{index .Config.Labels "com.docker.compose.service"}}', victim).strip()
        stack("up", "-d", "--no-build", "--no-deps", "--force-recreate", service)
