"""The results store, on both backends: the embedded SQLite file and a real PostgreSQL server."""

import sqlite3
import threading

import pytest
import sqlalchemy as sa

import core.paths
import core.store
from core.paths import data_dir, repo_root
from core.store import SCHEMA_VERSION, ResultStore, StoreError, default_store_path, open_store
from core.store.records import ServingRecord
from tests.factories import make_record
from tests.postgres import PASSWORD


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'results.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    return ResultStore.from_url(store_url)


def make_serving(**overrides) -> ServingRecord:
    fields = dict(
        model="smollm2-135m-instruct", technique="fp32", runtime="transformers", label="FP32", concurrency=4,
        prompt_tokens=32, new_tokens=16, requests=8, errors=0, throughput_tokens_per_s=40.0,
        per_user_tokens_per_s_median=11.0, ttft_ms_p50=90.0, ttft_ms_p90=120.0, itl_ms_p50=80.0, itl_ms_p90=95.0,
        e2e_ms_p50=1300.0, e2e_ms_p90=1500.0, kv_cache_mb_measured=3.1, kv_cache_mb_estimated=3.0,
        peak_mem_mb=700.0, hardware_preset="laptop-cpu", usd_per_hour=0.18, usd_per_1m_tokens=1.25,
        server="in-process transformers", device="cpu", threads=2, hardware="Intel Xeon, 2 cores, 8 GB",
        versions={"torch": "2.13.0"}, settings={"seed": 0}, run_id="load-1", created_at="2025-06-01T12:00:00+00:00",
    )
    return ServingRecord(**(fields | overrides))


# --- where the store lives ------------------------------------------------------------------------


def test_data_dir_follows_the_environment_and_is_created(tmp_path, monkeypatch):
    target = tmp_path / "nested" / "data"
    monkeypatch.setenv("LAB_DATA_DIR", str(target))
    assert data_dir() == target and target.is_dir()
    assert default_store_path() == target / "results.sqlite"


def test_repo_root_is_the_parent_of_core():
    assert (repo_root() / "core" / "paths.py").is_file()


def test_data_dir_defaults_to_repo_data(tmp_path, monkeypatch):
    # A stand-in repo root, so the test does not create data/ in the real checkout.
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setattr(core.paths, "repo_root", lambda: tmp_path)
    assert data_dir() == tmp_path / "data" and (tmp_path / "data").is_dir()


def test_default_store_is_the_embedded_file_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "lab-data"))
    monkeypatch.delenv("LAB_STORE_URL", raising=False)
    store = ResultStore()
    assert store.path == tmp_path / "lab-data" / "results.sqlite" and store.path.is_file()
    assert store.backend == "sqlite" and open_store().path == store.path
    assert store.describe() == f"sqlite:///{store.path}"


def test_the_url_in_the_environment_picks_the_store(store_url, monkeypatch):
    monkeypatch.setenv("LAB_STORE_URL", store_url)
    ResultStore().add(make_record(technique="nf4"))
    assert [r.technique for r in open_store().all()] == ["nf4"]
    assert [r.technique for r in ResultStore.from_url(store_url).all()] == ["nf4"]


def test_describe_masks_the_password(pg_url):
    shown = ResultStore.from_url(pg_url).describe()
    assert PASSWORD not in shown and "***" in shown and shown.startswith("postgresql+psycopg://lab:")


def test_unsupported_url_is_refused_clearly():
    with pytest.raises(StoreError, match="Unsupported results store.*postgresql://"):
        ResultStore.from_url("mysql://u:p@h/db")


# --- the suite, on both backends ------------------------------------------------------------------


def test_round_trip_keeps_every_field(store):
    record = make_record(
        notes="ünïcode ✓", sample_generation="Hello", mc_per_item=[{"id": 1, "correct": True}],
        settings={"prompts": ["a", "b"], "seed": 3}, perplexity=float("nan"), attempt=2,
        started_at="2025-06-01T11:59:00+00:00", runtime="llama.cpp",
    )
    row_id = store.add(record)
    assert isinstance(row_id, int)
    [back] = store.all()
    for name, value in record.to_dict().items():
        if name == "perplexity":
            assert back.perplexity != back.perplexity  # NaN survives as NaN
        else:
            assert getattr(back, name) == value, name


def test_records_survive_reopening(store_url):
    ResultStore.from_url(store_url).add(make_record(technique="nf4"))
    reopened = ResultStore.from_url(store_url)
    assert [r.technique for r in reopened.all()] == ["nf4"]


