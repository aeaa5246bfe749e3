"""Sweep time estimates, slow-kernel flags and the learned correction from fake records and jobs (no timing here)."""

import sqlite3
from pathlib import Path

import pytest

from core.experiments import estimate
from core.experiments.estimate import PastRun, Probe, SweepPlan, estimate_sweep, learned_correction
from tests.factories import make_record

ROOT = Path(__file__).resolve().parent.parent

AMD = "AMD EPYC 7B13, 2 cores, 8 GiB RAM"
XEON = "Intel Xeon, 2 cores, 8 GiB RAM"
SETTINGS = {"new_tokens": 32, "warmup_runs": 1, "repeats": 5, "prompt_tokens": 40, "ppl_tokens": 4096, "mc_items": 194}


def rec(technique, tps, hardware=AMD, ttft_ms=100.0, measure_s=None, roofline_pct=50.0, **kw):
    facts = {"measure_s": measure_s} if measure_s is not None else {}
    return make_record(technique=technique, hardware=hardware, decode_tokens_per_s_median=tps, ttft_ms_median=ttft_ms,
                       settings=dict(SETTINGS), variant_facts=facts, roofline_pct=roofline_pct, **kw)


def test_measured_wall_time_is_rescaled_to_the_new_generation_settings():
    history = [rec("fp32", 10.0, measure_s=60.0)]
    same = estimate_sweep(history, ["fp32"], "smollm2-135m-instruct", AMD).variants[0]
    assert same.seconds == pytest.approx(60.0)  # same settings: the wall time it took
    generation = 6 * (0.1 + 31 / 10.0)  # 6 runs of prefill + 31 decode steps
    longer = estimate_sweep(history, ["fp32"], "smollm2-135m-instruct", AMD, SweepPlan(new_tokens=64)).variants[0]
    assert longer.seconds == pytest.approx(60.0 - generation + 6 * (0.1 + 63 / 10.0))
    assert "60 s run here" in longer.basis


def test_without_wall_time_the_estimate_comes_from_speed_and_prefill_rate():
    [v] = estimate_sweep([rec("fp32", 10.0)], ["fp32"], "smollm2-135m-instruct", AMD).variants
    scoring = (4096 + 194 * estimate.MC_TOKENS_PER_ITEM) / (40 / 0.1)
    assert v.seconds == pytest.approx(6 * (0.1 + 3.1) + scoring)
    assert "from its speed here" in v.basis


def test_bitsandbytes_int8_far_below_fp32_is_flagged_with_the_reason_and_nf4_is_not():
    history = [rec("fp32", 9.8), rec("int8", 0.6, ttft_ms=14000.0, measure_s=500.0), rec("nf4", 6.0),
               rec("fp32", 25.0, hardware=XEON), rec("int8", 16.0, hardware=XEON)]
    est = estimate_sweep(history, ["fp32", "int8", "nf4", "bf16"], "smollm2-135m-instruct", AMD, avx512=False)
    by = {v.technique: v for v in est.variants}
    assert est.slow == ("int8",)
    why = by["int8"].why_slow
    assert "0.6 tokens/s" in why and "6% of the fp32 reference's 9.8" in why
    assert "64% of fp32" in why  # its usual speed, from the Xeon records
    assert "AVX-512" in why
    assert not by["nf4"].slow and by["nf4"].why_slow == ""
    assert by["bf16"].seconds is None and est.unknown == ("bf16",)
    assert est.total_s == pytest.approx(sum(v.seconds for v in est.variants if v.seconds is not None))
    assert by["int8"].seconds > 5 * by["nf4"].seconds


def test_records_from_other_machines_or_models_never_give_an_estimate_here():
    history = [rec("fp32", 25.0, hardware=XEON), rec("nf4", 20.0, model="other-model")]
    est = estimate_sweep(history, ["fp32", "nf4"], "smollm2-135m-instruct", AMD)
    assert est.unknown == ("fp32", "nf4")


def test_without_a_reference_the_flag_uses_the_bandwidth_limit():
    history = [rec("int8", 0.6, roofline_pct=0.8), rec("nf4", 6.0, roofline_pct=30.0)]
    est = estimate_sweep(history, ["int8", "nf4"], "smollm2-135m-instruct", AMD, avx512=True)
    assert est.slow == ("int8",)
    assert "0.8% of what this machine's memory bandwidth allows" in est.variants[0].why_slow
    assert "AVX-512" not in est.variants[0].why_slow  # this CPU has it: not the reason


