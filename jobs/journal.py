"""The embedded queue's journal: every accepted job on disk, so a killed or restarted server
runs its queued jobs in their order, resumes the running one from its checkpoint, and still
answers every job id (JOURNAL_PATH; empty = jobs live in memory only, as before).

Why SQLite: it is in Python's standard library; a transaction is all-or-nothing through a
kill -9 or a power cut (WAL mode, `synchronous=FULL`: a commit is on disk when it returns),
so a job is never half-accepted; readers never block the writer. Checkpoints (engine.resume's
bytes, ~100 KB-1 MB) are blobs in the same file: written with their job's state in one
transaction.

The journal never stops the server: a file that cannot be read is moved aside and a new one
started, a write that fails (a full disk) refuses the job it was accepting (nothing accepted
is lost) or skips the checkpoint, and both say so on /health (`journal.error`).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.job import Job, JobState
from params import GenerationRequest

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state TEXT NOT NULL, kind TEXT NOT NULL,
    request TEXT NOT NULL, seed INTEGER NOT NULL, client TEXT NOT NULL,
    batch_id TEXT NOT NULL, batch_index INTEGER NOT NULL, batch_size INTEGER NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, attempts INTEGER NOT NULL,
    error TEXT, saved_path TEXT, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT PRIMARY KEY, step INTEGER NOT NULL, data BLOB NOT NULL);
"""


class JournalError(RuntimeError):
    """The journal could not record something; the message says what and where."""


@dataclass
class Recovered:
    """What a restart finds: jobs to run again (queued order, the interrupted one first)
    and finished ones to answer for."""

    waiting: list[Job]
    finished: list[Job]


