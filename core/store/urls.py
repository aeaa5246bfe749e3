"""Where the results store is: its URL (the embedded SQLite file by default, PostgreSQL for a team), shown with the
password masked, and the SQLAlchemy engine for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from threading import Lock

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from core.paths import data_dir

STORE_URL_ENV = "LAB_STORE_URL"
STORE_FILENAME = "results.sqlite"
CONNECT_TIMEOUT_S = 5  # an unreachable server fails within this, not after the OS's minutes


class StoreError(ValueError):
    """The store at the configured place cannot be used (unreachable, foreign, damaged or too new)."""


def default_store_path() -> Path:
    return data_dir() / STORE_FILENAME


def configured_url() -> str:
    """$LAB_STORE_URL, else the embedded SQLite file in the data dir."""
    return os.environ.get(STORE_URL_ENV, "").strip() or f"sqlite:///{default_store_path()}"


def parse_url(url: str | os.PathLike[str]) -> URL:
    """A store URL (postgresql://..., sqlite:///path) or a plain file path, as SQLAlchemy's URL with our driver."""
    text = str(url).strip()
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        parsed = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise StoreError(f"{STORE_URL_ENV} is not a database URL: {mask(text)!r}. "
                         "Use postgresql://user:password@host:5432/dbname or sqlite:///path/to/results.sqlite.") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and parsed.database:
        return parsed.set(drivername="sqlite")
    raise StoreError(f"Unsupported results store {parsed.render_as_string(hide_password=True)!r}: "
                     "use postgresql://user:password@host:5432/dbname or sqlite:///path/to/results.sqlite.")


def mask(url: str | URL) -> str:
    """The URL as it may be shown: the password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def sqlite_engine(path: Path, timeout_s: float) -> Engine:
    engine = sa.create_engine(URL.create("sqlite", database=str(path)), poolclass=NullPool,
                              connect_args={"timeout": timeout_s})

    # Take transactions into our own hands (the sqlite3 module's implicit BEGIN skips DDL), and make
    # writers take the write lock at BEGIN: in WAL mode a reader that later writes can fail at once
    # with "database is locked" instead of waiting for the busy timeout.
    @sa.event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("lab_write") else "BEGIN")

    return engine


_PG_ENGINES: dict[str, Engine] = {}
_PG_ENGINES_LOCK = Lock()


def pg_engine(url: URL) -> Engine:
    # One pooled engine per URL and process: pages construct a ResultStore on every rerun.
    key = url.render_as_string(hide_password=False)
    with _PG_ENGINES_LOCK:
        if key not in _PG_ENGINES:
            _PG_ENGINES[key] = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4,
                                                connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        return _PG_ENGINES[key]


def store_kind() -> str:
    """Where results are kept, in a viewer's words and without a path or host: a file path means nothing to someone
    in the room and names the server's disk."""
    try:
        url = parse_url(configured_url())
    except StoreError:
        return "results: the configured store cannot be read (the presenter's terminal says why)"
    if url.get_backend_name() == "sqlite":
        default = Path(url.database or "") == default_store_path()
        return "results: this machine's store" + ("" if default else " (a file the presenter chose)")
    return "results: a shared PostgreSQL database (the team's store)"


def describe_configured() -> str:
    """Which store pages and commands use, safe to show, without connecting to it."""
    try:
        return mask(parse_url(configured_url()))
    except StoreError as error:
        return str(error)
