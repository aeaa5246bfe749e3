"""The results store: one row per measured variant, behind one URL (the embedded SQLite file by default,
or a shared PostgreSQL for a team).

One row per measured variant. The full record is kept as JSON, so no field is ever lost, and a few
identity columns are copied out beside it so that filters run in SQL. Every record carries its own id
(a UNIQUE column): writing the same record twice, as a retried write does, leaves one row.

The schema is versioned with Alembic (core/store/migrations/); opening a store migrates it forward, after
writing a backup copy of an SQLite file. A store written by a newer version of this code is refused
with nothing written. SQLite connections are opened per call (NullPool) because Streamlit runs scripts
on several threads and a sqlite3 connection must not cross threads; PostgreSQL engines are pooled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from core.paths import DATA_DIR_ENV
from core.store.migrations import VERSION_TABLE
from core.store.parsed import ParsedRecords
from core.store.records import ServingRecord, VariantRecord
from core.store.schema import OUR_TABLES, RESULTS, SCHEMA_VERSION, SERVING, VOTES
from core.store.urls import STORE_URL_ENV, StoreError, configured_url, mask, parse_url, pg_engine, sqlite_engine

BUSY_TIMEOUT_S = 30.0  # a second writer waits this long for the first instead of failing at once
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK_ID = 0x1AB5_7031  # pg_advisory_xact_lock key: two first openers of one database take turns
_VOTE_KEY = ["model", "prompt_sha256", "variant_a", "variant_b", "session_id"]
_IDS_PER_QUERY = 500  # stays under SQLite's bound-parameter limit


_parsed = ParsedRecords()
_stored_here = [0]  # rows this process stored (records and serving points): what an interrupted command kept


def stored_by_this_process() -> int:
    return _stored_here[0]


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


def _record_row(record: VariantRecord) -> dict[str, str]:
    return dict(record_id=record.record_id, run_id=record.run_id, created_at=record.created_at, model=record.model,
                technique=record.technique, family=record.family, hardware=record.hardware, device=record.device,
                record_json=json.dumps(record.to_dict()))


def _serving_row(record: ServingRecord) -> dict[str, str]:
    return dict(record_id=record.record_id, run_id=record.run_id, created_at=record.created_at, model=record.model,
                technique=record.technique, runtime=record.runtime, hardware=record.hardware, device=record.device,
                record_json=json.dumps(record.to_dict()))


def _where(table: sa.Table, **columns: str | None) -> list:
    """Equality filters over the columns given a value (None means: do not filter on it)."""
    return [table.c[name] == value for name, value in columns.items() if value is not None]


def _newest_first(table: sa.Table) -> tuple:
    # ISO-8601 UTC strings sort as text; id breaks ties between records of the same instant.
    return table.c.created_at.desc(), table.c.id.desc()


class ResultStore:
    def __init__(self, path: str | os.PathLike[str] | None = None, timeout_s: float = BUSY_TIMEOUT_S,
                 *, url: str | None = None):
        """ResultStore(path): that SQLite file. ResultStore(): $LAB_STORE_URL, else the default SQLite file."""
        self.url = parse_url(url if url is not None else path if path is not None else configured_url())
        self.timeout_s = timeout_s
        self.backend = self.url.get_backend_name()
        if self.backend == "sqlite":
            self.path: Path | None = Path(self.url.database)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._refuse_foreign_file()
            self.engine = sqlite_engine(self.path, timeout_s)
        else:
            self.path = None
            self.engine = pg_engine(self.url)
        self._ensure_schema()

    @classmethod
    def from_url(cls, url: str | None = None, timeout_s: float = BUSY_TIMEOUT_S) -> "ResultStore":
        """The store at `url` (postgresql://..., sqlite:///..., or a file path); None: the configured one."""
        return cls(url=url or configured_url(), timeout_s=timeout_s)

    def describe(self) -> str:
        """Which store this is, safe to show: the URL with any password masked."""
        return mask(self.url)

    def __repr__(self) -> str:
        return f"ResultStore({self.describe()!r})"

    # --- connections and errors ------------------------------------------------------------------

    def _unusable(self, why: str) -> StoreError:
        if self.path is not None:
            return StoreError(
                f"{self.path} {why}. Nothing was written to it. Move it away (or point {DATA_DIR_ENV} "
                "at another folder) and a fresh results store will be created."
            )
        return StoreError(f"The results store {self.describe()} {why}. Nothing was written to it. "
                          f"Point {STORE_URL_ENV} (or --store) at another database.")

    def _scrub(self, text: str) -> str:
        password = self.url.password
        return text.replace(password, "***") if password else text

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

    def recheck(self) -> None:
        """Raise StoreError if the SQLite file was replaced by one that is not a results store since it was opened
        (a long-lived opener, such as the web server, checks this before each use)."""
        if self.path is not None:
            self._refuse_foreign_file()

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as error:
            orig = error.orig
            # Plain sqlite3.DatabaseError means a damaged file ("file is not a database", "malformed");
            # its subclasses (locked, constraint) are ordinary errors and pass through unchanged.
            if self.backend == "sqlite" and type(orig) is sqlite3.DatabaseError:
                raise self._unusable(f"cannot be read as a results store ({orig})") from None
            if self.backend != "sqlite" and isinstance(error, sa.exc.OperationalError):
                reason = self._scrub(str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__)
                raise StoreError(
                    f"Cannot use the results store {self.describe()}: {reason}. Nothing was written. "
                    f"Check the host, port, database, user and password in {STORE_URL_ENV} (or --store), "
                    "and that the server accepts connections from this machine."
                ) from None
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._translated_errors(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back (nothing written) if it raises."""
        with self._translated_errors(), self.engine.connect() as conn:
            conn.execution_options(lab_write=True)
            with conn.begin():
                yield conn

    def _insert(self, table: sa.Table):
        return (pg_insert if self.backend == "postgresql" else sqlite_insert)(table)

    # --- schema ----------------------------------------------------------------------------------

    def _version(self, conn: Connection) -> tuple[int | str, set[str]]:
        """(schema version, table names): 0 for an empty store; a string for a revision this code does not know."""
        tables = set(sa.inspect(conn).get_table_names())
        if VERSION_TABLE in tables:
            revision = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            if revision is None:
                return 0, tables
            return int(revision) if revision.isdigit() else revision, tables
        if self.backend == "sqlite":  # stores from before Alembic kept their version here
            return conn.exec_driver_sql("PRAGMA user_version").scalar(), tables
        return 0, tables

    def _check_version(self, version: int | str, tables: set[str]) -> None:
        if isinstance(version, str) or version > SCHEMA_VERSION:
            raise self._unusable(
                f"was written by a newer version of this app (schema {version}, this one reads {SCHEMA_VERSION})")
        if version == 0:
            if self.backend == "sqlite" and tables:
                raise self._unusable(f"is an SQLite database of something else (tables: {sorted(tables)})")
            if tables & OUR_TABLES:  # a shared server may hold other apps' tables, but not ones named like ours
                raise self._unusable(f"holds tables named {sorted(tables & OUR_TABLES)} without a schema version, "
                                     "so they were not made by this app")

    def _ensure_schema(self) -> None:
        with self._read() as conn:
            version, tables = self._version(conn)
        self._check_version(version, tables)
        if version == SCHEMA_VERSION and VERSION_TABLE in tables:
            return
        if self.backend == "sqlite" and 0 < version < SCHEMA_VERSION:
            self.backup(f"v{version}")
        self._migrate()
        if self.backend == "sqlite":
            self._use_wal()

    def _use_wal(self) -> None:
        # WAL lets the dashboard read while a sweep writes; the setting is stored in the file. Switching
        # needs the file to itself and SQLite does not always wait for that, so another opener's brief
        # read can refuse it: try again until the busy timeout.
        deadline = time.monotonic() + self.timeout_s
        with closing(self.engine.raw_connection()) as raw:
            while True:
                try:
                    raw.driver_connection.execute("PRAGMA journal_mode=WAL")
                    return
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def _migrate(self) -> None:

        with self._write() as conn:
            if self.backend == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_ID})
            version, tables = self._version(conn)  # again, under the lock: another opener may have migrated
            self._check_version(version, tables)
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            if version and VERSION_TABLE not in tables:  # an SQLite store from before Alembic
                command.stamp(config, f"{version:04d}")
            command.upgrade(config, "head")

    def backup(self, tag: str) -> Path:
        """A consistent copy of the SQLite file beside it (results.sqlite.bak-<tag>), never over an older one."""
        target = self.path.with_name(f"{self.path.name}.bak-{tag}")
        if target.exists():
            target = self.path.with_name(f"{target.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}")
        with closing(sqlite3.connect(self.path, timeout=self.timeout_s)) as src, closing(sqlite3.connect(target)) as dst:
            src.backup(dst)  # the backup API copies committed pages, WAL included
        return target

    # --- writes ----------------------------------------------------------------------------------

    def _put(self, conn: Connection, table: sa.Table, row: dict[str, str]) -> int:
        # A record already stored (same record_id) is left as it is: a retried write is a no-op.
        inserted = conn.execute(self._insert(table).values(**row).on_conflict_do_nothing(index_elements=["record_id"])
                                .returning(table.c.id)).scalar()
        if inserted is not None:
            return inserted
        return conn.execute(sa.select(table.c.id).where(table.c.record_id == row["record_id"])).scalar_one()

    def add(self, record: VariantRecord) -> int:
        """Store one record; returns its row id (the existing row's if this record_id is already stored)."""
        with self._write() as conn:
            row = self._put(conn, RESULTS, _record_row(record))
        _stored_here[0] += 1
        return row

    def add_many(self, records: Iterable[VariantRecord]) -> list[int]:
        """Store several records in one transaction: all of them or none."""
        with self._write() as conn:
            rows = [self._put(conn, RESULTS, _record_row(record)) for record in records]
        _stored_here[0] += len(rows)
        return rows

    def delete_run(self, run_id: str) -> int:
        """Delete every record of one sweep; returns how many were deleted."""
        with self._write() as conn:
            return conn.execute(RESULTS.delete().where(RESULTS.c.run_id == run_id)).rowcount

    def clear(self) -> None:
        with self._write() as conn:
            conn.execute(RESULTS.delete())

    def add_serving(self, record: ServingRecord) -> int:
        """Store one load-benchmark point; returns its row id (idempotent on record_id, like `add`)."""
        with self._write() as conn:
            row = self._put(conn, SERVING, _serving_row(record))
        _stored_here[0] += 1
        return row

    # --- reads -----------------------------------------------------------------------------------

    def _parsed_rows(self, table: sa.Table, parse: Callable[[dict], object], **columns: str | None) -> list:
        """The rows matching `columns`, newest first, each parsed once per process (see ParsedRecords)."""
        ids_query = sa.select(table.c.record_id).where(*_where(table, **columns)).order_by(*_newest_first(table))
        store = self.describe()
        with self._read() as conn:
            ids = conn.execute(ids_query).scalars().all()
            missing = [i for i in ids if _parsed.get((store, table.name, i)) is None]
            for start in range(0, len(missing), _IDS_PER_QUERY):
                chunk = missing[start:start + _IDS_PER_QUERY]
                query = sa.select(table.c.record_id, table.c.record_json).where(table.c.record_id.in_(chunk))
                for record_id, text in conn.execute(query):
                    _parsed.put((store, table.name, record_id), parse(json.loads(text)))
        # A shallow copy each: a caller that sets a field changes its own copy, never what other readers get.
        found = (_parsed.get((store, table.name, i)) for i in ids)
        return [copy.copy(record) for record in found if record is not None]  # None: deleted between the queries

    def all(self, model: str | None = None, hardware: str | None = None) -> list[VariantRecord]:
        """Records, newest first, optionally only those of one model and/or one machine."""
        return self._parsed_rows(RESULTS, VariantRecord.from_dict, model=model, hardware=hardware)

    def get(self, record_id: str) -> VariantRecord | None:
        """The record with this id, or None when it was never stored."""
        with self._read() as conn:
            text = conn.execute(sa.select(RESULTS.c.record_json).where(RESULTS.c.record_id == record_id)).scalar()
        return None if text is None else VariantRecord.from_dict(json.loads(text))

    def row_marks(self) -> dict[str, int]:
        """The highest row id of each results table now: `rows_since` counts what was stored after this."""
        with self._read() as conn:
            return {t.name: conn.execute(sa.select(sa.func.max(t.c.id))).scalar() or 0 for t in (RESULTS, SERVING)}

    def rows_since(self, marks: dict[str, int]) -> dict[str, int]:
        """Rows stored in each results table since `marks` (from `row_marks`): what a stopped job kept."""
        with self._read() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).where(t.c.id > marks.get(t.name, 0))).scalar()
                    for t in (RESULTS, SERVING)}

    def url_with_password(self) -> str:
        """The full URL, for handing to this lab's own workers; never show it."""
        return self.url.render_as_string(hide_password=False)

    def latest_per_technique(self, model: str, hardware: str) -> list[VariantRecord]:
        """For each technique, its newest record on this model and machine; newest first."""
        latest: dict[str, VariantRecord] = {}
        for record in self.all(model=model, hardware=hardware):
            latest.setdefault(record.technique, record)
        return list(latest.values())

    def count(self, model: str | None = None) -> int:
        """How many records there are (of one model): a cheap check that something new arrived."""
        query = sa.select(sa.func.count()).select_from(RESULTS).where(*_where(RESULTS, model=model))
        with self._read() as conn:
            return int(conn.execute(query).scalar() or 0)

    def hardware_seen(self, model: str | None = None) -> list[str]:
        query = sa.select(RESULTS.c.hardware).distinct().where(*_where(RESULTS, model=model)).order_by(RESULTS.c.hardware)
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    def models_seen(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(sa.select(RESULTS.c.model).distinct().order_by(RESULTS.c.model)).scalars())

    def serving(self, model: str | None = None, hardware: str | None = None) -> list[ServingRecord]:
        """Load-benchmark points, newest first, optionally of one model and/or one machine."""
        return self._parsed_rows(SERVING, ServingRecord.from_dict, model=model, hardware=hardware)

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
        insert = self._insert(VOTES).values(created_at=now, model=model, prompt_sha256=prompt_sha256(prompt),
                                            prompt=prompt, variant_a=a, variant_b=b, winner=winner or "",
                                            session_id=session_id)
        upsert = insert.on_conflict_do_update(index_elements=_VOTE_KEY, set_={
            "winner": insert.excluded.winner, "created_at": insert.excluded.created_at})
        with self._write() as conn:
            conn.execute(upsert)

    def tally(self, model: str | None = None, prompt: str | None = None) -> list[Tally]:
        """Wins, losses and ties per variant, most wins first, optionally for one model and/or one prompt."""
        digest = prompt_sha256(prompt) if prompt is not None else None
        query = sa.select(VOTES.c.variant_a, VOTES.c.variant_b, VOTES.c.winner).where(
            *_where(VOTES, model=model, prompt_sha256=digest))
        with self._read() as conn:
            rows = conn.execute(query).all()
        counts: dict[str, list[int]] = {}
        for a, b, winner in rows:
            for me in (a, b):
                wins_losses_ties = counts.setdefault(me, [0, 0, 0])
                wins_losses_ties[2 if winner == "" else 0 if winner == me else 1] += 1
        tallies = [Tally(k, *v) for k, v in counts.items()]
        return sorted(tallies, key=lambda t: (-t.wins, t.losses, t.technique))


def open_store(url: str | None = None) -> ResultStore:
    """The store at `url`, else $LAB_STORE_URL, else the embedded SQLite file."""
    return ResultStore.from_url(url)
