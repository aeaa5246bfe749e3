"""Results store: one SQLite row per measured variant, shared by the dashboard and the CLI.

The full `VariantRecord` is kept as JSON so that no field is ever lost; a few identity columns are
copied out beside it so that filters run in SQL. Each call opens its own connection, because
Streamlit runs scripts on several threads and a sqlite3 connection must not cross threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from core.records import ServingRecord, VariantRecord

SCHEMA_VERSION = 3  # 1: results; 2: + votes (the arena's blind votes); 3: + serving (load benchmark points)
DATA_DIR_ENV = "LAB_DATA_DIR"
STORE_FILENAME = "results.sqlite"
BUSY_TIMEOUT_S = 30.0  # a second writer waits this long for the first instead of failing at once
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    run_id TEXT,
    created_at TEXT,
    model TEXT,
    technique TEXT,
    family TEXT,
    hardware TEXT,
    device TEXT,
    record_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_model_hardware ON results (model, hardware, created_at);
CREATE INDEX IF NOT EXISTS results_run ON results (run_id);
"""

# Schema 2 adds the arena's blind votes. One row per (model, prompt, pair, session): a viewer who votes
# again on the same answers replaces their vote instead of adding one, so a tally cannot be stuffed.
# variant_a < variant_b (technique keys, sorted) so that (a, b) and (b, a) are the same pair.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    prompt TEXT NOT NULL,
    variant_a TEXT NOT NULL,
    variant_b TEXT NOT NULL,
    winner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    CHECK (variant_a < variant_b),
    CHECK (winner IN (variant_a, variant_b, '')),
    UNIQUE (model, prompt_sha256, variant_a, variant_b, session_id)
);
CREATE INDEX IF NOT EXISTS votes_model ON votes (model);
"""

# Schema 3 adds load-benchmark points (ServingRecord), one row each. record_id is the record's own identity:
# a retried write of the same point is refused by UNIQUE instead of counted twice.
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS serving (
    id INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    run_id TEXT,
    created_at TEXT,
    model TEXT,
    technique TEXT,
    runtime TEXT,
    hardware TEXT,
    device TEXT,
    record_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS serving_model_hardware ON serving (model, hardware, created_at);
"""

_INSERT_SERVING = """
INSERT INTO serving (record_id, run_id, created_at, model, technique, runtime, hardware, device, record_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (record_id) DO NOTHING
"""

_UPSERT_VOTE = """
INSERT INTO votes (created_at, model, prompt_sha256, prompt, variant_a, variant_b, winner, session_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (model, prompt_sha256, variant_a, variant_b, session_id)
DO UPDATE SET winner = excluded.winner, created_at = excluded.created_at
"""

_INSERT = """
INSERT INTO results (run_id, created_at, model, technique, family, hardware, device, record_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

# ISO-8601 UTC strings sort as text; id breaks ties between records of the same instant.
_NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"


@dataclass(frozen=True)
class Tally:
    """Blind-vote results of one variant, over every pair it was shown in."""
    technique: str
    wins: int
    losses: int
    ties: int

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        """Wins over decided votes (ties left out); NaN before any decided vote."""
        decided = self.wins + self.losses
        return self.wins / decided if decided else float("nan")


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class StoreError(ValueError):
    """The file at the store's path cannot be used as a results store."""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where results live: $LAB_DATA_DIR if set, else <repo root>/data; created on demand."""
    configured = os.environ.get(DATA_DIR_ENV)
    path = Path(configured).expanduser() if configured else repo_root() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_store_path() -> Path:
    return data_dir() / STORE_FILENAME


def _record_row(record: VariantRecord) -> tuple[str, ...]:
    return (
        record.run_id, record.created_at, record.model, record.technique, record.family,
        record.hardware, record.device, json.dumps(record.to_dict()),
    )


