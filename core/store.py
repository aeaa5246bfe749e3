"""Results store: one SQLite row per measured variant, shared by the dashboard and the CLI.

The full `VariantRecord` is kept as JSON so that no field is ever lost; a few identity columns are
copied out beside it so that filters run in SQL. Each call opens its own connection, because
Streamlit runs scripts on several threads and a sqlite3 connection must not cross threads.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from core.records import VariantRecord

SCHEMA_VERSION = 1
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

_INSERT = """
INSERT INTO results (run_id, created_at, model, technique, family, hardware, device, record_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

# ISO-8601 UTC strings sort as text; id breaks ties between records of the same instant.
_NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"


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
            # WAL lets the dashboard read while a CLI sweep writes; the setting is stored in the file.
            conn.execute("PRAGMA journal_mode=WAL")

    @staticmethod
    def _create_schema_v1(conn: sqlite3.Connection) -> None:
        with conn:
            for statement in _SCHEMA_V1.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
