"""The job queue shared by the web server and the worker: one small SQLite file of its own (data/queue.sqlite).

The server only writes job specs (a kind and JSON arguments), stop flags and session heartbeats, and reads one
snapshot of the whole queue; the worker (core/launch/worker.py) claims jobs one at a time, in order, and writes their
progress into the job's row. Nothing here imports torch, so reading the queue costs a page almost nothing.
The queue is kept apart from the results store on purpose: it is machine-local scheduling state, the store is
shared results.

Order: the presenter's jobs go before every viewer's (priority 0 before 1), then first come, first served.
A job killed with its worker (SIGKILL, power cut) is marked `interrupted` when the next worker starts; what
it finished before is in the results store, and the jobs still waiting are run as before.

A job may carry the estimate its page showed before it was queued (`JobEstimate`): the panel counts down from that
figure, the ended job says "done in 1 min 35 s (estimated 1 min 01 s)", and the next estimate on the same machine
learns from how far off it was (core/experiments/estimate.py `learned_correction`).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from core.paths import data_dir

QUEUE_FILENAME = "queue.sqlite"
PRESENTER = "presenter"
MAX_WAITING = 12  # jobs waiting at once, all owners together
MAX_WAITING_PER_VIEWER = 1  # a viewer may have this many jobs waiting or running
SESSION_ALIVE_S = 45.0  # a browser session counts as connected if it checked in this recently
LEASE_S = 90.0  # an interactive run (the Arena) holds the machine at most this long without renewing

State = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    args_json TEXT NOT NULL,
    label TEXT NOT NULL,
    similar TEXT NOT NULL,          -- jobs with the same value take about as long (for the start estimate)
    owner TEXT NOT NULL,            -- "presenter" or "viewer 7": shown to everyone
    owner_session TEXT NOT NULL,    -- the browser session that queued it: only it (or the presenter) may cancel
    priority INTEGER NOT NULL,      -- 0 presenter, 1 viewer
    state TEXT NOT NULL,
    created_s REAL NOT NULL,
    started_s REAL,
    ended_s REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    fraction REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    log_json TEXT NOT NULL DEFAULT '[]',
    live_json TEXT NOT NULL DEFAULT 'null',
    error TEXT NOT NULL DEFAULT '',
    worker_pid INTEGER,
    estimated_s REAL,               -- the estimate shown before it was queued (NULL: none)
    uncorrected_s REAL,             -- the same before the learned correction: what the next correction learns from
    estimate_hardware TEXT NOT NULL DEFAULT '', -- the machine it was estimated for (hardware fingerprint)
    others_share REAL               -- what other processes used of all cores while it ran (NULL: not measured)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, priority, id);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE, -- "viewer 7"
    last_seen_s REAL NOT NULL,
    left_s REAL                     -- when the web server saw it disconnect (NULL: still connected or unknown)
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    until_s REAL NOT NULL
);
"""
# Columns added after queue files were first written, as (table, column, type): an older file gets them on open.
_ADDED_COLUMNS = (
    ("sessions", "left_s", "REAL"),
    ("jobs", "estimated_s", "REAL"),
    ("jobs", "uncorrected_s", "REAL"),
    ("jobs", "estimate_hardware", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "others_share", "REAL"),
)


GIVES_WAY = "prepare"  # the kind of the worker's idle preparation, which yields to any job and to the Arena


@dataclass(frozen=True)
class JobEstimate:
    """What the page estimated for a job before it was queued."""
    estimated_s: float | None  # the figure shown (with the learned correction); None: the page had none
    uncorrected_s: float | None  # before the correction: the next correction compares the time taken with this
    hardware: str  # the machine it was estimated for (hardware fingerprint)


class QueueFull(ValueError):
    """The queue, or this viewer's share of it, is full: the message says which and what to do."""


class NotAllowed(PermissionError):
    """This session may not do that (e.g. stop someone else's job)."""


