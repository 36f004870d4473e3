"""Load benchmark: N concurrent clients for a fixed time against a live server on the tiny model.

    python3 bench/load.py [--clients 50] [--seconds 30]

Starts `python app.py` (waitress, MODEL_ID=tiny-random) on a free loopback port, runs two
scenarios — the default rate limit (10/minute per client) and no rate limit (queue
pressure) — and reports requests by status, jobs completed, and /health latency p50/p99
measured while generations run. Writes bench/load-results.md. Traffic goes to 127.0.0.1
only; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "cache"
MAX_REQUESTS_PER_CLIENT = 10_000  # a hard bound on each loop, whatever the timing


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env_extra: dict[str, str]) -> subprocess.Popen:
    """`python app.py` on the tiny model; returns once /health says healthy."""
    env = {**os.environ, "MODEL_ID": "tiny-random", "TINY_MODEL_DIR": str(CACHE / "tiny-random"),
           "PORT": str(port), "HOST": "127.0.0.1", "MIN_SIZE": "64", "DEFAULT_SIZE": "128",
           "DEFAULT_STEPS": "10", "OUTPUT_DIR": "", "LOG_LEVEL": "WARNING",
           "QUEUE_SIZE": "8", "THREADS": "64", **env_extra}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status, _ = request(port, "GET", "/health")
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def request(port: int, method: str, path: str, body: dict | None = None,
            timeout: float = 300) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def run_scenario(name: str, clients: int, seconds: float, env_extra: dict[str, str]) -> dict:
    """Run one scenario and return its figures."""
    port = free_port()
    proc = start_server(port, env_extra)
    statuses: collections.Counter = collections.Counter()
    accepted_jobs: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    health_ms: list[float] = []

    def client(i: int) -> None:
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= stop_at:
                return
            path = "/generate" if (i + n) % 2 else "/jobs"
            try:
                status, body = request(port, "POST", path, {"prompt": f"load {i} {n}"})
            except OSError:
                status, body = -1, b""
            with lock:
                statuses[(path, status)] += 1
                if status == 202:
                    accepted_jobs.append(json.loads(body)["id"])
            if status in (429, 503):
                time.sleep(0.5)  # a polite client backs off, but keeps the pressure on

    def prober() -> None:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= stop_at:
                return
            started = time.perf_counter()
            status, _ = request(port, "GET", "/health", timeout=10)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                health_ms.append(elapsed)
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 600)
    # Every accepted job must reach a final state with its image (nothing lost).
    final = collections.Counter()
    deadline = time.monotonic() + 300
    for job_id in accepted_jobs:
        while True:
            status, body = request(port, "GET", f"/jobs/{job_id}")
            state = json.loads(body)["state"] if status == 200 else f"http-{status}"
            if state not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if state == "succeeded":
            img_status, _ = request(port, "GET", f"/jobs/{job_id}/image")
            state = "succeeded+image" if img_status == 200 else f"succeeded-no-image-{img_status}"
        final[state] += 1
    _, health_body = request(port, "GET", "/health")
    proc.terminate()
    proc.wait(60)
    q = sorted(health_ms)
    return {
        "name": name, "clients": clients, "seconds": seconds, "env": env_extra,
        "statuses": {f"{p} {s}": c for (p, s), c in sorted(statuses.items())},
        "jobs_accepted_async": len(accepted_jobs), "async_final": dict(final),
        "completed_on_server": json.loads(health_body)["queue"]["completed"],
        "health_samples": len(q),
        "health_p50_ms": round(statistics.median(q), 1) if q else None,
        "health_p99_ms": round(q[min(len(q) - 1, int(len(q) * 0.99))], 1) if q else None,
        "health_max_ms": round(q[-1], 1) if q else None,
    }


def write_report(results: list[dict], path: Path) -> None:
    """bench/load-results.md."""
    lines = ["# Load benchmark", "",
             f"`python3 bench/load.py` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. Tiny random-weight model, "
             "128x128, 10 steps; waitress with 64 threads, QUEUE_SIZE=8. Each client loops "
             "POST /generate and POST /jobs alternately, backing off 0.5 s after a 429/503; a "
             "prober reads /health every 50 ms during the run.", ""]
    for r in results:
        lines += [f"## {r['name']}", "", f"{r['clients']} clients for {r['seconds']} s "
                  f"(settings: {r['env'] or 'defaults'})", "", "| endpoint and status | count |",
                  "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["statuses"].items()]
        lines += ["", f"- generations completed by the server: {r['completed_on_server']}",
                  f"- async jobs accepted (202): {r['jobs_accepted_async']}, final states: "
                  f"{r['async_final']}",
                  f"- /health latency while generating: p50 {r['health_p50_ms']} ms, p99 "
                  f"{r['health_p99_ms']} ms, max {r['health_max_ms']} ms "
                  f"({r['health_samples']} samples)", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    """Run both scenarios and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    results = [run_scenario("Default rate limit (10/minute per client)", args.clients,
                            args.seconds, {}),
               run_scenario("No rate limit (queue pressure)", args.clients, args.seconds,
                            {"RATE_LIMIT": ""})]
    out = ROOT / "bench" / "load-results.md"
    write_report(results, out)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
