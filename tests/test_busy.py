"""Records timed on a busy machine are drawn and worded as unreliable (core/views/busy.py and its users)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.experiments.sweep import SweepSettings
from core.measure import benchmark, others
from core.store import ResultStore
from core.views import busy, recommend, report, tradeoff_map
from core.views.recommend import Constraints
from tests.factories import make_record

ROOT = Path(__file__).resolve().parent.parent
HERE = benchmark.hardware_fingerprint("cpu")

QUIET = others.OthersLoad(attempts=(0.01, 0.02, 0.01), kept=(0.01, 0.02, 0.01)).settings()
# The teacher's case: another process held a core through every run of Q8_0, retries included.
BUSY = others.OthersLoad(attempts=(0.48, 0.52, 0.47, 0.49, 0.50, 0.51), kept=(0.52, 0.49, 0.51)).settings()
SWEEP = {**SweepSettings(new_tokens=48, repeats=3).__dict__, "prompt_tokens": 40}


def variants(q8_settings: dict = BUSY) -> list:
    common = dict(model="smollm2-135m-instruct", hardware=HERE, run_id="r1")
    return [
        make_record(technique="fp32", label="FP32", family="reference", usd_per_1m_tokens=25.0,
                    settings={**SWEEP, **QUIET}, **common),
        make_record(technique="gguf-q8_0", label="GGUF Q8_0", family="gguf", runtime="llama.cpp", size_mb=145.0,
                    decode_tokens_per_s_median=3.0, usd_per_1m_tokens=16.0, kld_mean=0.002, top1_agreement=0.99,
                    created_at="2025-06-01T12:05:00+00:00", settings={**SWEEP, **q8_settings}, **common),
        make_record(technique="gguf-q4_k_m", label="GGUF Q4_K_M", family="gguf", runtime="llama.cpp", size_mb=105.0,
                    decode_tokens_per_s_median=30.0, usd_per_1m_tokens=1.6, kld_mean=0.05, top1_agreement=0.93,
                    settings={**SWEEP, **QUIET}, **common),
    ]


def test_the_map_draws_a_busy_record_hollow_with_a_legend_entry_and_the_share_in_its_hover():
    fig = tradeoff_map.tradeoff_figure(variants(), "kld_mean", "latency")
    gguf = next(t for t in fig.data if t.name == "gguf")
    q8 = [i for i, text in enumerate(gguf.customdata) if "GGUF Q8_0" in text][0]
    q4 = 1 - q8
    assert gguf.marker.symbol[q8].endswith("-open") and not gguf.marker.symbol[q4].endswith("-open")
    assert busy.UNRELIABLE in [t.name for t in fig.data]
    assert "Other processes' CPU while timed: 50% median, 52% max; 6 of 6 runs disturbed" in gguf.customdata[q8]
    assert busy.UNRELIABLE in gguf.customdata[q8]
    assert "1.0% median" in gguf.customdata[q4] and busy.UNRELIABLE not in gguf.customdata[q4]
    assert "Drawn hollow: GGUF Q8_0" in tradeoff_map.what_you_give_up(variants(), "kld_mean", "latency")


def test_a_map_with_no_busy_record_has_no_hollow_marker_and_unknown_is_said():
    records = variants(q8_settings=others.OthersLoad((None,), (None,)).settings())
    fig = tradeoff_map.tradeoff_figure(records, "kld_mean", "latency")
    assert busy.UNRELIABLE not in [t.name for t in fig.data]
    assert not any(str(s).endswith("-open") for t in fig.data if t.name == "gguf" for s in t.marker.symbol)
    hover = next(t for t in fig.data if t.name == "gguf").customdata
    assert any("Other processes' CPU while timed: unknown" in h for h in hover)
    assert "Drawn hollow" not in tradeoff_map.what_you_give_up(records, "kld_mean", "latency")


def test_decide_never_gives_a_plain_deploy_for_a_variant_timed_on_a_busy_machine():
    rec = recommend.recommend(variants(), Constraints(min_top1_agreement=0.98, objective="cheapest"))
    assert rec.chosen.technique == "gguf-q8_0"
    words = recommend.verdict(rec)
    assert not words.startswith("Deploy") and "busy machine" in words and busy.AGAIN in words
    assert "GGUF Q8_0 (other processes used 50% of the CPU (median of 6 timed runs, at most 52%))" in rec.busy
    assert rec.busy.startswith("This choice rests on timings from a busy machine")
    assert rec.busy in recommend.decision_lines(rec, "asked on Decide")


def test_decide_says_a_busy_variant_left_out_may_change_the_choice():
    rec = recommend.recommend(variants(), Constraints(min_top1_agreement=0.9, objective="cheapest"))
    assert rec.chosen.technique == "gguf-q4_k_m" and recommend.verdict(rec).startswith("Deploy")
    assert "GGUF Q8_0" in rec.busy and "The choice may change" in rec.busy
    quiet = recommend.recommend(variants(QUIET), Constraints(min_top1_agreement=0.9, objective="cheapest"))
    assert quiet.busy is None


def test_the_report_says_which_variant_was_timed_on_a_busy_machine_with_the_share():
    bundle = report.build_report(variants(), "SmolLM2", "kld_mean", {}, commit="abc")
    assert 'id="busy"' in bundle.html and "Measured on a busy machine: GGUF Q8_0" in bundle.html
    assert "50% of the CPU" in bundle.html and busy.AGAIN in bundle.html
    assert "49.5% (max 52.0%), busy machine" in bundle.html  # its row in the table of every variant
    quiet = report.build_report(variants(QUIET), "SmolLM2", "kld_mean", {}, commit="abc")
    assert 'id="busy"' not in quiet.html


def test_measure_again_is_a_sweep_of_just_the_busy_variants_with_their_settings():
    again = busy.remeasure(variants())
    assert again.techniques == ("gguf-q8_0",) and again.settings.new_tokens == 48 and again.settings.repeats == 3
    assert again.settings.launched_from == "dashboard"
    assert busy.remeasure(variants(QUIET)) is None


@pytest.mark.usefixtures("fresh_caches")
def test_the_map_page_warns_and_queues_a_sweep_of_the_busy_variants():
    from core.launch.jobqueue import JobQueue

    store = ResultStore()
    for r in variants():
        store.add(r)
    at = AppTest.from_file(str(ROOT / "pages/tradeoff_map.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Measured on a busy machine: GGUF Q8_0" in w.value for w in at.warning)
    assert busy.UNRELIABLE in at.get("plotly_chart")[0].proto.spec
    next(b for b in at.button if b.label == "Measure again: GGUF Q8_0").click().run()
    waiting = JobQueue().snapshot().waiting
    assert [w.job.kind for w in waiting] == ["sweep"]
    assert list(waiting[0].job.args["techniques"]) == ["gguf-q8_0"]
    assert any("Queued as job" in s.value for s in at.success)