def test_schema_version_is_recorded(store):
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM lab_schema_version")).scalar() == f"{SCHEMA_VERSION:04d}"
        columns = [c["name"] for c in sa.inspect(conn).get_columns("results")]
    assert SCHEMA_VERSION == 3
    assert columns == ["id", "run_id", "created_at", "model", "technique", "family", "hardware", "device",
                       "record_json", "record_id"]


def test_a_record_written_twice_is_one_row(store):
    record = make_record(technique="nf4")
    first = store.add(record)
    assert store.add(record) == first  # a retried write: same row id, no new row
    assert store.add_many([record, make_record(technique="bf16")])[0] == first
    assert sorted(r.technique for r in store.all()) == ["bf16", "nf4"]


def test_record_ids_are_unique_in_the_schema(store):
    # Even a write that bypasses add() cannot store one record twice.
    record = make_record()
    store.add(record)
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(core.store.RESULTS.insert().values(**core.store.results._record_row(record)))


def test_all_is_newest_first(store):
    store.add_many([
        make_record(technique="old", created_at="2025-06-01T10:00:00+00:00"),
        make_record(technique="new", created_at="2025-06-03T10:00:00+00:00"),
        make_record(technique="mid", created_at="2025-06-02T10:00:00+00:00"),
    ])
    assert [r.technique for r in store.all()] == ["new", "mid", "old"]


def test_same_timestamp_ties_break_by_insertion(store):
    store.add(make_record(technique="first"))
    store.add(make_record(technique="second"))
    assert [r.technique for r in store.all()] == ["second", "first"]


def test_filters_by_model_and_hardware(store):
    store.add_many([
        make_record(technique="a", hardware="laptop"),
        make_record(technique="b", hardware="gpu-box"),
        make_record(technique="c", hardware="laptop", model="other"),
    ])
    assert [r.technique for r in store.all(hardware="laptop")] == ["c", "a"]
    assert [r.technique for r in store.all(model="smollm2-135m-instruct", hardware="laptop")] == ["a"]
    assert [r.technique for r in store.all(model="other")] == ["c"]
    assert store.hardware_seen() == ["gpu-box", "laptop"]
    assert store.hardware_seen(model="other") == ["laptop"]
    assert store.models_seen() == ["other", "smollm2-135m-instruct"]


def test_latest_per_technique(store):
    store.add_many([
        make_record(technique="fp32", run_id="r1", created_at="2025-06-01T00:00:00+00:00"),
        make_record(technique="nf4", run_id="r1", created_at="2025-06-01T00:00:01+00:00"),
        make_record(technique="fp32", run_id="r2", created_at="2025-06-02T00:00:00+00:00"),
        make_record(technique="nf4", run_id="r3", created_at="2025-06-03T00:00:00+00:00", hardware="elsewhere"),
    ])
    latest = store.latest_per_technique("smollm2-135m-instruct", "Intel Xeon, 2 cores, 8 GB")
    assert {r.technique: r.run_id for r in latest} == {"fp32": "r2", "nf4": "r1"}
    assert len(latest) == 2


def test_add_many_is_one_transaction(store):
    good = make_record()
    bad = make_record()
    bad.versions = {"torch": object()}  # not JSON-serialisable: fails halfway through
    with pytest.raises(TypeError):
        store.add_many([good, bad])
    assert store.all() == []


def test_add_many_returns_ids(store):
    ids = store.add_many([make_record(), make_record()])
    assert len(ids) == 2 and ids[0] < ids[1]


def test_delete_run_and_clear(store):
    store.add_many([make_record(run_id="keep"), make_record(run_id="drop"), make_record(run_id="drop")])
    assert store.delete_run("drop") == 2
    assert [r.run_id for r in store.all()] == ["keep"]
    store.clear()
    assert store.all() == [] and store.models_seen() == []


def test_reads_reuse_parsed_records_but_always_follow_the_rows(store, monkeypatch):
    first = make_record(technique="fp32")
    store.add(first)
    assert store.all() == [first]
    parsed = []
    monkeypatch.setattr(core.store.VariantRecord, "from_dict",
                        classmethod(lambda cls, data: parsed.append(data["record_id"]) or cls(**data)))
    store.all()[0].technique = "changed by a caller"  # a reader's change stays in its own copy
    assert store.all() == [first] and parsed == []  # read again without parsing again
    store.clear()
    second = make_record(technique="nf4")  # may take the freed row id; it is another record all the same
    store.add(second)
    assert store.all() == [second] and parsed == [second.record_id]
    assert store.all(model="other") == []


