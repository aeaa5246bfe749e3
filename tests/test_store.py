import sqlite3
import threading

import pytest

import core.store
from core.store import SCHEMA_VERSION, ResultStore, StoreError, data_dir, default_store_path, repo_root
from tests.factories import make_record


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "lab-data"))
    return ResultStore()


def test_data_dir_follows_the_environment_and_is_created(tmp_path, monkeypatch):
    target = tmp_path / "nested" / "data"
    monkeypatch.setenv("LAB_DATA_DIR", str(target))
    assert data_dir() == target and target.is_dir()
    assert default_store_path() == target / "results.sqlite"


def test_repo_root_is_the_parent_of_core():
    assert (repo_root() / "core" / "store.py").is_file()


def test_data_dir_defaults_to_repo_data(tmp_path, monkeypatch):
    # A stand-in repo root, so the test does not create data/ in the real checkout.
    monkeypatch.delenv("LAB_DATA_DIR", raising=False)
    monkeypatch.setattr(core.store, "repo_root", lambda: tmp_path)
    assert data_dir() == tmp_path / "data" and (tmp_path / "data").is_dir()


def test_default_store_lives_in_the_data_dir(store, tmp_path):
    assert store.path == tmp_path / "lab-data" / "results.sqlite"
    assert store.path.is_file()


def test_round_trip_keeps_every_field(store):
    record = make_record(
        notes="ünïcode ✓", sample_generation="Hello", mc_per_item=[{"id": 1, "correct": True}],
        settings={"prompts": ["a", "b"], "seed": 3}, perplexity=float("nan"),
    )
    row_id = store.add(record)
    assert isinstance(row_id, int)
    [back] = store.all()
    for name, value in record.to_dict().items():
        if name == "perplexity":
            assert back.perplexity != back.perplexity  # NaN survives as NaN
        else:
            assert getattr(back, name) == value, name


def test_records_survive_reopening(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).add(make_record(technique="nf4"))
    reopened = ResultStore(path)
    assert [r.technique for r in reopened.all()] == ["nf4"]


def test_schema_version_and_wal(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    finally:
        conn.close()
    assert columns == ["id", "run_id", "created_at", "model", "technique", "family", "hardware", "device",
                       "record_json"]


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


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        ResultStore(path)


def test_concurrent_writers_wait_instead_of_failing(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path)
    errors = []

    def write(worker: int) -> None:
        try:
            store = ResultStore(path)
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
    assert len(ResultStore(path).all()) == 40
