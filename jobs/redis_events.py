"""The Redis backend's job events: who changed a job says so on Redis pub/sub, and each event
stream of any web process listens (RedisWatch); a finished job is counted for /metrics here too.

    sd:events:<id>     'started', 'step:<n>', 'preview:<n>' (a preview of step n is stored)
                       and 'finished', published by the worker's recorder; 'finished' also
                       by a web process that cancels a queued job, and 'requeued' or
                       'finished' by the reaper of a dead worker's job (jobs/redis_reaper.py)
    sd:events:queue    'started', 'requeued' and 'finished' of every job: the queue moved,
                       so a waiting job's position may have changed

Pub/sub only wakes a stream sooner: the stream re-reads the job from Redis whenever it wakes,
and wakes at least every WAKE_SECONDS anyway, so a missed message costs a second, never an
event.
"""
from __future__ import annotations

import logging
from typing import Any

from jobs import redis_common as rc
from jobs.job import JobState
from jobs.metrics import RunFigures, count_finished, model_label, sampler_name
from jobs.redis_metrics import RedisCounts

log = logging.getLogger(__name__)

QUEUE_CHANNEL = "sd:events:queue"
QUEUE_MOVES = ("started", "requeued", "finished")


def channel(job_id: str) -> str:
    """The pub/sub channel of one job's changes."""
    return f"sd:events:{job_id}"


def announce(connection, job_id: str, what: str) -> None:
    """Tell the job's event streams that it changed ('started', 'step:3', 'preview:3').
    Never raises: the job's record is what counts, and a stream re-reads it anyway."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.publish(channel(job_id), what)
            if what in QUEUE_MOVES:  # waiting jobs' positions may have changed
                pipe.publish(QUEUE_CHANNEL, what)
            pipe.execute()
    except Exception as exc:
        log.warning("job %s: could not announce %s: %s", job_id, what, type(exc).__name__)


def announce_finished(connection, job_id: str, state: JobState,
                      figures: RunFigures | None = None) -> None:
    """A job ended (its outcome is recorded): count it for /metrics, then tell its streams
    and the waiting jobs'. Never raises."""
    count_end(connection, job_id, state, figures)
    announce(connection, job_id, "finished")


def count_end(connection, job_id: str, state: JobState, figures: RunFigures | None) -> None:
    """Count a job's end for /metrics. Never raises: a Redis error loses only this count."""
    try:
        count_finished(RedisCounts(connection), job_id, state.value, figures)
    except Exception as exc:
        log.warning("job %s: could not count its end: %s", job_id, type(exc).__name__)


def worker_figures(rq_job, engine: Any) -> RunFigures | None:
    """What a worker's finished RQ job measured (its meta, as the recorder left it)."""
    meta = rq_job.meta
    started, finished = meta.get("started_at"), meta.get("finished_at")
    request = rq_job.args[0]
    return RunFigures("generate", model_label(engine),
                      sampler_name(request.scheduler, engine.default_sampler),
                      finished - started if started and finished else None,
                      meta.get("seconds_per_step"))


class RedisWatch:
    """The Redis backend's JobWatch: a pub/sub subscription to the job's channel and the
    queue's. While it is open, the worker renders a preview at every step (the same flag a
    preview poll sets), and says so: `preview_step` is the newest one stored."""

    def __init__(self, connection, job_id: str):
        self.connection, self.job_id = connection, job_id
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel(job_id), QUEUE_CHANNEL)
        self._preview_step = 0

    def wait(self, timeout: float) -> None:
        """Return at the next message (the rest are read without waiting), or after
        `timeout`; meanwhile ask the worker for previews."""
        self.connection.set(rc.preview_wanted_key(self.job_id), 1,
                            ex=rc.PREVIEW_WANTED_SECONDS)
        message = self._pubsub.get_message(timeout=timeout)
        while message is not None:
            self._read(message)
            message = self._pubsub.get_message(timeout=0)

    def _read(self, message: dict) -> None:
        data = message.get("data")
        text = data.decode() if isinstance(data, bytes) else str(data)
        if text.startswith("preview:"):
            self._preview_step = max(self._preview_step, int(text.split(":", 1)[1]))

    def preview_step(self) -> int:
        """The newest step whose preview the worker stored while this watch was open."""
        return self._preview_step

    def close(self) -> None:
        """Unsubscribe and give the connection back."""
        self._pubsub.close()
