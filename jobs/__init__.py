"""The job queue: the only package with threads and locks.

A request waits in the `JobQueue` (queue.py); one `Worker` thread (worker.py) runs the
jobs one at a time on the injected engine; both share a `QueueState` (state.py) and its
one lock. The rest are small rooms without threads of their own:

    job.py        Job, JobState and the errors a submit or a run can end in
    eta.py        the pure ETA arithmetic
    retention.py  the pure rule for which finished jobs to forget
    store.py      OutputStore: PNGs saved to and restored from OUTPUT_DIR
    responses.py  OpenResponses: HTTP responses still being handed to the server
    shutdown.py   drain_in_background: stop, deliver the last responses, then exit
"""
from jobs.job import (Job, JobCancelled, JobState, NotAccepting, QueueFull,
                      explain_generation_error, random_seed)
from jobs.queue import JobQueue
from jobs.responses import OpenResponses
from jobs.shutdown import drain_in_background
from jobs.store import OutputStore

__all__ = ["Job", "JobCancelled", "JobQueue", "JobState", "NotAccepting", "OpenResponses",
           "OutputStore", "QueueFull", "drain_in_background", "explain_generation_error",
           "random_seed"]
