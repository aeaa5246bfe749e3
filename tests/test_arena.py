import math
import sqlite3
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from core.experiments import arena
from core.measure import benchmark, cost
from core.models import saved
from core.runtimes import as_runner, eager
from core.store import SCHEMA_VERSION, ResultStore, StoreError
from tests.factories import make_record
from tests.test_benchmark import CountingModel, FakeClock

ROOT = Path(__file__).resolve().parent.parent
HERE = benchmark.hardware_fingerprint("cpu")


# --- the shared decode loop ------------------------------------------------------------------------


def test_stream_tokens_yields_own_cumulative_time_per_token():
    clock = FakeClock()
    model = CountingModel(clock)
    steps = list(eager.stream_tokens(model, torch.ones(1, 5, dtype=torch.long), 4, clock=clock))
    assert model.calls == 4
    assert [round(t, 6) for _, t in steps] == [0.5, 0.6, 0.7, 0.8]


def test_stream_tokens_does_not_count_time_spent_outside_it():
    clock = FakeClock()
    stream = eager.stream_tokens(CountingModel(clock), torch.ones(1, 3, dtype=torch.long), 3, clock=clock)
    times = []
    for _, t in stream:
        times.append(t)
        clock.now += 10.0  # the caller draws, or another variant runs its step
    assert times == pytest.approx([0.5, 0.6, 0.7])


def test_stream_tokens_matches_timed_generation_on_a_real_tiny_model(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([tokenizer("hello there")["input_ids"]])
    streamed = [t for t, _ in eager.stream_tokens(model, ids, 6)]
    assert list(benchmark.timed_generation(as_runner(model), ids, 6).token_ids) == streamed
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(eager.stream_tokens(model, ids, 0))


# --- racing, stats, highlights ---------------------------------------------------------------------


def test_round_robin_interleaves_and_keeps_each_variants_own_time():
    clock = FakeClock()
    streams = {k: eager.stream_tokens(CountingModel(clock), torch.ones(1, 2, dtype=torch.long), 3, clock=clock)
               for k in ("a", "b")}
    steps = list(arena.race(streams))
    assert [(s.key, s.index) for s in steps] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    log = arena.RaceLog(("a", "b"))
    for s in steps:
        log.add(s)
    # the shared clock ran 1.4 s in all, yet each variant sees only its own 0.5 + 0.1 + 0.1
    assert log.own_s["b"] == pytest.approx([0.5, 0.6, 0.7])
    stats = log.stats("b")
    assert stats.ttft_ms == pytest.approx(500.0) and stats.decode_tokens_per_s == pytest.approx(10.0)
    assert stats.step_ms == pytest.approx((500.0, 100.0, 100.0))


def test_one_after_another_and_uneven_streams():
    streams = {"a": iter([(1, 0.1), (2, 0.2)]), "b": iter([(3, 0.3)])}
    assert [(s.key, s.token_id) for s in arena.race(streams, "one after another")] == [("a", 1), ("a", 2), ("b", 3)]
    streams = {"a": iter([(1, 0.1), (2, 0.2)]), "b": iter([(3, 0.3)])}
    assert [(s.key, s.token_id) for s in arena.race(streams)] == [("a", 1), ("b", 3), ("a", 2)]
    with pytest.raises(ValueError, match="schedule"):
        list(arena.race({}, "random"))


def test_live_stats_edge_cases():
    assert arena.live_stats([]).tokens == 0 and math.isnan(arena.live_stats([]).ttft_ms)
    one = arena.live_stats([0.2])
    assert one.ttft_ms == pytest.approx(200.0) and math.isnan(one.decode_tokens_per_s)


def test_differs_marks_positions_that_differ_from_the_reference():
    assert arena.differs([1, 2, 3, 4], [1, 9, 3]) == [False, True, False, False]  # position 3: reference not there yet
    assert arena.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert arena.first_divergence([1, 5, 3], [1, 2, 3]) == 1


def test_token_pieces_join_back_to_the_text_and_html_is_escaped(tiny):
    _, tokenizer = tiny
    ids = tokenizer("héllo <b>wörld</b>\nbye")["input_ids"]
    pieces = arena.token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)
    html = arena.tokens_html(["<b>", "x\n", "y"], [True, False, False])
    assert html == f'<mark style="{arena.MARK_STYLE}">&lt;b&gt;</mark>x<br>y'