def test_a_probe_gives_an_estimate_and_a_flag_for_a_variant_never_measured_here():
    history = [rec("fp32", 10.0)]
    probe = Probe("int8", AMD, load_s=2.0, ttft_ms=14000.0, decode_tokens_per_s=0.6, prompt_tokens=40)
    elsewhere = Probe("bf16", XEON, 1.0, 100.0, 9.0, 40)
    est = estimate_sweep(history, ["int8", "bf16"], "smollm2-135m-instruct", AMD, probes={"int8": probe, "bf16": elsewhere})
    int8, bf16 = est.variants
    assert int8.slow and "probe" in int8.basis
    assert int8.seconds == pytest.approx(2.0 + 6 * (14.0 + 31 / 0.6) + (4096 + 194 * 80) / (40 / 14.0))
    assert bf16.seconds is None  # a probe from another machine says nothing about this one


def test_probe_loads_the_real_variant_and_times_a_few_steps(tiny_dir):
    import torch

    p = estimate.probe_variant("fp32", tiny_dir, torch.tensor([[5, 6, 7, 8]]))
    assert p.technique == "fp32" and p.prompt_tokens == 4
    assert p.load_s > 0 and p.ttft_ms > 0 and p.decode_tokens_per_s > 0


# ---------------------------------------------------------------- the estimate learns from the sweeps that ended here


def past(ratio, ended_s, hardware=AMD, uncorrected_s=60.0, label="sweep"):
    """A sweep estimated at `uncorrected_s` (shown as such) that took `ratio` times as long."""
    return PastRun(label, hardware, uncorrected_s, uncorrected_s, uncorrected_s * ratio, ended_s)


def test_the_correction_is_the_median_over_the_last_sweeps_on_this_machine_only():
    runs = [past(1.4, 10), past(1.6, 11), past(1.5, 12), past(0.5, 1), past(0.5, 2), past(0.5, 3),
            past(3.0, 13, hardware=XEON)]
    c = learned_correction(runs, AMD)
    # the last 5 here are 1.5, 1.6, 1.4, 0.5, 0.5: the sixth (older) and the Xeon's sweep do not count
    assert c.runs == 5 and c.factor == pytest.approx(1.4)
    assert c.words == "corrected ×1.4 from the last 5 sweeps here, which took longer than estimated"
    three = learned_correction(runs[:3], AMD)
    assert three.words == "corrected ×1.5 from the last 3 sweeps here, which took longer than estimated"


def test_the_correction_stays_in_a_sane_range_and_leaves_small_errors_alone():
    assert learned_correction([], AMD) == estimate.Correction()  # nothing ended here: factor 1, no words
    high = learned_correction([past(10.0, 1)], AMD)
    assert high.factor == estimate.CORRECTION_MAX and high.median_ratio == pytest.approx(10.0)
    assert "from the last sweep here" in high.words and "stops at ×3" in high.words
    low = learned_correction([past(0.1, 1), past(0.2, 2)], AMD)
    assert low.factor == estimate.CORRECTION_MIN and "took less time than estimated" in low.words
    near = learned_correction([past(1.05, 1), past(0.95, 2), past(1.08, 3)], AMD)
    assert near.factor == 1.0 and near.runs == 3 and near.words.startswith("not corrected")


def test_a_learned_estimate_scales_each_variant_and_keeps_its_basis_and_uncorrected_time():
    history = [rec("fp32", 10.0, measure_s=60.0), rec("nf4", 6.0, measure_s=40.0)]
    est = estimate_sweep(history, ["fp32", "nf4"], "smollm2-135m-instruct", AMD,
                         past=[past(1.5, 1), past(1.5, 2, hardware=XEON)])
    fp32, nf4 = est.variants
    assert fp32.seconds == pytest.approx(90.0) and fp32.uncorrected_s == pytest.approx(60.0)
    assert "60 s run here" in fp32.basis  # the per-variant basis is kept
    assert nf4.seconds == pytest.approx(60.0) and nf4.uncorrected_s == pytest.approx(40.0)
    assert est.total_s == pytest.approx(150.0) and est.uncorrected_s == pytest.approx(100.0)
    assert est.correction.factor == pytest.approx(1.5) and est.correction.runs == 1
    plain = estimate_sweep(history, ["fp32", "nf4"], "smollm2-135m-instruct", AMD)
    assert plain.total_s == plain.uncorrected_s == pytest.approx(100.0) and plain.correction.runs == 0


