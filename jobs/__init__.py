"""The job queue: the only package with threads and locks.

The routes see two seams (backend.py): the queue backend they submit to and the engine as
they may read it. Two backends implement them: in this process (queue.py: a `JobQueue` whose
one `Worker` thread runs jobs on the real engine, sharing a lock-guarded `QueueState`), or on
Redis (redis_*.py: RQ jobs served by `python worker.py` processes). Both run every job
through the one job runner (runner.py).

    backend        the Protocols: QueueBackend, EngineView, ImageEngine; Health
    job            Job, JobState and the errors a submit or a run can end in
    batch          the one batch builder (seeds, batch ids, the request as it will run)
    runner         the one job runner: a job to its outcome, through a JobRecorder
    queue          JobQueue, the memory backend's public face
    worker         the one thread that owns the engine; StateRecorder
    turn           EngineTurn: a request's short turn on the engine between two jobs
    state          QueueState: what the queue and the worker share, and its lock
    journal        the memory backend's accepted jobs and checkpoints on disk (SQLite)
    fairness       fair share: the round-robin place of a new job in the waiting line
    health         the memory backend's /health
    previews       live previews rendered on demand, once per step
    eta            the pure ETA and Retry-After arithmetic
    retention      the pure rule for which finished jobs to forget
    store          OutputStore: PNGs saved to and restored from OUTPUT_DIR
    history        ImageHistory: every kept image (queue and OUTPUT_DIR), paged, by name
    responses      OpenResponses: HTTP responses still being handed to the server
    shutdown       drain_in_background: stop, deliver the last responses, then exit
    options        OptionsStore: the A1111 options clients POST, behind their own lock
    watch          JobWatch: how an event stream waits for its job's next change; the
                   memory backend's JobSignals (told of each start, step and finish)
    streams        the events a stream tells (follow_job) and StreamSlots, its bound
    metrics        every Prometheus metric declared once, the count stores, /metrics' text
    redis_common   the Redis key layout, heartbeats and the state mapping both sides share
    redis_queue    RedisJobQueue, the Redis backend's public face
    redis_records  RQ jobs <-> Jobs: enqueue (per model, fairly), read, refresh
    redis_reaper   a dead worker's job queued again to resume, or failed for good
    redis_models   which model's queue a request goes to (the models workers serve)
    redis_health   the Redis backend's /health
    redis_engine   RemoteEngine: the workers' engine as their heartbeats describe it
    redis_worker   `python worker.py`'s loop: load once, serve RQ jobs; RedisRecorder
    redis_events   job changes on Redis pub/sub (RedisWatch), and a finished job counted
    redis_metrics  the metrics every process adds to one Redis hash
"""
from jobs.job import (BackendUnsupported, Job, JobCancelled, JobState, NotAccepting,
                      QueueFull, explain_generation_error, random_seed)
from jobs.queue import JobQueue
from jobs.responses import OpenResponses
from jobs.shutdown import drain_in_background
from jobs.store import OutputStore

__all__ = ["BackendUnsupported", "Job", "JobCancelled", "JobQueue", "JobState",
           "NotAccepting", "OpenResponses", "OutputStore", "QueueFull", "drain_in_background",
           "explain_generation_error", "random_seed"]