@dataclass(frozen=True)
class QueuedJob:
    id: int
    kind: str
    args: dict
    label: str
    similar: str
    owner: str
    owner_session: str
    priority: int
    state: State
    created_s: float
    started_s: float | None
    ended_s: float | None
    stop_requested: bool
    fraction: float
    message: str
    log: tuple[str, ...]
    live: Any
    error: str
    worker_pid: int | None = None  # the worker that claimed it (its child process runs it)
    estimated_s: float | None = None  # the estimate shown before it was queued; None: its page had none
    uncorrected_s: float | None = None
    estimate_hardware: str = ""
    others_share: float | None = None  # other processes' share of all cores while it ran: a busy run teaches no estimate

    @property
    def elapsed_s(self) -> float:
        """Wall seconds from its start to its end (to now while it runs): for an ended job, the time it took."""
        if self.started_s is None:
            return 0.0
        return (self.ended_s or time.time()) - self.started_s


@dataclass(frozen=True)
class Waiting:
    job: QueuedJob
    position: int  # 1 = next to start
    starts_in_s: float | None  # None: no similar job has finished yet, so no honest estimate


@dataclass(frozen=True)
class QueueSnapshot:
    """Everything a page draws about the queue, read in one go and shared by every session."""
    running: QueuedJob | None
    running_left_s: float | None
    waiting: tuple[Waiting, ...]
    recent: tuple[QueuedJob, ...]  # ended, newest first
    sessions_connected: int
    read_at_s: float
    running_expected_s: float | None = None  # how long the running job should take in all; None: nothing to go on


def queue_path() -> Path:
    return data_dir() / QUEUE_FILENAME


def _row_to_job(row: sqlite3.Row) -> QueuedJob:
    return QueuedJob(
        id=row["id"], kind=row["kind"], args=json.loads(row["args_json"]), label=row["label"], similar=row["similar"],
        owner=row["owner"], owner_session=row["owner_session"], priority=row["priority"], state=row["state"],
        created_s=row["created_s"], started_s=row["started_s"], ended_s=row["ended_s"],
        stop_requested=bool(row["stop_requested"]), fraction=row["fraction"], message=row["message"],
        log=tuple(json.loads(row["log_json"])), live=json.loads(row["live_json"]), error=row["error"],
        worker_pid=row["worker_pid"], estimated_s=row["estimated_s"], uncorrected_s=row["uncorrected_s"],
        estimate_hardware=row["estimate_hardware"], others_share=row["others_share"])


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    have = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in {t for t, _, _ in _ADDED_COLUMNS}}
    return [(t, c, kind) for t, c, kind in _ADDED_COLUMNS if c not in have[t]]


