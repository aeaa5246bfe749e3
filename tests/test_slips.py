"""Wording slips seen in Chromium (#41): counts that agree with their noun, KL divergences that read the same in a
sentence and a table, no "None" cells, no server path in the sidebar, a job panel that words a job by its own kind,
and an Arena locked only while a job runs or is about to start."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.launch import jobqueue
from core.launch.arena_gate import arena_gate, other_lease_left_s
from core.paths import data_dir
from core.techniques import moe
from core.views import tradeoff_map
from core.views.chart_quantities import fmt_nats
from core.words import plural
from tests.factories import make_record
from ui.ended import kept_words
from ui.tables import cell_formatter

ROOT = Path(__file__).resolve().parents[1]


def test_plural_agrees_with_its_count():
    assert [plural(1, "variant"), plural(2, "variant"), plural(0, "query"), plural(3, "batch")] == \
        ["1 variant", "2 variants", "0 queries", "3 batches"]
    assert plural(1, "is", number=False) == "is" and plural(4, "is", number=False) == "are"


def test_one_expert_is_not_the_1_experts():
    words = moe.moe_technique(8, 1).explanation
    assert "1 experts" not in words and "the 1 expert that matters most" in words
    assert "the 2 experts that matter most" in moe.moe_technique(8, 2).explanation


def test_small_kld_reads_the_same_in_the_caption_and_the_table():
    assert [fmt_nats(v) for v in (0.0035, 0.12, 2.345, 0.0)] == ["0.0035", "0.12", "2.3", "0"]
    ref = make_record()
    q8 = make_record(technique="q8", family="quantization", label="Q8", kld_mean=0.0035, top1_agreement=0.97,
                     decode_tokens_per_s_median=40.0, usd_per_1m_tokens=1.0, size_mb=300.0)
    sentence = tradeoff_map.what_you_give_up([ref, q8], "kld_mean", "latency")
    assert "0.0035 nats" in sentence and "0.00 nats" not in sentence
    assert cell_formatter(fmt_nats)(0.0035) == "0.0035"


def test_pages_show_tables_through_show_table():
    """st.dataframe prints a missing number as "None"; show_table writes a dash or the column's reason."""
    offenders = [p.name for p in (ROOT / "pages").glob("*.py") if "st.dataframe(" in p.read_text()]
    assert offenders == []


def _sidebar_app():
    from ui.frame import sidebar

    sidebar()


def test_sidebar_names_the_store_without_its_path(monkeypatch):
    monkeypatch.setenv("LAB_CLASSROOM", "1")  # a viewer: no presenter token in this session
    at = AppTest.from_function(_sidebar_app, default_timeout=60).run()
    assert not at.exception
    words = " ".join(c.value for c in at.sidebar.caption)
    assert "this machine's store" in words
    assert str(data_dir()) not in words and "sqlite" not in words.lower()


def test_a_panel_words_another_pages_job_by_its_own_kind():
    on_hybrids = kept_words("lora", "A cascade is stored when both stages have answered every item.",
                            ("cascade", "model-cascade"))
    assert "cascade" not in on_hybrids and "adapter" in on_hybrids and "Fine-tune (LoRA) page" in on_hybrids
    assert kept_words("lora", "page words", ("lora",)).startswith("A stopped run saves nothing")


def _queue_with_waiting_job() -> jobqueue.JobQueue:
    queue = jobqueue.JobQueue()
    queue.submit("sweep", {}, "Quantize sweep", "sweep|x", jobqueue.PRESENTER, "s-presenter")
    return queue


def test_arena_is_open_while_a_job_merely_waits_for_the_presenter_and_locked_while_one_runs():
    queue = _queue_with_waiting_job()
    snap = queue.snapshot()
    assert not arena_gate(snap, presenter=True, other_lease_s=None, worker_up=True).locked
    assert not arena_gate(snap, presenter=False, other_lease_s=None, worker_up=False).locked  # nothing will start it
    starting = arena_gate(snap, presenter=False, other_lease_s=None, worker_up=True)
    assert starting.locked and "Quantize sweep" in starting.reason and "starting now" in starting.reason
    queue.claim(worker_pid=1)
    running = arena_gate(queue.snapshot(), presenter=True, other_lease_s=None, worker_up=True)
    assert running.locked and "Quantize sweep (presenter) is being measured now" in running.reason


def test_arena_says_when_another_arena_run_frees_it():
    queue = _queue_with_waiting_job()
    assert queue.hold("arena:other", seconds=30)
    left = other_lease_left_s(queue, "arena:mine")
    assert left is not None and 25 < left <= 30
    assert other_lease_left_s(queue, "arena:other") is None  # a session's own lease does not lock it
    gate = arena_gate(queue.snapshot(), presenter=False, other_lease_s=left, worker_up=True)
    assert gate.locked and "Another Arena run" in gate.reason and re.search(r"within \d+ s", gate.reason)
    assert "queued job runs first" in gate.reason
