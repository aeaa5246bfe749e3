"""GGUF at load on llama.cpp's own llama-server: its command line, its own account beside the client's, the batching
check judged by its own log-probs, and bad input (no build, port taken, a file it cannot load, a death mid-run).

The pure parts run everywhere; the ones that start llama-server need the lab's llama.cpp build and skip without it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from core import models
from core.runtimes import llamacpp_build
from core.serving import batching, bench, client, engines, server, stats
from core.serving.bench import ServeSettings
from core.serving.limits import HOST, ServingError
from core.serving.prompts import corpus_token_ids, prompts_from_text
from core.serving.stats import RequestTiming, TokenTop
from core.store import ResultStore
from tests.conftest import needs_bundled

SPEC = models.BUNDLED["smollm2-135m-instruct"]
needs_tools = pytest.mark.skipif(llamacpp_build.why_not_tools() is not None,
                                 reason=f"llama.cpp's tools are not built here: {llamacpp_build.why_not_tools()}")

# --- pure ------------------------------------------------------------------------------------------


@needs_tools
def test_the_engine_holds_one_slot_per_user_each_with_its_context(tmp_path):
    gguf = tmp_path / "m.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    engine = engines.llama_server_engine(gguf, "gguf-q4_k_m", slots=16, ctx_per_slot=208, threads=2)
    argv = engine.argv(8123)
    opt = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert argv[0].endswith("llama-server")
    assert opt["--parallel"] == "16" and opt["--ctx-size"] == str(16 * 208) and "--no-kv-unified" in argv
    assert opt["--threads"] == opt["--threads-batch"] == "2" and "--cont-batching" in argv and "--metrics" in argv
    assert opt["--host"] == HOST
    assert "16 slots" in engine.server and engine.slots == 16 and engine.ctx_per_slot == 208
    body = engine.body("hello", 64)
    assert body["ignore_eos"] is True and body["max_tokens"] == 64 and body["temperature"] == 0.0


def test_no_build_means_a_clear_message_before_anything_starts(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("LAB_LLAMA_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ServingError, match="not built for this CPU.*make setup"):
        engines.llama_server_engine(gguf, "gguf-q4_k_m", slots=1, ctx_per_slot=64)


def test_prometheus_text_is_read_without_labels_or_comments():
    text = ("# HELP llamacpp:tokens_predicted_total Number of generation tokens processed\n"
            "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 128\n"
            "llamacpp:n_busy_slots_per_decode 3.5\nsomething{label=\"x\"} 2\n")
    assert server.parse_prometheus(text) == {"llamacpp:tokens_predicted_total": 128.0,
                                             "llamacpp:n_busy_slots_per_decode": 3.5}


def _timed(chunks, timings, tokens=4):
    return RequestTiming(0.0, tuple(chunks), chunks[-1], tokens, 8, "x", "", timings)


def test_the_servers_account_agrees_or_says_where_it_does_not():
    own = {"predicted_n": 4, "predicted_per_second": 10.0, "prompt_ms": 12.0}
    timings = [_timed([0.1, 0.2, 0.3, 0.4], own), _timed([0.1, 0.2, 0.3, 0.4], own)]  # client: 3 tokens / 0.3 s
    load = stats.summarize(timings)
    account = stats.server_account(timings, {"llamacpp:tokens_predicted_total": 100.0},
                                   {"llamacpp:tokens_predicted_total": 108.0})
    assert account.output_tokens == 8 and account.metrics_tokens_predicted == 8.0 and account.prompt_ms_p50 == 12.0
    assert stats.disagreements(load, account) == []  # 10 tok/s both sides
    slow = {**own, "predicted_per_second": 8.0}
    account = stats.server_account([_timed([0.1, 0.2, 0.3, 0.4], slow)], {}, {"llamacpp:tokens_predicted_total": 5})
    words = stats.disagreements(stats.summarize([_timed([0.1, 0.2, 0.3, 0.4], slow)]), account)
    assert any("decode speed per user" in w and "10.0" in w and "8.0" in w for w in words)
    assert any("/metrics 5" in w for w in words)


def test_a_server_that_reports_nothing_has_no_account():
    assert stats.server_account([_timed([0.1, 0.2], {})], {}, {}) is None


def test_token_tops_come_from_the_servers_top_logprobs():
    event = {"choices": [{"text": " a", "logprobs": {"content": [
        {"id": 7, "logprob": -0.1, "top_logprobs": [{"id": 9, "logprob": -2.6}, {"id": 7, "logprob": -0.1}]}]}}]}
    [top] = client._token_tops(event)
    assert (top.first_id, top.second_id, top.gap) == (7, 9, pytest.approx(2.5))
    assert top.logprob_of(9) == -2.6 and top.logprob_of(1) is None
    assert client._token_tops({"choices": [{"text": "a"}]}) == []


class _Tok:
    def decode(self, ids):
        return f"<{ids[0]}>"


def _answer(text, *tops):
    return RequestTiming(0, (1,), 1, len(tops), 0, text, "", {}, tuple(TokenTop(*t) for t in tops))


def test_a_difference_is_a_near_tie_only_when_both_runs_gaps_prove_it():
    alone = _answer("abc", (1, -0.1, 4, -3.1), (2, -1.000, 5, -1.004), (3, -0.2, 4, -1.2))
    tie = _answer("abd", (1, -0.1, 4, -3.1), (5, -1.001, 2, -1.004), (3, -0.2, 4, -1.2))
    moved = _answer("abd", (1, -0.1, 4, -3.1), (5, -0.8, 2, -1.3), (3, -0.2, 4, -1.2))
    gap_a, gap_b, drift, words = batching._judged_by_server(_Tok(), alone, tie)
    assert (gap_a, gap_b) == (pytest.approx(0.004), pytest.approx(0.003))
    assert "token 1: '<2>' alone, '<5>' batched" in words and "differ by up to 4.00e-03" in words
    assert batching._verdict(gap_a, gap_b, drift, 0.01)[0] == "tie"
    gap_a, gap_b, drift, _ = batching._judged_by_server(_Tok(), alone, moved)
    assert gap_b == pytest.approx(0.5) and drift == pytest.approx(0.3)  # token 2: -1.0 alone, -1.3 batched
    assert batching._verdict(gap_a, gap_b, drift, 0.01)[0] == "drift"  # 0.504 <= 2 x 0.3, but never a near-tie
    assert batching._verdict(0.004, 0.5, 0.001, 0.01)[0] == "bug"  # the runs agreed to 1e-3, yet flipped a 0.5 gap
    assert batching._verdict(0.5, 0.5, float("nan"), 0.01)[0] == "bug"  # no drift measured: never explained


# --- the real server, on the bundled model ---------------------------------------------------------



def _settings(**kw) -> ServeSettings:
    return ServeSettings(**({"concurrency": (1, 2), "prompt_tokens": (32,), "new_tokens": 8, "repeats": 1,
                             "start_timeout_s": 120, "request_timeout_s": 120} | kw))


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_serve_bench_runs_gguf_on_llama_server_with_its_own_account(bundled):
    store = ResultStore()
    key = engines.gguf_key(models.gguf_path(SPEC))
    records = bench.serve_bench(SPEC.key, [key], _settings(), store=store)
    assert [r.concurrency for r in records] == [1, 2]
    for r in records:
        assert r.runtime == "llama.cpp" and r.server.startswith("llama-server") and "2 slots" in r.server
        assert r.errors == 0 and r.requests == r.concurrency and r.throughput_tokens_per_s > 0
        assert r.settings["slots"] == 2 and r.settings["ctx_per_slot_tokens"] >= 32 + 8
        account = r.settings["server_account"]
        assert account["requests_reporting"] == r.concurrency and account["output_tokens"] == 8 * r.concurrency
        assert account["metrics_tokens_predicted"] == 8 * r.concurrency
        assert isinstance(r.settings["server_vs_client"], list)
        assert r.kv_cache_mb_measured == pytest.approx(r.kv_cache_mb_estimated, rel=0.15)
    assert len(store.serving()) == 2


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_batching_on_llama_server_is_explained_request_by_request(bundled, capsys):
    """Two batch sizes, 2 and 8 at once, on 8 slots: every prompt is also answered alone first, one after another,
    which was most of the time when this went up to 32 at once."""
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(bundled)
    prompts = prompts_from_text(corpus_token_ids(tokenizer), tokenizer, 8, 48)
    engine = engines.llama_server_engine(models.gguf_path(SPEC), engines.gguf_key(models.gguf_path(SPEC)),
                                         slots=8, ctx_per_slot=96)
    checks = batching.check_batching(engine, None, tokenizer, prompts, [2, 8], new_tokens=24, timeout_s=240)
    assert [c.concurrency for c in checks] == [2, 8]
    with capsys.disabled():
        for c in checks:
            print(f"\nllama-server, concurrency {c.concurrency}: {c.same_as_alone}/{c.requests} same as alone, "
                  f"{c.near_ties} near-ties, {c.drift_explained} within drift, {c.mismatches} unexplained {list(c.details)}")
    for c in checks:
        assert c.same_as_alone + c.near_ties + c.drift_explained + c.mismatches == c.requests
        assert len(c.details) == c.requests - c.same_as_alone  # every difference explained


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_a_gguf_file_llama_cpp_cannot_load_says_so_and_stores_nothing(bundled, tmp_path):
    bad = tmp_path / "broken.Q4_K_M.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    store = ResultStore()
    with pytest.raises(ServingError, match="exited while starting.*last log lines"):
        bench.serve_bench(SPEC.key, ["gguf-q4_k_m"], _settings(concurrency=(1,)), store=store,
                          gguf_files={"gguf-q4_k_m": bad})
    assert store.serving() == []


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_a_taken_port_is_refused_before_anything_starts(bundled):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServingError, match=f"port {port}.*already in use"):
            bench.serve_bench(SPEC.key, [engines.gguf_key(models.gguf_path(SPEC))], _settings(port=port))


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_a_server_dying_mid_run_keeps_what_was_measured_and_shows_its_last_words(bundled):
    store = ResultStore()
    key = engines.gguf_key(models.gguf_path(SPEC))
    settings = _settings(concurrency=(1, 4), new_tokens=48, repeats=2)

    def kill_when_loaded():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(store.serving()) < 1:  # the first point is stored
            time.sleep(0.05)
        for p in __import__("psutil").process_iter(["name", "cmdline"]):
            if (p.info["name"] or "").startswith("llama-server"):
                os.kill(p.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_loaded, daemon=True)
    killer.start()
    with pytest.raises(ServingError, match="exited during the load.*kept"):
        bench.serve_bench(SPEC.key, [key], settings, store=store)
    killer.join()
    assert [r.concurrency for r in store.serving()] == [1]


def test_a_gguf_curve_never_mixes_llama_server_with_the_old_one_at_a_time_server():
    from core.views import capacity
    from tests.factories import make_serving_record

    def point(c, server, when):
        return make_serving_record(technique="gguf-q4_k_m", runtime="llama.cpp", concurrency=c, server=server,
                                   created_at=when)

    old = "llama.cpp server (llama-cpp-python, one request at a time)"
    new = "llama-server (llama.cpp, 16 slots, continuous batching)"
    newest_first = [point(16, new, "2026-12-05T11:00"), point(1, new, "2026-12-05T10:59"),
                    point(8, old, "2026-12-01T10:00"), point(1, old, "2026-12-01T09:59")]
    kept = capacity.latest_points(newest_first)
    assert sorted(r.concurrency for r in kept) == [1, 16] and {r.server for r in kept} == {new}