def test_many_records_are_read_in_chunks(store, monkeypatch):
    monkeypatch.setattr(core.store.results, "_IDS_PER_QUERY", 3)
    records = [make_record(created_at=f"2025-06-01T00:00:{i:02d}+00:00") for i in range(8)]
    store.add_many(records)
    assert store.all() == records[::-1]


def test_serving_records_round_trip_newest_first_and_once(store):
    old = make_serving(concurrency=1, created_at="2025-06-01T00:00:00+00:00")
    new = make_serving(concurrency=8, created_at="2025-06-02T00:00:00+00:00", hardware="gpu-box",
                       throughput_tokens_per_s_samples=[39.0, 41.0])
    store.add_serving(old)
    first = store.add_serving(new)
    assert store.add_serving(new) == first  # retried write, one row
    assert [r.concurrency for r in store.serving()] == [8, 1]
    assert store.serving(hardware="gpu-box") == [new]
    assert store.serving(model="other") == []
    assert store.all() == []  # load points are not variant records


def test_votes_replace_per_session_and_tally(store):
    store.add_vote("m", "Why?", ("nf4", "fp32"), "fp32", "s1")
    store.add_vote("m", "Why?", ("fp32", "nf4"), "nf4", "s1")  # same pair and session: replaces
    store.add_vote("m", "Why?", ("fp32", "nf4"), None, "s2")
    tally = {t.technique: t for t in store.tally(model="m")}
    assert (tally["nf4"].wins, tally["nf4"].losses, tally["nf4"].ties) == (1, 0, 1)
    assert (tally["fp32"].wins, tally["fp32"].losses) == (0, 1)
    assert store.tally(prompt="other") == []


def test_newer_schema_is_refused_and_nothing_written(store_url):
    store = ResultStore.from_url(store_url)
    store.add(make_record())
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE lab_schema_version SET version_num = '0099'"))
    with pytest.raises(StoreError, match=r"newer version of this app \(schema 99, this one reads 3\)"):
        ResultStore.from_url(store_url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM results")).scalar() == 1
        assert conn.execute(sa.text("SELECT version_num FROM lab_schema_version")).scalar() == "0099"


def test_concurrent_writers_wait_instead_of_failing(store_url):
    ResultStore.from_url(store_url)
    errors = []

    def write(worker: int) -> None:
        try:
            store = ResultStore.from_url(store_url)
            for i in range(10):
                store.add(make_record(run_id=f"w{worker}", technique=f"t{i}"))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ResultStore.from_url(store_url).all()) == 40


def test_first_openers_racing_on_an_empty_store_all_succeed(store_url):
    # Several processes may open a brand-new shared store at once; the schema is created exactly once.
    errors = []

    def open_and_write(n: int) -> None:
        try:
            ResultStore.from_url(store_url).add(make_record(technique=f"t{n}"))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=open_and_write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ResultStore.from_url(store_url).all()) == 4


# --- SQLite files: old schemas, damaged and foreign files -----------------------------------------

_V1 = """
CREATE TABLE results (id INTEGER PRIMARY KEY, run_id TEXT, created_at TEXT, model TEXT, technique TEXT,
    family TEXT, hardware TEXT, device TEXT, record_json TEXT NOT NULL);
CREATE INDEX results_model_hardware ON results (model, hardware, created_at);
CREATE INDEX results_run ON results (run_id);
PRAGMA user_version = 1;
"""
_V2 = """
CREATE TABLE votes (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, model TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL, prompt TEXT NOT NULL, variant_a TEXT NOT NULL, variant_b TEXT NOT NULL,
    winner TEXT NOT NULL, session_id TEXT NOT NULL, CHECK (variant_a < variant_b),
    CHECK (winner IN (variant_a, variant_b, '')), UNIQUE (model, prompt_sha256, variant_a, variant_b, session_id));
CREATE INDEX votes_model ON votes (model);
PRAGMA user_version = 2;
"""


