"""Prometheus metrics: what the server counts, where the counts are kept, and /metrics' text.

Every metric is declared once below (METRICS, in the order /metrics lists them). Counters and
histograms are sums of increments kept in a `CountStore`: `LocalCounts` in this process
(QUEUE_BACKEND=memory), or jobs/redis_metrics.py's `RedisCounts`, one Redis hash that every
web process and every worker adds to, so the /metrics of any web process covers them all.
Gauges (queue depth, running jobs, workers, model load seconds) are read from the backend
when /metrics is asked. prometheus_client renders the text.

A finished job is counted by its outcome and by the dialect that submitted it; those are
known in different places (the route, and whoever finishes the job: the worker, a cancel, the
dead-worker reaper), so each side leaves its half with the store (`CountStore.pair`) and the
second to arrive counts the job.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

from jobs.job import Job, JobState

log = logging.getLogger(__name__)

# (metric name, label values in the metric's order, part): part is "" for a counter, and
# "sum", "count" or a bucket's upper bound ("0.5") for a histogram.
Key = tuple[str, tuple[str, ...], str]


@dataclass(frozen=True)
class Metric:
    """One metric as /metrics lists it."""

    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# A CPU image takes from under a second (tiny models, LCM) to many minutes (SD at 768 px).
IMAGE_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 20, 30)
SWITCH_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

JOBS_SUBMITTED = Metric("sd_jobs_submitted_total", "counter", "Jobs accepted into the queue, "
                        "by the API dialect that sent them (native, a1111, openai)",
                        ("dialect",))
JOBS_FINISHED = Metric("sd_jobs_finished_total", "counter", "Jobs that ended, by outcome "
                       "(succeeded, failed, cancelled) and dialect", ("outcome", "dialect"))
IMAGE_SECONDS = Metric("sd_image_seconds", "histogram", "Seconds one image took to generate "
                       "(from start to saved PNG), by model and sampler", ("model", "sampler"),
                       IMAGE_BUCKETS)
STEP_SECONDS = Metric("sd_step_seconds", "histogram", "Seconds per denoising step of each "
                      "image, by model and sampler", ("model", "sampler"), STEP_BUCKETS)
SWITCH_SECONDS = Metric("sd_model_switch_seconds", "histogram", "Seconds a model switch took "
                        "(unload, then load the new model), by the model switched to",
                        ("model",), SWITCH_BUCKETS)
HTTP_REQUESTS = Metric("sd_http_requests_total", "counter", "HTTP requests answered, by route "
                       "(the URL rule, e.g. /jobs/<job_id>), method and status",
                       ("route", "method", "status"))
REFUSALS = Metric("sd_refusals_total", "counter", "Requests refused before queueing, by "
                  "reason: rate_limited (429), queue_full (503), or why no job is taken now "
                  "(loading, no_workers, shutting_down, ...)", ("reason",))
QUEUE_DEPTH = Metric("sd_queue_depth", "gauge", "Jobs waiting (not yet running), by the model "
                     "they will run on", ("model",))
JOBS_RUNNING = Metric("sd_jobs_running", "gauge", "Jobs running now")
WORKERS = Metric("sd_workers", "gauge", "Live generation workers, by state (loading, ready, "
                 "failed)", ("state",))
LOAD_SECONDS = Metric("sd_model_load_seconds", "gauge", "Seconds each live worker took to "
                      "load its first model when it started", ("worker",))

METRICS = (JOBS_SUBMITTED, JOBS_FINISHED, IMAGE_SECONDS, STEP_SECONDS, SWITCH_SECONDS,
           HTTP_REQUESTS, REFUSALS, QUEUE_DEPTH, JOBS_RUNNING, WORKERS, LOAD_SECONDS)
WORKER_STATES = ("loading", "ready", "failed")
# How many finished-job halves (outcome without dialect, or the reverse) LocalCounts keeps.
MAX_UNPAIRED = 10_000


class CountStore(Protocol):
    """Where counter and histogram increments are summed."""

    def add(self, counts: Mapping[Key, float]) -> None:
        """Add each increment to its sum."""

    def read(self) -> dict[Key, float]:
        """Every sum so far."""

    def pair(self, job_id: str, side: str, value: str) -> str | None:
        """Leave one half of a finished-job count ('dialect' or 'outcome'); the other
        half's value when it was already left (the caller then counts the job), else None."""


