"""Jobs: the queue's estimates and old files, and what the job panel says about time."""

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.launch import jobs, quiet
from core.launch.jobqueue import PRESENTER, JobEstimate, JobQueue
from core.launch.jobs import done_words, time_words
from core.paths import data_dir as lab_data_dir


# ---------------------------------------------------------------- the queue: estimates kept, old files, time in words

OLD_SCHEMA = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, args_json TEXT NOT NULL, label TEXT NOT NULL,
    similar TEXT NOT NULL, owner TEXT NOT NULL, owner_session TEXT NOT NULL, priority INTEGER NOT NULL,
    state TEXT NOT NULL, created_s REAL NOT NULL, started_s REAL, ended_s REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0, fraction REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
    log_json TEXT NOT NULL DEFAULT '[]', live_json TEXT NOT NULL DEFAULT 'null', error TEXT NOT NULL DEFAULT '',
    worker_pid INTEGER);
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE, last_seen_s REAL NOT NULL);
INSERT INTO jobs (kind, args_json, label, similar, owner, owner_session, priority, state, created_s, started_s, ended_s)
    VALUES ('sweep', '{}', 'Old sweep', 'k', 'presenter', 's-p', 0, 'done', 1.0, 2.0, 97.0);
INSERT INTO jobs (kind, args_json, label, similar, owner, owner_session, priority, state, created_s)
    VALUES ('sweep', '{}', 'Old waiting sweep', 'k', 'viewer 1', 's-a', 1, 'queued', 3.0);
INSERT INTO sessions VALUES ('s-a', 1, 3.0);
"""
AMD = "AMD EPYC 7B13, 2 cores, 8 GiB RAM"


def set_times(queue: JobQueue, job_id: int, **columns) -> None:
    """Move a job's clock (started_s, ended_s, fraction...) as if it had run that long."""
    with sqlite3.connect(queue.path) as conn:
        for column, value in columns.items():
            conn.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))


def test_a_queue_file_from_before_estimates_opens_keeps_its_jobs_and_takes_new_ones(tmp_path):
    path = tmp_path / "old-queue.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    queue = JobQueue(path)
    old = queue.job(1)
    assert old.label == "Old sweep" and old.state == "done" and old.elapsed_s == 95.0
    assert old.estimated_s is None and old.uncorrected_s is None and old.estimate_hardware == ""
    snap = queue.snapshot()
    assert [w.job.label for w in snap.waiting] == ["Old waiting sweep"] and snap.recent[0].id == 1
    new = queue.submit("sweep", {}, "New sweep", "k", PRESENTER, "s-p", JobEstimate(61.0, 50.0, AMD))
    assert (queue.job(new).estimated_s, queue.job(new).uncorrected_s) == (61.0, 50.0)
    assert queue.heartbeat("s-a") == 1 and queue.sessions_connected() == 1  # sessions got left_s too
    assert JobQueue(path).job(new).estimate_hardware == AMD  # opening it again changes nothing
    assert queue.estimated_jobs("sweep", AMD) == []  # the old job had no estimate; the new one has not run


def test_the_running_jobs_time_left_counts_down_from_its_estimate_then_follows_its_pace():
    queue = JobQueue()
    job = queue.submit("sweep", {}, "Sweep", "k", PRESENTER, "s-p", JobEstimate(61.0, 50.0, AMD))
    queue.submit("sweep", {}, "Next", "k", PRESENTER, "s-p", JobEstimate(30.0, 30.0, AMD))
    queue.claim(1)
    set_times(queue, job, started_s=time.time() - 40)
    snap = queue.snapshot()
    assert snap.running_expected_s == 61.0 and snap.running_left_s == pytest.approx(21.0, abs=1.0)
    set_times(queue, job, started_s=time.time() - 100, fraction=0.5)
    snap = queue.snapshot()  # past its estimate: never 0, the pace of the half done says about 100 s more
    assert snap.running_left_s == pytest.approx(100.0, abs=1.0)
    assert snap.waiting[0].starts_in_s == pytest.approx(snap.running_left_s)
    set_times(queue, job, fraction=0.01)
    assert queue.snapshot().running_left_s is None  # nothing to go on: the waiting job starts "when it ends"


def test_time_words_never_show_a_frozen_or_zero_remaining_time():
    assert time_words(40, 61, 0.3, "measuring fp32", False) == "Elapsed 40 s · remaining about 21 s"
    late = time_words(100, 61, 0.5, "measuring gguf-q8_0", False)
    assert late == ("Elapsed 1 min 40 s · taking longer than estimated (estimated 1 min 01 s): measuring gguf-q8_0"
                    " · about 1 min 40 s more at the pace so far")
    assert time_words(100, 61, 0.01, "loading", False).endswith("(estimated 1 min 01 s): loading")
    paused = time_words(65, 61, 0.5, "timing", True)
    assert paused == ("Elapsed 1 min 05 s · paused while the worker times the model (it resumes after the timed "
                      "runs)")
    assert time_words(5, None, 0.0, "starting", False) == ("Elapsed 5 s · remaining: not known yet (no estimate for "
                                                           "this job here; the pace shows after 5%)")
    assert time_words(30, None, 0.5, "training", False) == ("Elapsed 30 s · remaining about 30 s at the pace so far "
                                                            "(unsure: no estimate for this job here)")
    for tenth in range(2000):
        for fraction in (0.0, 0.3, 0.999):
            assert "about 0 s" not in time_words(tenth / 10, 61, fraction, "x", False)


def test_done_words_say_the_time_taken_and_the_estimate_when_there_was_one():
    assert done_words("Sweep", 95.0, 61.0) == "Sweep done in 1 min 35 s (estimated 1 min 01 s)."
    assert done_words("LoRA run", 42.0, None) == "LoRA run done in 42 s."


# ---------------------------------------------------------------- the job panel on a page

ROOT = Path(__file__).resolve().parent.parent


def test_a_finished_sweep_says_done_with_its_estimate_and_links_to_the_tradeoff_map(fresh_caches):
    queue = JobQueue()
    job = queue.submit("sweep", {}, "Quantization sweep", "k", PRESENTER, "s-p", JobEstimate(61.0, 50.0, AMD))
    queue.claim(1)
    queue.finish(job, "done")
    set_times(queue, job, started_s=queue.job(job).ended_s - 95.0)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/quantize.py").run()  # page links work only under app.py's navigation
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.success] == [
        "Quantization sweep (presenter) done in 1 min 35 s (estimated 1 min 01 s)."]
    links = [(link.proto.label, link.proto.page) for link in at.get("page_link")]
    assert any(label == "See it on the Trade-off Map" and "tradeoff_map" in page for label, page in links), links


def test_a_late_job_says_so_and_a_paused_panel_says_why_it_stands_still(fresh_caches):
    queue = JobQueue()
    job = queue.submit("sweep", {}, "Quantization sweep", "k", PRESENTER, "s-p", JobEstimate(61.0, 50.0, AMD))
    queue.claim(1)
    queue.progress(job, 0.5, "measuring gguf-q8_0", [])
    set_times(queue, job, started_s=time.time() - 100)
    at = AppTest.from_file(str(ROOT / "pages" / "quantize.py"), default_timeout=60).run()
    captions = " ".join(c.value for c in at.caption)
    assert "taking longer than estimated (estimated 1 min 01 s): measuring gguf-q8_0" in captions
    assert "remaining about" not in captions
    with quiet.Gate(lab_data_dir()).timing_phase():
        at.run()
    captions = " ".join(c.value for c in at.caption)
    assert jobs.PAUSED_WORDS in captions and "remaining" not in captions and "longer than" not in captions