def test_blind_labels_are_shuffled_but_stable():
    keys = ["fp32", "nf4", "bf16", "int8"]
    labels = arena.blind_labels(keys, seed=3)
    assert sorted(labels.values()) == ["A", "B", "C", "D"] and labels == arena.blind_labels(keys, seed=3)
    assert any(arena.blind_labels(keys, s) != labels for s in range(10))


def test_vote_pairs():
    assert arena.vote_pairs(["a", "b", "c"], "b") == [(("b", "a"), "b"), (("b", "c"), "b")]
    assert arena.vote_pairs(["a", "b", "c"], None) == [(("a", "b"), None), (("a", "c"), None), (("b", "c"), None)]
    with pytest.raises(ValueError):
        arena.vote_pairs(["a", "b"], "z")


def test_compare_with_sweep_says_whether_like_for_like():
    record = make_record(technique="nf4", decode_tokens_per_s_median=20.0, settings={"new_tokens": 32, "prompt_tokens": 40})
    stats = arena.live_stats([0.1 + i * 0.05 for i in range(32)])  # 31 decode steps of 50 ms = 20 tok/s
    c = arena.compare_with_sweep("nf4", stats, 40, record)
    assert c.ratio == pytest.approx(1.0) and c.like_for_like
    assert not arena.compare_with_sweep("nf4", stats, 12, record).like_for_like


def test_timeline_figure_has_one_trace_per_variant():
    fig = arena.timeline_figure({"FP32": [80.0, 30.0, 31.0], "NF4": [110.0, 50.0]})
    assert [t.name for t in fig.data] == ["FP32", "NF4"] and list(fig.data[1].x) == [1, 2]


# --- votes in the store ----------------------------------------------------------------------------


def test_one_vote_per_prompt_pair_and_session_and_the_tally(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.add_vote("m", "Why?", ("nf4", "fp32"), "fp32", "s1")
    store.add_vote("m", "Why?", ("fp32", "nf4"), "nf4", "s1")  # same pair, same session: replaces the first vote
    store.add_vote("m", "Why?", ("fp32", "nf4"), "fp32", "s2")
    store.add_vote("m", "Other prompt", ("fp32", "bf16"), None, "s1")
    store.add_vote("other-model", "Why?", ("fp32", "nf4"), "nf4", "s1")
    tally = {t.technique: t for t in store.tally(model="m")}
    assert (tally["fp32"].wins, tally["fp32"].losses, tally["fp32"].ties) == (1, 1, 1)
    assert (tally["nf4"].wins, tally["nf4"].losses) == (1, 1) and tally["bf16"].ties == 1
    assert tally["fp32"].votes == 3 and tally["fp32"].win_rate == pytest.approx(0.5)
    assert math.isnan(tally["bf16"].win_rate)
    assert {t.technique for t in store.tally(model="m", prompt="Other prompt")} == {"fp32", "bf16"}
    assert len(store.tally()) == 3


def test_add_vote_validates():
    store = ResultStore()
    with pytest.raises(ValueError, match="two different"):
        store.add_vote("m", "p", ("a", "a"), "a", "s")
    with pytest.raises(ValueError, match="winner"):
        store.add_vote("m", "p", ("a", "b"), "c", "s")
    with pytest.raises(ValueError, match="session"):
        store.add_vote("m", "p", ("a", "b"), "a", "")


def test_a_version_1_store_is_migrated_forward_keeping_its_results(tmp_path):
    from tests.test_store import _V1

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V1)  # the schema before votes existed
    with conn:
        conn.execute("INSERT INTO results (run_id, model, technique, record_json) VALUES (?, ?, ?, ?)",
                     ("r", "m", "fp32", __import__("json").dumps(make_record(model="m").to_dict())))
    conn.close()
    store = ResultStore(path)
    assert [r.technique for r in store.all()] == ["fp32"]
    store.add_vote("m", "p", ("fp32", "nf4"), "fp32", "s")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert (tmp_path / "old.sqlite.bak-v1").is_file()
    ResultStore(path)  # reopening a migrated store is a no-op


def test_a_store_newer_than_this_code_is_still_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE lab_schema_version SET version_num = ?", (f"{SCHEMA_VERSION + 1:04d}",))
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        ResultStore(path)