class JobQueue:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else queue_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers (pages) never wait for the worker's writes
            conn.executescript(_SCHEMA)
            missing = _missing_columns(conn)
        if missing:  # a queue file from before these columns: add them, its jobs and sessions stay as they are
            with self._write() as conn:  # checked again under the lock: two processes may open it at once
                for table, column, kind in _missing_columns(conn):
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: Streamlit runs sessions on many threads, and a connection must not cross them.
        with closing(sqlite3.connect(self.path, timeout=30.0, isolation_level=None)) as conn:
            conn.row_factory = sqlite3.Row
            # WAL + NORMAL: a commit is a write, not an fsync; a killed process loses nothing, a power cut at
            # most the last progress update. Keeps the worker's progress writes off the disk's critical path.
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: checks and writes see the same queue (two sessions cannot both take the last place)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # --- the server's side -----------------------------------------------------------------------

    def submit(self, kind: str, args: dict, label: str, similar: str, owner: str, owner_session: str,
               estimate: JobEstimate | None = None) -> int:
        """Queue a job (with the estimate its page showed, if any); refuse with a clear message when the queue or
        this viewer's share is full."""
        presenter = owner == PRESENTER
        with self._write() as conn:
            waiting = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= MAX_WAITING and not presenter:
                raise QueueFull(f"The queue is full ({MAX_WAITING} jobs waiting). Try again when some have run.")
            mine = conn.execute("SELECT COUNT(*) FROM jobs WHERE owner_session = ? AND state IN ('queued', 'running')",
                                (owner_session,)).fetchone()[0]
            if not presenter and mine >= MAX_WAITING_PER_VIEWER:
                raise QueueFull(f"You already have {mine} job in the queue; each viewer may have "
                                f"{MAX_WAITING_PER_VIEWER} at a time. Cancel it or wait for it to finish.")
            cursor = conn.execute(
                "INSERT INTO jobs (kind, args_json, label, similar, owner, owner_session, priority, state, created_s, "
                "estimated_s, uncorrected_s, estimate_hardware) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (kind, json.dumps(args), label, similar, owner, owner_session, 0 if presenter else 1, time.time(),
                 *_estimate_values(estimate)))
            return int(cursor.lastrowid)

    def record_ended(self, kind: str, args: dict, label: str, similar: str, owner: str, started_s: float,
                     ended_s: float, estimate: JobEstimate | None) -> int:
        """Enter a job that ran outside the queue (a CLI sweep a benchmark timed) as done, so that the next estimate
        learns from its time as from a dashboard job's."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO jobs (kind, args_json, label, similar, owner, owner_session, priority, state, created_s, "
                "started_s, ended_s, fraction, message, estimated_s, uncorrected_s, estimate_hardware) "
                "VALUES (?, ?, ?, ?, ?, 'cli', 0, 'done', ?, ?, ?, 1.0, 'ran outside the queue', ?, ?, ?)",
                (kind, json.dumps(args), label, similar, owner, started_s, started_s, ended_s,
                 *_estimate_values(estimate)))
            return int(cursor.lastrowid)

    def estimated_jobs(self, kind: str, hardware: str, limit: int = 5) -> list[QueuedJob]:
        """The last `limit` jobs of `kind` that ended done on `hardware` with an estimate, newest first: how
        far the estimates here were off. Stopped or failed jobs say nothing about how long a whole job takes."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE kind = ? AND state = 'done' AND estimate_hardware = ? "
                                "AND uncorrected_s > 0 AND started_s IS NOT NULL ORDER BY ended_s DESC LIMIT ?",
                                (kind, hardware, limit)).fetchall()
        return [_row_to_job(r) for r in rows]

    def finished_here(self, kind: str, hardware: str, limit: int = 20) -> list[QueuedJob]:
        """The last `limit` jobs of `kind` that ended done on `hardware`, newest first, with or without an
        estimate: what the next estimate of that kind learns from (core/launch/estimates.py)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE kind = ? AND state = 'done' AND estimate_hardware = ? "
                                "AND started_s IS NOT NULL ORDER BY ended_s DESC LIMIT ?",
                                (kind, hardware, limit)).fetchall()
        return [_row_to_job(r) for r in rows]

    def stop(self, job_id: int, session: str, presenter: bool) -> None:
        """Presenter: stop or dequeue any job. Viewer: dequeue its own waiting job, nothing else."""
        with self._write() as conn:
            row = conn.execute("SELECT state, owner_session FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] not in ACTIVE:
                return  # already ended: nothing to stop
            if not presenter and (row["owner_session"] != session or row["state"] != "queued"):
                raise NotAllowed("Only the presenter can stop a running job or someone else's job.")
            if row["state"] == "queued":
                conn.execute("UPDATE jobs SET state = 'cancelled', ended_s = ?, error = 'removed from the queue' "
                             "WHERE id = ?", (time.time(), job_id))
            else:  # the worker sees the flag through the job's should_stop() and ends it, keeping what finished
                conn.execute("UPDATE jobs SET stop_requested = 1 WHERE id = ?", (job_id,))

    def job(self, job_id: int) -> QueuedJob | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def snapshot(self, recent: int = 5) -> QueueSnapshot:
        now = time.time()
        with self._connect() as conn:
            running = conn.execute("SELECT * FROM jobs WHERE state = 'running' ORDER BY started_s LIMIT 1").fetchone()
            queued = conn.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority, id").fetchall()
            ended = conn.execute("SELECT * FROM jobs WHERE state NOT IN ('queued', 'running') "
                                 "ORDER BY ended_s DESC LIMIT ?", (recent,)).fetchall()
            durations = self._durations(conn)
            sessions = conn.execute("SELECT COUNT(*) FROM sessions WHERE last_seen_s > ? AND left_s IS NULL",
                                    (now - SESSION_ALIVE_S,)).fetchone()[0]
        run = _row_to_job(running) if running else None
        expected = _expected_s(run, durations) if run is not None else None
        left = None if run is None else time_left_s(run.elapsed_s, expected, run.fraction)
        waiting, clock = [], left if run is not None else 0.0
        for position, row in enumerate(queued, start=1):
            job = _row_to_job(row)
            waiting.append(Waiting(job, position, clock))
            typical = _expected_s(job, durations) or durations.get(job.kind)
            clock = None if clock is None or typical is None else clock + typical
        return QueueSnapshot(run, left, tuple(waiting), tuple(_row_to_job(r) for r in ended), sessions, now, expected)

    @staticmethod
    def _durations(conn: sqlite3.Connection) -> dict[str, float]:
        """Median measured run time of finished jobs, by `similar` key and by kind (the fallback)."""
        rows = conn.execute("SELECT kind, similar, ended_s - started_s FROM jobs WHERE state = 'done' "
                            "ORDER BY id DESC LIMIT 500").fetchall()
        by: dict[str, list[float]] = {}
        for kind, similar, seconds in rows:
            by.setdefault(similar, []).append(seconds)
            by.setdefault(kind, []).append(seconds)
        return {k: statistics.median(v) for k, v in by.items()}

    # --- sessions and the Arena's lease ------------------------------------------------------------

    def heartbeat(self, session: str) -> int:
        """Note that a browser session is connected; returns its viewer number (stable for the session)."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT number FROM sessions WHERE session_id = ?", (session,)).fetchone()
            if row:
                conn.execute("UPDATE sessions SET last_seen_s = ?, left_s = NULL WHERE session_id = ?", (now, session))
                return int(row["number"])
            number = conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM sessions").fetchone()[0]
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?, NULL)", (session, number, now))
            return int(number)

    def open_sessions(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT session_id FROM sessions WHERE left_s IS NULL AND last_seen_s > ?",
                                               (time.time() - SESSION_ALIVE_S,))]

    def mark_left(self, sessions: list[str]) -> None:
        """The web server knows which sessions closed (a tab shut, a page reloaded): they stop counting at once."""
        if sessions:
            with self._write() as conn:
                conn.executemany("UPDATE sessions SET left_s = ? WHERE session_id = ? AND left_s IS NULL",
                                 [(time.time(), s) for s in sessions])

    def sessions_connected(self, since_s: float | None = None) -> int:
        """Sessions connected at some moment since `since_s` (default: now): seen lately and not known to have left."""
        now = time.time()
        since = now if since_s is None else since_s
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM sessions WHERE last_seen_s > ? AND (left_s IS NULL OR left_s > ?)",
                                (since - SESSION_ALIVE_S, since)).fetchone()[0]

    def hold(self, name: str, seconds: float = LEASE_S) -> bool:
        """Take (or renew) the machine for an interactive run; False if a job is running (the worker's own idle
        preparation gives way instead). The worker starts nothing while a lease is held, and a lease expires by
        itself if its holder dies."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE state = 'running' AND kind != ?", (GIVES_WAY,)).fetchone():
                return False
            if conn.execute("SELECT 1 FROM leases WHERE name != ? AND until_s > ?", (name, time.time())).fetchone():
                return False  # another interactive run: two at once would disturb each other's timings
            conn.execute("INSERT INTO leases VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET until_s = excluded.until_s",
                         (name, time.time() + seconds))
            return True

    def leased(self) -> bool:  # whether an interactive run holds the machine now
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM leases WHERE until_s > ?", (time.time(),)).fetchone() is not None

    def release(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE name = ?", (name,))

    # --- the worker's side -------------------------------------------------------------------------

    def claim(self, worker_pid: int) -> QueuedJob | None:
        """The next job in order, marked running; None when nothing waits or an interactive run holds the machine."""
        now = time.time()
        with self._connect() as conn:  # a plain read first: an idle worker polls without taking the write lock
            if not conn.execute("SELECT 1 FROM jobs WHERE state = 'queued' LIMIT 1").fetchone():
                return None
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM leases WHERE until_s > ?", (now,)).fetchone():
                return None
            row = conn.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority, id LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET state = 'running', started_s = ?, worker_pid = ?, message = 'starting' "
                         "WHERE id = ?", (now, worker_pid, row["id"]))
        return self.job(row["id"])

    def progress(self, job_id: int, fraction: float, message: str, log: list[str], live: Any = None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE jobs SET fraction = MAX(fraction, ?), message = ?, log_json = ?, live_json = ? "
                         "WHERE id = ?", (min(1.0, fraction), message, json.dumps(log[-50:]), json.dumps(live), job_id))

    def stop_requested(self, job_id: int) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT stop_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def note_others(self, job_id: int, share: float | None) -> None:
        """What other processes used of the machine while the job ran (the worker measures it around the job)."""
        with self._write() as conn:
            conn.execute("UPDATE jobs SET others_share = ? WHERE id = ?", (share, job_id))

    def finish(self, job_id: int, state: State, error: str = "") -> None:
        with self._write() as conn:
            conn.execute("UPDATE jobs SET state = ?, error = ?, ended_s = ?, "
                         "fraction = CASE WHEN ? = 'done' THEN 1.0 ELSE fraction END WHERE id = ?",
                         (state, error, time.time(), state, job_id))

    def recover(self) -> list[int]:
        """At worker start: jobs left 'running' by a dead worker are marked interrupted (the ids are returned)."""
        with self._write() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            conn.execute("UPDATE jobs SET state = 'interrupted', ended_s = ?, error = 'the worker stopped in the "
                         "middle of this job (killed or crashed); everything it finished before is in the results "
                         "store, the rest was not saved. Queue it again to finish it.' WHERE state = 'running'",
                         (time.time(),))
        return ids


def _estimate_values(estimate: JobEstimate | None) -> tuple:
    if estimate is None:
        return None, None, ""
    return estimate.estimated_s, estimate.uncorrected_s, estimate.hardware


def _expected_s(job: QueuedJob, durations: dict[str, float]) -> float | None:
    """How long a job should take in all: the estimate its page showed (so the panel never contradicts the figure
    its owner saw before pressing the button), else the median of similar jobs that finished."""
    return job.estimated_s if job.estimated_s is not None else durations.get(job.similar)


def share_left_s(elapsed_s: float, fraction: float) -> float | None:
    """Seconds left if the rest goes at the pace so far; None until there is something to go on (5% done)."""
    if not 0.05 <= fraction < 1.0:
        return None
    return elapsed_s * (1 - fraction) / fraction


def time_left_s(elapsed_s: float, expected_s: float | None, fraction: float) -> float | None:
    """Seconds left for a running job: the expected total less the time so far; once past it (or with no expected
    total), the pace of the share done so far, never a count stuck at 0."""
    if expected_s is not None and elapsed_s < expected_s:
        return expected_s - elapsed_s
    return share_left_s(elapsed_s, fraction)
