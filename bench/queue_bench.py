"""Queue backends compared (issue 14): images per hour and the redis path's overhead per job.

    flock /tmp/heavy.lock .venv/bin/python bench/queue_bench.py [--arch tiny|full] [--jobs 12]
        [--steps 4] [--size N]

Rows: embedded (QUEUE_BACKEND=memory, one worker thread, TORCH_THREADS=2); redis with 1
worker (TORCH_THREADS=2); redis with 2 worker processes (TORCH_THREADS=1 each). Each row
submits --jobs jobs at once through POST /jobs and times until the last succeeds. The
overhead row is one job at a time, redis minus embedded, in ms. Writes
bench/redis-results.md. Needs Debian's redis-server.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_fixtures import RedisServer, WorkerProcess, wait_until  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = {"MIN_SIZE": "64", "MAX_SIZE": "512", "DEFAULT_SIZE": "64", "MAX_STEPS": "50",
        "RATE_LIMIT": "", "OUTPUT_DIR": "", "QUEUE_SIZE": "30", "THREADS": "32", "MAX_BATCH": "4",
        "TAESD_MODEL": "", "LOG_LEVEL": "WARNING"}


def run_jobs(client, count: int, body: dict) -> float:
    """Submit `count` jobs at once and return the seconds until all succeeded."""
    started = time.perf_counter()
    answers = [client.post("/jobs", json=body).get_json() for _ in range(count)]
    assert all("id" in a for a in answers), answers
    ids = [a["id"] for a in answers]
    for job_id in ids:
        state = wait_until(lambda j=job_id: (lambda s: s if s in ("succeeded", "failed",
                                                                  "cancelled") else None)(
            client.get(f"/jobs/{j}").get_json()["state"]), 3600, "a job", 0.01)
        assert state == "succeeded", state
    return time.perf_counter() - started


def one_by_one(client, count: int, body: dict) -> float:
    """Mean seconds of one job submitted alone and awaited (latency, not throughput)."""
    return sum(run_jobs(client, 1, body) for _ in range(count)) / count


def main() -> int:
    """Run every row and write bench/redis-results.md."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=0, help="image side (default: 64 tiny, "
                        "512 full)")
    args = parser.parse_args()
    from app import create_app
    from config import Settings
    from engine import build_random_pipeline

    model = HERE / "cache" / f"queue-{args.arch}"
    if not (model / "model_index.json").exists():
        build_random_pipeline(model, args.arch)
    size = args.size or (64 if args.arch == "tiny" else 512)
    body = {"prompt": "a lighthouse", "steps": args.steps, "width": size, "height": size}
    tmp = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    env = {**BASE, "MODEL_ID": str(model), "BF16_CACHE_DIR": str(tmp / "bf16")}
    rows = []

    app = create_app(Settings.from_env({**env, "TORCH_THREADS": "2"}))
    assert app.extensions["sd_server"].queue.wait_until_loaded(600)
    client = app.test_client()
    run_jobs(client, 1, body)  # warm-up
    rows.append(("embedded, 1 worker thread, 2 torch threads", run_jobs(client, args.jobs, body)))
    embedded_single = one_by_one(client, 5, body)
    app.extensions["sd_server"].queue.stop(5)

    redis = RedisServer(tmp).start()
    import os

    renv = {**os.environ, **env, "QUEUE_BACKEND": "redis", "REDIS_URL": redis.url}
    try:
        for label, workers, threads in (("redis, 1 worker, 2 torch threads", 1, "2"),
                                        ("redis, 2 workers, 1 torch thread each", 2, "1")):
            procs = [WorkerProcess({**renv, "TORCH_THREADS": threads}, tmp / f"w{i}.log")
                     for i in range(workers)]
            web = create_app(Settings.from_env({**env, "QUEUE_BACKEND": "redis",
                                                "REDIS_URL": redis.url}))
            client = web.test_client()
            wait_until(lambda: len([w for w in client.get("/health").get_json().get(
                "workers", []) if w["state"] == "ready"]) == workers, 600, "workers")
            run_jobs(client, 1, body)
            rows.append((label, run_jobs(client, args.jobs, body)))
            if workers == 1:
                redis_single = one_by_one(client, 5, body)
            for proc in procs:
                proc.close()
            wait_until(lambda: not client.get("/health").get_json().get("workers"), 30,
                       "workers to leave")
    finally:
        redis.stop()
    lines = [f"# Queue backends ({args.arch} architecture, {size}x{size}, {args.steps} steps, "
             f"{args.jobs} jobs at once; {time.strftime('%Y-%m-%d')})", "",
             "| setup | seconds | images per hour |", "|---|---|---|"]
    lines += [f"| {label} | {seconds:.1f} | {args.jobs * 3600 / seconds:.0f} |"
              for label, seconds in rows]
    lines += ["", f"One job alone, submit to succeeded as a client polls it: embedded "
              f"{embedded_single * 1000:.0f} ms, redis {redis_single * 1000:.0f} ms: the "
              f"redis path adds {(redis_single - embedded_single) * 1000:.0f} ms per job.", ""]
    out = HERE / "redis-results.md"
    previous = out.read_text() if out.exists() else ""
    out.write_text(previous + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