@dataclass(frozen=True)
class GaugeValue:
    """One gauge sample, read at scrape time."""

    metric: Metric
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class RunFigures:
    """What a finished job measured, for the histograms (succeeded jobs only)."""

    kind: str  # generate or switch_model
    model: str
    sampler: str
    seconds: float | None
    seconds_per_step: float | None


class LocalCounts:
    """A CountStore in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[Key, float] = defaultdict(float)
        self._unpaired: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def add(self, counts: Mapping[Key, float]) -> None:
        """Add each increment to its sum."""
        with self._lock:
            for key, amount in counts.items():
                self._sums[key] += amount

    def read(self) -> dict[Key, float]:
        """Every sum so far."""
        with self._lock:
            return dict(self._sums)

    def pair(self, job_id: str, side: str, value: str) -> str | None:
        """See CountStore.pair; at most MAX_UNPAIRED halves wait (jobs queued without a
        route, e.g. by tools, never get their other half)."""
        with self._lock:
            other = self._unpaired.pop(job_id, None)
            if other is not None and other[0] != side:
                return other[1]
            self._unpaired[job_id] = (side, value)
            while len(self._unpaired) > MAX_UNPAIRED:
                self._unpaired.popitem(last=False)
            return None


def observation(metric: Metric, labels: tuple[str, ...], value: float) -> dict[Key, float]:
    """The increments of one histogram observation (buckets are kept cumulative)."""
    from prometheus_client.utils import floatToGoString

    counts = {(metric.name, labels, "sum"): value, (metric.name, labels, "count"): 1.0}
    for bound in metric.buckets:
        if value <= bound:
            counts[(metric.name, labels, floatToGoString(bound))] = 1.0
    return counts


def count_finished(store: CountStore, job_id: str, outcome: str,
                   figures: RunFigures | None) -> None:
    """Count a finished job: its histograms now, its outcome-by-dialect once the submitting
    route's half is there too."""
    counts: dict[Key, float] = {}
    if outcome == JobState.SUCCEEDED.value and figures is not None:
        if figures.kind == "switch_model" and figures.seconds is not None:
            counts.update(observation(SWITCH_SECONDS, (figures.model,), figures.seconds))
        elif figures.kind == "generate":
            labels = (figures.model, figures.sampler)
            if figures.seconds is not None:
                counts.update(observation(IMAGE_SECONDS, labels, figures.seconds))
            if figures.seconds_per_step:
                counts.update(observation(STEP_SECONDS, labels, figures.seconds_per_step))
    dialect = store.pair(job_id, "outcome", outcome)
    if dialect is not None:
        counts[(JOBS_FINISHED.name, (outcome, dialect), "")] = 1.0
    store.add(counts)


def model_label(engine: Any) -> str:
    """A model as the metrics name it: its catalogue name, as requests and the Redis queues
    name it (the served model's MODEL_ID before one is loaded)."""
    entry = engine.model
    return entry.name if entry is not None else engine.model_name


def sampler_name(scheduler: str, default_sampler: str) -> str:
    """The sampler a job ran: its request's, or the model's own for 'default'."""
    return default_sampler if scheduler == "default" else scheduler


class JobMetrics:
    """What a queue backend counts and how /metrics shows it: the routes report submissions,
    refusals and requests here; finishes reach the store through the backend."""

    def __init__(self, store: CountStore, gauges: Callable[[], Iterable[GaugeValue]]):
        self.store = store
        self._gauges = gauges

    def submitted(self, job_ids: list[str], dialect: str) -> None:
        """Jobs a route queued (a batch counts each image). Never raises: the jobs are
        queued already, and a count must not turn that into an error."""
        counts: dict[Key, float] = {(JOBS_SUBMITTED.name, (dialect,), ""): float(len(job_ids))}
        try:
            for job_id in job_ids:
                outcome = self.store.pair(job_id, "dialect", dialect)
                if outcome is not None:  # it finished before the route got here
                    counts[(JOBS_FINISHED.name, (outcome, dialect), "")] = 1.0
        except Exception as exc:  # Redis away: these jobs' outcomes go uncounted
            log.warning("could not note the dialect of jobs %s: %s", job_ids, exc)
        self.store.add(counts)

    def request(self, route: str, method: str, status: int) -> None:
        """One HTTP response."""
        self.store.add({(HTTP_REQUESTS.name, (route, method, str(status)), ""): 1.0})

    def refused(self, reason: str) -> None:
        """A request refused before it was queued."""
        self.store.add({(REFUSALS.name, (reason,), ""): 1.0})

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(_Families(self.store.read(), list(self._gauges())))