def _rows_to_records(rows: Iterable[tuple[str]]) -> list[VariantRecord]:
    return [VariantRecord.from_dict(json.loads(row[0])) for row in rows]


def _filters(**columns: str | None) -> tuple[str, list[str]]:
    """A WHERE clause over the columns given a value (None means: do not filter on it)."""
    wanted = {name: value for name, value in columns.items() if value is not None}
    if not wanted:
        return "", []
    return "WHERE " + " AND ".join(f"{name} = ?" for name in wanted), list(wanted.values())


class ResultStore:
    def __init__(self, path: str | os.PathLike[str] | None = None, timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path) if path is not None else default_store_path()
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._refuse_foreign_file()
        self._ensure_schema()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # --- connection and schema -------------------------------------------------------------------

    def _unusable(self, why: str) -> StoreError:
        return StoreError(
            f"{self.path} {why}. Nothing was written to it. Move it away (or point {DATA_DIR_ENV} "
            "at another folder) and a fresh results store will be created."
        )

    def _refuse_foreign_file(self) -> None:
        # Check the header ourselves before sqlite3 touches the file: a stray file must never be
        # turned into a database or have journal files written beside it.
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise self._unusable("is a folder, not a results file")
        with self.path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise self._unusable("is not an SQLite database (it may be corrupt)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=self.timeout_s)) as conn:
                yield conn
        except sqlite3.DatabaseError as error:
            # Plain DatabaseError means a damaged file ("file is not a database", "malformed");
            # its subclasses (locked, constraint) are ordinary errors and pass through unchanged.
            if type(error) is sqlite3.DatabaseError:
                raise self._unusable(f"cannot be read as a results store ({error})") from error
            raise

    def _ensure_schema(self) -> None:
        with self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise self._unusable(
                    f"was written by a newer version of this app (schema {version}, this one reads {SCHEMA_VERSION})"
                )
            if version == 0:
                tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
                if tables:
                    raise self._unusable(
                        f"is an SQLite database of something else (tables: {sorted(t[0] for t in tables)})"
                    )
                self._create_schema_v1(conn)
                version = 1
            if version == 1:
                self._migrate_v1_to_v2(conn)
                version = 2
            if version == 2:
                self._migrate_v2_to_v3(conn)
            # WAL lets the dashboard read while a CLI sweep writes; the setting is stored in the file.
            conn.execute("PRAGMA journal_mode=WAL")

    @staticmethod
    def _create_schema_v1(conn: sqlite3.Connection) -> None:
        with conn:
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("PRAGMA user_version = 1")

    @staticmethod
    def _migrate_v1_to_v2(conn: sqlite3.Connection) -> None:
        # Additive: a new table, results untouched. IF NOT EXISTS makes a race between two openers harmless.
        with conn:
            for statement in _SCHEMA_V2.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("PRAGMA user_version = 2")

    @staticmethod
    def _migrate_v2_to_v3(conn: sqlite3.Connection) -> None:
        # Additive like v1 -> v2: results and votes untouched.
        with conn:
            for statement in _SCHEMA_V3.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("PRAGMA user_version = 3")

    # --- writes ----------------------------------------------------------------------------------

    def add(self, record: VariantRecord) -> int:
        """Store one record; returns its row id."""
        with self._connect() as conn, conn:
            return conn.execute(_INSERT, _record_row(record)).lastrowid

    def add_many(self, records: Iterable[VariantRecord]) -> list[int]:
        """Store several records in one transaction: all of them or none."""
        with self._connect() as conn, conn:
            return [conn.execute(_INSERT, _record_row(record)).lastrowid for record in records]

    def delete_run(self, run_id: str) -> int:
        """Delete every record of one sweep; returns how many were deleted."""
        with self._connect() as conn, conn:
            return conn.execute("DELETE FROM results WHERE run_id = ?", (run_id,)).rowcount

    def clear(self) -> None:
        with self._connect() as conn, conn:
            conn.execute("DELETE FROM results")

    # --- reads -----------------------------------------------------------------------------------

    def all(self, model: str | None = None, hardware: str | None = None) -> list[VariantRecord]:
        """Records, newest first, optionally only those of one model and/or one machine."""
        where, params = _filters(model=model, hardware=hardware)
        with self._connect() as conn:
            rows = conn.execute(f"SELECT record_json FROM results {where} {_NEWEST_FIRST}", params)
            return _rows_to_records(rows)

    def latest_per_technique(self, model: str, hardware: str) -> list[VariantRecord]:
        """For each technique, its newest record on this model and machine; newest first."""
        latest: dict[str, VariantRecord] = {}
        for record in self.all(model=model, hardware=hardware):
            latest.setdefault(record.technique, record)
        return list(latest.values())

    def hardware_seen(self, model: str | None = None) -> list[str]:
        where, params = _filters(model=model)
        with self._connect() as conn:
            rows = conn.execute(f"SELECT DISTINCT hardware FROM results {where} ORDER BY hardware", params)
            return [row[0] for row in rows]

    def models_seen(self) -> list[str]:
        with self._connect() as conn:
            return [row[0] for row in conn.execute("SELECT DISTINCT model FROM results ORDER BY model")]

    # --- load benchmark points (serving) ---------------------------------------------------------

    def add_serving(self, record: ServingRecord) -> None:
        """Store one load-benchmark point; writing the same record (same record_id) again changes nothing."""
        row = (record.record_id, record.run_id, record.created_at, record.model, record.technique, record.runtime,
               record.hardware, record.device, json.dumps(record.to_dict()))
        with self._connect() as conn, conn:
            conn.execute(_INSERT_SERVING, row)

    def serving(self, model: str | None = None, hardware: str | None = None) -> list[ServingRecord]:
        """Load-benchmark points, newest first, optionally of one model and/or one machine."""
        where, params = _filters(model=model, hardware=hardware)
        with self._connect() as conn:
            rows = conn.execute(f"SELECT record_json FROM serving {where} {_NEWEST_FIRST}", params)
            return [ServingRecord.from_dict(json.loads(row[0])) for row in rows]

    # --- blind votes (arena) ---------------------------------------------------------------------

    def add_vote(self, model: str, prompt: str, pair: tuple[str, str], winner: str | None, session_id: str) -> None:
        """Record one viewer's verdict on one pair of answers to one prompt; winner None means a tie.

        Voting again on the same (model, prompt, pair, session) replaces the earlier vote.
        """
        a, b = sorted(pair)
        if a == b:
            raise ValueError(f"a vote needs two different variants, got {pair!r}")
        if winner is not None and winner not in (a, b):
            raise ValueError(f"winner must be one of {a!r}, {b!r} or None (a tie), got {winner!r}")
        if not session_id:
            raise ValueError("session_id must not be empty")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._connect() as conn, conn:
            conn.execute(_UPSERT_VOTE, (now, model, prompt_sha256(prompt), prompt, a, b, winner or "", session_id))

    def tally(self, model: str | None = None, prompt: str | None = None) -> list[Tally]:
        """Wins, losses and ties per variant, most wins first, optionally for one model and/or one prompt."""
        where, params = _filters(model=model, prompt_sha256=prompt_sha256(prompt) if prompt is not None else None)
        with self._connect() as conn:
            rows = conn.execute(f"SELECT variant_a, variant_b, winner FROM votes {where}", params).fetchall()
        counts: dict[str, list[int]] = {}
        for a, b, winner in rows:
            for me in (a, b):
                wins_losses_ties = counts.setdefault(me, [0, 0, 0])
                wins_losses_ties[2 if winner == "" else 0 if winner == me else 1] += 1
        tallies = [Tally(k, *v) for k, v in counts.items()]
        return sorted(tallies, key=lambda t: (-t.wins, t.losses, t.technique))
