"""The job history: one SQLite file (standard library) in the outputs folder, next to the PNGs.

Every status change is committed at once, so a server that dies loses nothing it had accepted:
on the next start :meth:`JobStore.recover` marks the jobs that were running as failed (their
pictures were never finished) and hands back the queued ones to run again, in submission order.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = frozenset({DONE, FAILED, CANCELLED})
DIED = "the server stopped while this job was running"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT UNIQUE NOT NULL,
    status   TEXT NOT NULL,
    params   TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    images   TEXT NOT NULL DEFAULT '[]',
    error    TEXT,
    device   TEXT,
    created  REAL NOT NULL,
    started  REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""


@dataclasses.dataclass
class Job:
    """One request to generate: its resolved parameters and what became of it.

    ``images`` holds one ``{"file", "parameters"}`` per finished picture (the PNG's name in the
    outputs folder and the A1111 ``parameters`` text written into it).
    """

    id: str
    params: dict[str, Any]
    status: str = QUEUED
    progress: float = 0.0
    images: list[dict[str, str]] = dataclasses.field(default_factory=list)
    error: str | None = None
    device: str | None = None
    created: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    seq: int | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False, compare=False)


class JobStore:
    """Thread-safe access to the history file (one connection behind a lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ writing
    def insert(self, job: Job) -> None:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (id, status, params, progress, images, error, device, created, started, finished)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.status, json.dumps(job.params), job.progress, json.dumps(job.images), job.error,
                 job.device, job.created, job.started, job.finished))
            job.seq = cur.lastrowid

    def update(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status=?, progress=?, images=?, error=?, device=?, started=?, finished=? WHERE id=?",
                (job.status, job.progress, json.dumps(job.images), job.error, job.device, job.started,
                 job.finished, job.id))

    def recover(self) -> list[Job]:
        """Mark jobs left running by a dead server failed; return the queued ones, oldest first."""
        with self._lock:
            self._db.execute("UPDATE jobs SET status=?, error=?, finished=? WHERE status=?",
                             (FAILED, DIED, time.time(), RUNNING))
        return self._select("WHERE status=? ORDER BY seq", (QUEUED,))

    # ------------------------------------------------------------ reading
    def _select(self, where: str, args: tuple) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, status, params, progress, images, error, device, created, started, finished, seq "
                f"FROM jobs {where}", args).fetchall()
        return [Job(id=r[0], status=r[1], params=json.loads(r[2]), progress=r[3], images=json.loads(r[4]),
                    error=r[5], device=r[6], created=r[7], started=r[8], finished=r[9], seq=r[10]) for r in rows]

    def get(self, job_id: str) -> Job | None:
        found = self._select("WHERE id=?", (job_id,))
        return found[0] if found else None

    def page(self, offset: int, limit: int, status: str | None = None) -> tuple[list[Job], int]:
        """Jobs newest first, and how many there are in all."""
        where, args = ("WHERE status=?", (status,)) if status else ("", ())
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
        return self._select(f"{where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*args, limit, offset)), total
