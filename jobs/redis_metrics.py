"""The Redis backend's metrics: every process adds its counts into one Redis hash, so the
/metrics of any web process covers every web process and every worker.

    sd:metrics              hash: one field per counter, histogram bucket, sum and count
                            (a JSON [metric, label values, part]), summed with HINCRBYFLOAT
    sd:metrics:pair:<id>    a finished job's two halves (its dialect, its outcome) until the
                            second arrives and the job is counted (TTL: a day)

A worker writes a job's figures as it records the job's end. A web process keeps its counts
(HTTP requests, submissions, refusals) in memory and a background thread adds them to Redis
every FLUSH_SECONDS (at once before it answers /metrics), so a request never waits on Redis
for its count, and a Redis outage loses none of them. Gauges are read from Redis (the queue,
RQ's started registry, the workers' heartbeats) when /metrics is asked.
"""
from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import defaultdict
from typing import Any, Mapping

from jobs import redis_common as rc
from jobs.metrics import (JOBS_RUNNING, LOAD_SECONDS, QUEUE_DEPTH, WORKER_STATES, WORKERS,
                          GaugeValue, JobMetrics, Key, model_label)

log = logging.getLogger(__name__)

METRICS_KEY = "sd:metrics"
FLUSH_SECONDS = 1.0
# Both halves of a finished job arrive within its queue wait and run: a day bounds both.
PAIR_TTL_SECONDS = rc.JOB_TIMEOUT_SECONDS
# Leave my half; answer the other half (and clear both) if it is already there. Atomic, so
# exactly one of the two sides counts the job.
PAIR_SCRIPT = """
local other = redis.call('HGET', KEYS[1], ARGV[3])
if other then
  redis.call('DEL', KEYS[1])
  return other
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return false
"""
OTHER_SIDE = {"dialect": "outcome", "outcome": "dialect"}


def pair_key(job_id: str) -> str:
    """Where a finished job's halves wait for each other."""
    return f"sd:metrics:pair:{job_id}"


class RedisCounts:
    """A CountStore in Redis. `buffered` (web processes): increments wait in memory for the
    flusher thread; otherwise (workers, once per job) they are written at once."""

    def __init__(self, connection, buffered: bool = False):
        self.connection = connection
        self.buffered = buffered
        self._lock = threading.Lock()
        self._pending: dict[Key, float] = defaultdict(float)
        if buffered:
            _flusher.watch(self)

    def add(self, counts: Mapping[Key, float]) -> None:
        """Add each increment (later, by the flusher, when buffered)."""
        if not self.buffered:
            self._write(counts)
            return
        with self._lock:
            for key, amount in counts.items():
                self._pending[key] += amount

    def flush(self) -> None:
        """Write the buffered increments; on a Redis error they stay for the next flush."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
        if not pending:
            return
        try:
            self._write(pending)
        except Exception:
            with self._lock:
                for key, amount in pending.items():
                    self._pending[key] += amount
            raise

    def read(self) -> dict[Key, float]:
        """Every process's sums (this one's flushed first)."""
        self.flush()
        sums: dict[Key, float] = {}
        for field, value in self.connection.hgetall(METRICS_KEY).items():
            name, labels, part = json.loads(field)
            sums[(name, tuple(labels), part)] = float(value)
        return sums

    def pair(self, job_id: str, side: str, value: str) -> str | None:
        """See jobs.metrics.CountStore.pair (atomic across processes)."""
        other = self.connection.eval(PAIR_SCRIPT, 1, pair_key(job_id), side, value,
                                     OTHER_SIDE[side], PAIR_TTL_SECONDS)
        return other.decode() if isinstance(other, bytes) else other or None

    def _write(self, counts: Mapping[Key, float]) -> None:
        if not counts:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for (name, labels, part), amount in counts.items():
                pipe.hincrbyfloat(METRICS_KEY, json.dumps([name, list(labels), part]), amount)
            pipe.execute()


class _Flusher:
    """One daemon thread per process flushing every buffered RedisCounts each FLUSH_SECONDS
    (the stores are held weakly: a discarded app's store is not kept alive)."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[RedisCounts] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, store: RedisCounts) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="metrics-flusher",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(FLUSH_SECONDS):
            for store in list(self._stores):
                try:
                    store.flush()
                except Exception as exc:  # Redis away: the counts wait for the next round
                    log.debug("metrics flush failed: %s", type(exc).__name__)


_flusher = _Flusher()


def redis_metrics(connection, engine: Any) -> JobMetrics:
    """The web process's metrics under QUEUE_BACKEND=redis (`engine` is its RemoteEngine)."""
    def gauges() -> list[GaugeValue]:
        from rq.registry import StartedJobRegistry

        queues = rc.model_queues(connection)  # one per model (jobs/redis_models.py)
        depths = {queue.name[len(rc.QUEUE_PREFIX):]: queue.count for queue in queues}
        values = [GaugeValue(QUEUE_DEPTH, (model,), float(depths.get(model, 0)))
                  for model in sorted({model_label(engine), *depths})]
        values.append(GaugeValue(JOBS_RUNNING, (), float(
            sum(StartedJobRegistry(queue=queue).count for queue in queues))))
        beats = rc.alive_workers(connection)
        values += [GaugeValue(WORKERS, (state,), float(sum(b["state"] == state for b in beats)))
                   for state in WORKER_STATES]
        for beat in beats:
            seconds = (beat.get("info") or {}).get("load_seconds")
            if seconds is not None:
                values.append(GaugeValue(LOAD_SECONDS, (beat["name"],), float(seconds)))
        return values

    return JobMetrics(RedisCounts(connection, buffered=True), gauges)
