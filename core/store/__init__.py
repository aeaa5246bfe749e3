"""Results store behind one URL: the embedded SQLite file by default, or a shared PostgreSQL for a team.

    LAB_STORE_URL=postgresql://lab:secret@db-host:5432/lab   (or `python -m core --store URL ...`)

    results.py    ResultStore: records, serving points and blind votes, read and written in transactions
    schema.py     the schema version this code reads and its tables (core/store/migrations/ creates them)
    records.py    the records; urls.py: which store a URL names; parsed.py: records parsed once per process
    jsonl.py      JSON-lines files beside the store
"""

from core.paths import DATA_DIR_ENV, data_dir  # noqa: F401
from core.store.records import ServingRecord, VariantRecord  # noqa: F401
from core.store.results import (  # noqa: F401
    BUSY_TIMEOUT_S,
    MIGRATIONS,
    SQLITE_HEADER,
    ResultStore,
    Tally,
    open_store,
    prompt_sha256,
)
from core.store.schema import OUR_TABLES, RESULTS, SCHEMA_VERSION, SERVING, VOTES  # noqa: F401
from core.store.urls import (  # noqa: F401
    STORE_FILENAME,
    STORE_URL_ENV,
    StoreError,
    configured_url,
    default_store_path,
    describe_configured,
    mask,
    parse_url,
    pg_engine,
    sqlite_engine,
    store_kind,
)