def test_the_table_of_past_sweeps_gives_estimate_actual_and_signed_error_newest_first():
    runs = [PastRun("Sweep A", AMD, 61.0, 50.0, 95.0, 1.0), PastRun("Sweep B", AMD, 80.0, 60.0, 80.0, 2.0),
            PastRun("elsewhere", XEON, 10.0, 10.0, 20.0, 3.0)]
    rows = estimate.past_rows(runs, AMD)
    assert [r["job"] for r in rows] == ["Sweep B", "Sweep A"]
    assert rows[1]["estimated s"] == 61.0 and rows[1]["actual s"] == 95.0
    assert rows[1]["error %"] == pytest.approx(-35.8, abs=0.1) and rows[0]["error %"] == 0.0


def test_past_runs_read_the_queues_ended_jobs():
    from core.launch.jobqueue import PRESENTER, JobEstimate, JobQueue

    queue = JobQueue()
    with_estimate = queue.submit("sweep", {}, "Sweep A", "s", PRESENTER, "s-p", JobEstimate(61.0, 50.0, AMD))
    queue.submit("sweep", {}, "Sweep B", "s", PRESENTER, "s-p")  # no estimate: nothing to learn from
    for _ in range(2):
        queue.finish(queue.claim(1).id, "done")
    [run] = estimate.past_runs(queue.estimated_jobs("sweep", AMD))
    job = queue.job(with_estimate)
    assert run == PastRun("Sweep A", AMD, 61.0, 50.0, job.ended_s - job.started_s, job.ended_s)
    assert queue.estimated_jobs("sweep", XEON) == []


def test_quantize_page_says_what_the_estimate_learned_and_queues_the_sweep_with_it(fresh_caches):
    from streamlit.testing.v1 import AppTest

    from core.launch.jobqueue import PRESENTER, JobEstimate, JobQueue
    from core.measure import benchmark
    from core.store import ResultStore

    here = benchmark.hardware_fingerprint("cpu")
    ResultStore().add(rec("fp32", 10.0, hardware=here, measure_s=40.0, label="FP32"))
    queue = JobQueue()
    for took_s in (60.0, 57.0, 63.0):  # three sweeps here estimated at 40 s that took about 1.5 times as long
        job = queue.submit("sweep", {}, f"Sweep of {took_s:.0f} s", "s", PRESENTER, "s-p",
                           JobEstimate(40.0, 40.0, here))
        queue.claim(1)
        queue.finish(job, "done")
        queue.record_ended("sweep", {}, "x", "s", PRESENTER, 0.0, 0.0, None)  # no estimate: ignored
        with sqlite3.connect(queue.path) as conn:
            conn.execute("UPDATE jobs SET started_s = ended_s - ? WHERE id = ?", (took_s, job))
    at = AppTest.from_file(str(ROOT / "pages" / "quantize.py"), default_timeout=60)
    at.session_state["quantize_keys"] = ["fp32"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(e.label == "Estimated time here: 60 s" for e in at.expander)
    assert any("corrected ×1.5 from the last 3 sweeps here, which took longer than estimated" in c.value
               for c in at.caption)
    past_table = at.dataframe[1].value
    assert list(past_table.columns) == ["job", "estimated s", "actual s", "error %"] and len(past_table) == 3
    assert past_table["error %"].tolist() == pytest.approx([-100 * 23 / 63, -100 * 17 / 57, -100 * 20 / 60])
    next(b for b in at.button if b.label == "Measure").click().run()
    [waiting] = JobQueue().snapshot().waiting
    assert waiting.job.estimated_s == pytest.approx(60.0) and waiting.job.uncorrected_s == pytest.approx(40.0)
    assert waiting.job.estimate_hardware == here