def _old_store(path, version: int) -> list[str]:
    """An SQLite store as the app wrote it before record ids: schema `version`, two records without ids."""
    import json

    conn = sqlite3.connect(path)
    conn.executescript(_V1 + (_V2 if version >= 2 else ""))
    old = []
    for technique in ("fp32", "nf4"):
        data = make_record(technique=technique).to_dict()
        for name in ("record_id", "started_at", "attempt", "runtime"):
            data.pop(name)
        conn.execute("INSERT INTO results (run_id, created_at, model, technique, family, hardware, device, record_json)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (data["run_id"], data["created_at"], data["model"], technique,
                                                          data["family"], data["hardware"], data["device"],
                                                          json.dumps(data)))
        old.append(technique)
    conn.commit()
    conn.close()
    return old


def _dump(path) -> tuple[int, list[str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0], list(conn.iterdump())
    finally:
        conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_old_sqlite_stores_are_migrated_in_place_with_a_backup(tmp_path, version):
    path = tmp_path / "results.sqlite"
    techniques = _old_store(path, version)
    before = _dump(path)
    store = ResultStore(path)
    backup = tmp_path / f"results.sqlite.bak-v{version}"
    assert _dump(backup) == before  # the old store as it was: schema, version and rows
    records = store.all()
    assert sorted(r.technique for r in records) == sorted(techniques)
    assert len({r.record_id for r in records}) == 2 and all(len(r.record_id) == 32 for r in records)
    store.add_vote("m", "Why?", ("a", "b"), "a", "s")  # the votes table exists now
    store.add_serving(make_serving())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        ids = {row[0] for row in conn.execute("SELECT record_id FROM results")}
    finally:
        conn.close()
    assert ids == {r.record_id for r in records}  # column and JSON agree
    ResultStore(path)  # a second open finds nothing to do and writes no second backup
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name) == [backup.name]


@pytest.mark.parametrize("content", [b"this is not a database\n" * 10, b"SQLite format 3\x00" + b"\xff" * 200])
def test_corrupt_file_gives_clear_error_and_is_left_untouched(tmp_path, content):
    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError) as error:
        ResultStore(path)
    assert isinstance(error.value, ValueError)
    message = str(error.value)
    assert str(path) in message and "Move it away" in message
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]  # no journal files written


def test_foreign_sqlite_database_is_refused_not_modified(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE invoices (n INTEGER)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="invoices"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_newer_pre_alembic_sqlite_version_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V1 + "PRAGMA user_version = 99;")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        ResultStore(path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.bak*"))


# --- PostgreSQL: unreachable, wrong password, foreign tables --------------------------------------


def test_wrong_password_is_one_clear_line_without_the_password(pg_server):
    url = pg_server.new_database()
    wrong = url.replace(f":{PASSWORD}@", ":not-the-password-xyz@")
    with pytest.raises(StoreError) as error:
        ResultStore.from_url(wrong)
    message = str(error.value)
    assert "password authentication failed" in message and "Nothing was written" in message
    assert PASSWORD not in message and "not-the-password-xyz" not in message and "\n" not in message
    assert _tables(url) == []  # the database was left empty


def _tables(url: str) -> list[str]:
    engine = sa.create_engine(core.store.parse_url(url))
    try:
        with engine.connect() as conn:
            return sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()


def test_unreachable_server_is_a_clear_error(pg_server):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as error:
        ResultStore.from_url(f"postgresql://lab:{PASSWORD}@127.0.0.1:{port}/lab")
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "Cannot use the results store" in message
    assert PASSWORD not in message and "LAB_STORE_URL" in message


def test_postgres_tables_like_ours_without_a_version_are_refused(pg_url):
    engine = sa.create_engine(core.store.parse_url(pg_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE results (n integer)"))
        conn.execute(sa.text("CREATE TABLE invoices (n integer)"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"holds tables named \['results'\]"):
        ResultStore.from_url(pg_url)


def test_the_dashboard_says_which_store_it_reads_without_the_password(pg_url, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LAB_STORE_URL", pg_url)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60).run()
    assert not at.exception
    shown = " ".join(c.value for c in at.sidebar.caption)
    assert "Results: a shared PostgreSQL database" in shown  # the room's words; the URL is for the presenter
    assert "`postgresql+psycopg://lab:***@127.0.0.1:" in shown and PASSWORD not in shown


def test_cli_with_a_wrongly_authenticated_store_says_so_in_one_line(pg_server, capsys):
    from core.__main__ import main

    wrong = pg_server.url("postgres", password="wrong-pw-4242")
    code = main(["--store", wrong, "sweep", "--model", "tiny-random-llama", "--techniques", "fp32"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: Cannot use the results store postgresql+psycopg://lab:***@")
    assert "wrong-pw-4242" not in err and PASSWORD not in err and err.count("\n") == 1