# --- the page --------------------------------------------------------------------------------------


@pytest.fixture
def arena_page():
    from ui.frame import SidebarChoice

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "pages" / "arena.py"), default_timeout=120)
    at.session_state["choice"] = SidebarChoice("tiny-random-llama", cost.HARDWARE_PRESETS["laptop-cpu"])
    yield at
    st.cache_resource.clear()


def no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_arena_page_streams_variants_and_compares_with_the_sweep(arena_page):
    ResultStore().add(make_record(model="tiny-random-llama", technique="fp32", hardware=HERE,
                                  settings={"new_tokens": 32, "prompt_tokens": 40}))
    at = arena_page.run()
    no_errors(at)
    at.multiselect[0].set_value(["fp32", "dyn-int8"]).run()
    at.number_input[0].set_value(8).run()
    at.button[0].click().run()
    no_errors(at)
    heads = " ".join(m.value for m in at.markdown)
    assert "FP32 (reference)" in heads and "Dynamic INT8" in heads and "tok/s" in heads
    assert len(at.get("html")) == 2  # one answer per variant
    assert "Time per token" in at.get("plotly_chart")[0].proto.spec
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["FP32 (reference)"] and not table["same prompt length and token count"][0]


def test_arena_blind_mode_hides_labels_until_the_vote_and_stores_it(arena_page):
    at = arena_page.run()
    at.multiselect[0].set_value(["fp32", "dyn-int8"]).run()
    at.number_input[0].set_value(8).run()
    at.toggle[0].set_value(True).run()
    at.button[0].click().run()
    no_errors(at)
    heads = " ".join(m.value for m in at.markdown)
    assert "Answer A" in heads and "Answer B" in heads and "FP32" not in heads and "timings hidden" in heads
    at.radio[1].set_value("Answer A").run()
    at.button[1].click().run()
    no_errors(at)
    heads = " ".join(m.value for m in at.markdown)
    assert "Answer A = " in heads and "tok/s" in heads
    [winner, loser] = ResultStore().tally(model="tiny-random-llama")
    assert (winner.wins, loser.losses) == (1, 1)
    assert at.dataframe[-1].value["wins"].tolist() == [1, 0]


def test_arena_page_needs_two_variants(arena_page):
    at = arena_page.run()
    at.multiselect[0].set_value(["fp32"]).run()
    no_errors(at)
    assert any("at least two" in i.value for i in at.info)


def test_arena_offers_a_distilled_student_and_streams_it(arena_page):
    from core import models
    from core.techniques import distillation

    checkpoint = models.prepare(models.resolve("tiny-random-llama"))
    teacher, tokenizer = models.load_model(checkpoint), models.load_tokenizer(checkpoint)
    run = "tiny-random-llama-1L-20261126-120000"
    distillation.save_checkpoint(distillation.make_student(teacher, [1]), tokenizer, saved.students_dir() / run, 4,
                                 {"teacher": "tiny-random-llama", "student_layers": 1, "teacher_layers": 2, "run": run,
                                  "complete": True, "steps": 4})
    key = saved.student_key(1, run)
    at = arena_page.run()
    assert at.multiselect[0].options[-1] == saved.student_label(1, run)  # offered, under its stored label
    at.multiselect[0].set_value(["fp32", key]).run()
    at.number_input[0].set_value(8).run()
    at.button[0].click().run()
    no_errors(at)
    heads = " ".join(m.value for m in at.markdown)
    assert saved.student_label(1, run) in heads and "tok/s" in heads


def test_arena_waits_while_a_job_runs_and_caps_typed_prompts(arena_page):
    from core.launch.jobqueue import JobQueue

    queue = JobQueue()
    queue.submit("sweep", {"model": "tiny-random-llama", "techniques": ["fp32"]}, "sweep", "s", "presenter", "p")
    queue.claim(1)  # the worker is timing it now
    at = arena_page.run()
    assert at.button[0].disabled and any("The Arena opens when it ends" in w.value for w in at.warning)
    at.selectbox[0].set_value("own").run()
    assert at.text_area[0].proto.max_chars == arena.MAX_PROMPT_CHARS
    assert "at most" in arena.prompt_problem("x" * (arena.MAX_PROMPT_CHARS + 1))
    assert arena.prompt_problem("Why is the sky blue?") is None