class _Families:
    """Sums and gauge values as prometheus_client metric families (a collector)."""

    def __init__(self, sums: dict[Key, float], gauges: list[GaugeValue]):
        self.sums, self.gauges = sums, gauges

    def collect(self) -> list[Any]:
        """One family per metric, in METRICS' order."""
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        families = []
        for metric in METRICS:
            labels = list(metric.labels)
            if metric.kind == "counter":
                family = CounterMetricFamily(metric.name, metric.help, labels=labels)
                for (name, values, _part), total in sorted(self.sums.items()):
                    if name == metric.name:
                        family.add_metric(list(values), total)
            elif metric.kind == "histogram":
                family = HistogramMetricFamily(metric.name, metric.help, labels=labels)
                for values in sorted({k[1] for k in self.sums if k[0] == metric.name}):
                    family.add_metric(list(values), *self._histogram(metric, values))
            else:
                family = GaugeMetricFamily(metric.name, metric.help, labels=labels)
                for gauge in self.gauges:
                    if gauge.metric is metric:
                        family.add_metric(list(gauge.labels), gauge.value)
            families.append(family)
        return families

    def _histogram(self, metric: Metric, values: tuple[str, ...]):
        """(cumulative buckets with +Inf, sum) of one labelled histogram."""
        from prometheus_client.utils import floatToGoString

        def total(part: str) -> float:
            return self.sums.get((metric.name, values, part), 0.0)

        buckets = [(floatToGoString(b), total(floatToGoString(b))) for b in metric.buckets]
        return buckets + [("+Inf", total("count"))], total("sum")


# ---------------------------------------------------------------------- the memory backend

def memory_metrics(state: Any, engine: Any, worker_alive: Callable[[], bool]) -> JobMetrics:
    """The memory backend's metrics: counts in this process; finishes counted as the queue's
    state (a jobs.state.QueueState) signals them; gauges read from that state and the engine
    (a jobs.backend.ImageEngine) at scrape time."""
    store = LocalCounts()

    def finished(job: Job) -> None:
        count_finished(store, job.id, job.state.value, _figures(job, engine))

    def gauges() -> list[GaugeValue]:
        served, status = model_label(engine), engine.status
        with state.lock:
            waiting = [job.request.model or served for job in state.waiting]
            running = int(state.running is not None)
        alive = worker_alive()
        values = [GaugeValue(QUEUE_DEPTH, (model,), float(waiting.count(model)))
                  for model in sorted({served, *waiting})]
        values.append(GaugeValue(JOBS_RUNNING, (), float(running)))
        values += [GaugeValue(WORKERS, (s,), float(alive and status.state == s))
                   for s in WORKER_STATES]
        if alive and status.load_seconds is not None:
            values.append(GaugeValue(LOAD_SECONDS, ("in-process",), status.load_seconds))
        return values

    state.signals.finish_listeners.append(finished)
    return JobMetrics(store, gauges)


def _figures(job: Job, engine: Any) -> RunFigures | None:
    """A memory job's figures (called as it finishes, on the worker's thread)."""
    if job.state != JobState.SUCCEEDED or job.started_at is None or job.finished_at is None:
        return None
    model = job.request.model if job.kind == "switch_model" else None
    return RunFigures(job.kind, model or model_label(engine),
                      sampler_name(job.request.scheduler, engine.default_sampler),
                      job.finished_at - job.started_at, job.seconds_per_step)