class Journal:
    """Accepted jobs and their checkpoints in one SQLite file (one writer: this process)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.error: str | None = None  # the last problem, for /health
        self._db = self._open()

    # ------------------------------------------------------------------ startup
    def _open(self) -> sqlite3.Connection:
        """Open (or create) the file; an unreadable one is moved aside for a fresh one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.error = (f"the job journal {self.path} could not be read ({exc}); it was "
                          f"moved to {aside.name} and a new one started: jobs queued before "
                          "the restart are lost")
            log.error(self.error)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: request threads submit, the worker thread records; every
        # call holds the queue's lock, so one thread uses the connection at a time.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.execute("SELECT count(*) FROM jobs").fetchone()  # a damaged file fails here
        return db

    def recover(self, max_attempts: int, now: float) -> Recovered:
        """The jobs a restart must know: waiting ones in their order (an interrupted one
        first, failed instead once it has used JOB_MAX_ATTEMPTS runs: a job that kills the
        server each time would otherwise do so forever) and finished ones."""
        rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        names = [c[0] for c in self._db.execute("SELECT * FROM jobs LIMIT 0").description]
        waiting, interrupted, finished = [], [], []
        for row in rows:
            job = _job(dict(zip(names, row)))
            if job.state == JobState.RUNNING and job.attempts >= max_attempts:
                job.state, job.finished_at = JobState.FAILED, now
                job.error = (f"the server stopped {job.attempts} times while running this job; "
                             f"it is not run again (JOB_MAX_ATTEMPTS={max_attempts}): a "
                             "smaller size or fewer steps may fit in memory")
                self.finished(job)
            if job.state == JobState.RUNNING:
                job.state, job.started_at = JobState.QUEUED, None
                interrupted.append(job)
            elif job.state == JobState.QUEUED:
                waiting.append(job)
            else:
                finished.append(job)
        return Recovered(waiting=interrupted + waiting, finished=finished)

    # ------------------------------------------------------------------ records
    def accepted(self, jobs: list[Job]) -> None:
        """Record a batch of accepted jobs, all or none; JournalError when it cannot."""
        try:
            with self._transaction() as db:
                seq = db.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0]
                db.executemany(
                    "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(j.id, seq + i + 1, j.state.value, j.kind,
                      json.dumps(j.request.to_record()), j.seed, j.client, j.batch_id,
                      j.batch_index, j.batch_size, j.created_at, None, None, j.attempts,
                      None, None, 0, j.total_steps) for i, j in enumerate(jobs)])
        except (sqlite3.Error, OSError) as exc:
            self.error = f"the job journal {self.path} cannot be written ({exc})"
            raise JournalError(f"{self.error}: free disk space or fix JOURNAL_PATH") from exc
        self.error = None

    def started(self, job: Job) -> None:
        """Record that a run of the job began (its attempts count)."""
        self._write("UPDATE jobs SET state=?, started_at=?, attempts=? WHERE id=?",
                    (job.state.value, job.started_at, job.attempts, job.id))

    def finished(self, job: Job) -> None:
        """Record the job's outcome; its checkpoint is no longer needed."""
        self._write("UPDATE jobs SET state=?, finished_at=?, error=?, saved_path=?, step=?, "
                    "total_steps=? WHERE id=?", (job.state.value, job.finished_at, job.error,
                                                  job.saved_path, job.step, job.total_steps,
                                                  job.id),
                    "DELETE FROM checkpoints WHERE job_id=?", (job.id,))

    def keep_checkpoint(self, job_id: str, data: bytes, step: int) -> None:
        """The running job's newest checkpoint (replacing the one before)."""
        self._write("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?)", (job_id, step, data),
                    "UPDATE jobs SET step=? WHERE id=?", (step, job_id))

    def checkpoint(self, job_id: str) -> bytes | None:
        """The job's newest checkpoint, or None."""
        try:
            row = self._db.execute("SELECT data FROM checkpoints WHERE job_id=?",
                                   (job_id,)).fetchone()
        except sqlite3.Error as exc:
            log.warning("cannot read the checkpoint of job %s: %s", job_id, exc)
            return None
        return bytes(row[0]) if row else None

    def forget(self, job_ids: list[str]) -> None:
        """Drop jobs no longer retained (JOB_RETENTION_SECONDS / _COUNT)."""
        if job_ids:
            marks = ",".join("?" * len(job_ids))
            self._write(f"DELETE FROM jobs WHERE id IN ({marks})", tuple(job_ids),
                        f"DELETE FROM checkpoints WHERE job_id IN ({marks})", tuple(job_ids))

    def status(self) -> dict[str, Any]:
        """For /health: where it is and the last problem, if any."""
        return {"path": str(self.path), "error": self.error}

    def close(self) -> None:
        """Close the file (tests, shutdown)."""
        self._db.close()

    # ------------------------------------------------------------------ internals
    def _transaction(self):
        """`with journal._transaction() as db:` commits all or nothing."""
        db = self._db

        class Transaction:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")
                return db

            def __exit__(self, kind, *rest):
                db.execute("ROLLBACK" if kind else "COMMIT")

        return Transaction()

    def _write(self, *statements) -> None:
        """Run (sql, params) pairs in one transaction; a failure is logged and kept for
        /health, never raised (the job goes on; only its record is behind)."""
        try:
            with self._transaction() as db:
                for sql, params in zip(statements[::2], statements[1::2]):
                    db.execute(sql, params)
        except (sqlite3.Error, OSError) as exc:
            self.error = f"the job journal {self.path} cannot be written ({exc})"
            log.error(self.error)


def _job(row: dict[str, Any]) -> Job:
    """A journal row as a Job."""
    job = Job(request=GenerationRequest.from_record(json.loads(row["request"])),
              seed=row["seed"], id=row["id"], state=JobState(row["state"]),
              client=row["client"], created_at=row["created_at"],
              started_at=row["started_at"], finished_at=row["finished_at"],
              error=row["error"], saved_path=row["saved_path"], kind=row["kind"],
              batch_id=row["batch_id"], batch_index=row["batch_index"],
              batch_size=row["batch_size"], attempts=row["attempts"], step=row["step"],
              total_steps=row["total_steps"] or 0)
    if job.state.finished:
        job.done.set()
    return job


def open_journal(settings) -> tuple[Journal | None, str | None]:
    """(the journal JOURNAL_PATH names, None) — (None, None) when it is empty; a path that
    cannot be opened at all (no permission, not a folder) gives (None, why): the queue then
    runs in memory only, and /health says so."""
    if not settings.journal_path:
        return None, None
    path = settings.path(settings.journal_path)
    try:
        return Journal(path), None
    except (OSError, sqlite3.Error) as exc:
        error = (f"the job journal {path} cannot be opened ({exc}): accepted jobs live in "
                 "memory only (lost on a restart); fix JOURNAL_PATH and restart")
        log.error(error)
        return None, error
